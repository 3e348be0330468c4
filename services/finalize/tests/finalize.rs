//! The finalize handler on its own: what Phoenix reads in `job.completed`, the record
//! that makes a redelivery harmless, and the clean-up it owes.

use chrono::Utc;
use reel_events::payload::{JobCompleted, JobSpec, ReelFacts, ReelUploaded, SkippedClip};
use reel_events::{envelope, types, AttributesReader, ErrorType, Event, Mode};
use reel_finalize::Finalize;
use reel_runtime::stage::{completed_marker_key, Outcome};
use reel_runtime::{lock, PutMode, Store};
use reel_testkit::fixtures;
use reel_testkit::stage::StageHarness;

fn uploaded(job_id: &str) -> (JobSpec, Event) {
    let job = JobSpec { project_id: "proj_f".into(), user_id: "user_f".into(), ..fixtures::job_spec(job_id) };
    let data = ReelUploaded {
        job: job.clone(),
        output_path: job.output_path.clone(),
        reel: ReelFacts { size_bytes: 1234, duration_seconds: 6.5, crc32c: "yZRlqg==".into(), mode: Mode::Copy },
        skipped_clips: vec![SkippedClip { path: "/clips/c.mp4".into(), reason: "not a readable video".into() }],
        warnings: vec!["skipped /clips/c.mp4: not a readable video".into()],
    };
    (job, StageHarness::event(types::REEL_UPLOADED, job_id, &data))
}

fn rig() -> StageHarness {
    StageHarness::new()
}

#[tokio::test]
async fn the_completed_event_carries_the_contract_fields_and_the_job_is_cleaned_up() {
    let rig = rig();
    let (job, event) = uploaded("job_fin");
    let scratch = format!("jobs/{}/reel.mp4", job.job_id);
    rig.work.put(&scratch, Box::pin(std::io::Cursor::new(b"reel".to_vec())), PutMode::Overwrite).await.unwrap();
    let expires = Utc::now() + chrono::Duration::minutes(20);
    assert_eq!(
        lock::acquire(rig.work.as_ref(), &job.project_id, &job.job_id, expires, false).await.unwrap(),
        lock::Acquire::Acquired
    );

    let Outcome::Emit(events) = rig.run::<Finalize>(&event).await else { panic!("finalize did not complete the job") };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ty(), types::JOB_COMPLETED);
    assert_eq!(events[0].subject(), Some(job.job_id.as_str()));
    let completed: JobCompleted = envelope::decode(&events[0]).unwrap();
    assert_eq!(
        (completed.job_id.as_str(), completed.project_id.as_str(), completed.user_id.as_str()),
        ("job_fin", "proj_f", "user_f")
    );
    assert_eq!(completed.output_path, job.output_path);
    assert_eq!((completed.size_bytes, completed.duration_seconds, completed.crc32c.as_str()), (1234, 6.5, "yZRlqg=="));
    assert_eq!(completed.mode, Some(Mode::Copy));
    assert_eq!(envelope::data_json(&events[0]).unwrap()["type"], "video_stitching", "CONTRACT 1.1");
    assert_eq!(completed.skipped_clips.len(), 1);
    assert_eq!(completed.warnings.len(), 1);

    assert!(rig.work.head(&completed_marker_key(&job.job_id)).await.unwrap().is_some(), "completion recorded");
    assert!(rig.work.list_keys(&format!("jobs/{}/", job.job_id)).await.unwrap().is_empty(), "workspace removed");
    let other = lock::acquire(rig.work.as_ref(), &job.project_id, "job_next", expires, false).await.unwrap();
    assert_eq!(other, lock::Acquire::Acquired, "the project lock was released");
}

#[tokio::test]
async fn a_redelivery_re_emits_the_very_same_event_and_still_cleans_up() {
    let rig = rig();
    let (job, event) = uploaded("job_twice");
    let Outcome::Emit(first) = rig.run::<Finalize>(&event).await else { panic!("first delivery") };
    // As if the first delivery died after recording the completion, before cleaning up.
    let expires = Utc::now() + chrono::Duration::minutes(20);
    lock::acquire(rig.work.as_ref(), &job.project_id, &job.job_id, expires, false).await.unwrap();
    let Outcome::Emit(second) = rig.run::<Finalize>(&event).await else { panic!("second delivery") };
    assert_eq!(first[0].id(), second[0].id(), "the fold sees a duplicate, not a second completion");
    assert_eq!(envelope::data_json(&first[0]).unwrap(), envelope::data_json(&second[0]).unwrap());
    let next = lock::acquire(rig.work.as_ref(), &job.project_id, "job_next", expires, false).await.unwrap();
    assert_eq!(next, lock::Acquire::Acquired, "the redelivery released the project lock");
}

#[tokio::test]
async fn a_malformed_payload_fails_the_job_as_invalid_request() {
    let rig = rig();
    let event = StageHarness::event(types::REEL_UPLOADED, "job_bad", &serde_json::json!({"job": 3}));
    match rig.run::<Finalize>(&event).await {
        Outcome::Reject(f) => assert_eq!(f.error_type, ErrorType::InvalidRequest),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(rig.work.head(&completed_marker_key("job_bad")).await.unwrap().is_none(), "nothing recorded");
}

/// A job cancelled between upload and finalize leaves no reel: finalize's `withdraw`
/// (which the worker runs before `job.cancelled`) removes the reel this job wrote, and
/// nothing else.
#[tokio::test]
async fn a_cancel_after_upload_takes_back_the_jobs_reel_and_only_it() {
    use reel_runtime::location::{Location, StoreResolver};
    use reel_runtime::stage::Handler;
    let rig = rig();
    let resolver = reel_runtime::local::LocalResolver::new();
    for (job_id, writer, kept) in [("job_cx", "job_cx", false), ("job_cy", "someone_else", true)] {
        let output = rig.files().join(format!("{job_id}.mp4")).display().to_string();
        let (job, _) = uploaded(job_id);
        let data = ReelUploaded {
            job: JobSpec { output_path: output.clone(), ..job.clone() },
            output_path: output.clone(),
            reel: ReelFacts { size_bytes: 4, duration_seconds: 1.0, crc32c: "x".into(), mode: Mode::Copy },
            skipped_clips: vec![],
            warnings: vec![],
        };
        let event = StageHarness::event(types::REEL_UPLOADED, job_id, &data);
        let (store, key) = resolver.resolve(&Location::parse(&output, None).unwrap()).unwrap();
        let options = reel_runtime::store::PutOptions::new(PutMode::Overwrite)
            .with_metadata(reel_runtime::output::output_metadata(&job.project_id, writer));
        store.put_with(&key, Box::pin(std::io::Cursor::new(b"reel".to_vec())), &options).await.unwrap();
        Finalize.withdraw(&resolver, &event).await.unwrap();
        assert_eq!(std::path::Path::new(&output).exists(), kept, "{job_id}");
    }
}
