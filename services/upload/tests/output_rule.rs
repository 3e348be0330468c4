//! Upload applies the output rule right before writing: an existing output is replaced
//! only if reel wrote it for the job's project and the job has `forceRestart`; a
//! redelivery that finds the reel its job already wrote succeeds without writing again.

use std::path::Path;

use reel_events::payload::{JobSpec, ReelFacts, ReelStitched};
use reel_events::{types, ErrorType, Event, Mode};
use reel_runtime::embedded::DirStore;
use reel_runtime::output::{output_metadata, JOB_KEY, PROJECT_KEY};
use reel_runtime::stage::Outcome;
use reel_runtime::{ObjectMeta, PutMode, PutOptions, Store};
use reel_testkit::fixtures;
use reel_testkit::stage::StageHarness;
use reel_upload::Upload;

/// The stitched reel of `job_id` in the work store, and the `job.stitched` that hands it
/// to upload with `output` and `force_restart`.
async fn stitched(rig: &StageHarness, job_id: &str, output: &Path, force_restart: bool, bytes: &[u8]) -> Event {
    let key = format!("jobs/{job_id}/reel.mp4");
    rig.work.put(&key, Box::pin(std::io::Cursor::new(bytes.to_vec())), PutMode::Overwrite).await.unwrap();
    let (crc, _) = reel_runtime::store::crc32c_of_file(&rig.work.local_path(&key).unwrap()).await.unwrap();
    let data = ReelStitched {
        job: JobSpec { output_path: output.display().to_string(), force_restart, ..fixtures::job_spec(job_id) },
        work_key: key,
        reel: ReelFacts {
            size_bytes: bytes.len() as u64,
            duration_seconds: 1.0,
            crc32c: reel_runtime::store::crc32c_base64(crc),
            mode: Mode::Copy,
        },
        skipped_clips: Vec::new(),
        warnings: Vec::new(),
    };
    StageHarness::event(types::REEL_STITCHED, job_id, &data)
}

/// The output as the store sees it (content, generation, metadata).
async fn head(path: &Path) -> ObjectMeta {
    let store = DirStore::new(path.parent().unwrap()).unwrap();
    store.head(path.file_name().unwrap().to_str().unwrap()).await.unwrap().expect("the output is gone")
}

fn denied(outcome: Outcome) -> String {
    match outcome {
        Outcome::Reject(f) if f.error_type == ErrorType::PermissionDenied => f.message,
        other => panic!("expected permission_denied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_reel_did_not_write_is_never_replaced() {
    let rig = StageHarness::new();
    let output = rig.files().join("holiday.mp4");
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    std::fs::write(&output, b"the user's own video").unwrap();
    for force in [false, true] {
        let event = stitched(&rig, "job_n", &output, force, b"a reel").await;
        let message = denied(rig.run::<Upload>(&event).await);
        assert!(message.contains("holiday.mp4") && message.contains("not written by reel"), "{message}");
        assert_eq!(std::fs::read(&output).unwrap(), b"the user's own video", "force {force}");
    }
}

#[tokio::test]
async fn another_projects_reel_is_never_replaced() {
    let rig = StageHarness::new();
    let output = rig.files().join("theirs.mp4");
    let other = DirStore::new(output.parent().unwrap()).unwrap();
    let options = PutOptions::new(PutMode::CreateOnly).with_metadata(output_metadata("p_other", "job_o"));
    other.put_with("theirs.mp4", Box::pin(std::io::Cursor::new(b"their reel".to_vec())), &options).await.unwrap();
    let event = stitched(&rig, "job_t", &output, true, b"a reel").await;
    let message = denied(rig.run::<Upload>(&event).await);
    assert!(message.contains("another project"), "{message}");
    assert_eq!(std::fs::read(&output).unwrap(), b"their reel");
}

#[tokio::test]
async fn the_projects_own_reel_is_replaced_only_with_force_restart() {
    let rig = StageHarness::new();
    let output = rig.files().join("reel.mp4");
    let first = stitched(&rig, "job_1", &output, false, b"first reel").await;
    assert!(matches!(rig.run::<Upload>(&first).await, Outcome::Emit(_)));
    let written = head(&output).await;
    assert_eq!(written.metadata.get(PROJECT_KEY).map(String::as_str), Some("p1"));
    assert_eq!(written.metadata.get(JOB_KEY).map(String::as_str), Some("job_1"));

    let again = stitched(&rig, "job_2", &output, false, b"second reel").await;
    let message = denied(rig.run::<Upload>(&again).await);
    assert!(message.contains("send forceRestart to replace your own reel"), "{message}");
    assert_eq!(std::fs::read(&output).unwrap(), b"first reel");

    let forced = stitched(&rig, "job_2", &output, true, b"second reel").await;
    assert!(matches!(rig.run::<Upload>(&forced).await, Outcome::Emit(_)));
    assert_eq!(std::fs::read(&output).unwrap(), b"second reel");
    let replaced = head(&output).await;
    assert_eq!(replaced.metadata.get(JOB_KEY).map(String::as_str), Some("job_2"));
    assert!(replaced.generation > written.generation);
}

#[tokio::test]
async fn a_redelivery_finds_its_own_reel_and_writes_nothing() {
    let rig = StageHarness::new();
    let output = rig.files().join("reel.mp4");
    for force in [false, true] {
        let event = stitched(&rig, &format!("job_r{force}"), &output, force, b"the reel").await;
        if !force {
            assert!(matches!(rig.run::<Upload>(&event).await, Outcome::Emit(_)));
        } else {
            // Make the output this job's own (as a forced first delivery would have).
            std::fs::remove_file(&output).unwrap();
            assert!(matches!(rig.run::<Upload>(&event).await, Outcome::Emit(_)));
        }
        let first = head(&output).await;
        let uploaded = reel_testkit::stage::emitted(rig.run::<Upload>(&event).await);
        assert_eq!(uploaded.len(), 1, "force {force}: the redelivery must re-emit job.uploaded");
        assert_eq!(head(&output).await.generation, first.generation, "force {force}: the redelivery wrote again");
    }
}
