//! A restart of reel-api gives the same state for every job: snapshot (or journal)
//! plus the rest of the log.

mod common;

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use common::*;
use reel_api::follower::FollowerError;
use reel_events::fold::{fold_all, JobState};
use reel_events::Event;
use reel_runtime::bus::Bus;
use reel_runtime::store::{PutMode, Store};
use std::collections::BTreeMap;

/// Jobs of two users in every end state, their events interleaved as the log would
/// carry them, with some duplicates.
fn workload() -> Vec<Event> {
    let t0 = Utc::now() - Duration::minutes(10);
    let jobs = [
        ("job_a1", "proj_a", "alice", End::Completed),
        ("job_a2", "proj_b", "alice", End::Failed),
        ("job_a3", "proj_c", "alice", End::Running),
        ("job_b1", "proj_a", "bob", End::Cancelled),
        ("job_b2", "proj_d", "bob", End::Completed),
        ("job_b3", "proj_e", "bob", End::Running),
    ];
    let per_job: Vec<Vec<Event>> = jobs
        .iter()
        .enumerate()
        .map(|(i, (id, p, u, end))| job_events(id, p, u, t0 + Duration::seconds(7 * i as i64), *end))
        .collect();
    let mut all = Vec::new();
    for step in 0..per_job.iter().map(Vec::len).max().unwrap() {
        for events in &per_job {
            if let Some(e) = events.get(step) {
                all.push(e.clone());
            }
        }
    }
    // At-least-once: some events come twice.
    let dups: Vec<Event> = all.iter().step_by(5).cloned().collect();
    all.extend(dups);
    all
}

/// A state without its seen-event set (which the snapshot leaves out on purpose).
fn essence(state: &JobState) -> JobState {
    JobState { seen: Default::default(), ..state.clone() }
}

fn expected(events: &[Event]) -> BTreeMap<String, JobState> {
    fold_all(events.iter()).into_iter().map(|(id, s)| (id, essence(&s))).collect()
}

async fn assert_same_state(api: &TestApi, events: &[Event]) {
    let want = expected(events);
    let got: BTreeMap<String, JobState> =
        api.book.read(|jobs| jobs.iter().map(|(id, s)| (id.clone(), essence(s))).collect());
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (id, state) in &want {
        assert_eq!(got[id].to_status(), state.to_status(), "JobStatus of {id}");
        assert_eq!(&got[id], state, "JobState of {id}");
        // And over HTTP, as its owner sees it.
        let token = if state.user_id == "alice" { ALICE } else { BOB };
        let (status, _, body) = api.call(Method::GET, &format!("/api/jobs/{id}/status"), Some(token), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::to_value(state.to_status()).unwrap(), "{id} over HTTP");
    }
}

fn restart(api: TestApi) -> TestApi {
    let TestApi { dir, bus, store, settings, config, .. } = api;
    with_parts(dir, bus, store, settings, config)
}

#[tokio::test]
async fn restart_from_the_snapshot_plus_the_rest_of_the_log_gives_the_same_state() {
    let events = workload();
    let (before, after) = events.split_at(events.len() * 3 / 5);
    let api = spawn(local_config()).await;
    api.publish_log(before).await;
    assert_eq!(api.drain().await, before.len());
    assert!(api.follower.snapshot().await.unwrap(), "a snapshot is written");
    assert!(!api.follower.snapshot().await.unwrap(), "nothing changed: no second write");
    assert!(api.store.head(&api.config.snapshot_key).await.unwrap().is_some());

    let api = restart(api);
    api.publish_log(after).await;
    let restored = api.follower.restore().await.unwrap();
    // The jobs running at the snapshot from it, the finished ones (within the
    // retention) from their records.
    assert_eq!(restored.snapshot_jobs + restored.records, 6);
    api.drain().await;
    assert_same_state(&api, &events).await;

    // Replaying the whole log again (a seek, a redelivery storm) changes nothing.
    api.publish_log(&events).await;
    api.drain().await;
    assert_same_state(&api, &events).await;
}

#[tokio::test]
async fn a_crash_without_a_snapshot_loses_nothing_acked() {
    let events = workload();
    let (before, after) = events.split_at(events.len() / 2);
    let mut config = local_config();
    config.journal_retention = std::time::Duration::ZERO;
    let api = spawn(config).await;
    api.publish_log(before).await;
    api.drain().await;
    // No snapshot: the process dies here. The acked events are in the journal.
    let journal_prefix = api.config.journal_prefix.clone().unwrap();
    assert!(!api.store.list(&journal_prefix).await.unwrap().is_empty());

    let api = restart(api);
    let restored = api.follower.restore().await.unwrap();
    assert_eq!((restored.snapshot_jobs, restored.journal_events), (0, before.len()));
    api.publish_log(after).await;
    api.drain().await;
    assert_same_state(&api, &events).await;

    // The next snapshot covers the journal, which is then removed (retention 0 here).
    assert!(api.follower.snapshot().await.unwrap());
    assert!(api.store.list(&journal_prefix).await.unwrap().is_empty());
    let api = restart(api);
    api.follower.restore().await.unwrap();
    assert_same_state(&api, &events).await;
}

