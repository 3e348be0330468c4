//! Google Cloud adapters for reel: the leaves of the dependency graph.
//!
//! - [`PubSubBus`]: [`reel_runtime::bus::Bus`] on Cloud Pub/Sub (`google-cloud-pubsub`,
//!   the official crate, for publishing and administration) with unary pulls over REST
//!   that take only what the caller can work on;
//! - [`UnaryPull`]: the REST pull client (the bus's receive, and `reel dlq`'s peek and replay);
//! - [`GcsStore`]: [`reel_runtime::store::Store`] on one Cloud Storage bucket
//!   (`gcloud-storage`), streamed reads and writes, create-only writes by generation
//!   precondition, server-side copy;
//! - [`CloudResolver`]: [`reel_runtime::location::StoreResolver`] for `gs://` and local
//!   locations;
//! - [`veo`]: [`VeoClient`], Veo video generation on Vertex AI over REST — start a
//!   generation, poll its long-running operation to the `gs://` URIs of the videos;
//!
//! Nothing here reads the environment: each adapter is built from a typed config
//! ([`PubSubConfig`], [`GcsConfig`], [`VeoConfig`]) with google-cloud-rust style
//! builders — `with_*` for plumbing (endpoint, credentials, `with_emulator`), `set_*`
//! for behaviour. The programs build those configs from their `Settings` in one place
//! (`reel_program::adapters`). Only the programs wire these in; stages see the traits.

mod gcs;
mod pubsub;
mod resolver;
pub mod veo;

pub use gcs::{GcsClient, GcsConfig, GcsStore, UploadStrategy, CHUNK_SIZE};
pub use pubsub::{PubSubBus, PubSubConfig, UnaryPull, UnaryPulled, MAX_MESSAGE_BYTES, PUBLISH_RETRY_LIMIT};
pub use resolver::CloudResolver;
pub use veo::{VeoClient, VeoConfig, VeoError};

/// The URL of an emulator given as `host:port` (as `PUBSUB_EMULATOR_HOST` has it) or
/// as a URL (as `STORAGE_EMULATOR_HOST` has it).
pub(crate) fn emulator_url(host: &str) -> String {
    let host = host.trim();
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}
