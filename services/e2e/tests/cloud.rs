//! The pipeline on Pub/Sub and Cloud Storage (their emulators), each stage its own
//! program, as CONTRACT §2–4 and issue 3 describe.

use reel_events::{types, AttributesReader};
use reel_runtime::bus::Bus;
use reel_testkit::fixtures::{check_playable, make_clip};
use reel_testkit::Cluster;
use std::time::{Duration, Instant};

const JOB_TIMEOUT: Duration = Duration::from_secs(150);

async fn with_clips(cluster: &Cluster, n: usize, seconds: f64) -> Vec<String> {
    let mut paths = Vec::new();
    for i in 0..n {
        let local = cluster.dir().join(format!("clip {i}.mp4"));
        make_clip(&local, 320, 240, seconds);
        let key = format!("clips/clip {i}.mp4");
        cluster.upload(&local, &key).await;
        paths.push(format!("gs://{}/{key}", cluster.bucket));
    }
    paths
}

async fn assert_reel(cluster: &Cluster, key: &str, seconds: f64) {
    let local = cluster.dir().join(format!("out-{}.mp4", uuid::Uuid::new_v4().simple()));
    assert!(cluster.download(key, &local).await, "no reel at gs://{}/{key}", cluster.bucket);
    let (duration, video, audio) = check_playable(&local);
    assert_eq!((video, audio), (1, 1));
    assert!((duration - seconds).abs() <= 0.25, "duration {duration} != {seconds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_completes_with_one_trace_across_five_programs() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let clips = with_clips(&cluster, 3, 1.0).await;
    let output = format!("gs://{}/reels/out.mp4", cluster.bucket);
    let job = cluster.submit("p1", &clips, &output, &["--orientation", "landscape"]);
    let done = cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&done).unwrap();
    assert_eq!(data["outputPath"], output);
    assert_eq!(data["mode"], "copy");
    assert_eq!(data["userId"], "u1");
    assert_reel(&cluster, "reels/out.mp4", 3.0).await;
    // What it cost: every stage's deliveries, added up; the copy path moves next to no
    // bytes through the programs after download (which copies the clips in the bucket).
    let cost = &data["cost"];
    for field in ["cpuSeconds", "memoryGibSeconds", "storageOperations", "estimatedUsd"] {
        assert!(cost[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {data}");
    }
    assert!(cost["estimatedUsd"].as_f64().unwrap() < 0.01, "a 3 s reel costs less than a cent: {cost}");
    // The one line per job that terraform's log-based job metrics read, with every
    // field they read (the topology check keeps terraform to these fields).
    let finalize = cluster.programs.iter().find(|p| p.name == "finalize").unwrap().log_text();
    let ended: serde_json::Value = finalize
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == reel_runtime::telemetry::JOB_ENDED && v["job_id"] == job.as_str())
        .expect("finalize logged the job's end");
    for field in reel_runtime::telemetry::JOB_ENDED_FIELDS {
        assert!(!ended[field].is_null(), "{field} missing from {ended}");
    }
    assert_eq!((ended["status"].as_str(), ended["error_type"].as_str()), (Some("completed"), Some("none")));
    assert_eq!((ended["job_type"].as_str(), ended["video_count"].as_u64()), (Some("video_stitching"), Some(3)));
    assert!(ended["duration_seconds"].as_f64().unwrap() > 0.0 && ended["memory_usage_mb"].as_f64().unwrap() > 1.0);

    // The workspace is gone once the job is done.
    let store = cluster.emulators.store(&cluster.bucket).await;
    use reel_runtime::Store;
    let left = store.list(&format!("work/jobs/{job}/")).await.unwrap();
    assert!(left.is_empty(), "work files left: {left:?}");

    // Every stage logged the job in Cloud Logging's shape, under one trace id.
    let mut traces = std::collections::BTreeSet::new();
    for program in &cluster.programs {
        let lines: Vec<serde_json::Value> = program
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["logging.googleapis.com/labels"]["job_id"] == job.as_str())
            .collect();
        assert!(!lines.is_empty(), "{} logged nothing for the job", program.name);
        for line in &lines {
            assert!(line["severity"].is_string() && line["message"].is_string() && line["time"].is_string());
            assert_eq!(line["logging.googleapis.com/labels"]["stage"], program.name.as_str());
        }
        let with_trace: Vec<&str> = lines.iter().filter_map(|l| l["logging.googleapis.com/trace"].as_str()).collect();
        assert!(!with_trace.is_empty(), "{} logged no trace", program.name);
        traces.extend(with_trace.into_iter().map(String::from));
    }
    // validate's first lines come before it starts the trace; after that, one trace.
    let job_traces: Vec<&String> = traces.iter().filter(|t| t.contains("/traces/")).collect();
    assert_eq!(job_traces.len(), 1, "one job, one trace: {traces:?}");

    // The job's events carry it too, up to job.completed.
    assert!(reel_events::envelope::extension_str(&done, reel_events::envelope::TRACEPARENT).is_some());
}

