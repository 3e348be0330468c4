//! Download re-checks the trust boundary: a `job.validated` put on its work topic past
//! validate cannot make it read outside the allowed roots.

use reel_download::Download;
use reel_events::payload::{ClipsDownloaded, JobSpec};
use reel_events::{envelope, ErrorType, Event};
use reel_runtime::config::DownloadConfig;
use reel_runtime::stage::Outcome;
use reel_runtime::Store;
use reel_testkit::fixtures;
use reel_testkit::stage::{emitted, StageHarness};

fn job_event(job_id: &str, clips: Vec<String>, output: String) -> Event {
    fixtures::job_validated(&JobSpec { clip_paths: clips, output_path: output, ..fixtures::job_spec(job_id) })
}

/// The per-clip limits (REEL_MAX_CLIP_BYTES, REEL_MAX_CLIP_SECONDS): a clip over either
/// is skipped with the limit named, and the job goes on with the others.
#[tokio::test]
async fn clips_over_the_size_or_duration_limit_are_skipped_with_the_limit_named() {
    let clips_dir = StageHarness::new();
    let spec = |seconds: f64| reel_media::SampleSpec {
        width: 160,
        height: 120,
        seconds,
        fps: 10,
        audio: false,
        label: "x".into(),
    };
    let media = &clips_dir.settings.media;
    let files = clips_dir.files();
    let (short1, short2, long) = (files.join("s1.mp4"), files.join("s2.mp4"), files.join("long.mp4"));
    reel_media::make_sample_clip(media, &short1, &spec(1.0)).await.unwrap();
    reel_media::make_sample_clip(media, &short2, &spec(1.0)).await.unwrap();
    reel_media::make_sample_clip(media, &long, &spec(3.0)).await.unwrap();
    let big = std::fs::metadata(&long).unwrap().len();
    let small = std::fs::metadata(&short1).unwrap().len().max(std::fs::metadata(&short2).unwrap().len());
    assert!(big > small, "the long clip is the largest ({big} vs {small})");
    let clips = vec![short1.display().to_string(), long.display().to_string(), short2.display().to_string()];
    for (limits, needle) in [((big - 1, 600.0), "byte limit"), ((u64::MAX, 2.0), "limit")] {
        let rig = StageHarness::with_settings(|s| {
            s.allowed_roots = vec![files.display().to_string()];
            s.download = DownloadConfig { max_clip_bytes: limits.0, max_clip_seconds: limits.1, ..Default::default() };
        });
        let event = job_event("job_lim", clips.clone(), files.join("out.mp4").display().to_string());
        let events = emitted(rig.run::<Download>(&event).await);
        let data: ClipsDownloaded = envelope::decode(&events[0]).unwrap();
        assert_eq!(data.clips.len(), 2, "{limits:?}");
        assert_eq!(data.skipped_clips.len(), 1, "{limits:?}");
        assert_eq!(data.skipped_clips[0].path, clips[1]);
        assert!(data.skipped_clips[0].reason.contains(needle), "{limits:?}: {}", data.skipped_clips[0].reason);
    }
}

/// REEL_MAX_JOB_BYTES: clips that add up to more than a job may have fail the job with
/// the limit named before any clip is copied into the workspace.
#[tokio::test]
async fn a_job_over_the_total_byte_limit_fails_before_anything_is_downloaded() {
    let clips_dir = StageHarness::new();
    let files = clips_dir.files();
    let mut clips = Vec::new();
    for i in 0..3 {
        let path = files.join(format!("c{i}.mp4"));
        fixtures::make_clip(&path, 160, 120, 1.0);
        clips.push(path.display().to_string());
    }
    let total: u64 = clips.iter().map(|c| std::fs::metadata(c).unwrap().len()).sum();
    let rig = StageHarness::with_settings(|s| {
        s.allowed_roots = vec![files.display().to_string()];
        s.download.max_job_bytes = total - 1;
    });
    let event = job_event("job_big", clips.clone(), files.join("out.mp4").display().to_string());
    match rig.run::<Download>(&event).await {
        Outcome::Reject(f) => {
            assert_eq!(f.error_type, ErrorType::InvalidRequest);
            assert!(
                f.message.contains(&format!("{total} bytes")) && f.message.contains("REEL_MAX_JOB_BYTES"),
                "{}",
                f.message
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(rig.work.list("jobs/job_big/").await.unwrap().is_empty(), "something was downloaded");
    // At the limit, the job goes on.
    let rig = StageHarness::with_settings(|s| {
        s.allowed_roots = vec![files.display().to_string()];
        s.download.max_job_bytes = total;
    });
    assert_eq!(emitted(rig.run::<Download>(&event).await).len(), 1);
}

#[tokio::test]
async fn clips_outside_the_allowed_roots_fail_the_job_and_nothing_is_read() {
    let rig = StageHarness::new();
    let allowed = rig.files();
    let outside = rig.dir().join("secret.mp4");
    std::fs::write(&outside, b"not for this job").unwrap();
    for clips in [
        vec![format!("{}/a.mp4", allowed.display()), outside.display().to_string()],
        vec![format!("{}/a.mp4", allowed.display()), "file:///etc/passwd".to_string()],
        vec![format!("{}/a.mp4", allowed.display()), format!("{}/jobs/x/clips/000.mp4", rig.work.root().display())],
    ] {
        let event = job_event("job_b", clips.clone(), format!("{}/out.mp4", allowed.display()));
        match rig.run::<Download>(&event).await {
            Outcome::Reject(f) => {
                assert_eq!(f.error_type, ErrorType::PermissionDenied, "{clips:?}: {}", f.message);
                assert!(f.message.contains("clip 2"), "{}", f.message);
            }
            other => panic!("{clips:?}: expected permission_denied, got {other:?}"),
        }
        let copied = rig.work.list_keys("jobs/").await.unwrap();
        assert!(copied.iter().all(|k| !k.contains("001")), "the outside clip was copied: {copied:?}");
    }
}
