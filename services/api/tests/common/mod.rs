//! Test helpers: an API on the embedded bus and a directory store, requests through
//! `tower::ServiceExt::oneshot`, and realistic job event sequences.
#![allow(dead_code)]

pub mod oidc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use reel_api::book::JobBook;
use reel_api::config::ApiConfig;
use reel_api::follower::{Follower, FollowerOptions};
use reel_api::{app, AppState};
use reel_events::{envelope, types, Event};
use reel_runtime::bus::Bus;
use reel_runtime::embedded::{DirStore, EmbeddedBus};
use reel_runtime::topology::Names;
use reel_runtime::Settings;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

/// An API with everything it talks to.
pub struct TestApi {
    pub dir: tempfile::TempDir,
    pub bus: Arc<EmbeddedBus>,
    pub store: Arc<DirStore>,
    pub book: Arc<JobBook>,
    pub follower: Arc<Follower>,
    pub config: ApiConfig,
    pub settings: Arc<Settings>,
    pub names: Names,
    pub app: Router,
}

/// The tokens of local mode in these tests.
pub const ALICE: &str = "alice-token";
pub const BOB: &str = "bob-token";

pub fn local_config() -> ApiConfig {
    ApiConfig::local(reel_api::config::LocalTokens::new([(ALICE, "alice"), (BOB, "bob")]))
}

/// A fresh API, restored (empty) and ready.
pub async fn spawn(config: ApiConfig) -> TestApi {
    let api = spawn_unready(config).await;
    api.follower.restore().await.expect("restore");
    api
}

/// A fresh API with these shared settings (quotas, …), restored (empty) and ready.
pub async fn spawn_with(config: ApiConfig, settings: Settings) -> TestApi {
    let api = spawn_unready_with(config, settings).await;
    api.follower.restore().await.expect("restore");
    api
}

/// A fresh API whose follower has not restored yet.
pub async fn spawn_unready(config: ApiConfig) -> TestApi {
    spawn_unready_with(config, Settings::default()).await
}

async fn spawn_unready_with(config: ApiConfig, settings: Settings) -> TestApi {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::new(dir.path().join("work")).expect("dir store"));
    let bus = Arc::new(EmbeddedBus::new());
    let settings = Arc::new(settings);
    bus.ensure_topology(&settings.topology()).await.expect("topology");
    with_parts(dir, bus, store, settings, config)
}

/// An API over existing parts (a restart: same bus and store, new process state).
pub fn with_parts(
    dir: tempfile::TempDir,
    bus: Arc<EmbeddedBus>,
    store: Arc<DirStore>,
    settings: Arc<Settings>,
    config: ApiConfig,
) -> TestApi {
    let names = settings.topology().names();
    let book = Arc::new(JobBook::with_archive(store.clone()).with_overdue(settings.overdue()));
    let mut options = FollowerOptions::new(&config, names.api_subscription());
    // The tests sweep by hand (Follower::sweep); the interval only matters to `run`.
    options.sweep = Some(reel_api::follower::Sweep {
        every: std::time::Duration::from_secs(3600),
        policy: settings.overdue(),
        names: names.clone(),
    });
    options.receive_wait = std::time::Duration::from_millis(50);
    options.batch_window = std::time::Duration::from_millis(20);
    let follower = Arc::new(Follower::new(book.clone(), bus.clone(), store.clone(), options));
    let state =
        AppState::new(config.clone(), settings.clone(), bus.clone(), store.clone(), book.clone()).expect("state");
    TestApi { dir, bus, store, book, follower, config, settings, names, app: app(state) }
}

impl TestApi {
    /// Send a request; the body answers as JSON when it parses, else as a string.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        call(&self.app, method, uri, token.map(|t| format!("Bearer {t}")).as_deref(), body).await
    }

    /// Publish events to the log as the stages would (binary mode).
    pub async fn publish_log(&self, events: &[Event]) {
        for event in events {
            self.bus.publish(&self.names.events(), reel_events::binding::encode_binary(event)).await.expect("publish");
        }
    }

    /// Pull the log until it is empty.
    pub async fn drain(&self) -> usize {
        let mut folded = 0;
        loop {
            let batch = self.follower.pull_once().await.expect("pull");
            if batch.received == 0 {
                return folded;
            }
            folded += batch.folded;
        }
    }

    /// Every message now waiting on a subscription, decoded, consuming them.
    pub async fn take(&self, subscription: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let got =
                self.bus.receive(subscription, 100, std::time::Duration::from_millis(100)).await.expect("receive");
            if got.is_empty() {
                return events;
            }
            for d in got {
                self.bus.ack(subscription, &d.ack_id).await.expect("ack");
                events.push(reel_events::binding::decode(&d.message).expect("decodes"));
            }
        }
    }
}

