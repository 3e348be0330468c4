//! Topology setup and lookups: topics, subscriptions, their policies
//! (`TopicAdmin`, `SubscriptionAdmin`).

use std::time::Duration;

use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, ExpirationPolicy, RetryPolicy};
use reel_runtime::bus::BusError;
use reel_runtime::topology::Topology;
use tracing::debug;

use super::config::PubSubConfig;
use super::error::{builder_error, bus_error, is_already_exists};

/// Longest ack deadline Pub/Sub accepts.
pub(crate) const MAX_ACK_DEADLINE_SECS: u32 = 600;

/// The admin clients of one project.
pub(crate) struct Admin {
    config: PubSubConfig,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
}

fn wkt_duration(d: Duration) -> Result<google_cloud_wkt::Duration, BusError> {
    google_cloud_wkt::Duration::try_from(d).map_err(|e| BusError::Other(format!("duration {d:?}: {e}")))
}

impl Admin {
    /// Build the clients (no network call is made yet).
    pub(crate) async fn connect(config: &PubSubConfig) -> Result<Admin, BusError> {
        let mut topics = TopicAdmin::builder();
        let mut subscriptions = SubscriptionAdmin::builder();
        if let Some(endpoint) = config.endpoint() {
            topics = topics.with_endpoint(endpoint);
            subscriptions = subscriptions.with_endpoint(endpoint);
        }
        if let Some(credentials) = config.credentials() {
            topics = topics.with_credentials(credentials.clone());
            subscriptions = subscriptions.with_credentials(credentials.clone());
        }
        Ok(Admin {
            config: config.clone(),
            topics: topics.build().await.map_err(|e| builder_error("topic admin", e))?,
            subscriptions: subscriptions.build().await.map_err(|e| builder_error("subscription admin", e))?,
        })
    }

    /// Create what `topology` names and is missing; existing resources are left as
    /// they are.
    pub(crate) async fn ensure_topology(&self, topology: &Topology) -> Result<(), BusError> {
        for topic in &topology.topics {
            let path = self.config.topic_path(&topic.name);
            let mut request = self.topics.create_topic().set_name(&path);
            if let Some(retention) = topic.retention {
                request = request.set_message_retention_duration(wkt_duration(retention)?);
            }
            match request.send().await {
                Ok(_) => debug!(topic = %path, "topic created"),
                Err(e) if is_already_exists(&e) => {}
                Err(e) => return Err(bus_error(&format!("create topic {path}"), None, &e)),
            }
        }
        for spec in &topology.subscriptions {
            let path = self.config.subscription_path(&spec.name);
            let mut request = self
                .subscriptions
                .create_subscription()
                .set_name(&path)
                .set_topic(self.config.topic_path(&spec.topic))
                .set_ack_deadline_seconds(spec.ack_deadline.as_secs().clamp(10, MAX_ACK_DEADLINE_SECS as u64) as i32)
                .set_message_retention_duration(wkt_duration(spec.message_retention)?)
                .set_retry_policy(
                    RetryPolicy::new()
                        .set_minimum_backoff(wkt_duration(spec.min_backoff)?)
                        .set_maximum_backoff(wkt_duration(spec.max_backoff)?),
                )
                .set_enable_exactly_once_delivery(spec.exactly_once)
                // Never expire: Pub/Sub deletes a subscription idle for 31 days by
                // default, and a quiet month must not delete a stage's input (terraform
                // sets the same).
                .set_expiration_policy(ExpirationPolicy::new());
            if let Some(dead_letter) = &spec.dead_letter_topic {
                request = request.set_dead_letter_policy(
                    DeadLetterPolicy::new()
                        .set_dead_letter_topic(self.config.topic_path(dead_letter))
                        .set_max_delivery_attempts(spec.max_delivery_attempts.clamp(5, 100) as i32),
                );
            }
            match request.send().await {
                Ok(_) => debug!(subscription = %path, "subscription created"),
                Err(e) if is_already_exists(&e) => {}
                Err(e) => return Err(bus_error(&format!("create subscription {path}"), None, &e)),
            }
        }
        Ok(())
    }

    /// The subscription's ack deadline; NotFound when it does not exist.
    pub(crate) async fn ack_deadline(&self, subscription: &str) -> Result<Duration, BusError> {
        let path = self.config.subscription_path(subscription);
        let sub = self
            .subscriptions
            .get_subscription()
            .set_subscription(&path)
            .send()
            .await
            .map_err(|e| bus_error(&format!("get subscription {path}"), None, &e))?;
        let secs = if sub.ack_deadline_seconds > 0 { sub.ack_deadline_seconds as u64 } else { 10 };
        Ok(Duration::from_secs(secs))
    }

    /// Delete a subscription. Missing is not an error.
    pub(crate) async fn delete_subscription(&self, name: &str) -> Result<(), BusError> {
        let path = self.config.subscription_path(name);
        match self.subscriptions.delete_subscription().set_subscription(&path).send().await {
            Ok(_) => Ok(()),
            Err(e) => match bus_error(&format!("delete subscription {path}"), None, &e) {
                BusError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Delete a topic. Missing is not an error.
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<(), BusError> {
        let path = self.config.topic_path(name);
        match self.topics.delete_topic().set_topic(&path).send().await {
            Ok(_) => Ok(()),
            Err(e) => match bus_error(&format!("delete topic {path}"), None, &e) {
                BusError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }
}
