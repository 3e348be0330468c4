//! What every reel stage shares.
//!
//! - [`bus`] and [`store`]: the two traits a stage talks through, with their contracts;
//! - [`embedded`]: the in-process bus, the append-only event log and the directory
//!   store that `reel stitch` runs on (product features, not test doubles);
//! - `conformance` (feature `conformance`, tests only): the suite every Bus and Store
//!   implementation must pass;
//! - [`stage`] and [`worker`]: a stage is one `handle(event) -> Outcome` function; the
//!   worker loop alone turns outcomes into publish/ack/nack/dead-letter;
//! - [`cost`] and [`eta`]: what a job costs, and when it will complete (learned from
//!   the jobs before it);
//! - [`config`], [`telemetry`], [`location`], [`topology`].

pub mod bus;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod cost;
pub mod embedded;
pub mod eta;
pub mod location;
pub mod meter;
pub mod output;
pub mod stage;
pub mod store;
pub mod sweep;
pub mod topology;
pub mod unfinished;
pub mod worker;

pub use bus::{Bus, BusError, Delivery, Message};
pub use config::Settings;
pub use stage::{Boundary, Context, Failure, FromSettings, Handler, LateDelivery, Outcome};
pub use store::{ObjectMeta, PutMode, PutOptions, Store, StoreError};
pub mod local;
pub mod lock;
pub mod metrics;
pub mod prefix;
pub mod telemetry;
pub mod tenancy;
