//! [`PubSubBus`]: the layers of this module put together behind the `Bus` trait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_pubsub::model::Message as PsMessage;
use google_cloud_pubsub::subscriber::handler::Handler;
use reel_runtime::bus::{Bus, BusError, Delivery, Message};
use reel_runtime::topology::Topology;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admin::{Admin, MAX_ACK_DEADLINE_SECS};
use super::config::{PubSubConfig, PullMode};
use super::error::ack_error;
use super::leases::{spawn_reaper, AttemptCounter, Extended, Lease, LeaseHandle, Leases};
use super::publisher::Publishers;
use super::rest_pull::{UnaryPull, POLL};
use super::streaming::{Pulled, StreamingPull};

/// How long `peek` waits for a first message, and then for each further one.
const PEEK_FIRST_WAIT: Duration = Duration::from_secs(2);
const PEEK_NEXT_WAIT: Duration = Duration::from_millis(300);

struct Inner {
    config: PubSubConfig,
    admin: Admin,
    publishers: Publishers,
    streaming: StreamingPull,
    leases: Arc<Leases>,
    attempts: Mutex<AttemptCounter>,
    /// The REST client when receiving by unary pull.
    unary: Option<UnaryPull>,
    /// Ack deadlines of subscriptions read by unary pull.
    unary_deadlines: tokio::sync::Mutex<HashMap<String, Duration>>,
    bus_id: String,
    next_token: AtomicU64,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Pub/Sub bus. Cheap to clone; clones share clients, streams and leases.
///
/// ```no_run
/// # async fn f() -> Result<(), reel_runtime::bus::BusError> {
/// use reel_gcp::{PubSubBus, PubSubConfig};
/// let bus = PubSubBus::connect(PubSubConfig::new("local").with_emulator("127.0.0.1:8085")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PubSubBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PubSubBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubBus").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl PubSubBus {
    /// Check `config` and build the clients (no network call is made yet). Must run
    /// inside a tokio runtime, which the clients' background tasks then live on.
    pub async fn connect(config: PubSubConfig) -> Result<Self, BusError> {
        config.validate()?;
        let shutdown = CancellationToken::new();
        let unary = match config.pull_mode() {
            PullMode::Unary => Some(UnaryPull::new(&config)?),
            PullMode::Streaming => None,
        };
        let inner = Arc::new(Inner {
            admin: Admin::connect(&config).await?,
            publishers: Publishers::connect(&config).await?,
            streaming: StreamingPull::connect(&config, shutdown.clone()).await?,
            leases: Arc::new(Leases::default()),
            attempts: Mutex::new(AttemptCounter::default()),
            unary,
            unary_deadlines: tokio::sync::Mutex::new(HashMap::new()),
            bus_id: format!("{:08x}", rand_u32()),
            next_token: AtomicU64::new(1),
            shutdown,
            config,
        });
        spawn_reaper(Arc::downgrade(&inner.leases), inner.shutdown.clone());
        Ok(PubSubBus { inner })
    }

    /// The configuration this bus was built with.
    pub fn config(&self) -> &PubSubConfig {
        &self.inner.config
    }

    /// `projects/P/topics/NAME` (a full name is returned as it is).
    pub fn topic_path(&self, name: &str) -> String {
        self.inner.config.topic_path(name)
    }

    /// `projects/P/subscriptions/NAME` (a full name is returned as it is).
    pub fn subscription_path(&self, name: &str) -> String {
        self.inner.config.subscription_path(name)
    }

