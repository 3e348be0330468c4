//! [`Bus`] on Cloud Pub/Sub with the official `google-cloud-pubsub` crate.
//!
//! # How the trait maps onto the crate
//!
//! - **publish**: one [`Publisher`] per topic (cached), sharing one [`BasePublisher`]
//!   connection. The crate retries transient errors itself (Unavailable, DeadlineExceeded,
//!   ResourceExhausted, Internal, Aborted, Unknown, I/O and timeouts) with backoff, within
//!   [`PUBLISH_RETRY_LIMIT`]. A message with a non-empty ordering key is published with
//!   that key: the crate then keeps messages of one key in order (one batch in flight per
//!   key), which is how "message ordering on publish" is enabled in this crate (there is
//!   no separate switch). After a failed publish on a key the crate pauses that key; we
//!   resume it at once, since reel relies on no ordering. Subscriptions are created
//!   without `enable_message_ordering` on purpose: with it, one nacked message of a job
//!   would hold back the job's other messages, and nothing relies on order.
//! - **receive**: streaming pull. The first `receive` on a subscription opens a
//!   [`MessageStream`] in a background task with flow control
//!   ([`PubSubConfig::max_outstanding_messages`], [`PubSubConfig::max_outstanding_bytes`]);
//!   received messages wait in a channel until `receive` hands them out. The official
//!   crate offers no synchronous pull and keeps the real ack ids private, so the
//!   [`Delivery::ack_id`] is a token of this bus (valid in this process only) that maps to
//!   the crate's handler. Messages that wait in the channel count as outstanding, so a
//!   worker should set `max_outstanding_messages` near its concurrency: whatever is
//!   beyond it waits in this process (leased, not lost) instead of going to another one.
//! - **leases**: the crate extends every outstanding lease by itself (up to
//!   [`MAX_LEASE`]); to keep the trait's contract (a delivery that is neither acked,
//!   nacked nor extended is redelivered after its ack deadline), this bus tracks a
//!   deadline per delivery (the subscription's ack deadline, or what
//!   [`Bus::modify_deadline`] set) and nacks the delivery when it passes.
//! - **nack** = modify ack deadline 0 (what the crate's `nack` sends). **modify_deadline**
//!   with 0 is a nack.
//! - **delivery attempt**: Pub/Sub reports it only on subscriptions with a dead-letter
//!   policy. Elsewhere this bus counts the deliveries of each message it has seen itself
//!   (so redeliveries to this process still count up), starting at 1.
//! - **exactly-once** subscriptions: acks and nacks are confirmed by the server; an ack
//!   whose lease expired is [`BusError::InvalidAckId`].
//! - **peek**: takes up to `max` messages from the subscription's stream (waiting up to
//!   2 s for the first) and nacks them at once (modify ack deadline 0). On Pub/Sub this
//!   **consumes a delivery attempt** of each peeked message (on subscriptions with a
//!   dead-letter policy it counts toward `max_delivery_attempts`), and the messages come
//!   back after the subscription's retry backoff. Flow control applies: a peek returns
//!   at most `max_outstanding_messages` (less what this bus holds unsettled), so give
//!   `reel dlq list` a config with room for what it lists. The peeked deliveries have an
//!   empty `ack_id`: they cannot be acked.
//!
//! # The emulator and closed streams
//!
//! The Pub/Sub emulator of the gcloud SDK here (cloud-pubsub-emulator 0.8.20) never
//! notices that a client cancelled a pending `Pull` or `StreamingPull` (its gRPC layer
//! throws `NoSuchMethodError` in `onRstStreamRead`; the REST port behaves the same). It
//! goes on delivering into the dead call: those messages come back only after their ack
//! deadline, with one more delivery attempt, and the dead stream goes on taking messages
//! every ack deadline for the emulator's lifetime. This bus therefore opens one stream
//! per subscription and keeps it for its whole life (peek included); each `PubSubBus`
//! that is dropped leaves one such dead stream per subscription it read on the
//! emulator. Real Pub/Sub is not affected.
//!
//! Local clusters whose programs get killed (the chaos runs) can set
//! `REEL_PUBSUB_PULL=unary`: `receive` then polls unary pulls with `returnImmediately`
//! over the emulator's REST port, which leave nothing registered between calls, and
//! leases are extended and settled with REST calls (`unary.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{BasePublisher, Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::error::{AckError, PublishError};
use google_cloud_pubsub::model::{DeadLetterPolicy, ExpirationPolicy, Message as PsMessage, RetryPolicy};
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use reel_runtime::bus::{Bus, BusError, Delivery, Message};
use reel_runtime::topology::Topology;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Pub/Sub's limit on a publish request (the message counts against it).
pub use reel_runtime::bus::MAX_MESSAGE_BYTES;
/// How long the publisher keeps retrying transient errors before giving up.
pub const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// How long the crate keeps extending a lease on its own.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
/// Longest ack deadline Pub/Sub accepts.
const MAX_ACK_DEADLINE_SECS: u32 = 600;
/// How long `peek` waits for a first message, and then for each further one.
const PEEK_FIRST_WAIT: Duration = Duration::from_secs(2);
const PEEK_NEXT_WAIT: Duration = Duration::from_millis(300);
/// How often expired leases are looked for.
const REAPER_PERIOD: Duration = Duration::from_millis(250);

