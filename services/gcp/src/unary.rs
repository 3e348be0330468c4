//! Unary pull over the emulator's REST port (`REEL_PUBSUB_PULL=unary`), for local
//! clusters whose programs get killed.
//!
//! The emulator never notices that a streaming pull's client died (see the module docs
//! of `pubsub`): the stream of a SIGKILLed program stays registered and goes on taking
//! messages, each coming back only after its ack deadline, often into the same dead
//! stream again; a message can circle there until it is dead-lettered unread (seen in a
//! chaos run: one job's `job.validated` stuck for 9 minutes behind three killed
//! download programs). A unary pull with `returnImmediately` leaves nothing registered
//! between calls: a killed program loses at most the messages of the one response it
//! did not read, which come back after their ack deadline to whoever pulls next.
//!
//! Emulator only (no credentials are sent); production keeps the streaming pull, where
//! Pub/Sub closes the stream of a client that is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use reel_runtime::bus::{BusError, Message};

/// How long a poll waits before asking again when the subscription is empty.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// One message from a unary pull.
pub(crate) struct UnaryPulled {
    pub ack_id: String,
    pub message_id: String,
    pub message: Message,
    pub publish_time: DateTime<Utc>,
    pub delivery_attempt: Option<u32>,
}

/// The REST client of one emulator and project.
pub(crate) struct UnaryClient {
    http: reqwest::Client,
    base: String,
}

impl UnaryClient {
    pub(crate) fn new(endpoint: &str, project: &str) -> Result<UnaryClient, BusError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BusError::Other(format!("REST client: {e}")))?;
        Ok(UnaryClient {
            http,
            base: format!("{}/v1/projects/{project}/subscriptions", endpoint.trim_end_matches('/')),
        })
    }

    async fn call(
        &self,
        subscription: &str,
        verb: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, BusError> {
        let url = format!("{}/{subscription}:{verb}", self.base);
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| BusError::Transient(format!("{verb} {subscription}: {e}")))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| BusError::Transient(format!("{verb} {subscription}: {e}")))?;
        match status.as_u16() {
            200..=299 => Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)),
            404 => Err(BusError::NotFound(format!("{subscription}: {text}"))),
            400 if verb != "pull" => Err(BusError::InvalidAckId(format!("{verb} {subscription}: {text}"))),
            403 | 401 => Err(BusError::PermissionDenied(format!("{verb} {subscription}: {text}"))),
            429 | 500..=599 => Err(BusError::Transient(format!("{verb} {subscription}: {status} {text}"))),
            _ => Err(BusError::Other(format!("{verb} {subscription}: {status} {text}"))),
        }
    }

    /// Up to `max` messages, at once (empty if there are none).
    pub(crate) async fn pull(&self, subscription: &str, max: usize) -> Result<Vec<UnaryPulled>, BusError> {
        let reply =
            self.call(subscription, "pull", serde_json::json!({"maxMessages": max, "returnImmediately": true})).await?;
        let received = reply.get("receivedMessages").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(received.len());
        for r in received {
            let text =
                |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
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

    pub(crate) async fn ack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        self.call(subscription, "acknowledge", serde_json::json!({"ackIds": [ack_id]})).await.map(|_| ())
    }

    /// Set the ack deadline of a leased message (0 = release it for redelivery now).
    pub(crate) async fn modify(&self, subscription: &str, ack_id: &str, seconds: u32) -> Result<(), BusError> {
        self.call(
            subscription,
            "modifyAckDeadline",
            serde_json::json!({"ackIds": [ack_id], "ackDeadlineSeconds": seconds}),
        )
        .await
        .map(|_| ())
    }
}
