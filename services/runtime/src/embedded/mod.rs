//! Embedded mode: the whole pipeline on one machine, with the same contracts as the cloud.
//!
//! - [`EmbeddedBus`]: an in-process [`crate::bus::Bus`] with Pub/Sub's delivery contract
//!   (at-least-once leases, nack backoff with jitter, dead-lettering, per-delivery ack ids);
//! - [`EventLog`] / [`LoggedMessage`]: the append-only JSON-lines file into which the bus
//!   writes every message of a persisted topic (reel's local event log, and how local
//!   dead-letter topics survive a restart);
//! - [`DirStore`]: a [`crate::store::Store`] over a directory, with atomic create-only
//!   puts (`link(2)`), hidden temp files and a CRC32C cache.
//!
//! These are product features (what `reel stitch` runs on), not test doubles: every one
//! passes the same `conformance` (feature `conformance`) suite as the Pub/Sub and Cloud Storage adapters.

mod bus;
mod dir_store;
mod event_log;

pub use bus::{retry_backoff, retry_backoff_ceiling, EmbeddedBus, SubscriptionStats, MAX_MESSAGE_BYTES};
pub use bus::{
    ATTR_DEAD_LETTER_SOURCE_DELIVERY_COUNT, ATTR_DEAD_LETTER_SOURCE_SUBSCRIPTION,
    ATTR_DEAD_LETTER_SOURCE_TOPIC_PUBLISH_TIME,
};
pub use dir_store::{DirStore, TEMP_PREFIX};
pub use event_log::{EventLog, LogContents, LoggedMessage};
