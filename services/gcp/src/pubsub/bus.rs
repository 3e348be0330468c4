//! [`PubSubBus`]: the layers of this module put together behind the `Bus` trait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reel_runtime::bus::{Bus, BusError, Delivery, Message};
use reel_runtime::topology::Topology;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admin::{Admin, MAX_ACK_DEADLINE_SECS};
use super::config::PubSubConfig;
use super::leases::{spawn_reaper, AttemptCounter, Lease, Leases};
use super::publisher::Publishers;
use super::rest_pull::{UnaryPull, POLL, POLL_IDLE, WARM};

/// How long `peek` waits for a first message.
const PEEK_FIRST_WAIT: Duration = Duration::from_secs(2);

struct Inner {
    config: PubSubConfig,
    admin: Admin,
    publishers: Publishers,
    pull: UnaryPull,
    leases: Arc<Leases>,
    attempts: Mutex<AttemptCounter>,
    /// Ack deadlines of the subscriptions read so far.
    ack_deadlines: tokio::sync::Mutex<HashMap<String, Duration>>,
    /// Subscriptions found empty, and when to ask them again.
    idle: Mutex<HashMap<String, Idle>>,
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
        let inner = Arc::new(Inner {
            admin: Admin::connect(&config).await?,
            publishers: Publishers::connect(&config).await?,
            pull: UnaryPull::new(&config)?,
            leases: Arc::new(Leases::default()),
            attempts: Mutex::new(AttemptCounter::default()),
            ack_deadlines: tokio::sync::Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
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

    /// Stop receiving, release what was received and not yet settled (it is redelivered
    /// at once, not after its lease) and flush the publishers. Later calls to `receive`
    /// fail with [`BusError::Closed`].
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.publishers.flush().await;
        let mut by_subscription: HashMap<String, Vec<String>> = HashMap::new();
        for lease in self.inner.leases.drain() {
            by_subscription.entry(lease.subscription).or_default().push(lease.ack_id);
        }
        for (subscription, ids) in by_subscription {
            // Best effort: what is not released comes back when its lease runs out.
            let _ = self.inner.pull.release(&subscription, &ids).await;
        }
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

    /// Poll unary pulls until a message arrives or `wait` passes.
    async fn pull(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let client = &self.inner.pull;
        let known = self.inner.ack_deadlines.lock().await.get(subscription).copied();
        let ack_deadline = match known {
            Some(d) => d,
            None => {
                let d = self.inner.admin.ack_deadline(subscription).await?;
                self.inner.ack_deadlines.lock().await.insert(subscription.to_string(), d);
                d
            }
        };
        let until = Instant::now() + wait;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(BusError::Closed);
            }
            // An empty subscription is asked again after POLL, or POLL_IDLE once it has
            // been empty for a while (shared by every caller: validate alternates between
            // two subscriptions).
            let due = self.inner.idle.lock().unwrap().get(subscription).map(|idle| idle.next_pull);
            let now = Instant::now();
            if let Some(due) = due.filter(|due| *due > now) {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.min(until)) => {}
                    _ = self.inner.shutdown.cancelled() => return Err(BusError::Closed),
                }
                if due > until {
                    return Ok(Vec::new());
                }
            }
            let pulled = client.pull(subscription, max).await?;
            if pulled.is_empty() {
                let mut idle = self.inner.idle.lock().unwrap();
                let entry = idle.entry(subscription.to_string()).or_insert(Idle { next_pull: now, empty_since: now });
                let wait = if entry.empty_since.elapsed() < WARM { POLL } else { POLL_IDLE };
                entry.next_pull = Instant::now() + wait;
                drop(idle);
                if Instant::now() >= until {
                    return Ok(Vec::new());
                }
                continue;
            }
            self.inner.idle.lock().unwrap().remove(subscription);
            let deadline = Instant::now() + ack_deadline;
            let mut out = Vec::with_capacity(pulled.len());
            for p in pulled {
                let token = self.new_token();
                let delivery_attempt = self.attempt(subscription, &p.message_id, p.delivery_attempt);
                self.inner.leases.insert(
                    token.clone(),
                    Lease { subscription: subscription.to_string(), ack_id: p.ack_id, deadline },
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
    }
}

/// When an empty subscription is pulled next.
struct Idle {
    next_pull: Instant,
    /// The first empty answer since its last message.
    empty_since: Instant,
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
        self.pull(subscription, max, wait).await
    }

    async fn ack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        let lease = self.inner.leases.take(subscription, ack_id)?;
        self.inner.pull.acknowledge(subscription, std::slice::from_ref(&lease.ack_id)).await
    }

    async fn nack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        let lease = self.inner.leases.take(subscription, ack_id)?;
        match self.inner.pull.release(subscription, std::slice::from_ref(&lease.ack_id)).await {
            // Expired: it is going to be redelivered anyway, which is what a nack wants.
            Ok(()) | Err(BusError::InvalidAckId(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn modify_deadline(&self, subscription: &str, ack_id: &str, seconds: u32) -> Result<(), BusError> {
        if seconds == 0 {
            return self.nack(subscription, ack_id).await;
        }
        let seconds = seconds.min(MAX_ACK_DEADLINE_SECS);
        let id = self.inner.leases.extend(subscription, ack_id, seconds)?;
        self.inner.pull.modify_ack_deadline(subscription, std::slice::from_ref(&id), seconds).await
    }

    async fn ensure_topology(&self, topology: &Topology) -> Result<(), BusError> {
        self.inner.admin.ensure_topology(topology).await
    }

    async fn peek(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // Take what is there (waiting for the first), then release each at once.
        let mut out = self.pull(subscription, max, PEEK_FIRST_WAIT).await?;
        for d in &mut out {
            let _ = self.nack(subscription, &d.ack_id).await;
            d.ack_id.clear();
        }
        Ok(out)
    }
}