/// How to reach Pub/Sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    /// The Google Cloud project that owns the topics and subscriptions.
    pub project: String,
    /// `host:port` of the Pub/Sub emulator; `None` for the real service.
    pub emulator_host: Option<String>,
    /// Flow control: most messages received but not yet acked or nacked, per subscription.
    pub max_outstanding_messages: i64,
    /// Flow control: most bytes received but not yet acked or nacked, per subscription.
    pub max_outstanding_bytes: i64,
    /// Receive with unary pulls over the emulator's REST port instead of a streaming
    /// pull (`REEL_PUBSUB_PULL=unary`; emulator only). See `unary.rs` for why.
    pub unary_pull: bool,
}

impl PubSubConfig {
    /// Default [`PubSubConfig::max_outstanding_messages`].
    pub const DEFAULT_MAX_OUTSTANDING_MESSAGES: i64 = 10;
    /// Default [`PubSubConfig::max_outstanding_bytes`] (64 MiB).
    pub const DEFAULT_MAX_OUTSTANDING_BYTES: i64 = 64 * 1024 * 1024;

    /// The real service for `project`, with the default flow control.
    pub fn new(project: impl Into<String>) -> Self {
        PubSubConfig {
            project: project.into(),
            emulator_host: None,
            max_outstanding_messages: Self::DEFAULT_MAX_OUTSTANDING_MESSAGES,
            max_outstanding_bytes: Self::DEFAULT_MAX_OUTSTANDING_BYTES,
            unary_pull: false,
        }
    }

    /// From the environment: `GOOGLE_CLOUD_PROJECT` (required), `PUBSUB_EMULATOR_HOST`
    /// (`host:port`, optional), and optionally `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES` and
    /// `REEL_PUBSUB_MAX_OUTSTANDING_BYTES`.
    pub fn from_env() -> Result<Self, BusError> {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let project =
            var("GOOGLE_CLOUD_PROJECT").ok_or_else(|| BusError::Other("GOOGLE_CLOUD_PROJECT is not set".into()))?;
        let mut config = PubSubConfig::new(project);
        config.emulator_host = var("PUBSUB_EMULATOR_HOST");
        let number = |name: &str, default: i64| -> Result<i64, BusError> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| BusError::Other(format!("{name}={v:?} is not a positive integer"))),
            }
        };
        config.max_outstanding_messages =
            number("REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES", Self::DEFAULT_MAX_OUTSTANDING_MESSAGES)?;
        config.max_outstanding_bytes =
            number("REEL_PUBSUB_MAX_OUTSTANDING_BYTES", Self::DEFAULT_MAX_OUTSTANDING_BYTES)?;
        config.unary_pull =
            match var("REEL_PUBSUB_PULL").as_deref() {
                None | Some("streaming") => false,
                Some("unary") if config.emulator_host.is_some() => true,
                Some("unary") => return Err(BusError::Other(
                    "REEL_PUBSUB_PULL=unary is for the emulator (PUBSUB_EMULATOR_HOST); Pub/Sub uses streaming pull"
                        .into(),
                )),
                Some(other) => {
                    return Err(BusError::Other(format!("REEL_PUBSUB_PULL={other:?}: expected streaming or unary")))
                }
            };
        Ok(config)
    }

    /// The endpoint URL for the clients, when it is not the default one.
    fn endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|host| {
            if host.starts_with("http://") || host.starts_with("https://") {
                host.clone()
            } else {
                format!("http://{host}")
            }
        })
    }
}

