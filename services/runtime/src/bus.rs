//! The message bus: the only way stages talk to each other.
//!
//! The contract is Pub/Sub's, reduced to what a stage needs. Every implementation
//! (the embedded bus in [`crate::embedded`], the Pub/Sub bus in `reel-gcp`) passes the
//! suite in `conformance` (feature `conformance`).
//!
//! - **At least once.** A received message is redelivered until it is acked: after a
//!   [`Bus::nack`] (following the subscription's backoff), or when its ack deadline
//!   passes. Handlers must therefore be idempotent.
//! - **Delivery attempt.** [`Delivery::delivery_attempt`] is 1 on the first delivery and
//!   grows by one on each redelivery.
//! - **Dead letters.** When a subscription has a dead-letter topic, a message whose
//!   delivery attempts exceed `max_delivery_attempts` is forwarded to that topic instead of
//!   being delivered again. Stages also dead-letter deliberately with
//!   [`crate::worker::dead_letter`] (publish, then ack).
//! - **No ordering guarantee** is relied on, although the job id is sent as ordering key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use reel_events::message::PubsubMessage as Message;
use reel_events::{Classify, ErrorType, Verdict};

/// Pub/Sub's message size limit (10 MB, [`Message::wire_size`]); the one limit every
/// bus, the worker and the dead-letter path use, so that what a bus accepts the worker
/// can also dead-letter (truncated if its dead-letter attributes would push it over).
pub const MAX_MESSAGE_BYTES: usize = 10_000_000;
use std::time::Duration;

use crate::topology::Topology;

/// One delivery of a message to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Opaque handle for [`Bus::ack`], [`Bus::nack`] and [`Bus::modify_deadline`]; valid
    /// for this delivery only.
    pub ack_id: String,
    /// The id the bus gave the message when it was published (same on every redelivery).
    pub message_id: String,
    /// The message as published.
    pub message: Message,
    /// 1 on first delivery, then 2, 3, … on redeliveries.
    pub delivery_attempt: u32,
    /// When the message was published.
    pub publish_time: DateTime<Utc>,
}

/// Why a bus call failed. Each variant says what happened to the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The topic or subscription does not exist. Nothing was published or received.
    #[error("not found: {0}")]
    NotFound(String),
    /// The call may succeed if repeated (network, unavailable, deadline). For a publish
    /// the result is unknown: the message may or may not have been published.
    #[error("transient bus error: {0}")]
    Transient(String),
    /// The ack id is unknown or expired; the message will be (or was) redelivered.
    #[error("ack id expired or unknown: {0}")]
    InvalidAckId(String),
    /// The message is too large for the bus. Nothing was published.
    #[error("message too large: {0} bytes")]
    TooLarge(usize),
    /// Credentials were refused. Nothing was published or received.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
    /// Anything else; treat as permanent.
    #[error("bus error: {0}")]
    Other(String),
}

/// The error matrix for the bus, decided here and nowhere else:
///
/// | error | verdict |
/// | --- | --- |
/// | `Transient` | retry, `internal` |
/// | `Closed`, `InvalidAckId` | retry, `internal` (the message comes back) |
/// | `PermissionDenied` | fail fast, `permission_denied` |
/// | `TooLarge` | fail, `invalid_request` |
/// | `NotFound` (topology missing), `Other` | fail, `internal` |
impl Classify for BusError {
    fn verdict(&self) -> Verdict {
        match self {
            BusError::Transient(_) | BusError::Closed | BusError::InvalidAckId(_) => {
                Verdict::retry(ErrorType::Internal)
            }
            BusError::PermissionDenied(_) => Verdict::reject(ErrorType::PermissionDenied),
            BusError::TooLarge(_) => Verdict::reject(ErrorType::InvalidRequest),
            BusError::NotFound(_) | BusError::Other(_) => Verdict::reject(ErrorType::Internal),
        }
    }
}

impl BusError {
    /// Whether repeating the call may succeed (the verdict's, for adapters that retry
    /// within one call).
    pub fn is_transient(&self) -> bool {
        self.verdict().retryable
    }
}

/// A publish/subscribe bus with Pub/Sub's delivery contract (see the module docs).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish one message to `topic` and return its message id once the bus has
    /// durably accepted it. Publishing to a topic with no subscription drops the
    /// message, as Pub/Sub does.
    async fn publish(&self, topic: &str, message: Message) -> Result<String, BusError>;

    /// Wait up to `wait` for messages on `subscription` and return at most `max` of
    /// them (an empty vector when none arrived in time). Each returned delivery is
    /// leased until its ack deadline; it must be acked, nacked or have its deadline
    /// extended, or it is redelivered.
    async fn receive(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;

    /// Acknowledge: the message will not be delivered again on this subscription.
    async fn ack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError>;

    /// Negative acknowledgement: the message is redelivered after the subscription's
    /// retry backoff (exponential, with jitter on the embedded bus), or forwarded to the
    /// dead-letter topic once its attempts are used up.
    async fn nack(&self, subscription: &str, ack_id: &str) -> Result<(), BusError>;

    /// Extend (or shorten) the lease of a delivery to `seconds` from now.
    async fn modify_deadline(&self, subscription: &str, ack_id: &str, seconds: u32) -> Result<(), BusError>;

    /// Create every topic and subscription of `topology` that does not exist yet.
    /// Idempotent: existing ones are left as they are.
    async fn ensure_topology(&self, topology: &Topology) -> Result<(), BusError>;

    /// Read up to `max` messages currently waiting on `subscription` without consuming
    /// them (they stay available and their attempt count is not consumed beyond what
    /// the bus requires). Used by `reel dlq list`.
    async fn peek(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bus's row of the error matrix, one verdict per variant.
    #[test]
    fn bus_errors_follow_the_matrix() {
        let table = [
            (BusError::Transient("unavailable".into()), Verdict::retry(ErrorType::Internal)),
            (BusError::Closed, Verdict::retry(ErrorType::Internal)),
            (BusError::InvalidAckId("x".into()), Verdict::retry(ErrorType::Internal)),
            (BusError::PermissionDenied("403".into()), Verdict::reject(ErrorType::PermissionDenied)),
            (BusError::TooLarge(11_000_000), Verdict::reject(ErrorType::InvalidRequest)),
            (BusError::NotFound("topic".into()), Verdict::reject(ErrorType::Internal)),
            (BusError::Other("?".into()), Verdict::reject(ErrorType::Internal)),
        ];
        for (error, verdict) in table {
            assert_eq!(error.verdict(), verdict, "{error}");
        }
    }
}
