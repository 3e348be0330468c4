//! Unary pull over Pub/Sub's REST API (`subscriptions.pull`, `acknowledge`,
//! `modifyAckDeadline`): the one REST pull client of reel.
//!
//! Two users, one reason: a unary pull leaves nothing registered between calls (module
//! docs of `pubsub`, "Why not streaming pull"):
//!
//! - [`crate::PubSubBus::receive`], on Pub/Sub and on the emulator alike;
//! - `reel dlq` (short-lived): a process that opened a stream and exited would leave the
//!   emulator delivering into the dead stream until the ack deadline passed (observed:
//!   every later `dlq list` saw nothing).
//!
//! Endpoint and credentials come from the [`PubSubConfig`]: anonymous on the emulator,
//! Application Default Credentials (Pub/Sub scope) otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reel_runtime::bus::{BusError, Message};

use super::config::PubSubConfig;
use super::error::rest_error;

/// How long a poll waits before asking an empty subscription again, while it is warm
/// (it had a message within [`WARM`], or the bus is new): about 50 ms of delay per hop.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// How long a subscription stays warm after its last message.
pub(crate) const WARM: Duration = Duration::from_secs(60);
/// The wait between polls of a subscription that has been empty for longer than
/// [`WARM`]: an idle program makes one pull a second per subscription.
pub(crate) const POLL_IDLE: Duration = Duration::from_secs(1);
const DEFAULT_ENDPOINT: &str = "https://pubsub.googleapis.com";
const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One message from a unary pull, leased until acked, released, or its ack deadline.
#[derive(Debug, Clone)]
pub struct UnaryPulled {
    /// The server's ack id (empty after [`UnaryPull::peek`]: released, not ackable).
    pub ack_id: String,
    /// The Pub/Sub message id.
    pub message_id: String,
    /// Data, attributes, ordering key.
    pub message: Message,
    /// When Pub/Sub accepted it.
    pub publish_time: DateTime<Utc>,
    /// Reported only on subscriptions with a dead-letter policy.
    pub delivery_attempt: Option<u32>,
}

/// A REST pull client for one project's subscriptions. Cheap to clone.
///
/// ```no_run
/// # async fn f() -> Result<(), reel_runtime::bus::BusError> {
/// use reel_gcp::{PubSubConfig, UnaryPull};
/// let pull = UnaryPull::new(&PubSubConfig::new("local").with_emulator("127.0.0.1:8085"))?;
/// let letters = pull.peek("reel-stitch-dead-letter", 100).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct UnaryPull {
    http: reqwest::Client,
    /// `{endpoint}/v1/projects/{project}/subscriptions`.
    base: String,
    credentials: Credentials,
}

