//! reel-api's memory is bounded: progress event ids are not kept, finished jobs leave
//! memory after the retention and are still served (status, project list, cancel)
//! from their records, also after a restart, and a start reads no record of an old job.

mod common;

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use common::*;
use reel_events::fold::{fold_all, JobState};
use reel_events::types;
use reel_runtime::store::Store;
use serde_json::json;

/// A job reporting progress once every 5 s for an hour: 720 `job.progress` events.
fn an_hour_of_progress(job_id: &str, project: &str) -> Vec<reel_events::Event> {
    let t0 = Utc::now() - Duration::hours(1);
    let mut events = job_events(job_id, project, "alice", t0, End::Running);
    events.extend((0..720).map(|i| {
        event(
            types::JOB_PROGRESS,
            "//reel/stitch",
            &format!("progress-{job_id}-{i}"),
            job_id,
            t0 + Duration::seconds(5 * i),
            json!({"jobId": job_id, "projectId": project, "stage": "stitch", "progress": 60.0 + i as f64 * 39.0 / 720.0, "retryAttempt": 0}),
        )
    }));
    events
}

fn essence(state: &JobState) -> JobState {
    JobState { seen: Default::default(), ..state.clone() }
}

#[tokio::test]
async fn progress_event_ids_are_not_kept_and_copies_change_nothing() {
    let api = spawn(local_config()).await;
    let events = an_hour_of_progress("job_p", "proj_p");
    api.publish_log(&events).await;
    assert_eq!(api.drain().await, events.len());
    let want = essence(&fold_all(events.iter())["job_p"]);
    let got = api.book.read(|jobs| jobs["job_p"].clone());
    assert!(got.seen.is_empty(), "the book keeps {} event ids", got.seen.len());
    assert_eq!(got, want);

    // Every event redelivered: the same state, still no ids.
    api.publish_log(&events).await;
    api.drain().await;
    assert_eq!(api.book.read(|jobs| jobs["job_p"].clone()), want);
    let (status, _, body) = api.call(Method::GET, "/api/jobs/job_p/status", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    // An hour of progress is past the job's deadline: the API answers as of now.
    let now_view = want.to_status_at(chrono::Utc::now(), &api.settings.overdue());
    let mut body = body;
    let mut now_view = serde_json::to_value(now_view).unwrap();
    for answer in [&mut body, &mut now_view] {
        // The overdue view's end time is the time of the request.
        answer["completedAt"] = serde_json::Value::Null;
    }
    assert_eq!(body, now_view);
    assert_eq!(body["progress"], json!(98.9), "the highest report");
}

#[tokio::test]
async fn finished_jobs_leave_memory_and_are_served_from_their_records() {
    let mut config = local_config();
    config.retain_finished = std::time::Duration::from_secs(3600);
    // Covered journal objects go at the first snapshot, so the restart below reads
    // only the snapshot and records.
    config.journal_retention = std::time::Duration::ZERO;
    let api = spawn(config).await;
    // Three jobs that ended two hours ago, one that just ended, one still running.
    let old = Utc::now() - Duration::hours(3);
    let mut events = Vec::new();
    for (id, end) in [("job_old1", End::Completed), ("job_old2", End::Failed), ("job_old3", End::Cancelled)] {
        events.extend(job_events(id, "proj_m", "alice", old, end));
    }
    events.extend(job_events("job_new", "proj_m", "alice", Utc::now() - Duration::minutes(5), End::Completed));
    events.extend(job_events("job_run", "proj_r", "alice", Utc::now() - Duration::minutes(1), End::Running));
    api.publish_log(&events).await;
    api.drain().await;
    let want: Vec<(String, serde_json::Value)> =
        fold_all(events.iter()).into_iter().map(|(id, s)| (id, serde_json::to_value(s.to_status()).unwrap())).collect();
    assert!(api.follower.snapshot().await.unwrap());

    let in_memory = || api.book.read(|jobs| jobs.keys().cloned().collect::<Vec<_>>());
    assert_eq!(in_memory(), ["job_new", "job_run"], "the old finished jobs left memory");
    // The snapshot holds only the running job in full.
    let snap = reel_api::book::read_all(api.store.as_ref(), &api.config.snapshot_key).await.unwrap().unwrap();
    let snap = reel_api::snapshot::decode(&snap).unwrap();
    assert_eq!(snap.states.iter().map(|s| s.job_id.as_str()).collect::<Vec<_>>(), ["job_run"]);
    assert_eq!(snap.finished.iter().map(|f| f.job_id.as_str()).collect::<Vec<_>>(), ["job_new"]);

    let check = |api: &TestApi| {
        let want = want.clone();
        let app = api.app.clone();
        let (alice, bob) = (format!("Bearer {ALICE}"), format!("Bearer {BOB}"));
        let (alice, bob) = (Some(alice), Some(bob));
        async move {
            let (alice, bob) = (alice.as_deref(), bob.as_deref());
            for (id, status) in &want {
                let (code, _, body) = call(&app, Method::GET, &format!("/api/jobs/{id}/status"), alice, None).await;
                assert_eq!(code, StatusCode::OK, "{id}: {body}");
                assert_eq!(&body, status, "{id}");
                let (code, _, _) = call(&app, Method::GET, &format!("/api/jobs/{id}/status"), bob, None).await;
                assert_eq!(code, StatusCode::NOT_FOUND, "{id} is not bob's");
            }
            let (_, _, body) = call(&app, Method::GET, "/api/projects/proj_m/jobs", alice, None).await;
            let ids: Vec<&str> =
                body["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap()).collect();
            assert_eq!(ids, ["job_new", "job_old3", "job_old2", "job_old1"], "newest first, finished ones included");
            let (_, _, body) = call(&app, Method::GET, "/api/projects/proj_m/jobs", bob, None).await;
            assert_eq!(body["jobs"], json!([]));
            let (code, _, body) = call(&app, Method::POST, "/api/jobs/job_old1/cancel", alice, None).await;
            assert_eq!((code, &body["success"]), (StatusCode::OK, &json!(false)), "{body}");
        }
    };
    check(&api).await;

    // After a restart: the old jobs are not read at all, and still answer.
    let TestApi { dir, bus, store, settings, config, .. } = api;
    let api = with_parts(dir, bus, store, settings, config);
    let restored = api.follower.restore().await.unwrap();
    assert_eq!((restored.snapshot_jobs, restored.records), (1, 1), "job_run in full, job_new from its record");
    assert_eq!(in_memory_of(&api), ["job_new", "job_run"]);
    check(&api).await;

    // A late copy of an old job's event joins its whole state (its record is loaded
    // first), and the record is written again only because it changed.
    let late = event(
        types::JOB_PROGRESS,
        "//reel/stitch",
        "late-1",
        "job_old1",
        old + Duration::seconds(30),
        json!({"jobId": "job_old1", "projectId": "proj_m", "stage": "stitch", "progress": 40.0, "warnings": ["late warning"]}),
    );
    api.publish_log(std::slice::from_ref(&late)).await;
    api.drain().await;
    let mut all = events.clone();
    all.push(late);
    let joined = essence(&fold_all(all.iter())["job_old1"]);
    assert_eq!(api.book.read(|jobs| jobs["job_old1"].clone()), joined);
    api.follower.snapshot().await.unwrap();
    assert!(!in_memory_of(&api).contains(&"job_old1".to_string()), "out of memory again");
    let (_, _, body) = api.call(Method::GET, "/api/jobs/job_old1/status", Some(ALICE), None).await;
    assert_eq!(body, serde_json::to_value(joined.to_status()).unwrap());
    assert_eq!(body["status"], "completed");
}

fn in_memory_of(api: &TestApi) -> Vec<String> {
    api.book.read(|jobs| jobs.keys().cloned().collect())
}

#[tokio::test]
async fn a_project_index_keeps_the_newest_entries() {
    let api = spawn(local_config()).await;
    let archive = api.book.archive().unwrap();
    let max = reel_api::snapshot::PROJECT_INDEX_MAX;
    let t0 = Utc::now() - Duration::days(2);
    for i in 0..max + 3 {
        let mut job = JobState::new(&format!("job_{i:05}"));
        job.project_id = "proj_big".into();
        job.user_id = "alice".into();
        job.attempts.insert(
            0,
            reel_events::fold::AttemptState {
                requested_at: Some(t0 + Duration::seconds(i as i64)),
                status: Some(reel_events::fold::Status::Completed),
                ..Default::default()
            },
        );
        archive.save(&job, reel_api::snapshot::encode_job(&job)).await.unwrap();
    }
    assert_eq!(archive.trim_project("proj_big").await.unwrap(), 3);
    let keys = api.store.list_keys(&reel_api::snapshot::project_prefix("proj_big")).await.unwrap();
    assert_eq!(keys.len(), max);
    assert_eq!(reel_api::snapshot::job_of_entry(&keys[0]), Some(format!("job_{:05}", max + 2).as_str()));
    // The list answers the newest, at most its limit; the oldest still answers by id.
    let (_, _, body) = api.call(Method::GET, "/api/projects/proj_big/jobs", Some(ALICE), None).await;
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), reel_api::routes::PROJECT_JOBS_LIMIT);
    assert_eq!(jobs[0]["jobId"], format!("job_{:05}", max + 2));
    let (code, _, _) = api.call(Method::GET, "/api/jobs/job_00000/status", Some(ALICE), None).await;
    assert_eq!(code, StatusCode::OK);
}
