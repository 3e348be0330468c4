//! Settings, layered: defaults, then a TOML config file, then the environment.
//!
//! The environment variables of CONTRACT §7 are honoured under their own names
//! (`GOOGLE_CLOUD_PROJECT`, `VIDEO_STORAGE_BUCKET`, `JOB_TIMEOUT_MINUTES`, …); every other
//! setting can be set as `REEL_{FIELD}` in upper case (e.g. `REEL_TOPIC_PREFIX`). The
//! config file is the path in `REEL_CONFIG`, if set. Unknown keys in the file are
//! errors, so a typo fails at startup instead of being ignored. See `docs/CONFIG.md`.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Every setting of a reel program.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Google Cloud project (`GOOGLE_CLOUD_PROJECT`).
    pub google_cloud_project: Option<String>,
    /// The bucket clips, manifests, work files and reels live in (`VIDEO_STORAGE_BUCKET`).
    pub video_storage_bucket: Option<String>,
    /// A job not finished this many minutes after it was accepted fails with `timeout`
    /// (`JOB_TIMEOUT_MINUTES`, default 15).
    pub job_timeout_minutes: u64,
    /// Retries of a transient failure before a stage gives up (`MAX_RETRY_ATTEMPTS`,
    /// default 3: four attempts in all).
    pub max_retry_attempts: u32,
    /// Scratch space for ffmpeg and downloads (`TEMP_DIR`).
    pub temp_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter (`LOG_LEVEL`).
    pub log_level: String,
    /// `json` (Cloud Logging) or `pretty` (`REEL_LOG_FORMAT`).
    pub log_format: String,
    /// Whether `/metrics` is served (`METRICS_ENABLED`).
    pub metrics_enabled: bool,
    /// `host:port` of the Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`).
    pub pubsub_emulator_host: Option<String>,
    /// `http://host:port` of the storage emulator (`STORAGE_EMULATOR_HOST`).
    pub storage_emulator_host: Option<String>,
    /// Port that `reel-api` and push-mode stages listen on (`PORT`, default 8080).
    pub port: u16,
    /// Topic and subscription name prefix (default `reel-`).
    pub topic_prefix: String,
    /// Where jobs' intermediate files live: `gs://bucket/prefix` or a local directory.
    /// Default: `gs://{VIDEO_STORAGE_BUCKET}/work` when a bucket is set.
    pub work_root: Option<String>,
    /// Roots that clip and output paths must lie in (`gs://bucket[/prefix]` or local
    /// directories). Default: the `VIDEO_STORAGE_BUCKET` bucket.
    pub allowed_roots: Vec<String>,
    /// At most this many clips per job.
    pub max_clips: usize,
    /// At most this many bytes per clip.
    pub max_clip_bytes: u64,
    /// At most this many seconds per clip.
    pub max_clip_seconds: f64,
    /// Messages a stage works on at once.
    pub concurrency: usize,
    /// One active job per project (validate takes a lock). The local CLI turns it off.
    pub project_lock: bool,
    /// Override the stage subscriptions' ack deadline (seconds, 10–600). A crashed
    /// worker's message is redelivered after this long.
    pub ack_deadline_seconds: Option<u64>,
    /// Override the subscriptions' minimum retry backoff (seconds).
    pub min_backoff_seconds: Option<u64>,
    /// How stage programs pull from Pub/Sub (`REEL_PUBSUB_PULL`: `streaming`, the
    /// default, or `unary`, emulator only).
    pub pubsub_pull: PubSubPull,
    /// Pub/Sub flow control: messages a program holds unsettled per subscription
    /// (`REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES`; default: the adapter's, 10).
    pub pubsub_max_outstanding_messages: Option<u64>,
    /// Pub/Sub flow control: bytes a program holds unsettled per subscription
    /// (`REEL_PUBSUB_MAX_OUTSTANDING_BYTES`; default: the adapter's, 64 MiB).
    pub pubsub_max_outstanding_bytes: Option<u64>,
}