/// The one place that turns a Pub/Sub error into a [`BusError`].
///
/// `size` is the size of the message being published, if any (for `TooLarge`).
fn bus_error(context: &str, size: Option<usize>, err: &google_cloud_pubsub::Error) -> BusError {
    let text = format!("{context}: {err}");
    if let Some(status) = err.status() {
        let message = status.message.to_ascii_lowercase();
        return match status.code {
            Code::NotFound => BusError::NotFound(text),
            Code::PermissionDenied | Code::Unauthenticated => BusError::PermissionDenied(text),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled => BusError::Transient(text),
            Code::InvalidArgument
                if message.contains("too large") || message.contains("exceeds") || message.contains("maximum") =>
            {
                BusError::TooLarge(size.unwrap_or(0))
            }
            Code::InvalidArgument | Code::FailedPrecondition
                if message.contains("ack id") || message.contains("ack_id") || message.contains("ackid") =>
            {
                BusError::InvalidAckId(text)
            }
            _ => BusError::Other(text),
        };
    }
    if let Some(code) = err.http_status_code() {
        return match code {
            401 | 403 => BusError::PermissionDenied(text),
            404 => BusError::NotFound(text),
            413 => BusError::TooLarge(size.unwrap_or(0)),
            408 | 429 | 500..=599 => BusError::Transient(text),
            _ => BusError::Other(text),
        };
    }
    if err.is_authentication() {
        return BusError::PermissionDenied(text);
    }
    if err.is_timeout() || err.is_io() || err.is_connect() || err.is_transport() || err.is_exhausted() {
        return BusError::Transient(text);
    }
    BusError::Other(text)
}

fn publish_error(context: &str, size: usize, err: PublishError) -> BusError {
    match err {
        PublishError::Rpc(e) => bus_error(context, Some(size), &e),
        PublishError::Shutdown => BusError::Closed,
        // The key was paused by an earlier failure; the publish may succeed once resumed.
        other => BusError::Transient(format!("{context}: {other}")),
    }
}

fn ack_error(context: &str, err: AckError) -> BusError {
    match err {
        AckError::LeaseExpired => BusError::InvalidAckId(format!("{context}: lease expired")),
        AckError::Rpc { source, .. } => bus_error(context, None, &source),
        AckError::ShutdownBeforeAck => BusError::Closed,
        other => BusError::Transient(format!("{context}: {other}")),
    }
}

fn is_already_exists(err: &google_cloud_pubsub::Error) -> bool {
    err.status().is_some_and(|s| s.code == Code::AlreadyExists) || err.http_status_code() == Some(409)
}

fn builder_error(what: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Other(format!("cannot build the Pub/Sub {what} client: {err}"))
}

fn wkt_duration(d: Duration) -> Result<google_cloud_wkt::Duration, BusError> {
    google_cloud_wkt::Duration::try_from(d).map_err(|e| BusError::Other(format!("duration {d:?}: {e}")))
}

/// One delivery handed out by `receive`, until it is settled.
struct Lease {
    subscription: String,
    handler: LeaseHandle,
    deadline: Instant,
}

/// What settles a lease: the crate's handler (streaming pull) or the server's ack id
/// (unary pull on the emulator).
enum LeaseHandle {
    Stream(Handler),
    Unary(String),
}

impl LeaseHandle {
    /// Give the message up without waiting: a streaming lease is nacked; a unary one is
    /// left to its server-side deadline, after which the emulator redelivers it.
    fn nack(self) {
        if let LeaseHandle::Stream(h) = self {
            h.nack();
        }
    }
}

/// A message pulled by a subscription's stream, waiting to be handed out.
struct Pulled {
    message: PsMessage,
    handler: Handler,
}

/// The streaming pull of one subscription.
struct SubStream {
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<Pulled, BusError>>>,
    /// Messages received from the stream and not yet handed out by `receive`.
    buffered: Arc<AtomicUsize>,
    ack_deadline: Duration,
    dead: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Drop for SubStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Per-process count of deliveries by message, for subscriptions on which Pub/Sub does
/// not report the delivery attempt.
#[derive(Default)]
struct AttemptCounter {
    seen: HashMap<(String, String), (u32, Instant)>,
}

impl AttemptCounter {
    const PRUNE_ABOVE: usize = 10_000;
    const FORGET_AFTER: Duration = Duration::from_secs(3600);

