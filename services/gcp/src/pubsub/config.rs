//! How to reach Pub/Sub: a typed config, built by the caller (no environment is read
//! here; the programs map their `Settings` onto it in `reel_program::adapters`).

use google_cloud_auth::credentials::Credentials;
use reel_runtime::bus::BusError;

/// How to reach Pub/Sub.
///
/// Plumbing is set with `with_*` (endpoint, credentials), as in google-cloud-rust.
/// Validated once, by [`crate::PubSubBus::connect`]. There is nothing to tune for
/// receiving: the bus pulls exactly as many messages as its caller asks for (module docs
/// of `pubsub`), the same way on Pub/Sub and on the emulator.
///
/// ```
/// use reel_gcp::PubSubConfig;
/// // Production: the default endpoint, Application Default Credentials.
/// let prod = PubSubConfig::new("my-project");
/// assert_eq!(prod.endpoint(), None);
/// // The emulator: its endpoint, anonymous credentials.
/// let local = PubSubConfig::new("local").with_emulator("127.0.0.1:8085");
/// assert_eq!(local.endpoint(), Some("http://127.0.0.1:8085"));
/// ```
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    project: String,
    endpoint: Option<String>,
    credentials: Option<Credentials>,
    emulator: bool,
}

impl PubSubConfig {
    /// The real service for `project`, with Application Default Credentials.
    pub fn new(project: impl Into<String>) -> Self {
        PubSubConfig { project: project.into(), endpoint: None, credentials: None, emulator: false }
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
    /// a URL): its endpoint and anonymous credentials.
    pub fn with_emulator(self, host: &str) -> Self {
        let mut config = self.with_endpoint(crate::emulator_url(host)).with_anonymous_credentials();
        config.emulator = true;
        config
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_gets_a_url_and_anonymous_credentials() {
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
    }

    #[test]
    fn paths() {
        let c = PubSubConfig::new("p");
        assert_eq!(c.topic_path("t"), "projects/p/topics/t");
        assert_eq!(c.subscription_path("s"), "projects/p/subscriptions/s");
        assert_eq!(c.topic_path("projects/q/topics/t"), "projects/q/topics/t");
    }
}
