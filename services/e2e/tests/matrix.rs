//! The original error matrix, provoked on the emulators through the real clients:
//! a network that resets connections, a storage permission the program lacks, and
//! corrupt clips. (Out of memory, a full disk and a job timeout have theirs in
//! `cloud.rs` and `replay.rs`; docs/FAILURES.md lists every row with its test.)

use std::time::{Duration, Instant};

use reel_events::{types, AttributesReader};
use reel_testkit::fixtures::{check_playable, damage_media, make_clip};
use reel_testkit::proxy::{FaultyProxy, ProxyMode};
use reel_testkit::Cluster;

const JOB_TIMEOUT: Duration = Duration::from_secs(150);

async fn upload_clip(cluster: &Cluster, name: &str, seconds: f64, spoil: impl FnOnce(&std::path::Path)) -> String {
    let local = cluster.dir().join(name);
    make_clip(&local, 320, 240, seconds);
    spoil(&local);
    let key = format!("clips/{name}");
    cluster.upload(&local, &key).await;
    format!("gs://{}/{key}", cluster.bucket)
}

/// A job of two good 1 s clips in `project`, its reel at `reels/{project}.mp4`.
async fn two_clip_job(cluster: &Cluster, project: &str) -> String {
    let a = upload_clip(cluster, "a.mp4", 1.0, |_| {}).await;
    let b = upload_clip(cluster, "b.mp4", 1.0, |_| {}).await;
    cluster.submit(project, &[a, b], &format!("gs://{}/reels/{project}.mp4", cluster.bucket), &[])
}

/// The cluster with download's storage traffic through `proxy` (the others direct).
async fn cluster_with_download_behind(proxy_mode: ProxyMode) -> (Cluster, FaultyProxy, usize) {
    let mut cluster = Cluster::start().await;
    let proxy = FaultyProxy::start(&cluster.emulators.storage_url(), proxy_mode).await.expect("start the proxy");
    for stage in ["validate", "stitch", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let url = proxy.url();
    let download = cluster.start_program_with_env("download", &[("STORAGE_EMULATOR_HOST", url.as_str())]).unwrap();
    (cluster, proxy, download)
}

/// "Network timeout → retry with exponential backoff; the user sees nothing": download's
/// connections to Cloud Storage are reset for a while; its deliveries fail transiently
/// and come back after the subscription's backoff; once the network is back the job
/// completes with no error and no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_failure_is_retried_and_the_user_sees_nothing() {
    let (mut cluster, proxy, download) = cluster_with_download_behind(ProxyMode::Reset).await;
    let job = two_clip_job(&cluster, "pnet").await;
    // The network is down until download has met it and said it will retry.
    let start = Instant::now();
    while !cluster.programs[download].log_text().contains("transient failure; will retry") {
        assert!(start.elapsed() < Duration::from_secs(60), "download never met the reset connections");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.connections().1 > 0);
    proxy.set(ProxyMode::Forward);
    let done = cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&done).unwrap();
    assert_eq!(data["warnings"].as_array().map_or(0, Vec::len), 0, "the user sees nothing: {data}");
    let events = cluster.events_of(&job).await;
    assert!(!events.iter().any(|e| e.ty() == types::JOB_FAILED), "no job.failed");
    // It was a retry: a later delivery of the same download did the work.
    let log = cluster.programs[download].log_text();
    assert!(log.contains("\"delivery_attempt\":2"), "no second delivery in download's log");
    let local = cluster.dir().join("net-out.mp4");
    assert!(cluster.download("reels/pnet.mp4", &local).await);
    assert!((check_playable(&local).0 - 2.0).abs() < 0.3);
}

/// "Storage permission error (401/403) → fail fast; the user sees the message": every
/// Cloud Storage call of download is answered 403, as for a service account without the
/// role. The job fails at once (first delivery, no retry) with `permission_denied` and
/// Cloud Storage's message, not retryable, and nothing is dead-lettered for a replay
/// that could not help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_permission_error_fails_fast_with_its_message() {
    let (mut cluster, proxy, _download) = cluster_with_download_behind(ProxyMode::Forbid).await;
    let job = two_clip_job(&cluster, "pdenied").await;
    let failed = cluster.wait_for(Some(&job), types::JOB_FAILED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&failed).unwrap();
    assert_eq!(data["errorType"], "permission_denied", "{data}");
    assert_eq!(data["stage"], "download", "{data}");
    assert_eq!(data["retryable"], false, "{data}");
    assert_eq!(data["attempts"], 1, "fail fast: {data}");
    let message = data["message"].as_str().unwrap();
    assert!(message.contains("403") || message.contains("access"), "the message says why: {message}");
    assert!(proxy.connections().2 > 0);
}

/// "Corrupt video file → skip it, continue with the others; the user sees a warning":
/// among four clips, one is not a video at all (download's probe refuses it) and one
/// breaks off mid-stream (its header is fine; stitch's decode fails half-way). Both are
/// left out and named; the reel is the two good clips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_clips_are_skipped_with_a_warning_and_the_reel_is_made() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let good1 = upload_clip(&cluster, "good 1.mp4", 1.0, |_| {}).await;
    let garbage = upload_clip(&cluster, "garbage.mp4", 1.0, |p| {
        std::fs::write(p, b"this is not a video, whatever its name says".repeat(100)).unwrap()
    })
    .await;
    let broken = upload_clip(&cluster, "broken.mp4", 2.0, damage_media).await;
    let good2 = upload_clip(&cluster, "good 2.mp4", 1.0, |_| {}).await;
    let clips = [good1, garbage.clone(), broken.clone(), good2];
    let output = format!("gs://{}/reels/corrupt.mp4", cluster.bucket);
    // A re-encode: every clip is decoded to the end, so the mid-stream break shows.
    let job = cluster.submit("pcorrupt", &clips, &output, &["--compression", "small", "--orientation", "landscape"]);
    let done = cluster.wait_for(Some(&job), types::JOB_COMPLETED, JOB_TIMEOUT).await;
    let data = reel_events::envelope::data_json(&done).unwrap();
    let skipped: Vec<String> = data["skippedClips"]
        .as_array()
        .unwrap_or_else(|| panic!("no skippedClips: {data}"))
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(skipped.len(), 2, "{data}");
    assert!(skipped.contains(&garbage) && skipped.contains(&broken), "{skipped:?}");
    let warnings = data["warnings"].to_string();
    assert!(warnings.contains("garbage.mp4") && warnings.contains("broken.mp4"), "{warnings}");
    let local = cluster.dir().join("corrupt-out.mp4");
    assert!(cluster.download("reels/corrupt.mp4", &local).await);
    let (duration, video, audio) = check_playable(&local);
    assert!((duration - 2.0).abs() < 0.3, "the two good clips: {duration}");
    assert_eq!((video, audio), (1, 1));
}