    fn next(&mut self, subscription: &str, message_id: &str) -> u32 {
        let now = Instant::now();
        if self.seen.len() > Self::PRUNE_ABOVE {
            self.seen.retain(|_, (_, at)| now.duration_since(*at) < Self::FORGET_AFTER);
        }
        let entry = self.seen.entry((subscription.to_string(), message_id.to_string())).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }
}

struct Inner {
    config: PubSubConfig,
    topic_admin: TopicAdmin,
    subscription_admin: SubscriptionAdmin,
    base_publisher: BasePublisher,
    publishers: Mutex<HashMap<String, Publisher>>,
    subscriber: Subscriber,
    streams: tokio::sync::Mutex<HashMap<String, Arc<SubStream>>>,
    leases: Mutex<HashMap<String, Lease>>,
    attempts: Mutex<AttemptCounter>,
    /// The REST client when receiving by unary pull.
    unary: Option<crate::unary::UnaryClient>,
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
    /// Build the clients (no network call is made yet). Must run inside a tokio runtime,
    /// which the clients' background tasks then live on.
    pub async fn connect(config: PubSubConfig) -> Result<Self, BusError> {
        if config.project.is_empty() {
            return Err(BusError::Other("empty Google Cloud project".into()));
        }
        let endpoint = config.endpoint();
        let anonymous = || google_cloud_auth::credentials::anonymous::Builder::new().build();

        let mut topic_admin = TopicAdmin::builder();
        let mut subscription_admin = SubscriptionAdmin::builder();
        let mut base_publisher = BasePublisher::builder().with_retry_policy(
            google_cloud_gax::retry_policy::RetryPolicyExt::with_time_limit(
                google_cloud_pubsub::retry_policy::RetryableErrors,
                PUBLISH_RETRY_LIMIT,
            ),
        );
        let mut subscriber = Subscriber::builder();
        if let Some(endpoint) = &endpoint {
            topic_admin = topic_admin.with_endpoint(endpoint).with_credentials(anonymous());
            subscription_admin = subscription_admin.with_endpoint(endpoint).with_credentials(anonymous());
            base_publisher = base_publisher.with_endpoint(endpoint).with_credentials(anonymous());
            subscriber = subscriber.with_endpoint(endpoint).with_credentials(anonymous());
        }
        let unary = match (&endpoint, config.unary_pull) {
            (Some(endpoint), true) => Some(crate::unary::UnaryClient::new(endpoint, &config.project)?),
            (None, true) => return Err(BusError::Other("unary pull is for the emulator only".into())),
            _ => None,
        };
        let inner = Arc::new(Inner {
            topic_admin: topic_admin.build().await.map_err(|e| builder_error("topic admin", e))?,
            subscription_admin: subscription_admin.build().await.map_err(|e| builder_error("subscription admin", e))?,
            base_publisher: base_publisher.build().await.map_err(|e| builder_error("publisher", e))?,
            subscriber: subscriber.build().await.map_err(|e| builder_error("subscriber", e))?,
            publishers: Mutex::new(HashMap::new()),
            streams: tokio::sync::Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            attempts: Mutex::new(AttemptCounter::default()),
            unary,
            unary_deadlines: tokio::sync::Mutex::new(HashMap::new()),
            bus_id: format!("{:08x}", rand_u32()),
            next_token: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            config,
        });
        spawn_reaper(Arc::downgrade(&inner), inner.shutdown.clone());
        Ok(PubSubBus { inner })
    }

    /// [`PubSubBus::connect`] with [`PubSubConfig::from_env`].
    pub async fn from_env() -> Result<Self, BusError> {
        Self::connect(PubSubConfig::from_env()?).await
    }

    /// The configuration this bus was built with.
    pub fn config(&self) -> &PubSubConfig {
        &self.inner.config
    }

    /// `projects/P/topics/NAME` (a full name is returned as it is).
    pub fn topic_path(&self, name: &str) -> String {
        if name.starts_with("projects/") {
            name.to_string()
        } else {
            format!("projects/{}/topics/{}", self.inner.config.project, name)
        }
    }

