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
//! - **receive** (`streaming.rs`): streaming pull. The first `receive` on a subscription
//!   opens a `MessageStream` in a background task with flow control
//!   ([`PubSubConfig::set_max_outstanding_messages`], [`PubSubConfig::set_max_outstanding_bytes`]);
//!   received messages wait in a channel until `receive` hands them out. The official
//!   crate offers no synchronous pull and keeps the real ack ids private, so the
//!   `Delivery::ack_id` is a token of this bus (valid in this process only) that maps to
//!   the crate's handler. Messages that wait in the channel count as outstanding, so a
//!   worker should set `max_outstanding_messages` near its concurrency: whatever is
//!   beyond it waits in this process (leased, not lost) instead of going to another one.
//! - **leases** (`leases.rs`): the crate extends every outstanding lease by itself (up to
//!   [`MAX_LEASE`]); to keep the trait's contract (a delivery that is neither acked,
//!   nacked nor extended is redelivered after its ack deadline), this bus tracks a
//!   deadline per delivery (the subscription's ack deadline, or what
//!   `Bus::modify_deadline` set) and nacks the delivery when it passes.
//! - **nack** = modify ack deadline 0 (what the crate's `nack` sends). **modify_deadline**
//!   with 0 is a nack.
//! - **delivery attempt**: Pub/Sub reports it only on subscriptions with a dead-letter
//!   policy. Elsewhere this bus counts the deliveries of each message it has seen itself
//!   (so redeliveries to this process still count up), starting at 1.
//! - **exactly-once** subscriptions: acks and nacks are confirmed by the server; an ack
//!   whose lease expired is `BusError::InvalidAckId`.
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
//! Local clusters whose programs get killed (the chaos runs) can use
//! [`PullMode::Unary`] (the programs' `REEL_PUBSUB_PULL=unary`): `receive` then polls
//! unary pulls with `returnImmediately` over the emulator's REST port, which leave
//! nothing registered between calls, and leases are extended and settled with REST
//! calls ([`UnaryPull`], `rest_pull.rs`).
//!
//! # Files, by layer (each imports only those above it)
//!
//! - `config.rs`: [`PubSubConfig`], [`PullMode`] — what the caller builds;
//! - `error.rs`: every Pub/Sub failure sorted into a `BusError`, in one place;
//! - `rest_pull.rs`: [`UnaryPull`], the REST pull client (unary mode and `reel dlq`);
//! - `admin.rs`: topology setup, subscription lookups, deletes;
//! - `publisher.rs`: publishing;
//! - `streaming.rs`: the streaming pulls;
//! - `leases.rs`: the lease table, its reaper, local delivery counts;
//! - `bus.rs`: [`PubSubBus`], which puts them together behind the `Bus` trait.

mod admin;
mod bus;
mod config;
mod error;
mod leases;
mod publisher;
mod rest_pull;
mod streaming;

pub use bus::PubSubBus;
pub use config::{PubSubConfig, PullMode};
pub use publisher::PUBLISH_RETRY_LIMIT;
/// Pub/Sub's limit on a publish request (the message counts against it).
pub use reel_runtime::bus::MAX_MESSAGE_BYTES;
pub use rest_pull::{UnaryPull, UnaryPulled};
pub use streaming::MAX_LEASE;
