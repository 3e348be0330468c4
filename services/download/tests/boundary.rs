//! Download re-checks the trust boundary: a `job.validated` put on its work topic past
//! validate cannot make it read outside the allowed roots.

use chrono::Utc;
use reel_events::payload::{JobRef, JobSpec, JobValidated};
use reel_events::{envelope, types, Compression, ErrorType, Orientation, Stage};
use reel_runtime::embedded::DirStore;
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, Handler, Outcome};
use reel_runtime::{Settings, Store};
use std::sync::Arc;

fn job_event(job_id: &str, clips: Vec<String>, output: String) -> (JobSpec, reel_events::Event) {
    let now = Utc::now();
    let job = JobSpec {
        job_id: job_id.into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        clip_paths: clips,
        output_path: output,
        orientation: Orientation::Portrait,
        compression: Compression::Optimized,
        retry_attempt: 0,
        force_restart: false,
        accepted_at: now,
        deadline: now + chrono::Duration::minutes(5),
    };
    let event = envelope::build(
        types::JOB_VALIDATED,
        "//test",
        format!("v-{job_id}"),
        job_id,
        now,
        &JobValidated { job: job.clone() },
    )
    .unwrap();
    (job, event)
}

/// The per-clip limits (REEL_MAX_CLIP_BYTES, REEL_MAX_CLIP_SECONDS): a clip over either
/// is skipped with the limit named, and the job goes on with the others.
#[tokio::test]
async fn clips_over_the_size_or_duration_limit_are_skipped_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |seconds: f64| reel_media::SampleSpec {
        width: 160,
        height: 120,
        seconds,
        fps: 10,
        audio: false,
        label: "x".into(),
    };
    let (short1, short2, long) = (dir.path().join("s1.mp4"), dir.path().join("s2.mp4"), dir.path().join("long.mp4"));
    reel_media::make_sample_clip(&short1, &spec(1.0)).await.unwrap();
    reel_media::make_sample_clip(&short2, &spec(1.0)).await.unwrap();
    reel_media::make_sample_clip(&long, &spec(3.0)).await.unwrap();
    let big = std::fs::metadata(&long).unwrap().len();
    let small = std::fs::metadata(&short1).unwrap().len().max(std::fs::metadata(&short2).unwrap().len());
    assert!(big > small, "the long clip is the largest ({big} vs {small})");
    let clips = vec![short1.display().to_string(), long.display().to_string(), short2.display().to_string()];
    for (limits, needle) in [((big - 1, 600.0), "byte limit"), ((u64::MAX, 2.0), "limit")] {
        let work = Arc::new(DirStore::new(dir.path().join(format!("work-{}", limits.0))).unwrap());
        let settings = Arc::new(Settings {
            allowed_roots: vec![dir.path().display().to_string()],
            work_root: Some(work.root().display().to_string()),
            temp_dir: dir.path().join("tmp"),
            max_clip_bytes: limits.0,
            max_clip_seconds: limits.1,
            ..Settings::default()
        });
        let (job, event) = job_event("job_lim", clips.clone(), dir.path().join("out.mp4").display().to_string());
        let ctx = Context::standalone(
            Stage::Download,
            settings,
            work.clone(),
            Arc::new(LocalResolver::new()),
            JobRef { job_id: job.job_id.clone(), project_id: job.project_id.clone(), user_id: job.user_id.clone() },
        );
        let Outcome::Emit(events) = reel_download::Download.handle(&ctx, &event).await else {
            panic!("{limits:?}: the job did not go on")
        };
        let data: reel_events::payload::ClipsDownloaded = envelope::decode(&events[0]).unwrap();
        assert_eq!(data.clips.len(), 2, "{limits:?}");
        assert_eq!(data.skipped_clips.len(), 1, "{limits:?}");
        assert_eq!(data.skipped_clips[0].path, clips[1]);
        assert!(data.skipped_clips[0].reason.contains(needle), "{limits:?}: {}", data.skipped_clips[0].reason);
    }
}

#[tokio::test]
async fn clips_outside_the_allowed_roots_fail_the_job_and_nothing_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let outside = dir.path().join("secret.mp4");
    std::fs::write(&outside, b"not for this job").unwrap();
    let work = Arc::new(DirStore::new(dir.path().join("work")).unwrap());
    let settings = Arc::new(Settings {
        allowed_roots: vec![allowed.display().to_string()],
        work_root: Some(dir.path().join("work").display().to_string()),
        temp_dir: dir.path().join("tmp"),
        ..Settings::default()
    });
    for clips in [
        vec![format!("{}/a.mp4", allowed.display()), outside.display().to_string()],
        vec![format!("{}/a.mp4", allowed.display()), "file:///etc/passwd".to_string()],
        vec![
            format!("{}/a.mp4", allowed.display()),
            format!("{}/jobs/x/clips/000.mp4", dir.path().join("work").display()),
        ],
    ] {
        let (job, event) = job_event("job_b", clips.clone(), format!("{}/out.mp4", allowed.display()));
        let ctx = Context::standalone(
            Stage::Download,
            settings.clone(),
            work.clone(),
            Arc::new(LocalResolver::new()),
            JobRef { job_id: job.job_id.clone(), project_id: job.project_id.clone(), user_id: job.user_id.clone() },
        );
        match reel_download::Download.handle(&ctx, &event).await {
            Outcome::Reject(f) => {
                assert_eq!(f.error_type, ErrorType::PermissionDenied, "{clips:?}: {}", f.message);
                assert!(f.message.contains("clip 2"), "{}", f.message);
            }
            other => panic!("{clips:?}: expected permission_denied, got {other:?}"),
        }
        let copied = work.list_keys("jobs/").await.unwrap();
        assert!(copied.iter().all(|k| !k.contains("001")), "the outside clip was copied: {copied:?}");
    }
}
