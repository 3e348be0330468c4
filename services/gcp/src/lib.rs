//! Google Cloud adapters for reel: the leaves of the dependency graph.
//!
//! - [`PubSubBus`]: [`reel_runtime::bus::Bus`] on Cloud Pub/Sub (`google-cloud-pubsub`,
//!   the official crate), streaming pull with flow control;
//! - [`GcsStore`]: [`reel_runtime::store::Store`] on one Cloud Storage bucket
//!   (`gcloud-storage`), streamed reads and writes, create-only writes by generation
//!   precondition, server-side copy;
//! - [`CloudResolver`]: [`reel_runtime::location::StoreResolver`] for `gs://` and local
//!   locations;
//!
//! Both adapters talk to the emulators when `PUBSUB_EMULATOR_HOST` (`host:port`) and
//! `STORAGE_EMULATOR_HOST` (`http://host:port`) are set, with anonymous credentials;
//! otherwise they use Application Default Credentials. Only the programs wire these in;
//! stages see the traits.

mod gcs;
mod pubsub;
mod resolver;
mod unary;

pub use gcs::{GcsClient, GcsStore, UploadStrategy, CHUNK_SIZE};
pub use pubsub::{PubSubBus, PubSubConfig, MAX_LEASE, MAX_MESSAGE_BYTES, PUBLISH_RETRY_LIMIT};
pub use resolver::CloudResolver;
