//! The endpoints in local token mode: isolation, stitch, 400/409/429, cancel, health,
//! metrics.

mod common;

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use common::*;
use reel_events::payload::JobRef;
use reel_events::{types, AttributesReader};
use reel_runtime::bus::Bus;
use reel_runtime::config::Quotas;
use reel_runtime::stage::cancel_marker_key;
use reel_runtime::store::Store;
use reel_runtime::tenancy;
use serde_json::{json, Value};

#[tokio::test]
async fn every_api_route_needs_a_known_token() {
    let api = spawn(local_config()).await;
    for (method, uri) in [
        (Method::GET, "/api/jobs/job_1/status"),
        (Method::POST, "/api/jobs/job_1/cancel"),
        (Method::GET, "/api/projects/p/jobs"),
        (Method::POST, "/api/projects/p/stitch"),
    ] {
        let (status, headers, body) = api.call(method.clone(), uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert!(body["error"].as_str().unwrap().contains("missing"), "{body}");
        let (status, _, _) = api.call(method.clone(), uri, Some("not-a-token"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} with an unknown token");
    }
    let (status, _, _) = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "the OpenAPI document needs no token");
    let (status, _, _) = api.call(Method::GET, "/api/projects/p/jobs", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn stitch_answers_202_and_the_job_is_queued_at_once() {
    let api = spawn(local_config()).await;
    let (status, headers, body) =
        api.call(Method::POST, "/api/projects/proj_1/stitch", Some(ALICE), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_string();
    assert!(job_id.starts_with("job_") && job_id.len() == 36, "{job_id}");
    assert_eq!(headers["location"], format!("/api/jobs/{job_id}/status"));

    let (status, _, job) = api.call(Method::GET, &format!("/api/jobs/{job_id}/status"), Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["projectId"], "proj_1");
    assert_eq!(job["userId"], "alice");
    assert_eq!(job["progress"], 0.0);
    assert_eq!(job["outputPath"], "gs://bucket/out/reel.mp4");

    // Published to the requests topic (validate's input) and to the log.
    let requests = api.take(&api.names.subscription(reel_events::Stage::Validate)).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.ty(), types::STITCH_REQUESTED);
    assert_eq!(request.source().to_string(), "//reel/api");
    assert_eq!(request.subject(), Some(job_id.as_str()));
    let data: reel_events::payload::StitchRequested = reel_events::envelope::decode(request).unwrap();
    assert_eq!(data.job_id.as_deref(), Some(job_id.as_str()));
    assert_eq!(data.user_id, "alice", "the user comes from the token");
    assert_eq!(data.project_id, "proj_1");
    let logged = api.take(&api.names.api_subscription()).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].id(), request.id());

    // The list shows it, to its owner only.
    let (_, _, list) = api.call(Method::GET, "/api/projects/proj_1/jobs", Some(ALICE), None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["jobId"], job_id.as_str());
    let (_, _, list) = api.call(Method::GET, "/api/projects/proj_1/jobs", Some(BOB), None).await;
    assert_eq!(list, json!({"jobs": []}));
}

#[tokio::test]
async fn bad_stitch_requests_answer_400_with_a_message() {
    let api = spawn(local_config()).await;
    let post = |body: serde_json::Value| {
        let api = &api;
        async move { api.call(Method::POST, "/api/projects/proj_1/stitch", Some(ALICE), Some(body)).await }
    };
    let mut one_clip = stitch_body();
    one_clip["clipPaths"] = json!(["gs://bucket/a.mp4"]);
    let (status, _, body) = post(one_clip).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorType"], "insufficient_clips");
    assert!(body["error"].as_str().unwrap().contains("at least 2 clips"), "{body}");

    let cases = [
        ("orientation", json!("diagonal"), "diagonal"),
        ("compression", json!("lossy"), "lossy"),
        ("jobId", json!("job_mine"), "jobId"),
        ("userId", json!("mallory"), "userId"),
        ("projectId", json!("other"), "projectId"),
        ("colour", json!("red"), "colour"),
        ("outputPath", json!(""), "outputPath"),
    ];
    for (field, value, mentioned) in cases {
        let mut body = stitch_body();
        body[field] = value;
        let (status, _, answer) = post(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        assert_eq!(answer["errorType"], "invalid_request", "{field}");
        assert!(answer["error"].as_str().unwrap().contains(mentioned), "{field}: {answer}");
    }
    let mut missing = stitch_body();
    missing.as_object_mut().unwrap().remove("orientation");
    let (status, _, answer) = post(missing).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().contains("orientation"), "{answer}");

    // Not JSON at all.
    let request = axum::http::Request::post("/api/projects/proj_1/stitch")
        .header("authorization", format!("Bearer {ALICE}"))
        .body(axum::body::Body::from("clips please"))
        .unwrap();
    let response = tower::ServiceExt::oneshot(api.app.clone(), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A bad project id.
    let (status, _, _) = api.call(Method::POST, "/api/projects/a%20b/stitch", Some(ALICE), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(api.book.is_empty(), "no job was started by a bad request");
}

#[tokio::test]
async fn a_second_job_for_a_busy_project_is_409_unless_forced() {
    let api = spawn(local_config()).await;
    let (status, _, first) =
        api.call(Method::POST, "/api/projects/proj_1/stitch", Some(ALICE), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first = first["jobId"].as_str().unwrap().to_string();
    let (status, _, body) =
        api.call(Method::POST, "/api/projects/proj_1/stitch", Some(ALICE), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errorType"], "job_already_running");
    assert_eq!(body["runningJobId"], first.as_str());
    // Another user of the same project is refused too, without learning the job's id.
    let (status, _, body) = api.call(Method::POST, "/api/projects/proj_1/stitch", Some(BOB), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.get("runningJobId").is_none(), "{body}");
    // Another project is free.
    let (status, _, _) = api.call(Method::POST, "/api/projects/proj_2/stitch", Some(BOB), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Once the first job has ended, the project is free again.
    let end = job_events(&first, "proj_1", "alice", Utc::now() - Duration::seconds(100), End::Completed);
    api.publish_log(&end[1..]).await;
    api.drain().await;
    let (status, _, _) = api.call(Method::POST, "/api/projects/proj_1/stitch", Some(BOB), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Busy again; forceRestart starts anyway.
    let (status, _, _) = api.call(Method::POST, "/api/projects/proj_1/stitch", Some(ALICE), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let mut forced = stitch_body();
    forced["forceRestart"] = json!(true);
    let (status, _, _) = api.call(Method::POST, "/api/projects/proj_1/stitch", Some(ALICE), Some(forced)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_requests_for_one_project_start_one_job() {
    let api = spawn(local_config()).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let app = api.app.clone();
            tokio::spawn(async move {
                call(
                    &app,
                    Method::POST,
                    "/api/projects/proj_race/stitch",
                    Some(&format!("Bearer {ALICE}")),
                    Some(stitch_body()),
                )
                .await
                .0
            })
        })
        .collect();
    let answers: Vec<StatusCode> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    let accepted = answers.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let conflicts = answers.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((accepted, conflicts), (1, 7), "{answers:?}");
}

/// `POST /api/projects/{project}/stitch` over real HTTP, as `token`.
async fn stitch_over_http(base: &str, project: &str, token: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    http(Method::POST, &format!("{base}/api/projects/{project}/stitch"), Some(token), &[], Some(stitch_body())).await
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_from_validates_records() {
    let quota = Quotas { active_jobs: 2, jobs_per_hour: 3 };
    let api = spawn_with(local_config(), reel_runtime::Settings { quota, ..Default::default() }).await;
    let base = serve(api.app.clone()).await;
    // Validate accepted two of Alice's jobs: each holds a quota slot (its records).
    for job in ["job_a1", "job_a2"] {
        tenancy::take_slot(api.store.as_ref(), "alice", job).await.unwrap();
    }
    let (status, headers, body) = stitch_over_http(&base, "p3", ALICE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errorType"], "quota_exceeded");
    assert!(body["error"].as_str().unwrap().contains("2 jobs queued or running"), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(api.take(&api.names.subscription(reel_events::Stage::Validate)).await.is_empty(), "nothing published");
    // Bob has his own quota.
    let (status, _, _) = stitch_over_http(&base, "p3", BOB).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Alice's jobs end (finalize releases their slots): the active quota frees up; the
    // hourly one (3) still counts them and is hit after one more.
    for job in ["job_a1", "job_a2"] {
        let job = JobRef { job_id: job.into(), project_id: "p".into(), user_id: "alice".into() };
        tenancy::release(api.store.as_ref(), &job).await;
    }
    let (status, _, _) = stitch_over_http(&base, "p3b", ALICE).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tenancy::take_slot(api.store.as_ref(), "alice", "job_a3").await.unwrap();
    let (status, headers, body) = stitch_over_http(&base, "p4", ALICE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"].as_str().unwrap().contains("hour"), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "the oldest job leaves the hour in about an hour: {retry}");
}

#[tokio::test]
async fn users_see_and_cancel_only_their_own_jobs() {
    let api = spawn(local_config()).await;
    let t0 = Utc::now() - Duration::seconds(60);
    api.publish_log(&job_events("job_alice", "proj", "alice", t0, End::Running)).await;
    api.drain().await;

    let (status, _, job) = api.call(Method::GET, "/api/jobs/job_alice/status", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "running");
    assert_eq!(job["stage"], "stitch");
    assert_eq!(job["progress"], 60.0);
    assert_eq!(job["warnings"], json!(["clip 3 skipped"]));

    let (status, _, body) = api.call(Method::GET, "/api/jobs/job_alice/status", Some(BOB), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("not found"));
    let (status, _, _) = api.call(Method::GET, "/api/jobs/job_nobody/status", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a job that does not exist answers the same");
    let (status, _, _) = api.call(Method::POST, "/api/jobs/job_alice/cancel", Some(BOB), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(api.store.head(&cancel_marker_key("job_alice")).await.unwrap().is_none(), "bob's cancel wrote nothing");
    let (_, _, list) = api.call(Method::GET, "/api/projects/proj/jobs", Some(BOB), None).await;
    assert_eq!(list["jobs"], json!([]));
}

/// Every job ends: one that outlived its deadline plus the grace with no end event reads
/// failed/timeout, and the sweeper publishes its job.failed, once.
#[tokio::test]
async fn a_job_that_never_ended_reads_failed_and_the_sweeper_says_so() {
    let api = spawn(local_config()).await;
    let overdue = api.settings.overdue();
    let long_ago = Utc::now() - overdue.job_timeout - overdue.grace - Duration::minutes(1);
    api.publish_log(&job_events("job_stuck", "proj", "alice", long_ago, End::Running)).await;
    api.publish_log(&job_events("job_live", "proj2", "alice", Utc::now() - Duration::seconds(60), End::Running)).await;
    api.drain().await;

    let (status, _, job) = api.call(Method::GET, "/api/jobs/job_stuck/status", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["errorType"], "timeout", "{job}");
    let (_, _, live) = api.call(Method::GET, "/api/jobs/job_live/status", Some(ALICE), None).await;
    assert_eq!(live["status"], "running", "{live}");

    assert_eq!(api.follower.sweep().await, vec!["job_stuck".to_string()]);
    api.drain().await;
    assert!(api.follower.sweep().await.is_empty(), "a swept job is not overdue any more");
    let (_, _, job) = api.call(Method::GET, "/api/jobs/job_stuck/status", Some(ALICE), None).await;
    assert_eq!((job["status"].as_str(), job["errorType"].as_str()), (Some("failed"), Some("timeout")));
}

#[tokio::test]
async fn cancel_writes_the_marker_and_publishes_cancel_requested() {
    let api = spawn(local_config()).await;
    api.publish_log(&job_events("job_c", "proj", "alice", Utc::now() - Duration::seconds(60), End::Running)).await;
    api.drain().await;

    let (status, _, body) = api.call(Method::POST, "/api/jobs/job_c/cancel", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true, "{body}");
    assert!(body["message"].as_str().unwrap().contains("job_c"));
    assert!(api.store.head(&cancel_marker_key("job_c")).await.unwrap().is_some(), "the marker the stages poll");

    let logged = api.take(&api.names.api_subscription()).await;
    let cancel: Vec<_> = logged.iter().filter(|e| e.ty() == types::CANCEL_REQUESTED).collect();
    assert_eq!(cancel.len(), 1, "{logged:?}");
    assert_eq!(cancel[0].subject(), Some("job_c"));
    let data: reel_events::payload::CancelRequested = reel_events::envelope::decode(cancel[0]).unwrap();
    assert_eq!((data.job_id.as_str(), data.project_id.as_str(), data.user_id.as_str()), ("job_c", "proj", "alice"));
    assert!(api.book.read(|jobs| jobs["job_c"].current().unwrap().1.cancel_requested), "folded at once");

    // The stage stops and reports; a second cancel answers success: false.
    let cancelled = job_events("job_c", "proj", "alice", Utc::now() - Duration::seconds(60), End::Cancelled);
    api.publish_log(&cancelled[cancelled.len() - 1..]).await;
    api.drain().await;
    let (_, _, job) = api.call(Method::GET, "/api/jobs/job_c/status", Some(ALICE), None).await;
    assert_eq!(job["status"], "cancelled");
    let (status, _, body) = api.call(Method::POST, "/api/jobs/job_c/cancel", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], false);
}

#[tokio::test]
async fn cancelling_a_finished_job_answers_success_false() {
    let api = spawn(local_config()).await;
    let t0 = Utc::now() - Duration::seconds(200);
    api.publish_log(&job_events("job_ok", "proj", "alice", t0, End::Completed)).await;
    api.publish_log(&job_events("job_bad", "proj2", "alice", t0, End::Failed)).await;
    api.drain().await;
    for (job, word) in [("job_ok", "completed"), ("job_bad", "failed")] {
        let (status, _, body) = api.call(Method::POST, &format!("/api/jobs/{job}/cancel"), Some(ALICE), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], false, "{body}");
        assert!(body["message"].as_str().unwrap().contains(word), "{body}");
        assert!(api.store.head(&cancel_marker_key(job)).await.unwrap().is_none());
    }
    let (_, _, job) = api.call(Method::GET, "/api/jobs/job_bad/status", Some(ALICE), None).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"], "clip 2 is not a video");
    assert_eq!(job["errorType"], "corrupt_input");
}

#[tokio::test]
async fn health_waits_for_the_snapshot() {
    let api = spawn_unready(local_config()).await;
    let (status, headers, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let (status, _, _) = api.call(Method::GET, "/api/projects/p/jobs", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no answers from a half-loaded state");
    api.follower.restore().await.unwrap();
    let (status, _, body) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn metrics_describe_the_jobs() {
    let api = spawn(local_config()).await;
    let (_, _, body) = api.call(Method::GET, "/metrics", None, None).await;
    assert!(!body.as_str().unwrap().contains("NaN"), "nothing reads NaN without jobs:\n{body}");
    let t0 = Utc::now() - Duration::seconds(300);
    api.publish_log(&job_events("job_1", "p1", "alice", t0, End::Completed)).await;
    api.publish_log(&job_events("job_2", "p2", "alice", t0, End::Failed)).await;
    api.publish_log(&job_events("job_3", "p3", "bob", t0, End::Running)).await;
    api.bus
        .publish(&api.names.events(), reel_runtime::bus::Message { data: b"garbage".to_vec(), ..Default::default() })
        .await
        .unwrap();
    api.drain().await;
    let (status, headers, body) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = body.as_str().unwrap();
    for name in reel_api::metrics::METRIC_NAMES {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    for line in [
        "reel_api_jobs{status=\"completed\"} 1",
        "reel_api_jobs{status=\"failed\"} 1",
        "reel_api_jobs{status=\"running\"} 1",
        "reel_api_messages_skipped_total{reason=\"undecodable\"} 1",
        "reel_api_ready 1",
        "# TYPE process_resident_memory_bytes gauge",
        "# EOF",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    let folded = text.lines().find(|l| l.starts_with("reel_api_events_folded_total ")).unwrap();
    assert!(!folded.ends_with(" 0"), "{folded}");
}

#[tokio::test]
async fn progress_never_goes_backwards_whatever_the_delivery_order() {
    let api = spawn(local_config()).await;
    let t0 = Utc::now() - Duration::seconds(60);
    let mut events = job_events("job_p", "proj", "alice", t0, End::Running);
    // Late, reordered and repeated deliveries, as Pub/Sub may make them.
    events.reverse();
    let again = events[2].clone();
    events.insert(1, again);
    let mut last = -1.0;
    let mut seen = Vec::new();
    for event in &events {
        api.publish_log(std::slice::from_ref(event)).await;
        api.drain().await;
        let (status, _, job) = api.call(Method::GET, "/api/jobs/job_p/status", Some(ALICE), None).await;
        if status == StatusCode::NOT_FOUND {
            // Progress events carry no userId: the job is nobody's until one that does arrives.
            continue;
        }
        let progress = job["progress"].as_f64().unwrap();
        seen.push(progress);
        assert!(progress >= last, "progress went back: {seen:?}");
        last = progress;
    }
    assert_eq!(last, 60.0);
    assert!(seen.len() >= 5, "{seen:?}");
}

/// A job started through the API carries the caller's trace (Cloud Run's
/// `X-Cloud-Trace-Context`, or a W3C `traceparent`), so it reads as one trace from the
/// API call to the reel.
#[tokio::test]
async fn a_job_started_through_the_api_carries_the_callers_trace() {
    use tower::ServiceExt;
    let api = spawn(local_config()).await;
    for (header, value, want) in [
        (
            "x-cloud-trace-context",
            "4bf92f3577b34da6a3ce929d0e0e4736/255;o=1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000ff-01",
        ),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ] {
        let project = format!("proj_trace_{}", header.len());
        let request = axum::http::Request::builder()
            .method(Method::POST)
            .uri(format!("/api/projects/{project}/stitch"))
            .header("authorization", format!("Bearer {ALICE}"))
            .header("content-type", "application/json")
            .header(header, value)
            .body(axum::body::Body::from(stitch_body().to_string()))
            .unwrap();
        let response = api.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let published = api.take(&api.names.subscription(reel_events::Stage::Validate)).await;
        assert_eq!(published.len(), 1);
        let trace = reel_events::envelope::extension_str(&published[0], reel_events::envelope::TRACEPARENT);
        assert_eq!(trace, Some(want), "{header}");
    }
}
