//! Upload re-checks the trust boundary: a `job.stitched` put on its work topic past
//! validate cannot make it write outside the allowed roots.

use chrono::Utc;
use reel_events::payload::{JobRef, JobSpec, ReelFacts, ReelStitched};
use reel_events::{envelope, types, Compression, ErrorType, Mode, Orientation, Stage};
use reel_runtime::embedded::DirStore;
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, Handler, Outcome};
use reel_runtime::{PutMode, Settings, Store};
use std::sync::Arc;

#[tokio::test]
async fn an_output_outside_the_allowed_roots_fails_the_job_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let work_root = dir.path().join("work");
    let work = Arc::new(DirStore::new(&work_root).unwrap());
    work.put("jobs/job_u/reel.mp4", Box::pin(std::io::Cursor::new(b"reel".to_vec())), PutMode::Overwrite)
        .await
        .unwrap();
    let settings = Arc::new(Settings {
        allowed_roots: vec![allowed.display().to_string()],
        work_root: Some(work_root.display().to_string()),
        temp_dir: dir.path().join("tmp"),
        ..Settings::default()
    });
    for output in [
        dir.path().join("elsewhere.mp4").display().to_string(),
        work_root.join("control/completed/other.mp4").display().to_string(),
        "gs://someone-elses-bucket/reel.mp4".to_string(),
    ] {
        let now = Utc::now();
        let job = JobSpec {
            job_id: "job_u".into(),
            project_id: "p1".into(),
            user_id: "u1".into(),
            clip_paths: vec![format!("{}/a.mp4", allowed.display()), format!("{}/b.mp4", allowed.display())],
            output_path: output.clone(),
            orientation: Orientation::Portrait,
            compression: Compression::Optimized,
            retry_attempt: 0,
            force_restart: true,
            accepted_at: now,
            deadline: now + chrono::Duration::minutes(5),
        };
        let data = ReelStitched {
            job: job.clone(),
            work_key: "jobs/job_u/reel.mp4".into(),
            reel: ReelFacts { size_bytes: 4, duration_seconds: 1.0, crc32c: String::new(), mode: Mode::Copy },
            skipped_clips: Vec::new(),
            warnings: Vec::new(),
        };
        let event = envelope::build(types::REEL_STITCHED, "//test", "s1", "job_u", now, &data).unwrap();
        let ctx = Context::standalone(
            Stage::Upload,
            settings.clone(),
            work.clone(),
            Arc::new(LocalResolver::new()),
            JobRef { job_id: job.job_id.clone(), project_id: job.project_id.clone(), user_id: job.user_id.clone() },
        );
        match reel_upload::Upload.handle(&ctx, &event).await {
            Outcome::Reject(f) => assert_eq!(f.error_type, ErrorType::PermissionDenied, "{output}: {}", f.message),
            other => panic!("{output}: expected permission_denied, got {other:?}"),
        }
        if !output.starts_with("gs://") {
            assert!(!std::path::Path::new(&output).exists(), "{output} was written");
        }
    }
}