/// How a program pulls from Pub/Sub ([`Settings::pubsub_pull`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PubSubPull {
    /// A streaming pull per subscription (production).
    #[default]
    Streaming,
    /// Polled unary pulls; the emulator only (it never closes a killed program's stream).
    Unary,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            google_cloud_project: None,
            video_storage_bucket: None,
            job_timeout_minutes: 15,
            max_retry_attempts: 3,
            temp_dir: std::env::temp_dir().join("reel"),
            log_level: "info".into(),
            log_format: "json".into(),
            metrics_enabled: true,
            pubsub_emulator_host: None,
            storage_emulator_host: None,
            port: 8080,
            topic_prefix: crate::topology::DEFAULT_PREFIX.into(),
            work_root: None,
            allowed_roots: Vec::new(),
            max_clips: 100,
            max_clip_bytes: 2 * 1024 * 1024 * 1024,
            max_clip_seconds: 600.0,
            concurrency: 1,
            project_lock: true,
            ack_deadline_seconds: None,
            min_backoff_seconds: None,
            pubsub_pull: PubSubPull::Streaming,
            pubsub_max_outstanding_messages: None,
            pubsub_max_outstanding_bytes: None,
        }
    }
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        /// Variable.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

impl Settings {
    /// Defaults, then the file named by `REEL_CONFIG` (if any), then the environment.
    pub fn load() -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let file = std::env::var_os("REEL_CONFIG").map(PathBuf::from);
        Settings::load_from(file.as_deref(), &vars)
    }

    /// [`Settings::load`] with explicit inputs (for tests).
    pub fn load_from(file: Option<&Path>, vars: &[(String, String)]) -> Result<Settings, ConfigError> {
        let mut settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
                toml::from_str::<Settings>(&text)
                    .map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?
            }
            None => Settings::default(),
        };
        for (name, value) in vars {
            settings.apply_env(name, value)?;
        }
        Ok(settings)
    }

    fn apply_env(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |message: &str| ConfigError::Env { name: name.into(), value: value.into(), message: message.into() };
        let opt = |v: &str| if v.is_empty() { None } else { Some(v.to_string()) };
        let boolean = |v: &str| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(bad("expected true or false")),
        };
        match name {
            "GOOGLE_CLOUD_PROJECT" => self.google_cloud_project = opt(value),
            "VIDEO_STORAGE_BUCKET" => self.video_storage_bucket = opt(value),
            "JOB_TIMEOUT_MINUTES" => {
                self.job_timeout_minutes =
                    value.parse().ok().filter(|m| *m > 0).ok_or_else(|| bad("expected minutes > 0"))?
            }
            "MAX_RETRY_ATTEMPTS" => self.max_retry_attempts = value.parse().map_err(|_| bad("expected a count"))?,
            "TEMP_DIR" if !value.is_empty() => self.temp_dir = PathBuf::from(value),
            "LOG_LEVEL" if !value.is_empty() => self.log_level = value.to_string(),
            "METRICS_ENABLED" => self.metrics_enabled = boolean(value)?,
            "PUBSUB_EMULATOR_HOST" => self.pubsub_emulator_host = opt(value),
            "STORAGE_EMULATOR_HOST" => self.storage_emulator_host = opt(value),
            "PORT" => self.port = value.parse().map_err(|_| bad("expected a port number"))?,
            "REEL_LOG_FORMAT" => self.log_format = value.to_string(),
            "REEL_TOPIC_PREFIX" => self.topic_prefix = value.to_string(),
            "REEL_WORK_ROOT" => self.work_root = opt(value),
            "REEL_ALLOWED_ROOTS" => {
                self.allowed_roots =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            "REEL_MAX_CLIPS" => self.max_clips = value.parse().map_err(|_| bad("expected a count"))?,
            "REEL_MAX_CLIP_BYTES" => self.max_clip_bytes = value.parse().map_err(|_| bad("expected bytes"))?,
            "REEL_MAX_CLIP_SECONDS" => self.max_clip_seconds = value.parse().map_err(|_| bad("expected seconds"))?,
            "REEL_PROJECT_LOCK" => self.project_lock = boolean(value)?,
            "REEL_ACK_DEADLINE_SECONDS" => {
                self.ack_deadline_seconds = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|s| (10..=600).contains(s))
                        .ok_or_else(|| bad("expected 10-600 seconds"))?,
                )
            }
            "REEL_MIN_BACKOFF_SECONDS" => {
                self.min_backoff_seconds =
                    Some(value.parse().ok().filter(|s| *s <= 600).ok_or_else(|| bad("expected 0-600 seconds"))?)
            }
            "REEL_PUBSUB_PULL" => {
                self.pubsub_pull = match value {
                    "" | "streaming" => PubSubPull::Streaming,
                    "unary" => PubSubPull::Unary,
                    _ => return Err(bad("expected streaming or unary")),
                }
            }
            "REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES" => {
                self.pubsub_max_outstanding_messages =
                    Some(value.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("expected a count > 0"))?)
            }
            "REEL_PUBSUB_MAX_OUTSTANDING_BYTES" => {
                self.pubsub_max_outstanding_bytes =
                    Some(value.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("expected bytes > 0"))?)
            }
            "REEL_CONCURRENCY" => {
                self.concurrency = value.parse().ok().filter(|c| *c > 0).ok_or_else(|| bad("expected a count > 0"))?
            }
            _ => {}
        }
        Ok(())
    }

    /// The work root: explicit, or `gs://{bucket}/work`, or `{TEMP_DIR}/work`.
    pub fn effective_work_root(&self) -> String {
        if let Some(root) = &self.work_root {
            return root.clone();
        }
        match &self.video_storage_bucket {
            Some(bucket) => format!("gs://{bucket}/work"),
            None => self.temp_dir.join("work").display().to_string(),
        }
    }

    /// The allowed roots: explicit, or the video bucket.
    pub fn effective_allowed_roots(&self) -> Vec<String> {
        if !self.allowed_roots.is_empty() {
            return self.allowed_roots.clone();
        }
        self.video_storage_bucket.iter().map(|b| format!("gs://{b}")).collect()
    }

    /// The topology these settings name.
    pub fn topology(&self) -> crate::topology::Topology {
        let mut topology = crate::topology::Topology::standard(&self.topic_prefix);
        for sub in &mut topology.subscriptions {
            if let Some(secs) = self.ack_deadline_seconds {
                sub.ack_deadline = std::time::Duration::from_secs(secs);
            }
            if let Some(secs) = self.min_backoff_seconds {
                let flat = sub.min_backoff == sub.max_backoff;
                sub.min_backoff = std::time::Duration::from_secs(secs);
                if flat || sub.max_backoff < sub.min_backoff {
                    sub.max_backoff = sub.min_backoff;
                }
            }
        }
        topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!(s.job_timeout_minutes, 15);
        assert_eq!(s.max_retry_attempts, 3);
        assert_eq!(s.port, 8080);
        assert_eq!(s.topic_prefix, "reel-");
    }

    #[test]
    fn environment_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reel.toml");
        std::fs::write(&file, "job_timeout_minutes = 5\nport = 9000\nvideo_storage_bucket = \"from-file\"\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            &vars(&[("PORT", "9100"), ("MAX_RETRY_ATTEMPTS", "5"), ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")]),
        )
        .unwrap();
        assert_eq!(s.job_timeout_minutes, 5);
        assert_eq!(s.port, 9100);
        assert_eq!(s.max_retry_attempts, 5);
        assert_eq!(s.video_storage_bucket.as_deref(), Some("from-file"));
        assert_eq!(s.effective_work_root(), "gs://from-file/work");
        assert_eq!(s.effective_allowed_roots(), vec!["gs://from-file".to_string()]);
        assert_eq!(s.pubsub_emulator_host.as_deref(), Some("127.0.0.1:8085"));
    }

    #[test]
    fn bad_values_fail_with_their_name() {
        let err = Settings::load_from(None, &vars(&[("JOB_TIMEOUT_MINUTES", "soon")])).unwrap_err();
        assert!(err.to_string().contains("JOB_TIMEOUT_MINUTES"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reel.toml");
        std::fs::write(&file, "job_timeout_minuts = 5\n").unwrap();
        let err = Settings::load_from(Some(&file), &[]).unwrap_err();
        assert!(err.to_string().contains("job_timeout_minuts"), "{err}");
    }

    #[test]
    fn pubsub_pull_and_flow_control() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!(s.pubsub_pull, PubSubPull::Streaming);
        assert_eq!(s.pubsub_max_outstanding_messages, None);
        let s = Settings::load_from(
            None,
            &vars(&[("REEL_PUBSUB_PULL", "unary"), ("REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES", "1")]),
        )
        .unwrap();
        assert_eq!(s.pubsub_pull, PubSubPull::Unary);
        assert_eq!(s.pubsub_max_outstanding_messages, Some(1));
        for (name, value) in [("REEL_PUBSUB_PULL", "sometimes"), ("REEL_PUBSUB_MAX_OUTSTANDING_BYTES", "0")] {
            let err = Settings::load_from(None, &vars(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
