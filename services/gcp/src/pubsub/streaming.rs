//! Streaming pull: one [`MessageStream`] per subscription, opened on first use and kept
//! for the bus's life, read by a background task into a channel that `receive` and
//! `peek` take from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message as PsMessage;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use reel_runtime::bus::BusError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::admin::Admin;
use super::config::PubSubConfig;
use super::error::{builder_error, bus_error};

/// How long the crate keeps extending a lease on its own.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// A message pulled by a subscription's stream, waiting to be handed out.
pub(crate) struct Pulled {
    pub(crate) message: PsMessage,
    pub(crate) handler: Handler,
}

/// The streaming pull of one subscription.
pub(crate) struct SubStream {
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<Pulled, BusError>>>,
    /// Messages received from the stream and not yet handed out by `receive`.
    buffered: Arc<AtomicUsize>,
    pub(crate) ack_deadline: Duration,
    dead: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Drop for SubStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The streams of one bus.
pub(crate) struct StreamingPull {
    config: PubSubConfig,
    subscriber: Subscriber,
    streams: tokio::sync::Mutex<HashMap<String, Arc<SubStream>>>,
    shutdown: CancellationToken,
}

impl StreamingPull {
    /// Build the subscriber client (no network call is made yet). `shutdown` stops
    /// every stream.
    pub(crate) async fn connect(config: &PubSubConfig, shutdown: CancellationToken) -> Result<StreamingPull, BusError> {
        let mut subscriber = Subscriber::builder();
        if let Some(endpoint) = config.endpoint() {
            subscriber = subscriber.with_endpoint(endpoint);
        }
        if let Some(credentials) = config.credentials() {
            subscriber = subscriber.with_credentials(credentials.clone());
        }
        Ok(StreamingPull {
            config: config.clone(),
            subscriber: subscriber.build().await.map_err(|e| builder_error("subscriber", e))?,
            streams: tokio::sync::Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    fn subscribe(&self, subscription: &str, ack_deadline: Duration) -> MessageStream {
        self.subscriber
            .subscribe(self.config.subscription_path(subscription))
            .set_max_outstanding_messages(self.config.max_outstanding_messages().max(1))
            .set_max_outstanding_bytes(self.config.max_outstanding_bytes().max(1))
            .set_max_lease(MAX_LEASE)
            .set_max_lease_extension(ack_deadline)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build()
    }

    /// The stream of `subscription`, opened (with its ack deadline looked up through
    /// `admin`) unless it is open and alive.
    pub(crate) async fn stream_for(&self, subscription: &str, admin: &Admin) -> Result<Arc<SubStream>, BusError> {
        if self.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let mut streams = self.streams.lock().await;
        if let Some(s) = streams.get(subscription) {
            if !s.dead.load(Ordering::Acquire) {
                return Ok(s.clone());
            }
        }
        let ack_deadline = admin.ack_deadline(subscription).await?;
        let mut stream = self.subscribe(subscription, ack_deadline);
        let (tx, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        let buffered = Arc::new(AtomicUsize::new(0));
        // The emulator ignores streaming-pull flow control and pours a whole backlog into
        // the first open stream, so other workers of the stage would sit idle. There, a
        // message beyond the flow-control limit is released at once (nack) for another
        // worker. Real Pub/Sub honours the limit and never sends one.
        let release_beyond = self.config.is_emulator().then(|| self.config.max_outstanding_messages().max(1) as usize);
        let cancel = self.shutdown.child_token();
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
    pub(crate) async fn pull(
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
                        failure = Some(if self.shutdown.is_cancelled() {
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
        let mut streams = self.streams.lock().await;
        if streams.get(subscription).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            streams.remove(subscription);
        }
    }

    /// Drop every stream (their tasks close them and nack what they hold).
    pub(crate) async fn close_all(&self) {
        self.streams.lock().await.clear();
    }
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
