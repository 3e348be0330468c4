//! The in-process bus.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::event_log::{LogFile, LoggedMessage};
use crate::bus::{Bus, BusError, Delivery, Message};
use crate::topology::{SubscriptionSpec, Topology};

/// Largest message [`EmbeddedBus::publish`] accepts ([`Message::wire_size`]), Pub/Sub's
/// 10 MB limit; larger ones fail with [`BusError::TooLarge`] as they would on Pub/Sub.
pub use crate::bus::MAX_MESSAGE_BYTES;

/// Attribute added to a dead-lettered message: the subscription it died on (Pub/Sub's name).
pub const ATTR_DEAD_LETTER_SOURCE_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
/// Attribute added to a dead-lettered message: how many deliveries were attempted.
pub const ATTR_DEAD_LETTER_SOURCE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
/// Attribute added to a dead-lettered message: when it was first published (RFC 3339).
pub const ATTR_DEAD_LETTER_SOURCE_TOPIC_PUBLISH_TIME: &str = "CloudPubSubDeadLetterSourceTopicPublishTime";

/// The upper bound of the retry delay after delivery attempt `attempt` was nacked:
/// `min(max_backoff, min_backoff * 2^(attempt-1))` (attempt 0 counts as 1).
/// A zero `min_backoff` gives zero: immediate redelivery.
pub fn retry_backoff_ceiling(min_backoff: Duration, max_backoff: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    min_backoff.saturating_mul(1u32 << exponent).min(max_backoff)
}

/// The retry delay the embedded bus applies after delivery attempt `attempt` was
/// nacked: [`retry_backoff_ceiling`] scaled by a uniformly random factor in `[0.5, 1.0]`
/// (jitter, so that messages failing together do not come back together).
pub fn retry_backoff(min_backoff: Duration, max_backoff: Duration, attempt: u32) -> Duration {
    let ceiling = retry_backoff_ceiling(min_backoff, max_backoff, attempt);
    if ceiling.is_zero() {
        return ceiling;
    }
    let factor: f64 = rand::random_range(0.5..=1.0);
    ceiling.mul_f64(factor)
}

/// How many messages a subscription holds, by state (see [`EmbeddedBus::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Deliverable now.
    pub waiting: usize,
    /// Nacked and waiting out their retry backoff.
    pub backing_off: usize,
    /// Delivered and not yet acked, nacked or expired.
    pub leased: usize,
}

impl SubscriptionStats {
    /// Whether the subscription holds no message at all (nothing waiting, backing off
    /// or in flight).
    pub fn is_empty(&self) -> bool {
        self.waiting == 0 && self.backing_off == 0 && self.leased == 0
    }
}

/// An in-process [`Bus`] with Pub/Sub's delivery contract, for embedded mode.
///
/// - Topics and subscriptions exist once [`Bus::ensure_topology`] created them. A publish
///   goes to every subscription of its topic that exists at that moment (none: the
///   message is dropped, the publish still succeeds); each subscription has its own queue.
/// - [`Bus::receive`] returns as soon as at least one message is available (a publish
///   wakes waiting receivers at once), leasing each for the subscription's `ack_deadline`.
/// - At least once: a lease that expires makes the message available again at once with
///   `delivery_attempt + 1`; a [`Bus::nack`] (or `modify_deadline(…, 0)`) makes it
///   available after [`retry_backoff`] with the subscription's `min_backoff`/`max_backoff`.
/// - Dead letters: when a message would be delivered with an attempt above
///   `max_delivery_attempts` and the subscription has a `dead_letter_topic` (that exists),
///   it is published there instead with the `CloudPubSubDeadLetter*` attributes and
///   removed from the subscription. This is checked when the last allowed attempt is
///   nacked or expires, and again before every delivery. `max_delivery_attempts == 0`
///   means no limit.
/// - Ack ids are unique per delivery; a stale, expired or unknown one gives
///   [`BusError::InvalidAckId`] (strict, like an exactly-once Pub/Sub subscription).
/// - Persisted topics ([`EmbeddedBus::with_persisted_topic`]) have every message
///   appended to a JSON-lines [`crate::embedded::EventLog`] before the publish returns.
///   Queues are in memory only: a new bus does not replay a log into its subscriptions.
/// - `message_retention`, `exactly_once` and ordering keys are not interpreted (ordering
///   keys are carried through; delivery is FIFO per subscription but not relied on).
pub struct EmbeddedBus {
    state: Mutex<State>,
    logs: HashMap<String, Arc<LogFile>>,
    next_id: AtomicU64,
    instance: String,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Topic name → names of its subscriptions.
    topics: HashMap<String, Vec<String>>,
    subs: HashMap<String, Sub>,
}

