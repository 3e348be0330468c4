//! Who owns a job, when a silent job counts as failed, and what a replay looks like in
//! the fold — each checked in every order of the events.

use chrono::{DateTime, Duration, TimeZone, Utc};
use reel_events::fold::{JobState, Overdue, Status};
use reel_events::{binding, envelope, replay, sweep, types, ErrorType, Event};
use serde_json::json;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_000_000 + seconds, 0).unwrap()
}

fn ev(ty: &str, t: i64, id: &str, data: serde_json::Value) -> Event {
    envelope::build(ty, "//reel/test", id, "job_o", at(t), &data).unwrap()
}

fn job(project: &str, user: &str, attempt: u32, deadline: DateTime<Utc>) -> serde_json::Value {
    json!({"jobId": "job_o", "projectId": project, "userId": user, "retryAttempt": attempt,
           "deadline": deadline.to_rfc3339(), "acceptedAt": at(0).to_rfc3339()})
}

/// Every order of `events` (n! of them; keep n small).
fn permutations(events: &[Event]) -> Vec<Vec<Event>> {
    if events.len() <= 1 {
        return vec![events.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..events.len() {
        let mut rest = events.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}

fn fold(events: &[Event]) -> JobState {
    let mut state = JobState::new("job_o");
    for e in events {
        state.apply(e);
    }
    state
}

/// Folds `events` in every order (and each order twice over) and returns the one state
/// they all agree on.
fn fold_every_order(events: &[Event]) -> JobState {
    let orders = permutations(events);
    let first = fold(&orders[0]);
    for order in &orders {
        assert_eq!(fold(order), first, "an order folded differently");
        let doubled: Vec<Event> = order.iter().chain(order.iter()).cloned().collect();
        assert_eq!(fold(&doubled), first, "duplicates changed the fold");
    }
    first
}

#[test]
fn the_validated_owner_stands_whatever_other_events_claim() {
    let deadline = at(900);
    let events = vec![
        ev(types::STITCH_REQUESTED, 0, "req", json!({"jobId": "job_o", "projectId": "proj", "userId": "alice"})),
        // A forged event, earlier than validation, naming another (greater) owner.
        ev(
            types::JOB_PROGRESS,
            1,
            "forged-early",
            json!({"jobId": "job_o", "projectId": "proj", "userId": "zed",
            "stage": "download", "progress": 5.0}),
        ),
        ev(types::JOB_VALIDATED, 2, "val", json!({"job": job("proj", "alice", 0, deadline)})),
        // A later one naming another project and user.
        ev(types::CLIPS_DOWNLOADED, 3, "forged-late", json!({"job": job("zzz", "zzz", 0, deadline)})),
        ev(
            types::JOB_PROGRESS,
            4,
            "p",
            json!({"jobId": "job_o", "projectId": "proj", "stage": "stitch", "progress": 40.0}),
        ),
    ];
    let state = fold_every_order(&events);
    assert_eq!((state.project_id.as_str(), state.user_id.as_str()), ("proj", "alice"));
    assert_eq!(state.to_status().user_id, "alice");
}

#[test]
fn without_validation_the_earliest_event_naming_an_owner_decides() {
    let events = vec![
        ev(
            types::JOB_PROGRESS,
            0,
            "p0",
            json!({"jobId": "job_o", "projectId": "proj-only", "stage": "validate",
            "progress": 1.0}),
        ),
        ev(types::STITCH_REQUESTED, 1, "req", json!({"jobId": "job_o", "projectId": "proj", "userId": "bob"})),
        ev(
            types::JOB_FAILED,
            2,
            "f",
            json!({"jobId": "job_o", "projectId": "proj", "userId": "zoe", "stage": "validate",
            "errorType": "internal", "message": "x", "retryable": true, "attempts": 1}),
        ),
    ];
    let state = fold_every_order(&events);
    assert_eq!((state.project_id.as_str(), state.user_id.as_str()), ("proj", "bob"));
}

#[test]
fn a_silent_job_reads_failed_with_timeout_after_its_deadline_and_grace() {
    let deadline = at(900);
    let events = vec![
        ev(types::JOB_VALIDATED, 1, "val", json!({"job": job("proj", "alice", 0, deadline)})),
        ev(
            types::JOB_PROGRESS,
            2,
            "p",
            json!({"jobId": "job_o", "projectId": "proj", "stage": "download", "progress": 10.0}),
        ),
    ];
    let state = fold_every_order(&events);
    let policy = Overdue::minutes(15, 5);
    // Validate reported the job at t=1: its deadline is 15 minutes on, then the grace.
    let grace_end = at(1) + Duration::minutes(20);
    let before = state.to_status_at(grace_end - Duration::seconds(1), &policy);
    assert_eq!(before.status, Status::Running);
    let after = state.to_status_at(grace_end + Duration::seconds(1), &policy);
    assert_eq!(after.status, Status::Failed);
    assert_eq!(after.error_type, Some(ErrorType::Timeout));
    assert_eq!(after.completed_at, Some(grace_end));
    // The same `now` gives the same answer however often it is asked.
    assert_eq!(after, state.to_status_at(grace_end + Duration::seconds(1), &policy));

    // The sweeper's event says the same thing, for every subscriber, and is the same
    // event whoever computes it.
    let jobs = reel_events::fold::fold_all(&events);
    let swept = sweep::overdue_failures(&jobs, grace_end + Duration::seconds(1), &policy);
    assert_eq!(swept.len(), 1);
    assert_eq!(swept, sweep::overdue_failures(&jobs, grace_end + Duration::hours(1), &policy));
    let mut with_failure = events.clone();
    with_failure.push(swept[0].clone());
    let ended = fold_every_order(&with_failure);
    assert_eq!(ended.to_status(), after);
    assert!(sweep::overdue_failures(&reel_events::fold::fold_all(&with_failure), at(100_000), &policy).is_empty());
}

#[test]
fn a_completed_job_is_never_overdue() {
    let deadline = at(900);
    let events = vec![
        ev(types::JOB_VALIDATED, 1, "val", json!({"job": job("proj", "alice", 0, deadline)})),
        ev(
            types::JOB_COMPLETED,
            800,
            "done",
            json!({"jobId": "job_o", "projectId": "proj", "userId": "alice",
            "outputPath": "gs://b/o.mp4"}),
        ),
    ];
    let state = fold_every_order(&events);
    assert_eq!(state.to_status_at(at(1_000_000), &Overdue::minutes(15, 5)).status, Status::Completed);
}

#[test]
fn a_replay_is_a_new_attempt_that_runs_then_completes_past_the_old_deadline() {
    let old_deadline = at(900);
    let downloaded = ev(types::CLIPS_DOWNLOADED, 20, "dl0", json!({"job": job("proj", "alice", 0, old_deadline)}));
    let failed = ev(
        types::JOB_FAILED,
        60,
        "f0",
        json!({"jobId": "job_o", "projectId": "proj", "userId": "alice",
        "stage": "stitch", "errorType": "internal", "message": "gave up", "retryable": true, "attempts": 4,
        "retryAttempt": 0}),
    );
    // The operator replays the dead-lettered job.downloaded an hour after the deadline.
    let replayed_at = at(4_500);
    let message = replay::renew_message(&binding::encode_binary(&downloaded), replayed_at, Duration::minutes(15));
    assert_eq!(message.attributes[replay::REPLAYED_AT], replayed_at.to_rfc3339());
    let replayed = binding::decode(&message).unwrap();
    let data = envelope::data_json(&replayed).unwrap();
    assert_eq!(data["job"]["retryAttempt"], 1);
    let fresh_deadline = (replayed_at + Duration::minutes(15)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(data["job"]["deadline"], fresh_deadline.as_str());

    // What stitch emits for it: the job as it came, with the new attempt.
    let stitched = ev(types::REEL_STITCHED, 4_560, "st1", json!({"job": data["job"].clone()}));
    let progress = ev(
        types::JOB_PROGRESS,
        4_570,
        "p1",
        json!({"jobId": "job_o", "projectId": "proj",
        "stage": "upload", "progress": 90.0, "retryAttempt": 1}),
    );
    let policy = Overdue::minutes(15, 5);
    let running = fold_every_order(&[downloaded.clone(), failed.clone(), stitched.clone(), progress.clone()]);
    let status = running.to_status_at(at(4_600), &policy);
    assert_eq!((status.status, status.retry_count), (Status::Running, 1));

    let completed = ev(
        types::JOB_COMPLETED,
        4_600,
        "c1",
        json!({"jobId": "job_o", "projectId": "proj",
        "userId": "alice", "outputPath": "gs://b/o.mp4", "retryAttempt": 1}),
    );
    let done = fold_every_order(&[downloaded, failed, stitched, progress, completed]);
    let status = done.to_status_at(at(4_700), &policy);
    assert_eq!((status.status, status.retry_count, status.error), (Status::Completed, 1, None));
}
