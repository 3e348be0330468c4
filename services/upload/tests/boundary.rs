//! Upload re-checks the trust boundary: a `job.stitched` put on its work topic past
//! validate cannot make it write outside the allowed roots.

use reel_events::payload::{JobSpec, ReelFacts, ReelStitched};
use reel_events::{types, ErrorType, Mode};
use reel_runtime::stage::Outcome;
use reel_runtime::{PutMode, Store};
use reel_testkit::fixtures;
use reel_testkit::stage::StageHarness;
use reel_upload::Upload;

#[tokio::test]
async fn an_output_outside_the_allowed_roots_fails_the_job_and_nothing_is_written() {
    let rig = StageHarness::new();
    let allowed = rig.files();
    rig.work
        .put("jobs/job_u/reel.mp4", Box::pin(std::io::Cursor::new(b"reel".to_vec())), PutMode::Overwrite)
        .await
        .unwrap();
    for output in [
        rig.dir().join("elsewhere.mp4").display().to_string(),
        rig.work.root().join("control/completed/other.mp4").display().to_string(),
        "gs://someone-elses-bucket/reel.mp4".to_string(),
    ] {
        let job = JobSpec {
            clip_paths: vec![format!("{}/a.mp4", allowed.display()), format!("{}/b.mp4", allowed.display())],
            output_path: output.clone(),
            force_restart: true,
            ..fixtures::job_spec("job_u")
        };
        let data = ReelStitched {
            job,
            work_key: "jobs/job_u/reel.mp4".into(),
            reel: ReelFacts { size_bytes: 4, duration_seconds: 1.0, crc32c: String::new(), mode: Mode::Copy },
            skipped_clips: Vec::new(),
            warnings: Vec::new(),
        };
        match rig.run::<Upload>(&StageHarness::event(types::REEL_STITCHED, "job_u", &data)).await {
            Outcome::Reject(f) => assert_eq!(f.error_type, ErrorType::PermissionDenied, "{output}: {}", f.message),
            other => panic!("{output}: expected permission_denied, got {other:?}"),
        }
        if !output.starts_with("gs://") {
            assert!(!std::path::Path::new(&output).exists(), "{output} was written");
        }
    }
}