/// A message waiting in (or leased from) one subscription.
#[derive(Clone)]
struct Pending {
    message_id: Arc<str>,
    message: Arc<Message>,
    publish_time: DateTime<Utc>,
    /// Deliveries made so far.
    attempts: u32,
}

struct Lease {
    pending: Pending,
    deadline: Instant,
}

struct Sub {
    spec: SubscriptionSpec,
    notify: Arc<Notify>,
    ready: VecDeque<Pending>,
    /// (due, sequence) → message waiting out its backoff.
    delayed: BTreeMap<(Instant, u64), Pending>,
    leased: HashMap<String, Lease>,
}

/// A message leaving a subscription for its dead-letter topic.
struct Forward {
    subscription: String,
    topic: String,
    pending: Pending,
}

impl Sub {
    fn new(spec: SubscriptionSpec) -> Sub {
        Sub {
            spec,
            notify: Arc::new(Notify::new()),
            ready: VecDeque::new(),
            delayed: BTreeMap::new(),
            leased: HashMap::new(),
        }
    }

    /// The dead-letter topic `pending` goes to instead of being delivered again, if its
    /// attempts are used up and the subscription has an existing dead-letter topic.
    fn dead_letter_for(&self, pending: &Pending, topics: &HashMap<String, Vec<String>>) -> Option<String> {
        let topic = self.spec.dead_letter_topic.as_ref()?;
        if self.spec.max_delivery_attempts == 0 || pending.attempts < self.spec.max_delivery_attempts {
            return None;
        }
        if !topics.contains_key(topic) {
            tracing::warn!(
                subscription = %self.spec.name,
                topic = %topic,
                "dead-letter topic does not exist; delivering again instead"
            );
            return None;
        }
        Some(topic.clone())
    }

    /// Make `pending` available again after `delay` (or forward it to the dead-letter topic).
    fn requeue(
        &mut self,
        pending: Pending,
        delay: Duration,
        now: Instant,
        seq: u64,
        topics: &HashMap<String, Vec<String>>,
        forwards: &mut Vec<Forward>,
    ) {
        if let Some(topic) = self.dead_letter_for(&pending, topics) {
            forwards.push(Forward { subscription: self.spec.name.clone(), topic, pending });
        } else if delay.is_zero() {
            self.ready.push_back(pending);
        } else {
            self.delayed.insert((now + delay, seq), pending);
        }
    }