/// The copy path on a workspace in a bucket moves no media through any program:
/// download has the service copy each clip into the workspace and probes its headers
/// with ranged reads; stitch reads the clips' headers the same way and composes the reel
/// in the bucket from a small header object and the clip objects (Cloud Storage
/// compose); upload has the service copy it to its output path. The three programs'
/// storage traffic goes through counting proxies; the reel is whole, plays for as long as its clips, and
/// carries the output metadata that says whose it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_path_composes_the_reel_in_the_bucket_without_moving_its_media() {
    use reel_testkit::proxy::{FaultyProxy, ProxyMode};
    let mut cluster = Cluster::start().await;
    let storage = cluster.emulators.storage_url();
    let (download, stitch, upload) = (
        FaultyProxy::start(&storage, ProxyMode::Forward).await.unwrap(),
        FaultyProxy::start(&storage, ProxyMode::Forward).await.unwrap(),
        FaultyProxy::start(&storage, ProxyMode::Forward).await.unwrap(),
    );
    for stage in ["validate", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    for (stage, proxy) in [("download", &download), ("stitch", &stitch), ("upload", &upload)] {
        let url = proxy.url();
        cluster.start_program_with_env(stage, &[("STORAGE_EMULATOR_HOST", url.as_str())]).unwrap();
    }
    let mut clips = Vec::new();
    for i in 0..4 {
        let local = cluster.dir().join(format!("big {i}.mp4"));
        make_clip(&local, 1280, 720, 3.0);
        let key = format!("clips/big {i}.mp4");
        cluster.upload(&local, &key).await;
        clips.push(format!("gs://{}/{key}", cluster.bucket));
    }
    let output = format!("gs://{}/reels/composed.mp4", cluster.bucket);
    let job = cluster.submit("pcompose", &clips, &output, &["--orientation", "landscape"]);
    let done = cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&done).unwrap();
    assert_eq!(data["mode"], "copy", "{data}");
    assert_eq!(data["warnings"].as_array().map_or(0, Vec::len), 0, "{data}");
    assert_reel(&cluster, "reels/composed.mp4", 12.0).await;
    let reel = data["sizeBytes"].as_u64().unwrap();
    for (program, proxy) in [("download", &download), ("stitch", &stitch), ("upload", &upload)] {
        let (sent, received) = proxy.bytes();
        eprintln!("{program}'s storage traffic: {sent} bytes out, {received} bytes in, for a {reel}-byte reel");
        assert!(received * 10 < reel, "{program} read {received} bytes of storage for a {reel}-byte reel");
        assert!(sent * 10 < reel, "{program} wrote {sent} bytes to storage for a {reel}-byte reel");
    }
    use reel_runtime::Store;
    let store = cluster.emulators.store(&cluster.bucket).await;
    let meta = store.head("reels/composed.mp4").await.unwrap().unwrap();
    assert_eq!(meta.metadata.get("reel-job").map(String::as_str), Some(job.as_str()), "{:?}", meta.metadata);
    assert_eq!(meta.metadata.get("reel-project").map(String::as_str), Some("pcompose"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_upload_starts_exactly_one_job() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let clips = with_clips(&cluster, 2, 1.0).await;
    let manifest = serde_json::json!({
        "projectId": "proj7", "userId": "u7", "clipPaths": clips,
        "outputPath": format!("gs://{}/reels/from-manifest.mp4", cluster.bucket),
        "orientation": "landscape", "compression": "small"
    });
    let local = cluster.dir().join("m.json");
    std::fs::write(&local, serde_json::to_vec(&manifest).unwrap()).unwrap();
    cluster.upload(&local, "manifests/proj7/req-1.json").await;
    let done = cluster.wait_for(None, types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let job = done.subject().unwrap().to_string();
    assert!(job.starts_with("job_"));
    assert_reel(&cluster, "reels/from-manifest.mp4", 2.0).await;

    // The same notification again (a duplicate delivery) starts nothing new.
    let notification = reel_runtime::bus::Message {
        data: serde_json::to_vec(&serde_json::json!({"bucket": cluster.bucket, "name": "manifests/proj7/req-1.json", "generation": generation(&cluster, "manifests/proj7/req-1.json").await})).unwrap(),
        attributes: [
            ("eventType", "OBJECT_FINALIZE".to_string()),
            ("bucketId", cluster.bucket.clone()),
            ("objectId", "manifests/proj7/req-1.json".to_string()),
            ("objectGeneration", generation(&cluster, "manifests/proj7/req-1.json").await),
            ("payloadFormat", "JSON_API_V1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        ordering_key: String::new(),
    };
    cluster.bus().publish(&format!("{}gcs-notifications", cluster.prefix), notification).await.unwrap();

    // A manifest that is not JSON fails clearly; one for another project is refused.
    std::fs::write(&local, b"{ this is not json").unwrap();
    cluster.upload(&local, "manifests/proj7/broken.json").await;
    let mut other = manifest.clone();
    other["projectId"] = "someone-else".into();
    std::fs::write(&local, serde_json::to_vec(&other).unwrap()).unwrap();
    cluster.upload(&local, "manifests/proj8/sneaky.json").await;

    let start = Instant::now();
    let mut failures = Vec::new();
    while start.elapsed() < Duration::from_secs(60) && failures.len() < 2 {
        failures = cluster_failures(&mut cluster).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let kinds: Vec<String> = failures.iter().map(|d| d["errorType"].as_str().unwrap().to_string()).collect();
    assert!(kinds.contains(&"invalid_request".to_string()), "{failures:?}");
    assert!(kinds.contains(&"permission_denied".to_string()), "{failures:?}");
    let completed = cluster.events_of(&job).await.iter().filter(|e| e.ty() == types::JOB_COMPLETED).count();
    assert_eq!(completed, 1, "the duplicate notification started the job again");
    assert!(
        cluster.programs[0].log_text().contains("already completed"),
        "validate did not see the duplicate notification"
    );
}

async fn generation(cluster: &Cluster, key: &str) -> String {
    use reel_runtime::Store;
    let store = cluster.emulators.store(&cluster.bucket).await;
    store.head(key).await.unwrap().unwrap().generation.to_string()
}

async fn cluster_failures(cluster: &mut Cluster) -> Vec<serde_json::Value> {
    cluster
        .events_of_any(types::JOB_FAILED)
        .await
        .iter()
        .map(|e| reel_events::envelope::data_json(e).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_in_other_languages_get_a_reel() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let clips = with_clips(&cluster, 2, 1.0).await;
    let topic = format!("{}stitch-requests", cluster.prefix);
    let host = cluster.emulators.pubsub_host();
    let project = cluster.emulators.project().to_string();

    // Python, standard library only, over the emulator's REST API: a bare JSON payload
    // with no CloudEvent attributes, as the simplest Phoenix client would send.
    let body = serde_json::json!({
        "jobId": "job_python1", "projectId": "py", "userId": "u", "clipPaths": clips,
        "outputPath": format!("gs://{}/reels/python.mp4", cluster.bucket),
        "orientation": "portrait", "compression": "optimized"
    });
    let script = format!(
        r#"
import base64, json, urllib.request
body = json.dumps(json.loads({body})).encode()
msg = {{"messages": [{{"data": base64.b64encode(body).decode()}}]}}
req = urllib.request.Request("http://{host}/v1/projects/{project}/topics/{topic}:publish",
    data=json.dumps(msg).encode(), headers={{"content-type": "application/json"}}, method="POST")
print(urllib.request.urlopen(req).read().decode())
"#,
        body = serde_json::to_string(&body.to_string()).unwrap(),
    );
    let out = std::process::Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "python publish: {}", String::from_utf8_lossy(&out.stderr));

    // And a structured-mode CloudEvent from Python too.
    let event = serde_json::json!({
        "specversion": "1.0", "id": "py-structured-1", "source": "//phoenix/python", "type": types::STITCH_REQUESTED,
        "subject": "job_python2", "datacontenttype": "application/json",
        "data": {"jobId": "job_python2", "projectId": "py2", "userId": "u", "clipPaths": clips,
                 "outputPath": format!("gs://{}/reels/python2.mp4", cluster.bucket), "orientation": "portrait", "compression": "optimized"}
    });
    let script = format!(
        r#"
import base64, json, urllib.request
body = json.dumps(json.loads({event})).encode()
msg = {{"messages": [{{"data": base64.b64encode(body).decode(), "attributes": {{"content-type": "application/cloudevents+json"}}}}]}}
req = urllib.request.Request("http://{host}/v1/projects/{project}/topics/{topic}:publish",
    data=json.dumps(msg).encode(), headers={{"content-type": "application/json"}}, method="POST")
print(urllib.request.urlopen(req).read().decode())
"#,
        event = serde_json::to_string(&event.to_string()).unwrap(),
    );
    let out = std::process::Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "python publish: {}", String::from_utf8_lossy(&out.stderr));

    cluster.wait_for(Some("job_python1"), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    cluster.wait_for(Some("job_python2"), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    assert_reel(&cluster, "reels/python.mp4", 2.0).await;
    assert_reel(&cluster, "reels/python2.mp4", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_one_stage_share_the_backlog() {
    // A program pulls only what it works on, so the second worker finds work while the
    // first is busy.
    let mut cluster = Cluster::start().await;
    for stage in ["validate", "download", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let clips = with_clips(&cluster, 2, 2.0).await;
    let mut jobs = Vec::new();
    for i in 0..4 {
        let output = format!("gs://{}/reels/shared-{i}.mp4", cluster.bucket);
        jobs.push(cluster.submit(&format!("proj{i}"), &clips, &output, &["--compression", "small"]));
    }
    // A backlog first: every job waits for stitch before any stitch worker runs.
    for job in &jobs {
        cluster.wait_for(Some(job), types::CLIPS_DOWNLOADED, JOB_TIMEOUT).await;
    }
    let a = cluster.start_program("stitch", &[]);
    let b = cluster.start_program("stitch", &[]);
    for job in &jobs {
        cluster.wait_for(Some(job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    }
    // Each job is a fan-out (one delivery) and one encode item per clip (two).
    let done = |n: usize| cluster.programs[n].log_text().matches("\"stage done\"").count();
    assert!(done(a) >= 1 && done(b) >= 1, "one worker did everything: {} vs {}", done(a), done(b));
    assert_eq!(done(a) + done(b), 4 * 3);
}

/// Fan-out encoding: a re-encode is one small delivery that publishes an encode item per
/// clip to `reel-encode`, and the items spread over the stitch programs there are; each
/// delivery encodes one clip, and exactly one of them joins the segments, composed in
/// the bucket. The reel plays for as long as its clips, and no delivery encoded more
/// than one clip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_encode_fans_out_one_clip_per_delivery_over_the_stitch_programs() {
    let mut cluster = Cluster::start().await;
    for stage in ["validate", "download", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let stitch = [cluster.start_program("stitch", &[]), cluster.start_program("stitch", &[])];
    cluster.wait_started(&stitch, Duration::from_secs(60)).await.unwrap();
    let mut clips = Vec::new();
    for (i, (w, h)) in [(320, 240), (240, 320), (320, 180), (180, 320)].into_iter().enumerate() {
        let local = cluster.dir().join(format!("shape {i}.mp4"));
        make_clip(&local, w, h, 2.0);
        let key = format!("clips/shape {i}.mp4");
        cluster.upload(&local, &key).await;
        clips.push(format!("gs://{}/{key}", cluster.bucket));
    }
    let output = format!("gs://{}/reels/fan-out.mp4", cluster.bucket);
    let job = cluster.submit("pfan", &clips, &output, &["--orientation", "landscape", "--compression", "small"]);
    let done = cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&done).unwrap();
    assert_eq!(data["mode"], "reencode", "{data}");
    assert_reel(&cluster, "reels/fan-out.mp4", 8.0).await;

    let events = cluster.events_of(&job).await;
    let items: std::collections::BTreeSet<String> =
        events.iter().filter(|e| e.ty() == types::CLIP_ENCODE).map(|e| e.id().to_string()).collect();
    assert_eq!(items.len(), 4, "one encode item per clip");
    let stitched = events
        .iter()
        .filter(|e| e.ty() == types::REEL_STITCHED)
        .map(|e| e.id())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(stitched.len(), 1, "one join");
    // Every encode item was a delivery of its own, and both programs took some.
    let encoded = |n: usize| cluster.programs[n].log_text().matches("\"clip encoded\"").count();
    assert_eq!(encoded(stitch[0]) + encoded(stitch[1]), 4, "each clip encoded once");
    assert!(encoded(stitch[0]) >= 1 && encoded(stitch[1]) >= 1, "one program encoded everything");
    for n in stitch {
        for line in cluster.programs[n].log_text().lines().filter(|l| l.contains("\"stage done\"")) {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let ms = record["elapsed_ms"].as_u64().unwrap_or(0);
            assert!(ms < 60_000, "a stitch delivery took {ms} ms: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_killed_mid_job_is_redelivered_and_the_job_completes_once() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let stitch = 2;
    let clips = with_clips(&cluster, 3, 3.0).await;
    let output = format!("gs://{}/reels/killed.mp4", cluster.bucket);
    let job = cluster.submit("pk", &clips, &output, &["--compression", "small", "--orientation", "landscape"]);
    wait_for_stage_progress(&mut cluster, &job, "stitch").await;
    // The encode is running: its ffmpeg must die with the stage, not go on as an orphan.
    let stage_pid = cluster.programs[stitch].pid();
    let start = Instant::now();
    let mut children = children_of(stage_pid);
    while children.is_empty() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        children = children_of(stage_pid);
    }
    assert!(!children.is_empty(), "stitch ran no ffmpeg");
    let killed_at = chrono::Utc::now();
    cluster.kill(stitch);
    let start = Instant::now();
    while children.iter().any(|pid| alive(*pid)) {
        assert!(start.elapsed() < Duration::from_secs(5), "ffmpeg {children:?} outlived its killed stage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.restart(stitch);
    // At the default settings the job is worked on again within 30 s of the kill: the
    // dead program held the message on a short lease (REEL_LEASE_SECONDS, 15), not for
    // the subscription's 120 s ack deadline.
    let wait = Duration::from_secs(30).saturating_sub(start.elapsed());
    wait_for_stage_progress_since(&mut cluster, &job, "stitch", Some(killed_at), wait).await;
    cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = cluster.events_of(&job).await;
    let completed: std::collections::BTreeSet<String> =
        events.iter().filter(|e| e.ty() == types::JOB_COMPLETED).map(|e| e.id().to_string()).collect();
    assert_eq!(completed.len(), 1, "more than one distinct job.completed");
    assert!(!events.iter().any(|e| e.ty() == types::JOB_FAILED));
    assert_reel(&cluster, "reels/killed.mp4", 9.0).await;
    use reel_runtime::Store;
    let store = cluster.emulators.store(&cluster.bucket).await;
    assert_eq!(store.list("reels/").await.unwrap().len(), 1);
}

/// The matrix's "insufficient memory → retry with higher memory": a stitch program that
/// dies without a word while it works (SIGKILL, what the OOM killer and Cloud Run's
/// memory limit do) does not get the job again at the same size. Its redelivery finds
/// the run that died and sends the job to the larger tier (`reel-stitch-large`, its own
/// program and subscription), which completes it; the job's status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stitch_that_runs_out_of_memory_is_retried_on_the_larger_tier() {
    let mut cluster = Cluster::start().await;
    for stage in ["validate", "download", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let standard = cluster.start_program_with_env("stitch", &[("REEL_LARGE_TIER", "true")]).unwrap();
    let large = cluster.start_program_with_env("stitch", &[("REEL_TIER", "large")]).unwrap();
    cluster.wait_started(&[standard, large], Duration::from_secs(60)).await.unwrap();
    let clips = with_clips(&cluster, 3, 3.0).await;
    let output = format!("gs://{}/reels/large-tier.mp4", cluster.bucket);
    let job = cluster.submit("plarge", &clips, &output, &["--compression", "small", "--orientation", "landscape"]);
    wait_for_stage_progress(&mut cluster, &job, "stitch").await;
    // The standard tier dies mid-work, as out of memory; Cloud Run starts another.
    assert!(!cluster.programs[large].log_text().contains(&job), "the large tier took the job before any failure");
    cluster.kill(standard);
    let again = cluster.start_program_with_env("stitch", &[("REEL_LARGE_TIER", "true")]).unwrap();
    cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    assert_reel(&cluster, "reels/large-tier.mp4", 9.0).await;
    // The larger tier stitched it; the restarted standard program only passed it on.
    let large_log = cluster.programs[large].log_text();
    assert!(large_log.contains(&job) && large_log.contains("\"stage done\""), "the large tier did not stitch it");
    assert!(cluster.programs[again].log_text().contains("job sent to the larger tier"));
    let events = cluster.events_of(&job).await;
    let warned = events.iter().any(|e| {
        reel_events::envelope::data_json(e)
            .is_ok_and(|d| d["warnings"].to_string().contains("retried on the larger tier"))
    });
    assert!(warned, "no event of the job says it moved to the larger tier");
    assert!(!events.iter().any(|e| e.ty() == types::JOB_FAILED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_exits_cleanly_and_the_job_still_completes() {
    let mut cluster = Cluster::start().await;
    for stage in ["validate", "download"] {
        cluster.start_program(stage, &[]);
    }
    let stitch = cluster.start_program("stitch", &["--grace", "1"]);
    for stage in ["upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let clips = with_clips(&cluster, 3, 3.0).await;
    let output = format!("gs://{}/reels/termed.mp4", cluster.bucket);
    let job = cluster.submit("pt", &clips, &output, &["--compression", "small", "--orientation", "landscape"]);
    wait_for_stage_progress(&mut cluster, &job, "stitch").await;
    let sent = Instant::now();
    cluster.signal(stitch, libc::SIGTERM);
    let status = loop {
        if let Some(status) = cluster.programs[stitch].child.try_wait().unwrap() {
            break status;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "stitch did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(sent.elapsed() < Duration::from_secs(6), "took {:?}", sent.elapsed());
    let log = cluster.programs[stitch].log_text();
    assert!(log.contains("SIGTERM"), "{log}");
    // No scratch files left by the stopped stage.
    let tmp = cluster.dir().join("tmp");
    let leftovers: Vec<_> =
        std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
    cluster.start_program("stitch", &[]);
    cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    assert_reel(&cluster, "reels/termed.mp4", 9.0).await;
}

/// State and parent of a process, from /proc (`None` once it is gone).
fn proc_stat(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces, so read after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.parse().ok()?))
}

/// Whether `pid` runs (a zombie waits only for its reaper).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != "Z")
}

/// The pids of the live child processes of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    pids.filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(state, ppid)| ppid == parent && state != "Z"))
        .collect()
}

async fn wait_for_stage_progress(cluster: &mut Cluster, job: &str, stage: &str) {
    wait_for_stage_progress_since(cluster, job, stage, None, Duration::from_secs(90)).await;
}

/// Wait up to `within` for a `job.progress` of `stage` on `job`, stamped after `since`.
async fn wait_for_stage_progress_since(
    cluster: &mut Cluster,
    job: &str,
    stage: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
    within: Duration,
) {
    let start = Instant::now();
    loop {
        let events = cluster.events_of(job).await;
        if events.iter().any(|e| {
            e.ty() == types::JOB_PROGRESS
                && since.is_none_or(|t| e.time().is_some_and(|at| *at > t))
                && reel_events::envelope::data_json(e).map(|d| d["stage"] == stage).unwrap_or(false)
        }) {
            return;
        }
        assert!(start.elapsed() < within, "no {stage} progress of {job} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// reel-generate on the cluster, asking the local Veo server.
fn start_generate(cluster: &mut Cluster, veo: &reel_testkit::veo::VeoServer) {
    let url = veo.url();
    let env = [("REEL_GENERATOR", "veo"), ("REEL_VEO_ENDPOINT", url.as_str()), ("REEL_VEO_POLL_MILLIS", "200")];
    cluster.start_program_with_env("generate", &env).unwrap();
}

/// Publish a `generate.requested` as Phoenix would (to the log and to generate's topic):
/// 4 s clips under `generated/{job}/`, stitched into the bucket's `reel` key if given.
async fn request_generation(cluster: &Cluster, job: &str, prompts: &[&str], reel: Option<&str>) {
    use reel_events::payload::{GenerateRequested, GenerateStitch};
    let request = GenerateRequested {
        job_id: Some(job.into()),
        project_id: "p-gen".into(),
        user_id: "u1".into(),
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        clip_seconds: 4,
        orientation: reel_events::Orientation::Landscape,
        output_prefix: format!("gs://{}/generated/{job}/", cluster.bucket),
        stitch: reel.map(|key| GenerateStitch {
            output_path: format!("gs://{}/{key}", cluster.bucket),
            compression: reel_events::Compression::Optimized,
        }),
        retry_attempt: None,
        force_restart: None,
    };
    let id = format!("gen-{job}");
    let event = reel_events::envelope::build(types::GENERATE_REQUESTED, "//e2e", id, job, chrono::Utc::now(), &request)
        .unwrap();
    reel_runtime::worker::publish_event(cluster.bus(), &cluster.names(), &event).await.unwrap();
}

/// A generation job cancelled while a prompt is still generating ends `cancelled`: the
/// item stops polling Veo, and no reel is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_job_cancelled_mid_way_ends_cancelled_and_asks_for_no_reel() {
    let mut cluster = Cluster::start().await;
    let veo = reel_testkit::veo::VeoServer::start().await.unwrap();
    start_generate(&mut cluster, &veo);
    let job = "gen_cancel";
    request_generation(&cluster, job, &["quick", "endless [slow:100000]"], Some("reels/never.mp4")).await;
    // Both prompts started generating.
    let started = Instant::now();
    while veo.requests_to("predictLongRunning").len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the prompts never reached Veo");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = cluster.reel(&["cancel", job]);
    assert!(out.status.success(), "reel cancel: {}", String::from_utf8_lossy(&out.stderr));
    cluster.wait_for(Some(job), types::JOB_CANCELLED, JOB_TIMEOUT).await;
    // Polling stopped with the item.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let polls = veo.requests_to("fetchPredictOperation").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(veo.requests_to("fetchPredictOperation").len(), polls, "still polling Veo after the cancel");
    let events = cluster.events_of(job).await;
    assert!(!events.iter().any(|e| e.ty() == types::JOB_COMPLETED), "a cancelled job completed");
    assert!(cluster.events_of(&format!("{job}-reel")).await.is_empty(), "a reel was asked for");
}

/// Issue 16's "done when" on the emulators: a `generate.requested` with `stitch` set goes
/// from prompts to a playable reel in the bucket, through the real Veo client against the
/// local Veo server (which puts a real clip where Veo would), with exactly one
/// `job.completed` for each of the two jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_become_a_playable_reel_in_the_bucket_with_one_completion_for_each_job() {
    use reel_testkit::veo::{VeoOptions, VeoServer};
    let mut cluster = Cluster::start().await;
    let store = std::sync::Arc::new(cluster.emulators.store(&cluster.bucket).await);
    let sample = cluster.dir().join("veo-sample.mp4");
    make_clip(&sample, 320, 240, 4.0);
    let (hook_store, hook_sample, prefix) = (store.clone(), sample.clone(), format!("gs://{}/", cluster.bucket));
    let options = VeoOptions::default().with_on_done(move |uri: &str, _prompt: &str| {
        let key = uri.strip_prefix(&prefix).expect("Veo writes into the request's bucket");
        let put =
            reel_runtime::store::put_file(hook_store.as_ref(), key, &hook_sample, reel_runtime::PutMode::Overwrite);
        tokio::runtime::Handle::current().block_on(put).expect("the generated clip lands in the bucket");
    });
    let veo = VeoServer::start_with(options).await.unwrap();
    cluster.start_all();
    start_generate(&mut cluster, &veo);
    let job = "gen_e2e";
    let prompts = ["a lighthouse at dawn", "gulls [refuse]", "waves on rocks", "a red sunset"];
    request_generation(&cluster, job, &prompts, Some("reels/generated.mp4")).await;

    let generated = cluster.wait_for(Some(job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&generated).unwrap();
    assert_eq!(data["type"], "video_generation");
    let clips = data["clipPaths"].as_array().expect("clipPaths").clone();
    assert_eq!(clips.len(), 3, "the refused prompt is left out: {data}");
    assert_eq!(
        data["skippedClips"][0]["path"].as_str().map(|p| p.starts_with("prompt 2: gulls")),
        Some(true),
        "{data}"
    );
    let reel_job = format!("{job}-reel");
    let reel = cluster.wait_for(Some(&reel_job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let reel_data = reel_events::envelope::data_json(&reel).unwrap();
    assert_eq!(reel_data["type"], "video_stitching");
    assert_reel(&cluster, "reels/generated.mp4", 12.0).await;
    // One job.completed each, however many deliveries there were.
    for id in [job, reel_job.as_str()] {
        let completions: std::collections::BTreeSet<String> = cluster
            .events_of(id)
            .await
            .iter()
            .filter(|e| e.ty() == types::JOB_COMPLETED)
            .map(|e| e.id().to_string())
            .collect();
        assert_eq!(completions.len(), 1, "{id}: {completions:?}");
    }
    assert_eq!(veo.requests_to("predictLongRunning").len(), 4, "one generation per prompt");
}
