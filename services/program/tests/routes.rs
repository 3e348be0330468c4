//! The HTTP surface of a stage program, in both modes, without a network.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use reel_events::{binding, Event, Stage};
use reel_program::push;
use reel_runtime::bus::Bus;
use reel_runtime::embedded::EmbeddedBus;
use reel_runtime::stage::{Context, Handler, Outcome};
use reel_runtime::worker::{dead_letter_attrs, Worker, WorkerOptions};
use reel_testkit::fixtures;
use reel_testkit::stage::StageHarness;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[derive(Default)]
struct Idle {
    calls: AtomicU32,
}

#[async_trait]
impl Handler for Idle {
    fn stage(&self) -> Stage {
        Stage::Finalize
    }

    async fn handle(&self, _ctx: &Context, _event: &Event) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Outcome::Skip("idle".into())
    }
}

struct Rig {
    _harness: StageHarness,
    bus: Arc<EmbeddedBus>,
    idle: Arc<Idle>,
    worker: Arc<Worker>,
}

const DEAD: &str = "test-dead-letters";

async fn rig() -> Rig {
    let harness = StageHarness::new();
    let bus = Arc::new(EmbeddedBus::new());
    let mut topology = harness.settings.topology();
    let dead_letter_topic = topology.names().dead_letter_topic(Stage::Finalize);
    topology.subscriptions.push(fixtures::subscription(DEAD, &dead_letter_topic));
    bus.ensure_topology(&topology).await.unwrap();
    let idle = Arc::new(Idle::default());
    let options = WorkerOptions::for_stage(Stage::Finalize, &harness.settings);
    let worker = Arc::new(Worker::new(
        bus.clone(),
        idle.clone(),
        &harness.settings,
        harness.work.clone(),
        Arc::new(reel_runtime::local::LocalResolver::new()),
        options,
    ));
    Rig { _harness: harness, bus, idle, worker }
}

async fn send(app: axum::Router, request: Request<Body>) -> StatusCode {
    app.oneshot(request).await.unwrap().status()
}

fn get(path: &str) -> Request<Body> {
    Request::builder().method("GET").uri(path).body(Body::empty()).unwrap()
}

fn post(body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

fn push_envelope(message: &reel_runtime::Message) -> serde_json::Value {
    serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(&message.data),
            "attributes": message.attributes,
            "messageId": "m-1",
        },
        "subscription": "projects/p/subscriptions/reel-finalize",
        "deliveryAttempt": 1,
    })
}

fn finalize_input() -> reel_runtime::Message {
    let job = fixtures::job_spec("job_push");
    let event = StageHarness::event(Stage::Finalize.input_type(), &job.job_id, &serde_json::json!({ "job": job }));
    binding::encode_binary(&event)
}

/// A pull-mode program started with `PORT` set (Cloud Run, GKE) serves `/healthz` and
/// `/metrics`; building that router used to panic on a duplicate `POST /` route.
#[tokio::test]
async fn pull_mode_serves_health_and_metrics_and_refuses_pushes() {
    let rig = rig().await;
    let app = push::metrics_router(rig.worker.clone());
    assert_eq!(send(app.clone(), get("/healthz")).await, StatusCode::OK);
    assert_eq!(send(app.clone(), get("/metrics")).await, StatusCode::OK);
    assert_eq!(send(app, post(b"{}".to_vec())).await, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn push_mode_serves_messages_health_and_metrics() {
    let rig = rig().await;
    let app = push::router(rig.worker.clone(), CancellationToken::new(), String::new());
    assert_eq!(send(app.clone(), get("/healthz")).await, StatusCode::OK);
    assert_eq!(send(app.clone(), get("/metrics")).await, StatusCode::OK);
    let body = serde_json::to_vec(&push_envelope(&finalize_input())).unwrap();
    assert_eq!(send(app, post(body)).await, StatusCode::NO_CONTENT);
    assert_eq!(rig.idle.calls.load(Ordering::SeqCst), 1);
}

/// A body that is no push envelope can never be processed: it is dead-lettered with the
/// reason and acknowledged (2xx), as pull mode does, instead of being pushed forever.
#[tokio::test]
async fn an_unreadable_push_is_dead_lettered_and_acknowledged() {
    let rig = rig().await;
    let app = push::router(rig.worker.clone(), CancellationToken::new(), String::new());
    assert_eq!(send(app, post(b"this is not json".to_vec())).await, StatusCode::NO_CONTENT);
    let letters = rig.bus.receive(DEAD, 10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(letters.len(), 1, "one dead letter");
    assert_eq!(letters[0].message.data, b"this is not json");
    assert!(letters[0].message.attributes.contains_key(dead_letter_attrs::REASON));
    assert_eq!(rig.idle.calls.load(Ordering::SeqCst), 0);
}

/// Pub/Sub allows 10 MB messages; pushed, they arrive base64 in JSON (~13.4 MB) and must
/// not be refused by the HTTP layer (axum's default is 2 MB).
#[tokio::test]
async fn a_ten_megabyte_push_is_accepted() {
    let rig = rig().await;
    let app = push::router(rig.worker.clone(), CancellationToken::new(), String::new());
    let big = reel_runtime::Message {
        data: vec![b'x'; 9_900_000],
        attributes: Default::default(),
        ordering_key: String::new(),
    };
    let body = serde_json::to_vec(&push_envelope(&big)).unwrap();
    assert!(body.len() > 13_000_000);
    // Not an event, so it is dead-lettered; what matters is that it was read at all.
    assert_eq!(send(app, post(body)).await, StatusCode::NO_CONTENT);
    let letters = rig.bus.receive(DEAD, 10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(letters.len(), 1);
}

/// Eventarc delivers a Pub/Sub message as a `messagePublished` CloudEvent whose data is
/// the push envelope: the stage handles the message inside, not the wrapper.
#[tokio::test]
async fn an_eventarc_pubsub_event_is_unwrapped() {
    let rig = rig().await;
    let app = push::router(rig.worker.clone(), CancellationToken::new(), String::new());
    let body = serde_json::to_vec(&push_envelope(&finalize_input())).unwrap();
    let request = Request::builder()
        .method("POST")
        .uri("/")
        .header("ce-specversion", "1.0")
        .header("ce-type", push::PUBSUB_MESSAGE_PUBLISHED)
        .header("ce-source", "//pubsub.googleapis.com/projects/p/topics/reel-finalize")
        .header("ce-id", "eventarc-1")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(app, request).await, StatusCode::NO_CONTENT);
    assert_eq!(rig.idle.calls.load(Ordering::SeqCst), 1, "the wrapped message reached the handler");
    let letters = rig.bus.receive(DEAD, 10, Duration::from_millis(300)).await.unwrap();
    assert!(letters.is_empty(), "nothing was dead-lettered");
}
