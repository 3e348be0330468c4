//! Push mode, Cloud Run Jobs mode, and the operator's dead-letter commands, on the
//! emulators.

use base64::Engine;
use reel_events::payload::StitchRequested;
use reel_events::{binding, envelope, types, AttributesReader, Compression, Orientation};
use reel_runtime::bus::Bus;
use reel_testkit::fixtures::make_clip;
use reel_testkit::ports::free_port;
use reel_testkit::Cluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 POST; returns the status code.
fn post(port: u16, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut request =
        format!("POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn request(cluster: &Cluster, job: &str, clips: &[String]) -> StitchRequested {
    StitchRequested {
        job_id: Some(job.into()),
        project_id: format!("proj-{job}"),
        user_id: "u".into(),
        clip_paths: clips.to_vec(),
        output_path: format!("gs://{}/reels/{job}.mp4", cluster.bucket),
        orientation: Orientation::Landscape,
        compression: Compression::Optimized,
        retry_attempt: None,
        force_restart: None,
    }
}

async fn clips(cluster: &Cluster, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let local = cluster.dir().join(format!("c{i}.mp4"));
        make_clip(&local, 320, 240, 1.0);
        cluster.upload(&local, &format!("clips/c{i}.mp4")).await;
        out.push(format!("gs://{}/clips/c{i}.mp4", cluster.bucket));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mode_accepts_pubsub_envelopes_and_eventarc_events() {
    let mut cluster = Cluster::start().await;
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    cluster.start_program("validate", &["--listen", &listen]);
    assert!(reel_testkit::ports::wait_until_open(port, Duration::from_secs(20)), "port {port} never opened");
    let clips = clips(&cluster, 2).await;

    // A Pub/Sub push envelope carrying a binary-mode event.
    let event = envelope::build(
        types::STITCH_REQUESTED,
        "//test",
        "push-1",
        "job_push1",
        chrono::Utc::now(),
        &request(&cluster, "job_push1", &clips),
    )
    .unwrap();
    let message = binding::encode_binary(&event);
    let envelope = serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(&message.data),
            "attributes": message.attributes,
            "messageId": "m-1",
        },
        "subscription": format!("projects/{}/subscriptions/{}validate", cluster.emulators.project(), cluster.prefix),
        "deliveryAttempt": 1,
    });
    assert_eq!(post(port, &[("content-type", "application/json")], &serde_json::to_vec(&envelope).unwrap()), 204);
    cluster.wait_for(Some("job_push1"), types::JOB_VALIDATED, Duration::from_secs(30)).await;

    // An Eventarc (HTTP binary mode) CloudEvent.
    let data = serde_json::to_vec(&request(&cluster, "job_push2", &clips)).unwrap();
    let status = post(
        port,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "eventarc-1"),
            ("ce-source", "//eventarc/test"),
            ("ce-type", types::STITCH_REQUESTED),
            ("ce-subject", "job_push2"),
            ("content-type", "application/json"),
        ],
        &data,
    );
    assert_eq!(status, 204);
    cluster.wait_for(Some("job_push2"), types::JOB_VALIDATED, Duration::from_secs(30)).await;

    // A request that fails validation is acknowledged (not retried) and fails the job.
    let mut bad = request(&cluster, "job_push3", &clips[..1]);
    bad.clip_paths.truncate(1);
    let body = serde_json::to_vec(&bad).unwrap();
    let status = post(
        port,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "eventarc-2"),
            ("ce-source", "//t"),
            ("ce-type", types::STITCH_REQUESTED),
            ("content-type", "application/json"),
        ],
        &body,
    );
    assert_eq!(status, 204);
    let failed = cluster.wait_for(Some("job_push3"), types::JOB_FAILED, Duration::from_secs(30)).await;
    assert_eq!(envelope::data_json(&failed).unwrap()["errorType"], "insufficient_clips");

    // Garbage can never be processed: it is dead-lettered as it came, with the reason,
    // and acknowledged (not pushed again and again), and the server lives on.
    assert_eq!(post(port, &[("content-type", "application/json")], b"{not json"), 204);
    assert!(cluster.programs[0].child.try_wait().unwrap().is_none(), "the push server died");
    let dead = names(&cluster).dead_letter_subscription(reel_events::Stage::Validate);
    let letters = cluster.bus().receive(&dead, 10, Duration::from_secs(10)).await.unwrap();
    let garbage = letters.iter().find(|d| d.message.data == b"{not json").expect("the garbage was dead-lettered");
    assert!(garbage.message.attributes.contains_key(reel_runtime::worker::dead_letter_attrs::REASON));

    // SIGTERM: the server exits cleanly.
    cluster.signal(0, libc::SIGTERM);
    let start = Instant::now();
    loop {
        if let Some(status) = cluster.programs[0].child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_runs_the_backlog_then_stops() {
    let mut cluster = Cluster::start().await;
    let clips = clips(&cluster, 2).await;
    let event = envelope::build(
        types::STITCH_REQUESTED,
        "//test",
        "idle-1",
        "job_idle",
        chrono::Utc::now(),
        &request(&cluster, "job_idle", &clips),
    )
    .unwrap();
    reel_runtime::worker::publish_event(cluster.bus(), &reel_runtime::topology::Names::new(&cluster.prefix), &event)
        .await
        .unwrap();
    let n = cluster.start_program("validate", &["--exit-when-idle", "3"]);
    cluster.wait_for(Some("job_idle"), types::JOB_VALIDATED, Duration::from_secs(30)).await;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = cluster.programs[n].child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "reel-validate --exit-when-idle did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    assert!(cluster.programs[n].log_text().contains("idle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_purged_without_loss() {
    let mut cluster = Cluster::start().await;
    let clips = clips(&cluster, 2).await;
    let names = reel_runtime::topology::Names::new(&cluster.prefix);
    let dlq = names.dead_letter_topic(reel_events::Stage::Validate);

    // Three dead letters as a stage would leave them: two jobs and a poison message.
    for job in ["job_dl1", "job_dl2"] {
        let event = envelope::build(
            types::STITCH_REQUESTED,
            "//test",
            format!("dl-{job}"),
            job,
            chrono::Utc::now(),
            &request(&cluster, job, &clips),
        )
        .unwrap();
        let mut m = binding::encode_binary(&event);
        m.attributes.insert("reel-dl-stage".into(), "validate".into());
        m.attributes.insert("reel-dl-error-type".into(), "internal".into());
        m.attributes.insert("reel-dl-attempts".into(), "4".into());
        m.attributes.insert("reel-dl-reason".into(), "storage unavailable".into());
        cluster.bus().publish(&dlq, m).await.unwrap();
    }
    let mut poison = reel_runtime::bus::Message { data: b"garbage".to_vec(), ..Default::default() };
    poison.attributes.insert("reel-dl-reason".into(), "not a CloudEvent".into());
    poison.attributes.insert("reel-dl-error-type".into(), "invalid_request".into());
    cluster.bus().publish(&dlq, poison).await.unwrap();

    // list: all three, nothing consumed.
    for _ in 0..2 {
        let out = cluster.reel(&["dlq", "list", "validate", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.len(), 3, "{listed:?}");
        let dl1 = listed.iter().find(|l| l["jobId"] == "job_dl1").unwrap();
        assert_eq!(dl1["errorType"], "internal");
        assert_eq!(dl1["attempts"], "4");
        assert_eq!(dl1["reason"], "storage unavailable");
        assert_eq!(dl1["eventType"], types::STITCH_REQUESTED);
    }

    // dry run changes nothing.
    let out = cluster.reel(&["dlq", "replay", "validate", "--job", "job_dl1", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("would replay job_dl1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // replay one job: it runs to the end; the others stay.
    for stage in ["validate", "download", "stitch", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let out = cluster.reel(&["dlq", "replay", "validate", "--job", "job_dl1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed job_dl1"));
    cluster.wait_for(Some("job_dl1"), types::JOB_COMPLETED, Duration::from_secs(120)).await;
    let out = cluster.reel(&["dlq", "list", "validate", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");

    // purge the poison; the other job's dead letter is still there.
    let out = cluster.reel(&["dlq", "purge", "validate", "--job", "-"]);
    assert!(out.status.success());
    let out = cluster.reel(&["dlq", "list", "validate", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["jobId"], "job_dl2");

    // A replay of a job that already completed is skipped, and reported.
    let event = envelope::build(
        types::STITCH_REQUESTED,
        "//test",
        "dl-again",
        "job_dl1",
        chrono::Utc::now(),
        &request(&cluster, "job_dl1", &clips),
    )
    .unwrap();
    cluster.bus().publish(&dlq, binding::encode_binary(&event)).await.unwrap();
    let out = cluster.reel(&["dlq", "replay", "validate", "--job", "job_dl1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("skipped job_dl1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_half_way_loses_nothing_and_duplicates_nothing() {
    let mut cluster = Cluster::start().await;
    let clips = clips(&cluster, 2).await;
    let names = reel_runtime::topology::Names::new(&cluster.prefix);
    let dlq = names.dead_letter_topic(reel_events::Stage::Validate);
    let jobs: Vec<String> = (0..8).map(|i| format!("job_half{i}")).collect();
    for job in &jobs {
        let event = envelope::build(
            types::STITCH_REQUESTED,
            "//test",
            format!("h-{job}"),
            job,
            chrono::Utc::now(),
            &request(&cluster, job, &clips),
        )
        .unwrap();
        cluster.bus().publish(&dlq, binding::encode_binary(&event)).await.unwrap();
    }
    cluster.start_all();
    // Kill the replay as soon as it has republished something.
    let mut child = std::process::Command::new(reel_testkit::cluster::bin_dir().join("reel"))
        .args(["dlq", "replay", "validate"])
        .envs(&cluster.env)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("replayed job_half") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the replay ended before replaying anything: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // What it leased comes back after the dead-letter subscription's ack deadline (60 s
    // at the default settings), so a second replay then finishes the work.
    let topology = reel_runtime::topology::Topology::standard(&cluster.prefix);
    let ack_deadline =
        topology.subscription(&names.dead_letter_subscription(reel_events::Stage::Validate)).unwrap().ack_deadline;
    tokio::time::sleep(ack_deadline + Duration::from_secs(5)).await;
    let out = cluster.reel(&["dlq", "replay", "validate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for job in &jobs {
        cluster.wait_for(Some(job), types::JOB_COMPLETED, Duration::from_secs(150)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for job in &jobs {
        let completed: std::collections::BTreeSet<String> = cluster
            .events_of(job)
            .await
            .iter()
            .filter(|e| e.ty() == types::JOB_COMPLETED)
            .map(|e| e.id().to_string())
            .collect();
        assert_eq!(completed.len(), 1, "{job} completed {} times", completed.len());
    }
    let out = cluster.reel(&["dlq", "list", "validate", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.is_empty(), "left in the queue: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_mid_job_resumes_without_fetching_clips_again() {
    let mut cluster = Cluster::start().await;
    // Clips large enough that fetching them takes a moment each.
    let mut paths = Vec::new();
    for i in 0..6 {
        let local = cluster.dir().join(format!("big{i}.mp4"));
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30:duration=4"])
            .args(["-f", "lavfi", "-i", "sine=duration=4", "-vf", "noise=alls=40:allf=t"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "20M", "-pix_fmt", "yuv420p", "-c:a", "aac"])
            .arg(&local)
            .status()
            .unwrap();
        assert!(status.success());
        cluster.upload(&local, &format!("clips/big{i}.mp4")).await;
        paths.push(format!("gs://{}/clips/big{i}.mp4", cluster.bucket));
    }
    for stage in ["validate", "stitch", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let download = cluster.start_program("download", &[]);
    let mut req = request(&cluster, "job_resume", &paths);
    req.compression = Compression::Optimized;
    let event =
        envelope::build(types::STITCH_REQUESTED, "//test", "resume-1", "job_resume", chrono::Utc::now(), &req).unwrap();
    reel_runtime::worker::publish_event(cluster.bus(), &names(&cluster), &event).await.unwrap();
    // Kill download once some, not all, clips are in the workspace.
    let start = Instant::now();
    loop {
        let fetched = cluster.programs[download].log_text().matches("\"clip fetched\"").count();
        if fetched >= 2 {
            assert!(fetched < 6, "download finished before it could be killed");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(download);
    let before = cluster.programs[download].log_text().matches("\"clip fetched\"").count();
    let again = cluster.restart(download);
    cluster.wait_for(Some("job_resume"), types::JOB_COMPLETED, Duration::from_secs(150)).await;
    let log = cluster.programs[again].log_text();
    let reused = log.matches("reusing it").count();
    let fetched = log.matches("\"clip fetched\"").count();
    assert!(reused >= before, "only {reused} clips reused of the {before} fetched before the kill");
    assert_eq!(reused + fetched, 6, "{log}");
}

fn names(cluster: &Cluster) -> reel_runtime::topology::Names {
    cluster.names()
}