    /// Expire overdue leases and release messages whose backoff is over.
    fn sweep(&mut self, now: Instant, topics: &HashMap<String, Vec<String>>, forwards: &mut Vec<Forward>) -> bool {
        let mut changed = false;
        let expired: Vec<String> =
            self.leased.iter().filter(|(_, lease)| lease.deadline <= now).map(|(id, _)| id.clone()).collect();
        for ack_id in expired {
            if let Some(lease) = self.leased.remove(&ack_id) {
                self.requeue(lease.pending, Duration::ZERO, now, 0, topics, forwards);
                changed = true;
            }
        }
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
            changed = true;
        }
        changed
    }

    /// The next moment something changes on its own (a lease expires, a backoff ends).
    fn next_due(&self) -> Option<Instant> {
        let lease = self.leased.values().map(|l| l.deadline).min();
        let delayed = self.delayed.keys().next().map(|k| k.0);
        match (lease, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Default for EmbeddedBus {
    fn default() -> Self {
        EmbeddedBus::new()
    }
}

impl EmbeddedBus {
    /// An empty bus: no topics, no subscriptions, nothing persisted. Share it as
    /// `Arc<EmbeddedBus>` (or `Arc<dyn Bus>`) after configuring it.
    pub fn new() -> EmbeddedBus {
        EmbeddedBus {
            state: Mutex::new(State::default()),
            logs: HashMap::new(),
            next_id: AtomicU64::new(1),
            instance: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        }
    }

    /// Persist `topic`: from now on every message published to it (dead letters
    /// included) is appended to the JSON-lines event log at `path` before the publish
    /// returns (see [`crate::embedded::EventLog`]). The file and its parent directories
    /// are created if missing; an existing file is appended to, never truncated, and a
    /// torn last line in it is terminated first. Call before sharing the bus.
    ///
    /// Durability: each record is written with one write and flushed to the operating
    /// system, so it survives the process crashing (not a power loss: no fsync).
    pub fn with_persisted_topic(mut self, topic: impl Into<String>, path: impl AsRef<Path>) -> io::Result<EmbeddedBus> {
        let log = LogFile::open(path.as_ref())?;
        self.logs.insert(topic.into(), Arc::new(log));
        Ok(self)
    }

    /// The event-log file of `topic`, if it is persisted.
    pub fn persisted_path(&self, topic: &str) -> Option<PathBuf> {
        self.logs.get(topic).map(|log| log.path().to_path_buf())
    }

    /// Stop deliveries: pending and later [`Bus::receive`] and [`Bus::peek`] calls return
    /// [`BusError::Closed`]. Publish, ack, nack and modify_deadline keep working, so
    /// in-flight handlers can finish and their events still reach persisted logs.
    pub fn close(&self) {
        let notifies: Vec<Arc<Notify>> = {
            let mut state = self.lock();
            state.closed = true;
            state.subs.values().map(|s| s.notify.clone()).collect()
        };
        for notify in notifies {
            notify.notify_waiters();
        }
    }

    /// Whether [`EmbeddedBus::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// How many messages `subscription` holds, by state; [`BusError::NotFound`] if it
    /// does not exist. Lets embedded mode tell when the pipeline has gone quiet.
    pub fn stats(&self, subscription: &str) -> Result<SubscriptionStats, BusError> {
        let state = self.lock();
        let sub = state.subs.get(subscription).ok_or_else(|| not_found_sub(subscription))?;
        Ok(SubscriptionStats { waiting: sub.ready.len(), backing_off: sub.delayed.len(), leased: sub.leased.len() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (no invariant spans an unwind point).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Publish without the size check (dead letters). Appends to the log first, then
    /// enqueues on every subscription of the topic and wakes their receivers.
    fn publish_inner(&self, topic: &str, message: Message) -> Result<String, BusError> {
        if !self.lock().topics.contains_key(topic) {
            return Err(BusError::NotFound(format!("topic {topic}")));
        }
        let message_id = format!("{}-{}", self.instance, self.next());
        let publish_time = Utc::now();
        if let Some(log) = self.logs.get(topic) {
            let record = LoggedMessage { message_id: message_id.clone(), publish_time, message };
            log.append(&record)
                .map_err(|e| BusError::Transient(format!("appending to event log {}: {e}", log.path().display())))?;
            return Ok(self.enqueue(topic, message_id, record.message, publish_time));
        }
        Ok(self.enqueue(topic, message_id, message, publish_time))
    }

    fn enqueue(&self, topic: &str, message_id: String, message: Message, publish_time: DateTime<Utc>) -> String {
        let pending = Pending {
            message_id: Arc::from(message_id.as_str()),
            message: Arc::new(message),
            publish_time,
            attempts: 0,
        };
        let mut notifies = Vec::new();
        {
            let mut state = self.lock();
            let State { topics, subs, .. } = &mut *state;
            for name in topics.get(topic).map(Vec::as_slice).unwrap_or_default() {
                if let Some(sub) = subs.get_mut(name) {
                    sub.ready.push_back(pending.clone());
                    notifies.push(sub.notify.clone());
                }
            }
        }
        for notify in notifies {
            notify.notify_waiters();
        }
        message_id
    }

    /// Publish dead letters (outside the state lock). A forward that fails (the dead-letter
    /// log cannot be written) goes back to its subscription and is retried a second later.
    fn forward(&self, forwards: Vec<Forward>) {
        for Forward { subscription, topic, pending } in forwards {
            let mut message = (*pending.message).clone();
            message.attributes.insert(ATTR_DEAD_LETTER_SOURCE_SUBSCRIPTION.to_string(), subscription.clone());
            message.attributes.insert(ATTR_DEAD_LETTER_SOURCE_DELIVERY_COUNT.to_string(), pending.attempts.to_string());
            message.attributes.insert(
                ATTR_DEAD_LETTER_SOURCE_TOPIC_PUBLISH_TIME.to_string(),
                pending.publish_time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            );
            match self.publish_inner(&topic, message) {
                Ok(id) => tracing::debug!(
                    subscription = %subscription,
                    dead_letter_topic = %topic,
                    message_id = %pending.message_id,
                    dead_letter_id = %id,
                    attempts = pending.attempts,
                    "message dead-lettered"
                ),
                Err(e) => {
                    tracing::error!(
                        subscription = %subscription,
                        dead_letter_topic = %topic,
                        error = %e,
                        "could not dead-letter a message; retrying later"
                    );
                    let seq = self.next();
                    let mut state = self.lock();
                    if let Some(sub) = state.subs.get_mut(&subscription) {
                        sub.delayed.insert((Instant::now() + Duration::from_secs(1), seq), pending);
                        sub.notify.notify_waiters();
                    }
                }
            }
        }
    }

    /// Run `op` on `subscription`'s state after sweeping it; then forward dead letters
    /// and wake receivers if anything became available.
    fn with_sub<T>(
        &self,
        subscription: &str,
        op: impl FnOnce(&mut Sub, Instant, &HashMap<String, Vec<String>>, &mut Vec<Forward>, u64) -> (T, bool),
    ) -> Result<T, BusError> {
        let seq = self.next();
        let mut forwards = Vec::new();
        let (result, notify) = {
            let mut state = self.lock();
            let State { topics, subs, .. } = &mut *state;
            let sub = subs.get_mut(subscription).ok_or_else(|| not_found_sub(subscription))?;
            let now = Instant::now();
            let swept = sub.sweep(now, topics, &mut forwards);
            let (result, changed) = op(sub, now, topics, &mut forwards, seq);
            (result, (swept || changed).then(|| sub.notify.clone()))
        };
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
        self.forward(forwards);
        Ok(result)
    }

    fn settle(&self, subscription: &str, ack_id: &str, redeliver: bool) -> Result<(), BusError> {
        self.with_sub(subscription, |sub, now, topics, forwards, seq| {
            let Some(lease) = sub.leased.remove(ack_id) else {
                return (Err(BusError::InvalidAckId(ack_id.to_string())), false);
            };
            if redeliver {
                let delay = retry_backoff(sub.spec.min_backoff, sub.spec.max_backoff, lease.pending.attempts);
                sub.requeue(lease.pending, delay, now, seq, topics, forwards);
            }
            (Ok(()), redeliver)
        })?
    }
}

fn not_found_sub(subscription: &str) -> BusError {
    BusError::NotFound(format!("subscription {subscription}"))
}

fn delivery(pending: &Pending, ack_id: String, delivery_attempt: u32) -> Delivery {
    Delivery {
        ack_id,
        message_id: pending.message_id.to_string(),
        message: (*pending.message).clone(),
        delivery_attempt,
        publish_time: pending.publish_time,
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    /// Appends to the topic's event log first when it is persisted ([`BusError::Transient`]
    /// if that fails: nothing was enqueued), then enqueues on every current subscription.
    async fn publish(&self, topic: &str, message: Message) -> Result<String, BusError> {
        let size = message.wire_size();
        if size > MAX_MESSAGE_BYTES {
            return Err(BusError::TooLarge(size));
        }
        self.publish_inner(topic, message)
    }

    /// Returns at once with up to `max` available messages, or waits until one is
    /// published, a lease expires or a backoff ends, at most `wait`. `max == 0` returns
    /// an empty vector. [`BusError::Closed`] once the bus is closed (also while waiting).
    async fn receive(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let give_up = Instant::now() + wait;
        let notify = {
            let state = self.lock();
            if state.closed {
                return Err(BusError::Closed);
            }
            state.subs.get(subscription).ok_or_else(|| not_found_sub(subscription))?.notify.clone()
        };
        loop {
            // Register for wake-ups before looking, so a publish in between is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut forwards = Vec::new();
            let (deliveries, next_due) = {
                let mut state = self.lock();
                if state.closed {
                    return Err(BusError::Closed);
                }
                let State { topics, subs, .. } = &mut *state;
                let sub = subs.get_mut(subscription).ok_or_else(|| not_found_sub(subscription))?;
                let now = Instant::now();
                sub.sweep(now, topics, &mut forwards);
                let mut deliveries = Vec::new();
                while deliveries.len() < max {
                    let Some(pending) = sub.ready.pop_front() else { break };
                    if let Some(topic) = sub.dead_letter_for(&pending, topics) {
                        forwards.push(Forward { subscription: sub.spec.name.clone(), topic, pending });
                        continue;
                    }
                    let mut pending = pending;
                    pending.attempts += 1;
                    let ack_id = format!("{}-{}", self.instance, self.next());
                    deliveries.push(delivery(&pending, ack_id.clone(), pending.attempts));
                    sub.leased.insert(ack_id, Lease { pending, deadline: now + sub.spec.ack_deadline });
                }
                (deliveries, sub.next_due())
            };
            self.forward(forwards);
            if !deliveries.is_empty() || max == 0 {
                return Ok(deliveries);
            }
            if Instant::now() >= give_up {
                return Ok(Vec::new());
            }
            let until = next_due.map_or(give_up, |due| due.min(give_up));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Removes the lease: the message is never delivered again on this subscription.
    async fn ack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        self.settle(subscription, ack_id, false)
    }

    /// Ends the lease; the message becomes available after [`retry_backoff`] for the
    /// attempt just made, or is dead-lettered if that was the last allowed attempt.
    async fn nack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        self.settle(subscription, ack_id, true)
    }

    /// `seconds == 0` is a [`Bus::nack`]; otherwise the lease now ends `seconds` from now.
    /// An already expired lease cannot be extended ([`BusError::InvalidAckId`]).
    async fn modify_deadline(&self, subscription: &str, ack_id: &str, seconds: u32) -> Result<(), BusError> {
        if seconds == 0 {
            return self.settle(subscription, ack_id, true);
        }
        self.with_sub(subscription, |sub, now, _, _, _| match sub.leased.get_mut(ack_id) {
            Some(lease) => {
                lease.deadline = now + Duration::from_secs(u64::from(seconds));
                // Receivers sleeping until the old deadline recompute their wake-up.
                (Ok(()), true)
            }
            None => (Err(BusError::InvalidAckId(ack_id.to_string())), false),
        })?
    }

    /// Validates the whole topology first (every subscription's topic and dead-letter
    /// topic must exist or be part of it: [`BusError::NotFound`] otherwise, and nothing
    /// is created), then creates what is missing. Existing topics and subscriptions,
    /// and the messages they hold, are left as they are.
    async fn ensure_topology(&self, topology: &Topology) -> Result<(), BusError> {
        let mut state = self.lock();
        let known = |name: &str| state.topics.contains_key(name) || topology.topics.iter().any(|t| t.name == name);
        for spec in &topology.subscriptions {
            if state.subs.contains_key(&spec.name) {
                continue;
            }
            if !known(&spec.topic) {
                return Err(BusError::NotFound(format!("topic {} of subscription {}", spec.topic, spec.name)));
            }
            if let Some(dlq) = &spec.dead_letter_topic {
                if !known(dlq) {
                    return Err(BusError::NotFound(format!("dead-letter topic {dlq} of subscription {}", spec.name)));
                }
            }
        }
        for topic in &topology.topics {
            state.topics.entry(topic.name.clone()).or_default();
        }
        for spec in &topology.subscriptions {
            if state.subs.contains_key(&spec.name) {
                continue;
            }
            state.topics.entry(spec.topic.clone()).or_default().push(spec.name.clone());
            state.subs.insert(spec.name.clone(), Sub::new(spec.clone()));
        }
        Ok(())
    }

    /// Up to `max` messages waiting on `subscription` (available ones first, then those
    /// backing off, soonest first), without leasing them or counting an attempt. Each
    /// delivery has an empty `ack_id` (not ackable) and the `delivery_attempt` its next
    /// delivery will have. Leased messages are not included.
    async fn peek(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        if self.lock().closed {
            return Err(BusError::Closed);
        }
        self.with_sub(subscription, |sub, _, _, _, _| {
            let waiting = sub.ready.iter().chain(sub.delayed.values()).take(max);
            (waiting.map(|p| delivery(p, String::new(), p.attempts + 1)).collect(), false)
        })
    }
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("EmbeddedBus")
            .field("topics", &state.topics.len())
            .field("subscriptions", &state.subs.len())
            .field("persisted", &self.logs.keys().collect::<Vec<_>>())
            .field("closed", &state.closed)
            .finish()
    }
}