    /// `projects/P/subscriptions/NAME` (a full name is returned as it is).
    pub fn subscription_path(&self, name: &str) -> String {
        if name.starts_with("projects/") {
            name.to_string()
        } else {
            format!("projects/{}/subscriptions/{}", self.inner.config.project, name)
        }
    }

    /// Stop every stream (nacking what was received and not yet settled) and flush the
    /// publishers. Later calls to `receive` fail with [`BusError::Closed`].
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let publishers: Vec<Publisher> = self.inner.publishers.lock().unwrap().values().cloned().collect();
        for publisher in publishers {
            publisher.flush().await;
        }
        let leases: Vec<Lease> = self.inner.leases.lock().unwrap().drain().map(|(_, l)| l).collect();
        for lease in leases {
            lease.handler.nack();
        }
        self.inner.streams.lock().await.clear();
    }

    /// Delete a subscription (tests and tooling). Missing is not an error.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), BusError> {
        let path = self.subscription_path(name);
        match self.inner.subscription_admin.delete_subscription().set_subscription(&path).send().await {
            Ok(_) => Ok(()),
            Err(e) => match bus_error(&format!("delete subscription {path}"), None, &e) {
                BusError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Delete a topic (tests and tooling). Missing is not an error.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BusError> {
        let path = self.topic_path(name);
        match self.inner.topic_admin.delete_topic().set_topic(&path).send().await {
            Ok(_) => Ok(()),
            Err(e) => match bus_error(&format!("delete topic {path}"), None, &e) {
                BusError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    fn publisher(&self, topic: &str) -> Publisher {
        let mut publishers = self.inner.publishers.lock().unwrap();
        publishers
            .entry(topic.to_string())
            .or_insert_with(|| {
                self.inner
                    .base_publisher
                    .publisher(self.topic_path(topic))
                    .set_delay_threshold(Duration::from_millis(5))
                    .build()
            })
            .clone()
    }

    fn new_token(&self) -> String {
        let n = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.bus_id)
    }

    fn delivery(&self, subscription: &str, ack_id: String, message: PsMessage, attempt: Option<i32>) -> Delivery {
        let delivery_attempt = match attempt {
            Some(n) if n > 0 => n as u32,
            _ => self.inner.attempts.lock().unwrap().next(subscription, &message.message_id),
        };
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
                attributes: message.attributes.into_iter().collect(),
                ordering_key: message.ordering_key,
            },
            delivery_attempt,
            publish_time,
        }
    }

    /// The subscription's ack deadline; NotFound when it does not exist.
    async fn ack_deadline(&self, subscription: &str) -> Result<Duration, BusError> {
        let path = self.subscription_path(subscription);
        let sub = self
            .inner
            .subscription_admin
            .get_subscription()
            .set_subscription(&path)
            .send()
            .await
            .map_err(|e| bus_error(&format!("get subscription {path}"), None, &e))?;
        let secs = if sub.ack_deadline_seconds > 0 { sub.ack_deadline_seconds as u64 } else { 10 };
        Ok(Duration::from_secs(secs))
    }

    fn subscribe(
        &self,
        subscription: &str,
        ack_deadline: Duration,
        max_messages: i64,
        max_bytes: i64,
    ) -> MessageStream {
        self.inner
            .subscriber
            .subscribe(self.subscription_path(subscription))
            .set_max_outstanding_messages(max_messages.max(1))
            .set_max_outstanding_bytes(max_bytes.max(1))
            .set_max_lease(MAX_LEASE)
            .set_max_lease_extension(ack_deadline)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build()
    }

    async fn stream_for(&self, subscription: &str) -> Result<Arc<SubStream>, BusError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let mut streams = self.inner.streams.lock().await;
        if let Some(s) = streams.get(subscription) {
            if !s.dead.load(Ordering::Acquire) {
                return Ok(s.clone());
            }
        }
        let ack_deadline = self.ack_deadline(subscription).await?;
        let mut stream = self.subscribe(
            subscription,
            ack_deadline,
            self.inner.config.max_outstanding_messages,
            self.inner.config.max_outstanding_bytes,
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        let buffered = Arc::new(AtomicUsize::new(0));
        // The emulator ignores streaming-pull flow control and pours a whole backlog into
        // the first open stream, so other workers of the stage would sit idle. There, a
        // message beyond the flow-control limit is released at once (nack) for another
        // worker. Real Pub/Sub honours the limit and never sends one.
        let release_beyond = self
            .inner
            .config
            .emulator_host
            .as_ref()
            .map(|_| self.inner.config.max_outstanding_messages.max(1) as usize);
        let cancel = self.inner.shutdown.child_token();
        let sub_stream = Arc::new(SubStream {
            rx: tokio::sync::Mutex::new(rx),
            buffered: buffered.clone(),
            ack_deadline,
            dead: dead.clone(),
            cancel: cancel.clone(),
        });
        let name = subscription.to_string();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => break,
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok((message, handler))) => {
                        if release_beyond.is_some_and(|limit| buffered.load(Ordering::Acquire) >= limit) {
                            handler.nack();
                            continue;
                        }
                        buffered.fetch_add(1, Ordering::AcqRel);
                        if tx.send(Ok(Pulled { message, handler })).is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        let err = bus_error(&format!("streaming pull on {name}"), None, &e);
                        debug!(subscription = %name, error = %err, "streaming pull ended");
                        dead.store(true, Ordering::Release);
                        let _ = tx.send(Err(err));
                        break;
                    }
                    None => {
                        dead.store(true, Ordering::Release);
                        let _ = tx.send(Err(BusError::Transient(format!("streaming pull on {name} closed"))));
                        break;
                    }
                }
            }
            dead.store(true, Ordering::Release);
            close_stream(stream).await;
        });
        streams.insert(subscription.to_string(), sub_stream.clone());
        Ok(sub_stream)
    }

    /// Take up to `max` messages from the stream: wait up to `first_wait` for the first
    /// one, then up to `next_wait` for each further one.
    async fn pull(
        &self,
        subscription: &str,
        stream: &Arc<SubStream>,
        max: usize,
        first_wait: Duration,
        next_wait: Duration,
    ) -> Result<Vec<Pulled>, BusError> {
        let mut pulled = Vec::new();
        let mut failure = None;
        {
            let mut rx = stream.rx.lock().await;
            let first_until = Instant::now() + first_wait;
            while pulled.len() < max {
                let until = if pulled.is_empty() { first_until } else { Instant::now() + next_wait };
                let item = match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if Instant::now() >= until {
                            break;
                        }
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(item) => item,
                            Err(_) => break,
                        }
                    }
                };
                match item {
                    Some(Ok(p)) => {
                        stream.buffered.fetch_sub(1, Ordering::AcqRel);
                        pulled.push(p)
                    }
                    Some(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    None => {
                        failure = Some(if self.inner.shutdown.is_cancelled() {
                            BusError::Closed
                        } else {
                            BusError::Transient(format!("streaming pull on {subscription} stopped"))
                        });
                        break;
                    }
                }
            }
        }
        if let Some(err) = failure {
            self.forget_stream(subscription, stream).await;
            if pulled.is_empty() {
                return Err(err);
            }
            warn!(subscription, error = %err, "streaming pull failed after delivering messages");
        }
        Ok(pulled)
    }

    async fn forget_stream(&self, subscription: &str, stream: &Arc<SubStream>) {
        let mut streams = self.inner.streams.lock().await;
        if streams.get(subscription).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            streams.remove(subscription);
        }
    }

    /// Take the lease of `ack_id` on `subscription` out of the table.
    fn take_lease(&self, subscription: &str, ack_id: &str) -> Result<Lease, BusError> {
        let mut leases = self.inner.leases.lock().unwrap();
        let lease = leases
            .remove(ack_id)
            .ok_or_else(|| BusError::InvalidAckId(format!("{subscription}: unknown or settled ack id {ack_id:?}")))?;
        if lease.subscription != subscription {
            let owner = lease.subscription.clone();
            leases.insert(ack_id.to_string(), lease);
            return Err(BusError::InvalidAckId(format!("{ack_id:?} belongs to {owner}, not {subscription}")));
        }
        if lease.deadline <= Instant::now() {
            drop(leases);
            lease.handler.nack();
            return Err(BusError::InvalidAckId(format!("{subscription}: the lease of {ack_id:?} expired")));
        }
        Ok(lease)
    }
}

