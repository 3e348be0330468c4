//! Sample values for tests: names, a subscription, a job, clips.
//!
//! Each sample is a plain value; a test that needs something else says so with struct
//! update syntax, so the difference is what the test reads:
//!
//! ```
//! use reel_events::payload::JobSpec;
//! let job = JobSpec { output_path: "/elsewhere.mp4".into(), ..reel_testkit::fixtures::job_spec("job_1") };
//! assert_eq!(job.clip_paths.len(), 2);
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use reel_events::payload::{JobSpec, JobValidated};
use reel_events::{envelope, types, Compression, Event, Orientation};
use reel_runtime::topology::SubscriptionSpec;

/// A unique name for a test resource (topic, subscription, bucket, key prefix):
/// `{prefix}-{pid}-{counter}-{nanos}`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// A subscription of a test's own on `topic` (the event log, a test topic): 30 s ack
/// deadline, no dead-letter topic, 5 delivery attempts, backoff 1–10 s, one hour of
/// retention, no exactly-once.
pub fn subscription(name: &str, topic: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.into(),
        topic: topic.into(),
        ack_deadline: Duration::from_secs(30),
        dead_letter_topic: None,
        max_delivery_attempts: 5,
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
        message_retention: Duration::from_secs(3600),
        exactly_once: false,
    }
}

/// A validated job: project `p1`, user `u1`, clips `/a.mp4` and `/b.mp4`, output
/// `/o.mp4`, portrait, optimized, first attempt, accepted now, deadline in 5 minutes.
pub fn job_spec(job_id: &str) -> JobSpec {
    let now = Utc::now();
    JobSpec {
        job_id: job_id.into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        clip_paths: vec!["/a.mp4".into(), "/b.mp4".into()],
        output_path: "/o.mp4".into(),
        orientation: Orientation::Portrait,
        compression: Compression::Optimized,
        retry_attempt: 0,
        force_restart: false,
        accepted_at: now,
        deadline: now + chrono::Duration::minutes(5),
        timeout_resumes: 0,
    }
}

/// The `job.validated` of `job` (source `//test`, id `v-{jobId}`), as download receives it.
pub fn job_validated(job: &JobSpec) -> Event {
    let data = JobValidated { job: job.clone() };
    envelope::build(types::JOB_VALIDATED, "//test", format!("v-{}", job.job_id), &job.job_id, Utc::now(), &data)
        .expect("build job.validated")
}

/// Make a small h264/aac clip (`w`×`h`, 30 fps, a 440 Hz tone) with ffmpeg.
pub fn make_clip(path: &Path, w: u32, h: u32, seconds: f64) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &format!("testsrc2=size={w}x{h}:rate=30:duration={seconds}")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency=440:sample_rate=48000:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2"])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not make {}", path.display());
}

/// Overwrite the second half of a clip's media data with noise (a damaged copy): the
/// header is intact and the file whole, so the probe passes, and the clip breaks
/// mid-stream.
pub fn damage_media(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mdat = bytes.windows(4).position(|w| w == b"mdat").expect("an mdat box");
    let from = mdat + (bytes.len() - mdat) / 2;
    let mut x: u32 = 0x2545_f491;
    for b in &mut bytes[from..] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(path, &bytes).unwrap();
}

/// ffprobe: (duration, video streams, audio streams); and `ffmpeg -v error … -f null -`
/// is silent (the file decodes without errors).
pub fn check_playable(path: &Path) -> (f64, usize, usize) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-show_format", "-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let streams = v["streams"].as_array().expect("streams");
    let count = |t: &str| streams.iter().filter(|s| s["codec_type"] == t).count();
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(decode.stderr.is_empty(), "decode errors: {}", String::from_utf8_lossy(&decode.stderr));
    let duration = v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("duration");
    (duration, count("video"), count("audio"))
}
