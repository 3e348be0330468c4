//! Synchronous pull (`subscriptions.pull` over REST) for the one-shot operator commands.
//!
//! `reel dlq` is a short-lived process. A streaming pull suits long-running workers,
//! but a process that opens a stream and exits leaves the Pub/Sub emulator delivering
//! into the dead stream until the ack deadline passes (observed: every later `dlq list`
//! saw nothing). A unary pull has no stream to leave behind, on the emulator and on
//! Pub/Sub alike. Auth: none on the emulator; Application Default Credentials otherwise.

use anyhow::{bail, Context as _, Result};
use base64::Engine;
use chrono::{DateTime, Utc};
use reel_runtime::bus::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// One pulled message.
pub struct Pulled {
    pub ack_id: String,
    pub message_id: String,
    pub message: Message,
    pub publish_time: DateTime<Utc>,
}

/// A REST client for one project's subscriptions.
pub struct RestPull {
    http: reqwest::Client,
    base: String,
    project: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

impl RestPull {
    /// From `GOOGLE_CLOUD_PROJECT` and `PUBSUB_EMULATOR_HOST`.
    pub fn from_env() -> Result<RestPull> {
        let project = std::env::var("GOOGLE_CLOUD_PROJECT")
            .ok()
            .filter(|p| !p.is_empty())
            .context("GOOGLE_CLOUD_PROJECT is not set")?;
        let emulator = std::env::var("PUBSUB_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(match emulator {
            Some(host) => RestPull { http, base: format!("http://{host}/v1"), project, credentials: None },
            None => RestPull {
                http,
                base: "https://pubsub.googleapis.com/v1".into(),
                project,
                credentials: Some(
                    google_cloud_auth::credentials::Builder::default()
                        .with_scopes(["https://www.googleapis.com/auth/pubsub"])
                        .build()
                        .context("loading Application Default Credentials")?,
                ),
            },
        })
    }

    async fn call(&self, subscription: &str, verb: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}/projects/{}/subscriptions/{subscription}:{verb}", self.base, self.project);
        let mut request = self.http.post(&url).json(&body);
        if let Some(credentials) = &self.credentials {
            match credentials.headers(Default::default()).await.context("getting an access token")? {
                google_cloud_auth::credentials::CacheableResource::New { data, .. } => {
                    for (name, value) in data.iter() {
                        request = request.header(name.as_str(), value.as_bytes());
                    }
                }
                google_cloud_auth::credentials::CacheableResource::NotModified => {}
            }
        }
        let response = request.send().await.with_context(|| format!("{verb} {subscription}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{verb} {subscription}: HTTP {status}: {}", text.chars().take(300).collect::<String>());
        }
        Ok(if text.trim().is_empty() { serde_json::json!({}) } else { serde_json::from_str(&text)? })
    }

    /// Pull up to `max` messages (leased for the subscription's ack deadline).
    pub async fn pull(&self, subscription: &str, max: usize) -> Result<Vec<Pulled>> {
        let reply =
            self.call(subscription, "pull", serde_json::json!({"maxMessages": max, "returnImmediately": true})).await?;
        let mut out = Vec::new();
        for received in reply["receivedMessages"].as_array().into_iter().flatten() {
            let m = &received["message"];
            let data = m["data"]
                .as_str()
                .map(|d| base64::engine::general_purpose::STANDARD.decode(d))
                .transpose()?
                .unwrap_or_default();
            let attributes: BTreeMap<String, String> =
                serde_json::from_value(m["attributes"].clone()).unwrap_or_default();
            out.push(Pulled {
                ack_id: received["ackId"].as_str().unwrap_or_default().to_string(),
                message_id: m["messageId"].as_str().unwrap_or_default().to_string(),
                message: Message {
                    data,
                    attributes,
                    ordering_key: m["orderingKey"].as_str().unwrap_or_default().to_string(),
                },
                publish_time: m["publishTime"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(Utc::now),
            });
        }
        Ok(out)
    }

    /// Pull until the subscription gives nothing more for a few seconds (at most
    /// `limit`). Messages released by an earlier peek come back after the
    /// subscription's retry backoff (1 s on dead-letter subscriptions), so one empty
    /// answer is not the end.
    pub async fn pull_all(&self, subscription: &str, limit: usize) -> Result<Vec<Pulled>> {
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

    /// Acknowledge.
    pub async fn ack(&self, subscription: &str, ack_ids: &[String]) -> Result<()> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(subscription, "acknowledge", serde_json::json!({"ackIds": ack_ids})).await.map(|_| ())
    }

    /// Release for redelivery now (ack deadline 0).
    pub async fn release(&self, subscription: &str, ack_ids: &[String]) -> Result<()> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(subscription, "modifyAckDeadline", serde_json::json!({"ackIds": ack_ids, "ackDeadlineSeconds": 0}))
            .await
            .map(|_| ())
    }
}
