//! `Bus` on Cloud Pub/Sub with the official `google-cloud-pubsub` crate.
//!
//! # How the trait maps onto the crate
//!
//! - **publish** (`publisher.rs`): one `Publisher` per topic (cached), sharing one
//!   `BasePublisher` connection. The crate retries transient errors itself (Unavailable, DeadlineExceeded,
//!   ResourceExhausted, Internal, Aborted, Unknown, I/O and timeouts) with backoff, within
//!   [`PUBLISH_RETRY_LIMIT`]. A message with a non-empty ordering key is published with
//!   that key: the crate then keeps messages of one key in order (one batch in flight per
//!   key), which is how "message ordering on publish" is enabled in this crate (there is
//!   no separate switch). After a failed publish on a key the crate pauses that key; we
//!   resume it at once, since reel relies on no ordering. Subscriptions are created
//!   without `enable_message_ordering` on purpose: with it, one nacked message of a job
//!   would hold back the job's other messages, and nothing relies on order.
//! - **receive** (`rest_pull.rs`): unary pulls over the REST API (`subscriptions.pull`
//!   with `returnImmediately`, polled every 100 ms while the caller waits, every second
//!   once the subscription has had no message for a minute), asking for at most what the
//!   caller asked for. A worker asks for as many
//!   messages as it has free slots, so no program ever holds a message it is not working
//!   on: in a burst, a message waits on the server, where any idle instance can take it,
//!   not leased in a busy one (what streaming pull did on the emulator, which ignores
//!   flow control). Nothing stays registered between calls, so a killed program leaves
//!   nothing behind but the leases it held, which run out by themselves (see below).
//!   The official crate offers no unary pull (its `Subscriber` is streaming only), hence
//!   the REST client. Its `Delivery::ack_id` is a token of this bus (valid in this process
//!   only) that maps to the server's ack id.
//! - **leases** (`leases.rs`): a delivery is leased for the subscription's ack deadline
//!   and extended by whoever works on it (`Bus::modify_deadline`; the worker keeps a
//!   short lease alive while its handler runs, `Settings::lease_seconds`). The bus
//!   tracks each lease's deadline so that an ack or extension after it is refused as
//!   `BusError::InvalidAckId`, as the server would. A SIGKILLed program's messages come
//!   back to other programs when their short lease runs out, on Pub/Sub and on the
//!   emulator alike.
//! - **nack** = modify ack deadline 0. **modify_deadline** with 0 is a nack.
//!   **shutdown** releases every unsettled delivery at once.
//! - **delivery attempt**: Pub/Sub reports it only on subscriptions with a dead-letter
//!   policy. Elsewhere this bus counts the deliveries of each message it has seen itself
//!   (so redeliveries to this process still count up), starting at 1.
//! - **exactly-once** subscriptions: acks are confirmed by the server (the REST answer);
//!   an ack whose lease expired is `BusError::InvalidAckId`.
//! - **peek**: pulls up to `max` messages (waiting up to 2 s for the first) and releases
//!   them at once (modify ack deadline 0). On Pub/Sub this **consumes a delivery attempt**
//!   of each peeked message (on subscriptions with a dead-letter policy it counts toward
//!   `max_delivery_attempts`), and the messages come back after the subscription's retry
//!   backoff. The peeked deliveries have an empty `ack_id`: they cannot be acked.
//!
//! # Why not streaming pull
//!
//! Streaming pull is the faster API for high message rates; reel's stages see a few
//! messages a minute, each worth seconds to minutes of work. What decides is how a
//! stream fails: the Pub/Sub emulator of the gcloud SDK here (cloud-pubsub-emulator
//! 0.8.20) never notices that a client cancelled a pending `Pull` or `StreamingPull`
//! (its gRPC layer throws `NoSuchMethodError` in `onRstStreamRead`). The stream of a
//! killed program stays registered and goes on taking messages, each back only after
//! its ack deadline, often into the same dead stream again (seen in a chaos run: one
//! job's `job.validated` stuck for 9 minutes behind three killed download programs), and
//! it ignores the stream's flow control, pouring a stage's whole backlog into one
//! program. A unary pull with `returnImmediately` leaves nothing to notice. Using it
//! everywhere means the pipeline behaves the same on the emulator and on Pub/Sub, and the
//! tests exercise the production path. (Google discourages `returnImmediately` because
//! an answer may be empty while messages exist; the bus polls, so that costs one poll
//! interval.)
//!
//! # Files, by layer (each imports only those above it)
//!
//! - `config.rs`: [`PubSubConfig`] — what the caller builds;
//! - `error.rs`: every Pub/Sub failure sorted into a `BusError`, in one place;
//! - `rest_pull.rs`: [`UnaryPull`], the REST pull client (receive, and `reel dlq`);
//! - `admin.rs`: topology setup, subscription lookups, deletes;
//! - `publisher.rs`: publishing;
//! - `leases.rs`: the lease table, its reaper, local delivery counts;
//! - `bus.rs`: [`PubSubBus`], which puts them together behind the `Bus` trait.

mod admin;
mod bus;
mod config;
mod error;
mod leases;
mod publisher;
mod rest_pull;

pub use bus::PubSubBus;
pub use config::PubSubConfig;
pub use publisher::PUBLISH_RETRY_LIMIT;
/// Pub/Sub's limit on a publish request (the message counts against it).
pub use reel_runtime::bus::MAX_MESSAGE_BYTES;
pub use rest_pull::{UnaryPull, UnaryPulled};
