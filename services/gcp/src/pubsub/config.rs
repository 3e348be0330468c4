//! How to reach Pub/Sub: a typed config, built by the caller (no environment is read
//! here; the programs map their `Settings` onto it in `reel_program::adapters`).

use google_cloud_auth::credentials::Credentials;
use reel_runtime::bus::BusError;

/// How [`crate::PubSubBus::receive`] gets messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullMode {
    /// One streaming pull per subscription, kept for the bus's life (production).
    #[default]
    Streaming,
    /// Unary pulls with `returnImmediately` over the REST API, polled; emulator only.
    /// The emulator never closes the stream of a killed program (module docs of
    /// `pubsub`), so local clusters whose programs get killed use this.
    Unary,
}

/// How to reach Pub/Sub and how the bus behaves on it.
///
/// Plumbing is set with `with_*` (endpoint, credentials), behaviour with `set_*` (flow
/// control, pull mode), as in google-cloud-rust. Validated once, by
/// [`crate::PubSubBus::connect`].
///
/// ```
/// use reel_gcp::{PubSubConfig, PullMode};
/// // Production: the default endpoint, Application Default Credentials.
/// let prod = PubSubConfig::new("my-project").set_max_outstanding_messages(2);
/// assert_eq!(prod.endpoint(), None);
/// // The emulator: its endpoint, anonymous credentials, its workarounds.
/// let local = PubSubConfig::new("local")
///     .with_emulator("127.0.0.1:8085")
///     .set_pull_mode(PullMode::Unary);
/// assert_eq!(local.endpoint(), Some("http://127.0.0.1:8085"));
/// ```
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    project: String,
    endpoint: Option<String>,
    credentials: Option<Credentials>,
    emulator: bool,
    max_outstanding_messages: i64,
    max_outstanding_bytes: i64,
    pull_mode: PullMode,
}

impl PubSubConfig {
    /// Default [`PubSubConfig::max_outstanding_messages`].
    pub const DEFAULT_MAX_OUTSTANDING_MESSAGES: i64 = 10;
    /// Default [`PubSubConfig::max_outstanding_bytes`] (64 MiB).
    pub const DEFAULT_MAX_OUTSTANDING_BYTES: i64 = 64 * 1024 * 1024;

    /// The real service for `project`, with Application Default Credentials and the
    /// default flow control.
    pub fn new(project: impl Into<String>) -> Self {
        PubSubConfig {
            project: project.into(),
            endpoint: None,
            credentials: None,
            emulator: false,
            max_outstanding_messages: Self::DEFAULT_MAX_OUTSTANDING_MESSAGES,
            max_outstanding_bytes: Self::DEFAULT_MAX_OUTSTANDING_BYTES,
            pull_mode: PullMode::Streaming,
        }
    }

