//! Publishing: one [`Publisher`] per topic (cached), sharing one [`BasePublisher`]
//! connection; the crate retries transient errors itself within [`PUBLISH_RETRY_LIMIT`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message as PsMessage;
use reel_runtime::bus::{BusError, Message, MAX_MESSAGE_BYTES};

use super::config::PubSubConfig;
use super::error::{builder_error, publish_error};

/// How long the publisher keeps retrying transient errors before giving up.
pub const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(60);

/// The publishers of one project.
pub(crate) struct Publishers {
    config: PubSubConfig,
    base: BasePublisher,
    by_topic: Mutex<HashMap<String, Publisher>>,
}

impl Publishers {
    /// Build the connection (no network call is made yet).
    pub(crate) async fn connect(config: &PubSubConfig) -> Result<Publishers, BusError> {
        let mut base = BasePublisher::builder().with_retry_policy(
            google_cloud_gax::retry_policy::RetryPolicyExt::with_time_limit(
                google_cloud_pubsub::retry_policy::RetryableErrors,
                PUBLISH_RETRY_LIMIT,
            ),
        );
        if let Some(endpoint) = config.endpoint() {
            base = base.with_endpoint(endpoint);
        }
        if let Some(credentials) = config.credentials() {
            base = base.with_credentials(credentials.clone());
        }
        Ok(Publishers {
            config: config.clone(),
            base: base.build().await.map_err(|e| builder_error("publisher", e))?,
            by_topic: Mutex::new(HashMap::new()),
        })
    }

    fn publisher(&self, topic: &str) -> Publisher {
        let mut publishers = self.by_topic.lock().unwrap();
        publishers
            .entry(topic.to_string())
            .or_insert_with(|| {
                self.base.publisher(self.config.topic_path(topic)).set_delay_threshold(Duration::from_millis(5)).build()
            })
            .clone()
    }

    /// Publish one message; its server-assigned id once Pub/Sub confirmed it.
    ///
    /// A message with a non-empty ordering key is published with that key: the crate
    /// then keeps messages of one key in order (one batch in flight per key). After a
    /// failed publish on a key the crate pauses that key; it is resumed at once, since
    /// reel relies on no ordering.
    pub(crate) async fn publish(&self, topic: &str, message: Message) -> Result<String, BusError> {
        let size = message.wire_size();
        if size > MAX_MESSAGE_BYTES {
            return Err(BusError::TooLarge(size));
        }
        let publisher = self.publisher(topic);
        let ordering_key = message.ordering_key.clone();
        let ps = PsMessage::new()
            .set_data(bytes::Bytes::from(message.data))
            .set_attributes(message.attributes)
            .set_ordering_key(message.ordering_key);
        match publisher.publish(ps).await {
            Ok(id) => Ok(id),
            Err(e) => {
                if !ordering_key.is_empty() {
                    publisher.resume_publish(ordering_key);
                }
                Err(publish_error(&format!("publish to {}", self.config.topic_path(topic)), size, e))
            }
        }
    }

    /// Send what is batched and wait for it.
    pub(crate) async fn flush(&self) {
        let publishers: Vec<Publisher> = self.by_topic.lock().unwrap().values().cloned().collect();
        for publisher in publishers {
            publisher.flush().await;
        }
    }
}
