//! Hostile tenants on the emulators (issue 12): every way one tenant could reach another's
//! job through the pipeline's entry points is tried while the victim's job runs, and the
//! victim's job must complete as theirs with their reel unchanged byte for byte.

use reel_events::{envelope, types, AttributesReader, Event};
use reel_runtime::bus::Bus;
use reel_testkit::fixtures::{check_playable, make_clip};
use reel_testkit::Cluster;
use std::time::{Duration, Instant};

const JOB_TIMEOUT: Duration = Duration::from_secs(150);

async fn with_clips(cluster: &Cluster, n: usize) -> Vec<String> {
    let mut paths = Vec::new();
    for i in 0..n {
        let local = cluster.dir().join(format!("clip {i}.mp4"));
        make_clip(&local, 320, 240, 1.0);
        let key = format!("clips/clip {i}.mp4");
        cluster.upload(&local, &key).await;
        paths.push(format!("gs://{}/{key}", cluster.bucket));
    }
    paths
}

/// `reel submit` as `user`; returns the job id (`job` when one is given).
fn submit(
    cluster: &Cluster,
    user: &str,
    project: &str,
    job: Option<&str>,
    clips: &[String],
    output: &str,
    extra: &[&str],
) -> String {
    let mut args = vec!["submit", "--project", project, "--user", user, "-o", output];
    if let Some(job) = job {
        args.extend(["--job-id", job]);
    }
    args.extend(extra);
    args.extend(clips.iter().map(String::as_str));
    let out = cluster.reel(&args);
    assert!(out.status.success(), "reel submit: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn data(event: &Event) -> serde_json::Value {
    envelope::data_json(event).unwrap()
}

/// The `job.failed` events of `user`, waiting until there are at least `n`.
async fn failures_of(cluster: &mut Cluster, user: &str, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let failed: Vec<serde_json::Value> =
            cluster.events_of_any(types::JOB_FAILED).await.iter().map(data).filter(|d| d["userId"] == user).collect();
        if failed.len() >= n || start.elapsed() > Duration::from_secs(60) {
            return failed;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn reel_bytes(cluster: &Cluster, key: &str) -> Vec<u8> {
    let local = cluster.dir().join(format!("dl-{}.mp4", uuid::Uuid::new_v4().simple()));
    assert!(cluster.download(key, &local).await, "no object at gs://{}/{key}", cluster.bucket);
    std::fs::read(&local).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenants_on_pubsub_cannot_touch_a_victims_job() {
    let mut cluster = Cluster::start().await;
    cluster.env.insert("REEL_QUOTA_ACTIVE_JOBS".into(), "1".into());
    cluster.start_all();
    let clips = with_clips(&cluster, 3).await;
    let bucket = cluster.bucket.clone();
    let out = |name: &str| format!("gs://{bucket}/reels/{name}.mp4");

    // Alice's job, and right behind it (same ordering key) mallory's attacks on its id:
    // a hijack from another project, a takeover with a "larger" user id, a malformed
    // request that would fail and clean the job, and a forced restart in her project.
    let victim = submit(&cluster, "alice", "pa", Some("job_alice"), &clips, &out("alice"), &[]);
    assert_eq!(victim, "job_alice");
    submit(&cluster, "mallory", "pm", Some("job_alice"), &clips, &out("mallory"), &[]);
    submit(&cluster, "zzzz", "pa", Some("job_alice"), &clips, &out("alice"), &["--force-restart"]);
    submit(&cluster, "mallory", "pm", Some("job_alice"), &clips[..1], &out("mallory"), &[]);
    submit(&cluster, "mallory", "pa", Some("job_m1"), &clips, &out("alice"), &["--force-restart"]);

    let done = cluster.wait_for(Some("job_alice"), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    assert_eq!(data(&done)["userId"], "alice");
    assert_eq!(data(&done)["outputPath"], out("alice"));
    let original = reel_bytes(&cluster, "reels/alice.mp4").await;
    let local = cluster.dir().join("alice.mp4");
    std::fs::write(&local, &original).unwrap();
    assert_eq!(check_playable(&local).1, 1);

    let refused: Vec<serde_json::Value> =
        [failures_of(&mut cluster, "mallory", 3).await, failures_of(&mut cluster, "zzzz", 1).await].concat();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    for failure in &refused {
        assert_eq!(failure["errorType"], "permission_denied", "{failure}");
        assert_eq!(failure["stage"], "validate", "refused before any work: {failure}");
        assert_ne!(failure["jobId"], "job_alice", "a refusal published under the victim's id: {failure}");
    }
    // Nothing but alice's own job happened under her id.
    let events = cluster.events_of("job_alice").await;
    for event in &events {
        assert!(
            ![types::JOB_FAILED, types::JOB_CANCELLED].contains(&event.ty()),
            "the victim's job got {}: {}",
            event.ty(),
            data(event)
        );
        let d = data(event);
        let user = d.get("userId").or_else(|| d["job"].get("userId")).cloned();
        assert!(user.is_none() || user == Some("alice".into()), "{} names {user:?}", event.ty());
    }
    assert!(!cluster.download("reels/mallory.mp4", &cluster.dir().join("m.mp4")).await, "mallory got a reel");

    // After it completed: a forced restart of alice's project by mallory is still refused,
    // and so is writing over alice's reel from mallory's own project, before any work.
    submit(&cluster, "mallory", "pa", Some("job_m2"), &clips, &out("alice"), &["--force-restart"]);
    submit(&cluster, "mallory", "pm", Some("job_m3"), &clips, &out("alice"), &["--force-restart"]);
    let refused = failures_of(&mut cluster, "mallory", 5).await;
    for job in ["job_m2", "job_m3"] {
        let failure = refused.iter().find(|f| f["jobId"] == job).unwrap_or_else(|| panic!("{job}: {refused:#?}"));
        assert_eq!(failure["errorType"], "permission_denied", "{failure}");
        assert_eq!(failure["stage"], "validate", "{failure}");
        assert!(cluster
            .events_of(job)
            .await
            .iter()
            .all(|e| e.ty() != types::JOB_PROGRESS || data(e)["stage"] == "validate"));
    }
    assert_eq!(reel_bytes(&cluster, "reels/alice.mp4").await, original, "alice's reel changed");

    // A work message forged past validate (someone with publish rights on a work topic)
    // cannot make upload copy a control record (alice's project's owner) to an output.
    let mut spec = reel_testkit::fixtures::job_spec("job_forged");
    spec.project_id = "pm".into();
    spec.user_id = "mallory".into();
    spec.clip_paths = clips.clone();
    spec.output_path = out("stolen");
    let stitched = reel_events::payload::ReelStitched {
        job: spec,
        work_key: "control/projects/pa".into(),
        reel: reel_events::payload::ReelFacts {
            size_bytes: 10,
            duration_seconds: 1.0,
            crc32c: "AAAAAA==".into(),
            mode: reel_events::Mode::Copy,
        },
        skipped_clips: vec![],
        warnings: vec![],
    };
    let forged =
        envelope::build(types::REEL_STITCHED, "//mallory", "forged-1", "job_forged", chrono::Utc::now(), &stitched)
            .unwrap();
    reel_runtime::worker::publish_event(cluster.bus(), &cluster.names(), &forged).await.unwrap();
    let failed = cluster.wait_for(Some("job_forged"), types::JOB_FAILED, JOB_TIMEOUT).await;
    assert_eq!(data(&failed)["errorType"], "permission_denied", "{}", data(&failed));
    assert!(
        !cluster.download("reels/stolen.mp4", &cluster.dir().join("s.mp4")).await,
        "the control record was copied out"
    );

    // Quotas hold on the Pub/Sub path too (REEL_QUOTA_ACTIVE_JOBS=1 here): of two jobs of
    // bob's sent together, one runs and one is refused, retryable; sent again once the
    // first has ended, it runs.
    let b1 = submit(&cluster, "bob", "pb1", None, &clips, &out("b1"), &[]);
    let b2 = submit(&cluster, "bob", "pb2", None, &clips, &out("b2"), &[]);
    let quota = failures_of(&mut cluster, "bob", 1).await;
    assert_eq!(quota.len(), 1, "{quota:#?}");
    assert_eq!(quota[0]["errorType"], "quota_exceeded");
    assert_eq!(quota[0]["retryable"], true);
    let (ran, refused) = if quota[0]["jobId"] == b1.as_str() { (&b2, &b1) } else { (&b1, &b2) };
    cluster.wait_for(Some(ran), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let again = if refused == &b1 { ("pb1", "b1") } else { ("pb2", "b2") };
    let retried = submit(&cluster, "bob", again.0, None, &clips, &out(again.1), &[]);
    cluster.wait_for(Some(&retried), types::JOB_COMPLETED, JOB_TIMEOUT).await;

    // A storage notification from a bucket that is not an uploads bucket starts nothing:
    // it is dead-lettered with its reason for operators to see.
    let notification = reel_runtime::bus::Message {
        data: serde_json::to_vec(
            &serde_json::json!({"bucket": "elsewhere", "name": "manifests/pa/x.json", "generation": "1"}),
        )
        .unwrap(),
        attributes: [
            ("eventType", "OBJECT_FINALIZE"),
            ("bucketId", "elsewhere"),
            ("objectId", "manifests/pa/x.json"),
            ("objectGeneration", "1"),
            ("payloadFormat", "JSON_API_V1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ordering_key: String::new(),
    };
    cluster.bus().publish(&format!("{}gcs-notifications", cluster.prefix), notification).await.unwrap();
    let start = Instant::now();
    loop {
        let listed = cluster.reel(&["dlq", "list", "validate", "--json"]);
        let text = String::from_utf8_lossy(&listed.stdout).to_string();
        if text.contains("elsewhere") {
            assert!(text.contains("permission_denied"), "{text}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "not dead-lettered: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = cluster.events_of_any(types::JOB_PROGRESS).await;
    assert!(started.iter().all(|e| data(e)["projectId"] != "pa" || e.subject() == Some("job_alice")));
}

/// `(status, body as JSON)` of a request to reel-api as `token`, acting for `user` when given.
fn api(port: u16, method: &str, path: &str, token: &str, user: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(user) = user {
        headers.push(("x-reel-user", user));
    }
    let (status, text) = reel_testkit::http::request(port, method, path, &headers, body);
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Two users and a trusted caller (Phoenix's backend) through reel-api: Phoenix acts for
/// the user it names and sees that user's jobs, whichever way they were requested; other
/// users get 403 on the project and see none of its jobs; a caller that is not trusted
/// cannot name a user; the owner's reel is unchanged byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_api_a_trusted_caller_acts_for_its_user_and_nobody_else_does() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let port = reel_testkit::ports::free_port().unwrap();
    cluster.start_api(port);
    reel_testkit::http::wait_healthy(port);
    let clips = with_clips(&cluster, 2).await;
    let bucket = cluster.bucket.clone();
    let body = |name: &str, force: bool| {
        serde_json::json!({
            "clipPaths": clips, "outputPath": format!("gs://{bucket}/reels/{name}.mp4"),
            "orientation": "landscape", "compression": "optimized", "forceRestart": force
        })
        .to_string()
    };

    // Phoenix starts a reel for user_456; the job is user_456's.
    let (status, reply) =
        api(port, "POST", "/api/projects/p456/stitch", "tok-phoenix", Some("user_456"), &body("p456", false));
    assert_eq!(status, 202, "{reply}");
    let job = reply["jobId"].as_str().unwrap().to_string();
    let done = cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    assert_eq!(data(&done)["userId"], "user_456");
    let original = reel_bytes(&cluster, "reels/p456.mp4").await;

    // A caller that is not trusted cannot act for anyone else.
    let (status, _) = api(port, "GET", &format!("/api/jobs/{job}/status"), "tok-bob", Some("user_456"), "");
    assert_eq!(status, 403);
    // Other users: 403 on the project (forced or not), none of its jobs, 404 on the job.
    for force in [false, true] {
        let (status, reply) = api(port, "POST", "/api/projects/p456/stitch", "tok-alice", None, &body("p456", force));
        assert_eq!(status, 403, "{reply}");
    }
    let (status, reply) = api(port, "GET", "/api/projects/p456/jobs", "tok-alice", None, "");
    assert_eq!(status, 200);
    assert_eq!(reply["jobs"], serde_json::json!([]), "{reply}");
    assert_eq!(api(port, "GET", &format!("/api/jobs/{job}/status"), "tok-alice", None, "").0, 404);
    assert_eq!(api(port, "POST", &format!("/api/jobs/{job}/cancel"), "tok-alice", None, "").0, 404);
    // Phoenix acting for another user is that user, with that user's rights only.
    let (status, _) =
        api(port, "POST", "/api/projects/p456/stitch", "tok-phoenix", Some("user_789"), &body("p456", true));
    assert_eq!(status, 403);
    let (status, reply) = api(port, "GET", &format!("/api/jobs/{job}/status"), "tok-phoenix", Some("user_789"), "");
    assert_eq!(status, 404, "{reply}");

    // The owner, through Phoenix, sees the job; a job Phoenix put on Pub/Sub for the
    // same user is theirs on the API too.
    // (reel-api folds the log in batches: it may answer a moment after the event.)
    completed_on_the_api(port, &job).await;
    let queued = submit(&cluster, "user_456", "p456b", None, &clips, &format!("gs://{bucket}/reels/p456b.mp4"), &[]);
    cluster.wait_for(Some(&queued), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    completed_on_the_api(port, &queued).await;
    let (_, listed) = api(port, "GET", "/api/projects/p456/jobs", "tok-phoenix", Some("user_456"), "");
    assert!(listed["jobs"].as_array().unwrap().iter().any(|j| j["jobId"] == job.as_str()), "{listed}");
    assert_eq!(reel_bytes(&cluster, "reels/p456.mp4").await, original, "the owner's reel changed");
}

/// Wait until reel-api answers `job` completed to Phoenix acting for user_456.
async fn completed_on_the_api(port: u16, job: &str) {
    let start = Instant::now();
    loop {
        let (status, reply) = api(port, "GET", &format!("/api/jobs/{job}/status"), "tok-phoenix", Some("user_456"), "");
        if status == 200 && reply["status"] == "completed" {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{status} {reply}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