    /// Stop every stream (nacking what was received and not yet settled) and flush the
    /// publishers. Later calls to `receive` fail with [`BusError::Closed`].
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.publishers.flush().await;
        for lease in self.inner.leases.drain() {
            lease.handle.nack();
        }
        self.inner.streaming.close_all().await;
    }

    /// Delete a subscription (tests and tooling). Missing is not an error.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), BusError> {
        self.inner.admin.delete_subscription(name).await
    }

    /// Delete a topic (tests and tooling). Missing is not an error.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BusError> {
        self.inner.admin.delete_topic(name).await
    }

    fn new_token(&self) -> String {
        let n = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.bus_id)
    }

    /// The delivery attempt Pub/Sub reported, or this process's own count.
    fn attempt(&self, subscription: &str, message_id: &str, reported: Option<u32>) -> u32 {
        match reported {
            Some(n) if n > 0 => n,
            _ => self.inner.attempts.lock().unwrap().next(subscription, message_id),
        }
    }

    fn delivery(&self, subscription: &str, ack_id: String, pulled: &Pulled) -> Delivery {
        let message: &PsMessage = &pulled.message;
        let reported = pulled.handler.delivery_attempt().and_then(|n| u32::try_from(n).ok());
        let publish_time = message
            .publish_time
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds(), t.nanos().max(0) as u32))
            .unwrap_or_else(Utc::now);
        Delivery {
            ack_id,
            message_id: message.message_id.clone(),
            message: Message {
                data: message.data.to_vec(),
                attributes: message.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ordering_key: message.ordering_key.clone(),
            },
            delivery_attempt: self.attempt(subscription, &message.message_id, reported),
            publish_time,
        }
    }

    fn unary_client(&self) -> Result<&UnaryPull, BusError> {
        self.inner.unary.as_ref().ok_or_else(|| BusError::Other("not in unary pull mode".into()))
    }

    /// `receive` by unary pull: poll until a message arrives or `wait` passes.
    async fn receive_unary(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let client = self.unary_client()?;
        let known = self.inner.unary_deadlines.lock().await.get(subscription).copied();
        let ack_deadline = match known {
            Some(d) => d,
            None => {
                let d = self.inner.admin.ack_deadline(subscription).await?;
                self.inner.unary_deadlines.lock().await.insert(subscription.to_string(), d);
                d
            }
        };
        let until = Instant::now() + wait;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(BusError::Closed);
            }
            let pulled = client.pull(subscription, max).await?;
            if !pulled.is_empty() {
                let deadline = Instant::now() + ack_deadline;
                let mut out = Vec::with_capacity(pulled.len());
                for p in pulled {
                    let token = self.new_token();
                    let delivery_attempt = self.attempt(subscription, &p.message_id, p.delivery_attempt);
                    self.inner.leases.insert(
                        token.clone(),
                        Lease {
                            subscription: subscription.to_string(),
                            handle: LeaseHandle::Unary(p.ack_id),
                            deadline,
                        },
                    );
                    out.push(Delivery {
                        ack_id: token,
                        message_id: p.message_id,
                        message: p.message,
                        delivery_attempt,
                        publish_time: p.publish_time,
                    });
                }
                return Ok(out);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL.min(until - now)) => {}
                _ = self.inner.shutdown.cancelled() => return Err(BusError::Closed),
            }
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[async_trait]
impl Bus for PubSubBus {
    async fn publish(&self, topic: &str, message: Message) -> Result<String, BusError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        self.inner.publishers.publish(topic, message).await
    }

    async fn receive(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.inner.unary.is_some() {
            return self.receive_unary(subscription, max, wait).await;
        }
        let streaming = &self.inner.streaming;
        let stream = streaming.stream_for(subscription, &self.inner.admin).await?;
        let pulled = streaming.pull(subscription, &stream, max, wait, Duration::ZERO).await?;
        let deadline = Instant::now() + stream.ack_deadline;
        let mut out = Vec::with_capacity(pulled.len());
        for p in pulled {
            let token = self.new_token();
            let delivery = self.delivery(subscription, token.clone(), &p);
            self.inner.leases.insert(
                token,
                Lease { subscription: subscription.to_string(), handle: LeaseHandle::Stream(p.handler), deadline },
            );
            out.push(delivery);
        }
        Ok(out)
    }

    async fn ack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        let lease = self.inner.leases.take(subscription, ack_id)?;
        match lease.handle {
            LeaseHandle::Stream(Handler::ExactlyOnce(h)) => {
                h.confirmed_ack().await.map_err(|e| ack_error(&format!("ack on {subscription}"), e))
            }
            LeaseHandle::Stream(other) => {
                other.ack();
                Ok(())
            }
            LeaseHandle::Unary(id) => self.unary_client()?.acknowledge(subscription, std::slice::from_ref(&id)).await,
        }
    }

    async fn nack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        let lease = self.inner.leases.take(subscription, ack_id)?;
        match lease.handle {
            LeaseHandle::Stream(Handler::ExactlyOnce(h)) => match h.confirmed_nack().await {
                // Expired: it is going to be redelivered anyway, which is what a nack wants.
                Ok(()) | Err(google_cloud_pubsub::error::AckError::LeaseExpired) => Ok(()),
                Err(e) => Err(ack_error(&format!("nack on {subscription}"), e)),
            },
            LeaseHandle::Stream(other) => {
                other.nack();
                Ok(())
            }
            LeaseHandle::Unary(id) => match self.unary_client()?.release(subscription, std::slice::from_ref(&id)).await
            {
                // Expired: it is going to be redelivered anyway, which is what a nack wants.
                Ok(()) | Err(BusError::InvalidAckId(_)) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    async fn modify_deadline(&self, subscription: &str, ack_id: &str, seconds: u32) -> Result<(), BusError> {
        if seconds == 0 {
            return self.nack(subscription, ack_id).await;
        }
        let seconds = seconds.min(MAX_ACK_DEADLINE_SECS);
        match self.inner.leases.extend(subscription, ack_id, seconds)? {
            Extended::Stream => Ok(()),
            Extended::Unary(id) => {
                self.unary_client()?.modify_ack_deadline(subscription, std::slice::from_ref(&id), seconds).await
            }
        }
    }

    async fn ensure_topology(&self, topology: &Topology) -> Result<(), BusError> {
        self.inner.admin.ensure_topology(topology).await
    }

    async fn peek(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.inner.unary.is_some() {
            // Unary: take what is there (waiting for the first as a streamed peek does),
            // then release each at once.
            let mut out = self.receive_unary(subscription, max, PEEK_FIRST_WAIT).await?;
            for d in &mut out {
                let _ = self.nack(subscription, &d.ack_id).await;
                d.ack_id.clear();
            }
            return Ok(out);
        }
        // Through the subscription's own stream, not a second one: the emulator never
        // notices a closed stream and keeps delivering into it (module docs).
        let streaming = &self.inner.streaming;
        let stream = streaming.stream_for(subscription, &self.inner.admin).await?;
        let pulled = streaming.pull(subscription, &stream, max, PEEK_FIRST_WAIT, PEEK_NEXT_WAIT).await?;
        let mut out = Vec::with_capacity(pulled.len());
        for p in pulled {
            out.push(self.delivery(subscription, String::new(), &p));
            // Modify ack deadline 0: available again (after the retry backoff).
            p.handler.nack();
        }
        Ok(out)
    }
}