impl PubSubBus {
    fn unary_client(&self) -> Result<&crate::unary::UnaryClient, BusError> {
        self.inner.unary.as_ref().ok_or_else(|| BusError::Other("not in unary pull mode".into()))
    }

    /// `receive` by unary pull: poll until a message arrives or `wait` passes.
    async fn receive_unary(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let client = self.unary_client()?;
        let ack_deadline = {
            let known = self.inner.unary_deadlines.lock().await.get(subscription).copied();
            match known {
                Some(d) => d,
                None => {
                    let d = self.ack_deadline(subscription).await?;
                    self.inner.unary_deadlines.lock().await.insert(subscription.to_string(), d);
                    d
                }
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
                    let delivery_attempt = match p.delivery_attempt {
                        Some(n) => n,
                        None => self.inner.attempts.lock().unwrap().next(subscription, &p.message_id),
                    };
                    self.inner.leases.lock().unwrap().insert(
                        token.clone(),
                        Lease {
                            subscription: subscription.to_string(),
                            handler: LeaseHandle::Unary(p.ack_id),
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
                _ = tokio::time::sleep(crate::unary::POLL.min(until - now)) => {}
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

/// Close a stream and nack whatever it pulled and was not settled, waiting until the
/// nacks are sent.
///
/// The gRPC stream is closed *first*: the emulator redelivers a nacked message at once,
/// and if the stream were still open it could go straight back to it, where nobody
/// would read it (and it would come back only after the stream's ack deadline).
async fn close_stream(stream: MessageStream) {
    let token = stream.shutdown_token();
    drop(stream);
    token.shutdown().await;
}

/// Nack deliveries whose deadline passed (the trait's ack-deadline contract).
fn spawn_reaper(inner: Weak<Inner>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REAPER_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let expired: Vec<(String, Lease)> = {
                let mut leases = inner.leases.lock().unwrap();
                let ids: Vec<String> =
                    leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| id.clone()).collect();
                ids.into_iter().filter_map(|id| leases.remove(&id).map(|l| (id, l))).collect()
            };
            for (id, lease) in expired {
                debug!(subscription = %lease.subscription, ack_id = %id, "ack deadline passed; releasing for redelivery");
                lease.handler.nack();
            }
        }
    });
}

#[async_trait]
impl Bus for PubSubBus {
    async fn publish(&self, topic: &str, message: Message) -> Result<String, BusError> {
        let size = message.wire_size();
        if size > MAX_MESSAGE_BYTES {
            return Err(BusError::TooLarge(size));
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(BusError::Closed);
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
                    // reel relies on no ordering: do not let one failure block the key.
                    publisher.resume_publish(ordering_key);
                }
                Err(publish_error(&format!("publish to {}", self.topic_path(topic)), size, e))
            }
        }
    }

