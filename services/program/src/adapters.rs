//! The one place that turns [`Settings`] into the cloud adapters' configs. The adapters
//! (`reel_gcp`) read no environment; every program and `reel`'s cloud commands build
//! them through [`adapters`].

use anyhow::{bail, Result};
use reel_gcp::{GcsConfig, PubSubConfig};
use reel_runtime::Settings;

/// The configs of the Pub/Sub bus and of Cloud Storage, from the settings.
#[derive(Debug, Clone)]
pub struct Adapters {
    /// For [`reel_gcp::PubSubBus::connect`] and [`reel_gcp::UnaryPull::new`].
    pub pubsub: PubSubConfig,
    /// For [`reel_gcp::GcsClient::connect`] and [`reel_gcp::CloudResolver::connect`].
    pub storage: GcsConfig,
}

/// Map the settings onto the adapters' configs: the project (required), the emulators
/// when `pubsub_emulator_host` / `storage_emulator_host` are set (anonymous, with their
/// workarounds; otherwise the real services with Application Default Credentials),
/// flow control and the pull mode.
///
/// ```
/// let mut settings = reel_runtime::Settings::default();
/// settings.google_cloud_project = Some("local".into());
/// settings.pubsub_emulator_host = Some("127.0.0.1:8085".into());
/// let adapters = reel_program::adapters(&settings)?;
/// assert!(adapters.pubsub.is_emulator() && !adapters.storage.is_emulator());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn adapters(settings: &Settings) -> Result<Adapters> {
    let Some(project) = settings.google_cloud_project.as_deref().filter(|p| !p.trim().is_empty()) else {
        bail!("GOOGLE_CLOUD_PROJECT is not set (and PUBSUB_EMULATOR_HOST for the emulator)");
    };
    let mut pubsub = PubSubConfig::new(project);
    if let Some(host) = &settings.pubsub_emulator_host {
        pubsub = pubsub.with_emulator(host);
    }
    let mut storage = GcsConfig::new();
    if let Some(host) = &settings.storage_emulator_host {
        storage = storage.with_emulator(host);
    }
    Ok(Adapters { pubsub, storage })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = Settings { google_cloud_project: Some("p".into()), ..Settings::default() };
        f(&mut s);
        s
    }

    #[test]
    fn production_uses_the_real_services() {
        let a = adapters(&settings(|_| {})).unwrap();
        assert_eq!(a.pubsub.project(), "p");
        assert_eq!(a.pubsub.endpoint(), None);
        assert!(a.pubsub.credentials().is_none());
        assert_eq!(a.storage, GcsConfig::new());
    }

    #[test]
    fn emulators() {
        let a = adapters(&settings(|s| {
            s.pubsub_emulator_host = Some("127.0.0.1:8085".into());
            s.storage_emulator_host = Some("http://127.0.0.1:4443".into());
        }))
        .unwrap();
        assert_eq!(a.pubsub.endpoint(), Some("http://127.0.0.1:8085"));
        assert!(a.pubsub.is_emulator());
        assert_eq!(a.storage.endpoint(), Some("http://127.0.0.1:4443"));
        assert!(a.storage.is_emulator());
    }

    #[test]
    fn what_cannot_work_fails_with_the_setting_to_fix() {
        let err = adapters(&Settings::default()).unwrap_err();
        assert!(err.to_string().contains("GOOGLE_CLOUD_PROJECT"), "{err}");
    }
}