    /// Talk to `endpoint` (`https://host[:port]`, or `http://` for a local server)
    /// instead of `https://pubsub.googleapis.com`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into().trim_end_matches('/').to_string());
        self
    }

    /// Authenticate with `credentials` instead of Application Default Credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Send no credentials (emulators).
    pub fn with_anonymous_credentials(self) -> Self {
        self.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
    }

    /// The Pub/Sub emulator at `host` (`host:port`, as `PUBSUB_EMULATOR_HOST` has it, or
    /// a URL): its endpoint, anonymous credentials, and the bus's emulator workarounds
    /// (flow control done client-side; [`PullMode::Unary`] allowed).
    pub fn with_emulator(self, host: &str) -> Self {
        let mut config = self.with_endpoint(crate::emulator_url(host)).with_anonymous_credentials();
        config.emulator = true;
        config
    }

    /// Flow control: most messages received but not yet acked or nacked, per
    /// subscription (default 10). A worker should set it near its concurrency.
    pub fn set_max_outstanding_messages(mut self, n: i64) -> Self {
        self.max_outstanding_messages = n;
        self
    }

    /// Flow control: most bytes received but not yet acked or nacked, per subscription
    /// (default 64 MiB).
    pub fn set_max_outstanding_bytes(mut self, n: i64) -> Self {
        self.max_outstanding_bytes = n;
        self
    }

    /// How `receive` pulls (default [`PullMode::Streaming`]).
    pub fn set_pull_mode(mut self, mode: PullMode) -> Self {
        self.pull_mode = mode;
        self
    }

    /// The Google Cloud project that owns the topics and subscriptions.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The endpoint URL, when it is not the default one.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The credentials set with `with_credentials`; `None` means Application Default
    /// Credentials.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Whether this is the emulator ([`PubSubConfig::with_emulator`]).
    pub fn is_emulator(&self) -> bool {
        self.emulator
    }

    /// See [`PubSubConfig::set_max_outstanding_messages`].
    pub fn max_outstanding_messages(&self) -> i64 {
        self.max_outstanding_messages
    }

    /// See [`PubSubConfig::set_max_outstanding_bytes`].
    pub fn max_outstanding_bytes(&self) -> i64 {
        self.max_outstanding_bytes
    }

    /// See [`PubSubConfig::set_pull_mode`].
    pub fn pull_mode(&self) -> PullMode {
        self.pull_mode
    }

    /// `projects/P/topics/NAME` (a full name is returned as it is).
    pub fn topic_path(&self, name: &str) -> String {
        if name.starts_with("projects/") {
            name.to_string()
        } else {
            format!("projects/{}/topics/{}", self.project, name)
        }
    }

    /// `projects/P/subscriptions/NAME` (a full name is returned as it is).
    pub fn subscription_path(&self, name: &str) -> String {
        if name.starts_with("projects/") {
            name.to_string()
        } else {
            format!("projects/{}/subscriptions/{}", self.project, name)
        }
    }

    /// Fails on what cannot work, before any client is built.
    pub(crate) fn validate(&self) -> Result<(), BusError> {
        if self.project.trim().is_empty() {
            return Err(BusError::Other("empty Google Cloud project".into()));
        }
        if self.max_outstanding_messages <= 0 || self.max_outstanding_bytes <= 0 {
            return Err(BusError::Other(format!(
                "flow control limits must be positive (messages {}, bytes {})",
                self.max_outstanding_messages, self.max_outstanding_bytes
            )));
        }
        if self.pull_mode == PullMode::Unary && !self.emulator {
            return Err(BusError::Other("unary pull is for the emulator only; Pub/Sub uses streaming pull".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_gets_a_url_anonymous_credentials_and_its_workarounds() {
        let c = PubSubConfig::new("p");
        assert_eq!(c.endpoint(), None);
        assert!(c.credentials().is_none() && !c.is_emulator());
        let c = c.with_emulator("127.0.0.1:8085");
        assert_eq!(c.endpoint(), Some("http://127.0.0.1:8085"));
        assert!(c.credentials().is_some() && c.is_emulator());
        let c = PubSubConfig::new("p").with_emulator("http://localhost:1/");
        assert_eq!(c.endpoint(), Some("http://localhost:1"));
    }

    #[test]
    fn validation_refuses_what_cannot_work() {
        assert!(PubSubConfig::new("p").validate().is_ok());
        assert!(PubSubConfig::new(" ").validate().is_err());
        assert!(PubSubConfig::new("p").set_max_outstanding_messages(0).validate().is_err());
        assert!(PubSubConfig::new("p").set_pull_mode(PullMode::Unary).validate().is_err());
        assert!(PubSubConfig::new("p").with_emulator("h:1").set_pull_mode(PullMode::Unary).validate().is_ok());
    }

    #[test]
    fn paths() {
        let c = PubSubConfig::new("p");
        assert_eq!(c.topic_path("t"), "projects/p/topics/t");
        assert_eq!(c.subscription_path("s"), "projects/p/subscriptions/s");
        assert_eq!(c.topic_path("projects/q/topics/t"), "projects/q/topics/t");
    }
}
