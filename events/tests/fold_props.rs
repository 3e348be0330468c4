//! The fold gives the same state for any order and any duplication of a job's events.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use reel_events::fold::{JobState, Status};
use reel_events::payload::*;
use reel_events::{envelope, types, Compression, ErrorType, Event, Mode, Orientation, Stage};

fn spec(attempt: u32) -> JobSpec {
    JobSpec {
        job_id: "job_1".into(),
        project_id: "proj".into(),
        user_id: "user".into(),
        clip_paths: vec!["gs://b/a.mp4".into(), "gs://b/b.mp4".into()],
        output_path: "gs://b/out.mp4".into(),
        orientation: Orientation::Portrait,
        compression: Compression::Optimized,
        retry_attempt: attempt,
        force_restart: false,
        accepted_at: Utc.timestamp_opt(1_000, 0).unwrap(),
        deadline: Utc.timestamp_opt(2_000, 0).unwrap(),
        timeout_resumes: 0,
    }
}

fn ev<T: serde::Serialize>(ty: &str, n: i64, id: &str, data: &T) -> Event {
    envelope::build(ty, "//reel/test", id, "job_1", Utc.timestamp_opt(1_000 + n, 0).unwrap(), data).unwrap()
}

/// The events of one plausible job history: `steps` stages done, then an ending.
fn history(attempt: u32, steps: usize, ending: u8, progress: Vec<f64>) -> Vec<Event> {
    let a = attempt.to_string();
    let mut events = vec![ev(
        types::STITCH_REQUESTED,
        0,
        &format!("req{a}"),
        &StitchRequested {
            job_id: Some("job_1".into()),
            project_id: "proj".into(),
            user_id: "user".into(),
            clip_paths: vec![],
            output_path: "gs://b/out.mp4".into(),
            orientation: Orientation::Portrait,
            compression: Compression::Optimized,
            retry_attempt: Some(attempt),
            force_restart: None,
        },
    )];
    let facts = ReelFacts { size_bytes: 10, duration_seconds: 2.0, crc32c: "AAAAAA==".into(), mode: Mode::Copy };
    let kinds = [types::JOB_VALIDATED, types::CLIPS_DOWNLOADED, types::REEL_STITCHED, types::REEL_UPLOADED];
    for (i, ty) in kinds.iter().take(steps).enumerate() {
        let data = serde_json::json!({ "job": spec(attempt), "warnings": [format!("w{i}")], "reel": facts });
        events.push(ev(ty, 10 * (i as i64 + 1), &format!("{ty}{a}"), &data));
    }
    for (i, p) in progress.into_iter().enumerate() {
        let stage = Stage::ALL[i % 5];
        events.push(ev(
            types::JOB_PROGRESS,
            5 + i as i64,
            &format!("p{a}-{i}"),
            &JobProgress {
                job_id: "job_1".into(),
                project_id: "proj".into(),
                stage,
                progress: p,
                stage_progress: p,
                estimated_completion: Some(Utc.timestamp_opt(5_000 + i as i64, 0).unwrap()),
                retry_attempt: Some(attempt),
            },
        ));
    }
    match ending {
        0 => {}
        1 => events.push(ev(
            types::JOB_COMPLETED,
            100,
            &format!("done{a}"),
            &JobCompleted {
                job_id: "job_1".into(),
                project_id: "proj".into(),
                user_id: "user".into(),
                output_path: "gs://b/out.mp4".into(),
                size_bytes: 10,
                duration_seconds: 2.0,
                crc32c: "AAAAAA==".into(),
                skipped_clips: vec![SkippedClip { path: "gs://b/c.mp4".into(), reason: "corrupt".into() }],
                warnings: vec![],
                mode: Some(Mode::Copy),
                clip_paths: None,
                job_type: reel_events::JobType::VideoStitching,
                retry_attempt: Some(attempt),
                cost: None,
            },
        )),
        2 => events.push(ev(
            types::JOB_FAILED,
            90,
            &format!("fail{a}"),
            &JobFailed {
                job_id: "job_1".into(),
                project_id: "proj".into(),
                user_id: "user".into(),
                stage: Stage::Stitch,
                error_type: ErrorType::Timeout,
                message: "too slow".into(),
                retryable: true,
                attempts: 4,
                retry_attempt: Some(attempt),
                cost: None,
            },
        )),
        _ => {
            events.push(ev(
                types::JOB_CANCELLED,
                80,
                &format!("cancel{a}"),
                &JobCancelled {
                    job_id: "job_1".into(),
                    project_id: "proj".into(),
                    user_id: "user".into(),
                    stage: Stage::Download,
                    retry_attempt: Some(attempt),
                    cost: None,
                },
            ));
            // A late failure report must not undo the cancel.
            events.push(ev(
                types::JOB_FAILED,
                85,
                &format!("latefail{a}"),
                &JobFailed {
                    job_id: "job_1".into(),
                    project_id: "proj".into(),
                    user_id: "user".into(),
                    stage: Stage::Stitch,
                    error_type: ErrorType::Internal,
                    message: "x".into(),
                    retryable: false,
                    attempts: 1,
                    retry_attempt: Some(attempt),
                    cost: None,
                },
            ));
        }
    }
    events
}

