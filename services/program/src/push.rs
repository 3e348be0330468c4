//! Push mode: one HTTP endpoint for Pub/Sub push subscriptions and Eventarc.
//!
//! `POST /` accepts
//! - a Pub/Sub push envelope: `{"message": {"data", "attributes", "messageId",
//!   "orderingKey"}, "subscription", "deliveryAttempt"}`;
//! - an Eventarc (HTTP binary mode) CloudEvent: `ce-*` headers and the data as body;
//! - an HTTP structured-mode CloudEvent (`content-type: application/cloudevents+json`);
//! - an Eventarc `google.cloud.pubsub.topic.v1.messagePublished` event (a Pub/Sub message
//!   delivered through Eventarc): its data is the push envelope above.
//!
//! Bodies up to [`MAX_PUSH_BODY_BYTES`] (a 10 MB message, base64 in JSON). 204
//! acknowledges; 503 asks Pub/Sub to redeliver (after its retry backoff). A body that is
//! none of the above is dead-lettered as it came, with the reason, and acknowledged, as
//! pull mode does: it could never be processed.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use reel_runtime::bus::Message;
use reel_runtime::worker::{Disposition, Worker};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone)]
struct AppState {
    worker: Arc<Worker>,
    stop: CancellationToken,
    subscription: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushEnvelope {
    message: PushMessage,
    #[serde(default)]
    subscription: String,
    #[serde(default)]
    delivery_attempt: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushMessage {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default, alias = "message_id")]
    message_id: String,
    #[serde(default)]
    ordering_key: String,
}

/// The largest push request accepted: a 10 MB Pub/Sub message, base64-encoded (4/3) in
/// its JSON envelope, with room for the attributes. axum's default (2 MB) would refuse
/// messages Pub/Sub itself accepts.
pub const MAX_PUSH_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The CloudEvent type Eventarc wraps a Pub/Sub message in.
pub const PUBSUB_MESSAGE_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// The push router: `POST /` for messages, and `/healthz` and `/metrics` (exposed for
/// tests).
pub fn router(worker: Arc<Worker>, stop: CancellationToken, subscription: String) -> Router {
    operator_routes().route("/", post(receive)).layer(DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES)).with_state(AppState {
        worker,
        stop,
        subscription,
    })
}

/// `/healthz` and `/metrics`, the routes every mode serves.
fn operator_routes() -> Router<AppState> {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/metrics", get(metrics))
}

/// Serve until `shutdown`; in-flight requests get `grace` to finish, then are stopped
/// (and answered 503, so Pub/Sub redelivers them).
pub async fn serve(
    worker: Arc<Worker>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let subscription = String::new();
    let app = router(worker, stop.clone(), subscription);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "push endpoint listening");
    let stopper = {
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            stop.cancel();
        })
    };
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    stopper.abort();
    Ok(())
}

async fn metrics(State(state): State<AppState>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, reel_runtime::metrics::CONTENT_TYPE)], state.worker.render_metrics())
}

/// `/healthz` and `/metrics` alone, for pull mode (served when `PORT` is set, as on
/// Cloud Run or GKE); `POST /` answers 405 there, since pull mode takes no pushes.
pub fn metrics_router(worker: Arc<Worker>) -> Router {
    operator_routes().route("/", post(|| async { StatusCode::METHOD_NOT_ALLOWED })).with_state(AppState {
        worker,
        stop: CancellationToken::new(),
        subscription: String::new(),
    })
}

async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (message, message_id, subscription, attempt) = match parse(&headers, &body) {
        Ok(parsed) => parsed,
        Err(reason) => {
            // What can never be processed is acknowledged, as in pull mode: the body goes
            // to the dead-letter topic as it came (the worker finds it is no event and
            // says why), instead of a 4xx that Pub/Sub would push again and again.
            warn!(%reason, "unreadable push request; dead-lettering the body");
            let message = Message { data: body.to_vec(), attributes: BTreeMap::new(), ordering_key: String::new() };
            (message, String::new(), String::new(), 1)
        }
    };
    let subscription = if subscription.is_empty() { state.subscription.clone() } else { subscription };
    let subscription = subscription.rsplit('/').next().unwrap_or_default().to_string();
    match state.worker.process(&subscription, &message, &message_id, attempt, state.stop.clone()).await {
        Disposition::Ack => StatusCode::NO_CONTENT,
        Disposition::Nack => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<(Message, String, String, u32), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    // Eventarc's Pub/Sub events carry the push envelope as their data: read it below.
    let eventarc_pubsub = header("ce-type").as_deref() == Some(PUBSUB_MESSAGE_PUBLISHED);
    if headers.contains_key("ce-specversion") && !eventarc_pubsub {
        let mut attributes = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str().to_ascii_lowercase();
            if name.starts_with("ce-") {
                if let Ok(v) = value.to_str() {
                    attributes.insert(name, v.to_string());
                }
            }
        }
        if let Some(ct) = header("content-type") {
            attributes.insert("content-type".into(), ct);
        }
        let id = attributes.get("ce-id").cloned().unwrap_or_default();
        let message = Message { data: body.to_vec(), attributes, ordering_key: String::new() };
        return Ok((message, id, String::new(), 1));
    }
    let content_type = header("content-type").unwrap_or_default();
    if content_type.starts_with("application/cloudevents+json") {
        let mut attributes = BTreeMap::new();
        attributes.insert("content-type".into(), content_type);
        return Ok((
            Message { data: body.to_vec(), attributes, ordering_key: String::new() },
            String::new(),
            String::new(),
            1,
        ));
    }
    let envelope: PushEnvelope =
        serde_json::from_slice(body).map_err(|e| format!("not a Pub/Sub push envelope: {e}"))?;
    let data = match envelope.message.data {
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("message.data is not base64: {e}"))?,
        None => Vec::new(),
    };
    let message =
        Message { data, attributes: envelope.message.attributes, ordering_key: envelope.message.ordering_key };
    Ok((message, envelope.message.message_id, envelope.subscription, envelope.delivery_attempt.unwrap_or(1)))
}