/// The API served over real HTTP on 127.0.0.1 until the test ends; its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A request over real HTTP with a bearer token and extra headers (`X-Reel-User`, …);
/// the body answers as JSON when it parses, else as a string.
pub async fn http(
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &[u8])],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, axum::http::HeaderValue::from_bytes(value).expect("a header value"));
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.expect("the API answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.bytes().await.expect("body");
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

/// Send a request with a raw `Authorization` value.
pub async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let request = match body {
        Some(b) => request.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 10 << 20).await.expect("body");
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

/// A valid stitch body.
pub fn stitch_body() -> Value {
    json!({
        "clipPaths": ["gs://bucket/a.mp4", "gs://bucket/b.mp4"],
        "outputPath": "gs://bucket/out/reel.mp4",
        "orientation": "portrait",
        "compression": "optimized"
    })
}

/// An event as a stage would emit it.
pub fn event(ty: &str, source: &str, id: &str, job_id: &str, time: DateTime<Utc>, data: Value) -> Event {
    envelope::build(ty, source, id, job_id, time, &data).expect("event builds")
}

/// How a job in [`job_events`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// A realistic event sequence of one job, from request to `end`, starting at `t0`.
pub fn job_events(job_id: &str, project: &str, user: &str, t0: DateTime<Utc>, end: End) -> Vec<Event> {
    let at = |s: i64| t0 + Duration::seconds(s);
    let spec = json!({
        "jobId": job_id, "projectId": project, "userId": user,
        "clipPaths": ["gs://b/1.mp4", "gs://b/2.mp4", "gs://b/3.mp4"], "outputPath": "gs://b/out.mp4",
        "orientation": "portrait", "compression": "optimized", "retryAttempt": 0, "forceRestart": false,
        "acceptedAt": at(1), "deadline": at(900)
    });
    let progress = |stage: &str, p: f64, s: i64| {
        event(
            types::JOB_PROGRESS,
            &format!("//reel/{stage}"),
            &format!("progress-{job_id}-{stage}-{s}"),
            job_id,
            at(s),
            json!({"jobId": job_id, "projectId": project, "stage": stage, "progress": p, "stageProgress": 50.0, "estimatedCompletion": at(120), "retryAttempt": 0}),
        )
    };
    let mut events = vec![
        event(
            types::STITCH_REQUESTED,
            "//reel/api",
            &format!("req-{job_id}"),
            job_id,
            t0,
            json!({"jobId": job_id, "projectId": project, "userId": user, "clipPaths": ["gs://b/1.mp4", "gs://b/2.mp4", "gs://b/3.mp4"], "outputPath": "gs://b/out.mp4", "orientation": "portrait", "compression": "optimized"}),
        ),
        progress("validate", 1.0, 1),
        event(types::JOB_VALIDATED, "//reel/validate", &format!("val-{job_id}"), job_id, at(2), json!({"job": spec})),
        progress("download", 8.0, 5),
        event(
            types::CLIPS_DOWNLOADED,
            "//reel/download",
            &format!("dl-{job_id}"),
            job_id,
            at(10),
            json!({"job": spec, "clips": [], "skippedClips": [{"path": "gs://b/3.mp4", "reason": "not a video"}], "warnings": ["clip 3 skipped"]}),
        ),
        progress("stitch", 30.0, 20),
        progress("stitch", 60.0, 40),
    ];
    match end {
        End::Running => {}
        End::Completed => {
            events.push(event(
                types::REEL_STITCHED,
                "//reel/stitch",
                &format!("st-{job_id}"),
                job_id,
                at(60),
                json!({"job": spec, "workKey": "jobs/x/reel.mp4", "reel": {"sizeBytes": 50_000_000u64, "durationSeconds": 60.0, "crc32c": "AAAAAA==", "mode": "copy"}, "skippedClips": [], "warnings": []}),
            ));
            events.push(progress("upload", 90.0, 65));
            events.push(event(
                types::REEL_UPLOADED,
                "//reel/upload",
                &format!("up-{job_id}"),
                job_id,
                at(70),
                json!({"job": spec, "outputPath": "gs://b/out.mp4", "reel": {"sizeBytes": 50_000_000u64, "durationSeconds": 60.0, "crc32c": "AAAAAA==", "mode": "copy"}, "skippedClips": [], "warnings": []}),
            ));
            events.push(event(
                types::JOB_COMPLETED,
                "//reel/finalize",
                &format!("done-{job_id}"),
                job_id,
                at(72),
                json!({"jobId": job_id, "projectId": project, "userId": user, "outputPath": "gs://b/out.mp4", "sizeBytes": 50_000_000u64, "durationSeconds": 60.0, "crc32c": "AAAAAA==", "skippedClips": [{"path": "gs://b/3.mp4", "reason": "not a video"}], "warnings": ["clip 3 skipped"], "mode": "copy", "retryAttempt": 0}),
            ));
        }
        End::Failed => events.push(event(
            types::JOB_FAILED,
            "//reel/stitch",
            &format!("fail-{job_id}"),
            job_id,
            at(50),
            json!({"jobId": job_id, "projectId": project, "userId": user, "stage": "stitch", "errorType": "corrupt_input", "message": "clip 2 is not a video", "retryable": false, "attempts": 1, "retryAttempt": 0}),
        )),
        End::Cancelled => events.push(event(
            types::JOB_CANCELLED,
            "//reel/stitch",
            &format!("cancel-{job_id}"),
            job_id,
            at(45),
            json!({"jobId": job_id, "projectId": project, "userId": user, "stage": "stitch", "retryAttempt": 0}),
        )),
    }
    events
}
