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

/// A cancel that arrives while the reel is being written wins: the reel is removed again
/// and the job ends cancelled, leaving no output.
#[tokio::test]
async fn a_job_cancelled_during_upload_leaves_no_output() {
    let rig = StageHarness::new();
    let key = "jobs/job_c/reel.mp4";
    rig.work.put(key, Box::pin(std::io::Cursor::new(b"a reel".to_vec())), PutMode::Overwrite).await.unwrap();
    let (crc, size) = reel_runtime::store::crc32c_of_file(&rig.work.local_path(key).unwrap()).await.unwrap();
    let output = rig.files().join("reel.mp4");
    let data = ReelStitched {
        job: JobSpec { output_path: output.display().to_string(), ..fixtures::job_spec("job_c") },
        work_key: key.into(),
        reel: ReelFacts {
            size_bytes: size,
            duration_seconds: 1.0,
            crc32c: reel_runtime::store::crc32c_base64(crc),
            mode: Mode::Copy,
        },
        skipped_clips: Vec::new(),
        warnings: Vec::new(),
    };
    let event = StageHarness::event(types::REEL_STITCHED, "job_c", &data);
    rig.work
        .put(
            &reel_runtime::stage::cancel_marker_key("job_c"),
            Box::pin(std::io::Cursor::new(b"{}".to_vec())),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert!(matches!(rig.run::<Upload>(&event).await, Outcome::Cancel));
    assert!(!output.exists(), "the cancelled job's reel was left at its output");

    // Without the cancel, the same upload goes through.
    rig.work.delete(&reel_runtime::stage::cancel_marker_key("job_c")).await.unwrap();
    assert!(matches!(rig.run::<Upload>(&event).await, Outcome::Emit(_)));
    assert!(output.exists());
}

/// A forged `job.stitched` that names another job's reel, or a control object such as
/// the API snapshot, publishes nothing: work keys must lie in the job's own workspace.
#[tokio::test]
async fn a_work_key_outside_the_jobs_workspace_is_refused() {
    let rig = StageHarness::new();
    for key in ["control/api-snapshot.json", "jobs/victim/reel.mp4", "jobs/job_f/../victim/reel.mp4"] {
        rig.work
            .put("jobs/victim/reel.mp4", Box::pin(std::io::Cursor::new(b"theirs".to_vec())), PutMode::Overwrite)
            .await
            .unwrap();
        rig.work
            .put("control/api-snapshot.json", Box::pin(std::io::Cursor::new(b"{}".to_vec())), PutMode::Overwrite)
            .await
            .unwrap();
        let output = rig.files().join("stolen.mp4");
        let data = ReelStitched {
            job: JobSpec { output_path: output.display().to_string(), ..fixtures::job_spec("job_f") },
            work_key: key.into(),
            reel: ReelFacts { size_bytes: 6, duration_seconds: 1.0, crc32c: String::new(), mode: Mode::Copy },
            skipped_clips: Vec::new(),
            warnings: Vec::new(),
        };
        match rig.run::<Upload>(&StageHarness::event(types::REEL_STITCHED, "job_f", &data)).await {
            Outcome::Reject(f) => assert_eq!(f.error_type, ErrorType::PermissionDenied, "{key}: {}", f.message),
            other => panic!("{key}: expected permission_denied, got {other:?}"),
        }
        assert!(!output.exists(), "{key} was copied to the output");
    }
}