#[tokio::test]
async fn another_instances_journal_is_folded_before_snapshotting() {
    // Two instances overlap during a rollout and split the subscription's messages.
    let events = workload();
    let (mine, theirs) = events.split_at(events.len() / 2);
    let a = spawn(local_config()).await;
    let b =
        with_parts(tempfile::tempdir().unwrap(), a.bus.clone(), a.store.clone(), a.settings.clone(), a.config.clone());
    b.follower.restore().await.unwrap();
    a.publish_log(mine).await;
    a.drain().await;
    b.publish_log(theirs).await;
    b.drain().await;
    // B snapshots last: it folds A's journal first, so its snapshot has every event.
    a.follower.snapshot().await.unwrap();
    b.follower.snapshot().await.unwrap();
    assert_same_state(&b, &events).await;
    let c =
        with_parts(tempfile::tempdir().unwrap(), a.bus.clone(), a.store.clone(), a.settings.clone(), a.config.clone());
    c.follower.restore().await.unwrap();
    assert_same_state(&c, &events).await;
}

#[tokio::test]
async fn an_unreadable_snapshot_stops_the_start() {
    let api = spawn_unready(local_config()).await;
    let key = api.config.snapshot_key.clone();
    api.store.put(&key, Box::pin(std::io::Cursor::new(b"{not json".to_vec())), PutMode::Overwrite).await.unwrap();
    match api.follower.restore().await {
        Err(FollowerError::Snapshot { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected a snapshot error, got {other:?}"),
    }
    assert!(!api.book.is_ready(), "not ready on a broken snapshot");
}

#[tokio::test]
async fn poison_messages_are_acked_and_counted() {
    let api = spawn(local_config()).await;
    let garbage = reel_runtime::bus::Message { data: b"\x00\x01".to_vec(), ..Default::default() };
    api.bus.publish(&api.names.events(), garbage).await.unwrap();
    let t0 = Utc::now();
    api.publish_log(&job_events("job_x", "p", "alice", t0, End::Running)[..1]).await;
    api.drain().await;
    assert_eq!(api.book.stats.undecodable.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(api.book.status("job_x").is_some());
    let stats = api.bus.stats(&api.names.api_subscription()).unwrap();
    assert!(stats.is_empty(), "everything acked: {stats:?}");
}

#[tokio::test]
async fn the_run_loop_snapshots_on_shutdown() {
    let api = spawn_unready(local_config()).await;
    let follower = api.follower.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { follower.run(shutdown).await }
    });
    let events = job_events("job_r", "p", "alice", Utc::now(), End::Completed);
    api.publish_log(&events).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while api.book.status("job_r").is_none_or(|s| s.status != reel_events::fold::Status::Completed) {
        assert!(std::time::Instant::now() < deadline, "the follower did not fold the log");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let api = restart(api);
    api.follower.restore().await.unwrap();
    assert_same_state(&api, &events).await;
}

/// Scale to zero: reel-api has no always-on instance, so nothing follows the log while
/// it is down (or idle, without CPU). A request after a cold start catches the book up
/// with the log before it answers: every event published meanwhile is in the first
/// answer, with no run loop and no drain.
#[tokio::test]
async fn after_a_cold_start_the_first_answers_hold_every_event_the_log_kept() {
    let events = workload();
    let (before, after) = events.split_at(events.len() / 2);
    let api = spawn(local_config()).await;
    api.publish_log(before).await;
    api.drain().await;
    assert!(api.follower.snapshot().await.unwrap());

    // Down: the rest of the jobs' events wait on the subscription.
    let api = restart(api);
    api.publish_log(after).await;
    api.follower.restore().await.unwrap();
    let state = reel_api::AppState::new(
        api.config.clone(),
        api.settings.clone(),
        api.bus.clone(),
        api.store.clone(),
        api.book.clone(),
    )
    .unwrap()
    .with_follower(api.follower.clone());
    let api = TestApi { app: reel_api::app(state), ..api };
    let (status, _, _) = api.call(Method::GET, "/api/projects/proj_nothing/jobs", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_same_state(&api, &events).await;
    assert_eq!(api.drain().await, 0, "the request folded everything waiting");
}
