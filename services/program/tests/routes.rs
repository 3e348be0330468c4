//! The HTTP surface of a stage program, in both modes, without a network.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use reel_events::{Event, Stage};
use reel_program::push;
use reel_runtime::embedded::{DirStore, EmbeddedBus};
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, Handler, Outcome};
use reel_runtime::worker::{Worker, WorkerOptions};
use reel_runtime::Settings;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Idle;

#[async_trait]
impl Handler for Idle {
    fn stage(&self) -> Stage {
        Stage::Finalize
    }

    async fn handle(&self, _ctx: &Context, _event: &Event) -> Outcome {
        Outcome::Skip("idle".into())
    }
}

fn worker(dir: &tempfile::TempDir) -> Arc<Worker> {
    let settings = Settings { temp_dir: dir.path().join("tmp"), ..Settings::default() };
    let work = Arc::new(DirStore::new(dir.path().join("work")).unwrap());
    let options = WorkerOptions::for_stage(Stage::Finalize, &settings);
    Arc::new(Worker::new(
        Arc::new(EmbeddedBus::new()),
        Arc::new(Idle),
        &settings,
        work,
        Arc::new(LocalResolver::new()),
        options,
    ))
}

async fn status(app: axum::Router, method: &str, path: &str) -> StatusCode {
    let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
    app.oneshot(request).await.unwrap().status()
}

/// A pull-mode program started with `PORT` set (Cloud Run, GKE) serves `/healthz` and
/// `/metrics`; building that router used to panic on a duplicate `POST /` route.
#[tokio::test]
async fn pull_mode_serves_health_and_metrics_and_refuses_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let app = push::metrics_router(worker(&dir));
    assert_eq!(status(app.clone(), "GET", "/healthz").await, StatusCode::OK);
    assert_eq!(status(app.clone(), "GET", "/metrics").await, StatusCode::OK);
    assert_eq!(status(app, "POST", "/").await, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn push_mode_serves_messages_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let app = push::router(worker(&dir), CancellationToken::new(), String::new());
    assert_eq!(status(app.clone(), "GET", "/healthz").await, StatusCode::OK);
    assert_eq!(status(app.clone(), "GET", "/metrics").await, StatusCode::OK);
    // An empty body is no push envelope.
    assert_eq!(status(app, "POST", "/").await, StatusCode::BAD_REQUEST);
}