impl UnaryPull {
    /// A client for `config`'s project, endpoint and credentials. No network call is
    /// made (Application Default Credentials are looked up here, though).
    pub fn new(config: &PubSubConfig) -> Result<UnaryPull, BusError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| BusError::Other(format!("REST client: {e}")))?;
        let credentials = match config.credentials() {
            Some(c) => c.clone(),
            None => {
                google_cloud_auth::credentials::Builder::default().with_scopes([PUBSUB_SCOPE]).build().map_err(|e| {
                    BusError::PermissionDenied(format!("loading Application Default Credentials for Pub/Sub: {e}"))
                })?
            }
        };
        let endpoint = config.endpoint().unwrap_or(DEFAULT_ENDPOINT);
        Ok(UnaryPull {
            http,
            base: format!("{}/v1/projects/{}/subscriptions", endpoint.trim_end_matches('/'), config.project()),
            credentials,
        })
    }

    async fn call(
        &self,
        subscription: &str,
        verb: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, BusError> {
        let url = format!("{}/{subscription}:{verb}", self.base);
        let mut request = self.http.post(&url).header("content-type", "application/json").body(body.to_string());
        match self.credentials.headers(Default::default()).await {
            Ok(CacheableResource::New { data, .. }) => {
                for (name, value) in data.iter() {
                    request = request.header(name.as_str(), value.as_bytes());
                }
            }
            Ok(CacheableResource::NotModified) => {}
            Err(e) => {
                let text = format!("{verb} {subscription}: getting an access token: {e}");
                return Err(if e.is_transient() {
                    BusError::Transient(text)
                } else {
                    BusError::PermissionDenied(text)
                });
            }
        }
        let response = request.send().await.map_err(|e| BusError::Transient(format!("{verb} {subscription}: {e}")))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| BusError::Transient(format!("{verb} {subscription}: {e}")))?;
        if !status.is_success() {
            let excerpt: String = text.chars().take(300).collect();
            return Err(rest_error(verb, status.as_u16(), format!("{verb} {subscription}: HTTP {status}: {excerpt}")));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// Up to `max` messages, at once (empty if there are none), each leased for the
    /// subscription's ack deadline.
    pub async fn pull(&self, subscription: &str, max: usize) -> Result<Vec<UnaryPulled>, BusError> {
        let reply =
            self.call(subscription, "pull", serde_json::json!({"maxMessages": max, "returnImmediately": true})).await?;
        let received = reply.get("receivedMessages").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let mut out = Vec::with_capacity(received.len());
        for r in received {
            let Some(m) = r.get("message") else { continue };
            let data = base64::engine::general_purpose::STANDARD
                .decode(m.get("data").and_then(|d| d.as_str()).unwrap_or_default())
                .map_err(|e| BusError::Other(format!("pull {subscription}: message data is not base64: {e}")))?;
            let attributes: BTreeMap<String, String> = m
                .get("attributes")
                .and_then(|a| a.as_object())
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            out.push(UnaryPulled {
                ack_id: text(&r, "ackId"),
                message_id: text(m, "messageId"),
                message: Message { data, attributes, ordering_key: text(m, "orderingKey") },
                publish_time: DateTime::parse_from_rfc3339(&text(m, "publishTime"))
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|_| Utc::now()),
                delivery_attempt: r
                    .get("deliveryAttempt")
                    .and_then(|v| v.as_u64())
                    .filter(|n| *n > 0)
                    .map(|n| n as u32),
            });
        }
        Ok(out)
    }

    /// Pull until the subscription gives nothing more for a few seconds (at most
    /// `limit`). Messages released by an earlier peek come back after the
    /// subscription's retry backoff (1 s on dead-letter subscriptions), so one empty
    /// answer is not the end. Everything returned is leased: ack or release it.
    pub async fn pull_all(&self, subscription: &str, limit: usize) -> Result<Vec<UnaryPulled>, BusError> {
        let mut all = Vec::new();
        let mut empty_rounds = 0;
        while all.len() < limit && empty_rounds < 8 {
            let batch = self.pull(subscription, (limit - all.len()).min(100)).await?;
            if batch.is_empty() {
                empty_rounds += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            } else {
                empty_rounds = 0;
                all.extend(batch);
            }
        }
        Ok(all)
    }

    /// Look without consuming: [`UnaryPull::pull_all`], then release everything at
    /// once. The returned messages have an empty `ack_id`. On Pub/Sub each peeked
    /// message **uses a delivery attempt** and comes back after the retry backoff.
    pub async fn peek(&self, subscription: &str, limit: usize) -> Result<Vec<UnaryPulled>, BusError> {
        let mut pulled = self.pull_all(subscription, limit).await?;
        let ids: Vec<String> = pulled.iter_mut().map(|p| std::mem::take(&mut p.ack_id)).collect();
        self.release(subscription, &ids).await?;
        Ok(pulled)
    }

    /// Acknowledge: the messages are gone for good.
    pub async fn acknowledge(&self, subscription: &str, ack_ids: &[String]) -> Result<(), BusError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(subscription, "acknowledge", serde_json::json!({ "ackIds": ack_ids })).await.map(|_| ())
    }

    /// Set the ack deadline of leased messages (0 = release them for redelivery now).
    pub async fn modify_ack_deadline(
        &self,
        subscription: &str,
        ack_ids: &[String],
        seconds: u32,
    ) -> Result<(), BusError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(
            subscription,
            "modifyAckDeadline",
            serde_json::json!({"ackIds": ack_ids, "ackDeadlineSeconds": seconds}),
        )
        .await
        .map(|_| ())
    }

    /// Release leased messages for redelivery now (ack deadline 0).
    pub async fn release(&self, subscription: &str, ack_ids: &[String]) -> Result<(), BusError> {
        self.modify_ack_deadline(subscription, ack_ids, 0).await
    }
}