fn fold(events: &[Event]) -> JobState {
    let mut state = JobState::new("job_1");
    for e in events {
        state.apply(e);
    }
    state
}

fn scenario() -> impl Strategy<Value = Vec<Event>> {
    (0u32..3, 0usize..=4, 0u8..4, prop::collection::vec(0.0f64..100.0, 0..6), any::<bool>()).prop_map(
        |(attempts, steps, ending, progress, earlier_failed)| {
            let mut all = Vec::new();
            for a in 0..attempts {
                all.extend(history(a, 4, if earlier_failed { 2 } else { 3 }, vec![]));
            }
            all.extend(history(attempts, steps, ending, progress));
            all
        },
    )
}

proptest! {
    #[test]
    fn any_permutation_and_duplication_folds_the_same(
        (events, shuffled) in scenario().prop_flat_map(|events| {
            let n = events.len();
            (Just(events.clone()), (Just(events).prop_shuffle(), prop::collection::vec(0..n, 0..n)).prop_map(|(mut s, dups)| {
                let copies: Vec<Event> = dups.iter().map(|i| s[*i].clone()).collect();
                s.extend(copies);
                s
            }).prop_shuffle())
        })
    ) {
        let a = fold(&events).to_status();
        let b = fold(&shuffled).to_status();
        prop_assert_eq!(a, b);
    }
}

#[test]
fn terminal_precedence_and_progress() {
    let s = fold(&history(0, 4, 1, vec![40.0, 10.0])).to_status();
    assert_eq!(s.status, Status::Completed);
    assert_eq!(s.progress, 100.0);
    assert_eq!(s.skipped_clips.len(), 1);
    assert!(s.completed_at.is_some());
    assert!(s.estimated_completion.is_none());

    let s = fold(&history(0, 2, 3, vec![])).to_status();
    assert_eq!(s.status, Status::Cancelled, "a late failure must not undo a cancel");

    let s = fold(&history(0, 2, 2, vec![])).to_status();
    assert_eq!(s.status, Status::Failed);
    assert_eq!(s.error.as_deref(), Some("too slow"));
    assert_eq!(s.error_type, Some(ErrorType::Timeout));

    let s = fold(&history(0, 2, 0, vec![30.0, 20.0])).to_status();
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.stage, Some(Stage::Stitch));
    assert!(s.progress >= 30.0);

    let s = fold(&history(0, 0, 0, vec![])).to_status();
    assert_eq!(s.status, Status::Queued);
    assert!(s.started_at.is_none());
}

#[test]
fn a_resubmitted_job_starts_over() {
    let mut events = history(0, 3, 2, vec![]);
    events.extend(history(1, 1, 0, vec![]));
    let s = fold(&events).to_status();
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.retry_count, 1);
    assert!(s.error.is_none());
}