    async fn receive(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.inner.unary.is_some() {
            return self.receive_unary(subscription, max, wait).await;
        }
        let stream = self.stream_for(subscription).await?;
        let pulled = self.pull(subscription, &stream, max, wait, Duration::ZERO).await?;
        let deadline = Instant::now() + stream.ack_deadline;
        let mut out = Vec::with_capacity(pulled.len());
        for Pulled { message, handler } in pulled {
            let token = self.new_token();
            let delivery = self.delivery(subscription, token.clone(), message, handler.delivery_attempt());
            self.inner.leases.lock().unwrap().insert(
                token,
                Lease { subscription: subscription.to_string(), handler: LeaseHandle::Stream(handler), deadline },
            );
            out.push(delivery);
        }
        Ok(out)
    }

    async fn ack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        let lease = self.take_lease(subscription, ack_id)?;
        match lease.handler {
            LeaseHandle::Stream(Handler::ExactlyOnce(h)) => {
                h.confirmed_ack().await.map_err(|e| ack_error(&format!("ack on {subscription}"), e))
            }
            LeaseHandle::Stream(other) => {
                other.ack();
                Ok(())
            }
            LeaseHandle::Unary(id) => self.unary_client()?.ack(subscription, &id).await,
        }
    }

    async fn nack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError> {
        let lease = self.take_lease(subscription, ack_id)?;
        match lease.handler {
            LeaseHandle::Stream(Handler::ExactlyOnce(h)) => match h.confirmed_nack().await {
                // Expired: it is going to be redelivered anyway, which is what a nack wants.
                Ok(()) | Err(AckError::LeaseExpired) => Ok(()),
                Err(e) => Err(ack_error(&format!("nack on {subscription}"), e)),
            },
            LeaseHandle::Stream(other) => {
                other.nack();
                Ok(())
            }
            LeaseHandle::Unary(id) => match self.unary_client()?.modify(subscription, &id, 0).await {
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
        // Decided under the lock; a unary lease is then extended on the server, after it.
        let unary_id: Option<String> = {
            let mut leases = self.inner.leases.lock().unwrap();
            let now = Instant::now();
            match leases.get_mut(ack_id) {
                Some(lease) if lease.subscription == subscription && lease.deadline > now => {
                    // The crate keeps the server-side lease of a streamed message alive;
                    // this is the deadline this bus enforces (see the module docs).
                    lease.deadline = now + Duration::from_secs(seconds as u64);
                    match &lease.handler {
                        LeaseHandle::Unary(id) => Some(id.clone()),
                        LeaseHandle::Stream(_) => None,
                    }
                }
                Some(lease) if lease.subscription == subscription => {
                    let lease = leases.remove(ack_id).expect("present");
                    drop(leases);
                    lease.handler.nack();
                    return Err(BusError::InvalidAckId(format!("{subscription}: the lease of {ack_id:?} expired")));
                }
                _ => {
                    return Err(BusError::InvalidAckId(format!("{subscription}: unknown or settled ack id {ack_id:?}")))
                }
            }
        };
        match unary_id {
            Some(id) => self.unary_client()?.modify(subscription, &id, seconds).await,
            None => Ok(()),
        }
    }

    async fn ensure_topology(&self, topology: &Topology) -> Result<(), BusError> {
        for topic in &topology.topics {
            let path = self.topic_path(&topic.name);
            let mut request = self.inner.topic_admin.create_topic().set_name(&path);
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
            let path = self.subscription_path(&spec.name);
            let mut request = self
                .inner
                .subscription_admin
                .create_subscription()
                .set_name(&path)
                .set_topic(self.topic_path(&spec.topic))
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
                        .set_dead_letter_topic(self.topic_path(dead_letter))
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
        // notices a closed stream and keeps delivering into it (see `close_stream`).
        let stream = self.stream_for(subscription).await?;
        let pulled = self.pull(subscription, &stream, max, PEEK_FIRST_WAIT, PEEK_NEXT_WAIT).await?;
        let mut out = Vec::with_capacity(pulled.len());
        for Pulled { message, handler } in pulled {
            out.push(self.delivery(subscription, String::new(), message, handler.delivery_attempt()));
            // Modify ack deadline 0: available again (after the retry backoff).
            handler.nack();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn status(code: Code, message: &str) -> google_cloud_pubsub::Error {
        google_cloud_pubsub::Error::service(Status::default().set_code(code).set_message(message))
    }

    #[test]
    fn errors_are_classified_in_one_place() {
        assert!(matches!(bus_error("x", None, &status(Code::NotFound, "no")), BusError::NotFound(_)));
        assert!(matches!(bus_error("x", None, &status(Code::PermissionDenied, "no")), BusError::PermissionDenied(_)));
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::ResourceExhausted, Code::Internal, Code::Aborted]
        {
            assert!(bus_error("x", None, &status(code, "busy")).is_transient(), "{code:?}");
        }
        assert!(matches!(
            bus_error("x", Some(11_000_000), &status(Code::InvalidArgument, "Request payload size exceeds the limit")),
            BusError::TooLarge(11_000_000)
        ));
        assert!(matches!(
            bus_error("x", None, &status(Code::InvalidArgument, "Invalid ack ID")),
            BusError::InvalidAckId(_)
        ));
        assert!(matches!(bus_error("x", None, &status(Code::InvalidArgument, "bad")), BusError::Other(_)));
        assert!(is_already_exists(&status(Code::AlreadyExists, "exists")));
    }

    #[test]
    fn config_from_parts() {
        let mut c = PubSubConfig::new("p");
        assert_eq!(c.endpoint(), None);
        c.emulator_host = Some("127.0.0.1:8085".into());
        assert_eq!(c.endpoint().as_deref(), Some("http://127.0.0.1:8085"));
    }

    #[test]
    fn local_attempts_count_up_per_message() {
        let mut a = AttemptCounter::default();
        assert_eq!(a.next("s", "m1"), 1);
        assert_eq!(a.next("s", "m1"), 2);
        assert_eq!(a.next("s", "m2"), 1);
        assert_eq!(a.next("t", "m1"), 1);
    }
}
