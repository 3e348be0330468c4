//! Settings, layered on the `config` crate: defaults, then a TOML file, then the
//! environment — and validated once, after layering, whatever layer a value came from.
//!
//! ```
//! # use reel_runtime::config::Settings;
//! let vars = [("JOB_TIMEOUT_MINUTES".to_string(), "5".to_string())];
//! let settings = Settings::load_from(None, &vars)?;
//! assert_eq!(settings.job_timeout_minutes, 5);
//! let bad = [("REEL_CONCURRENCY".to_string(), "0".to_string())];
//! let err = Settings::load_from(None, &bad).unwrap_err();
//! assert!(err.to_string().contains("REEL_CONCURRENCY"));
//! # Ok::<(), reel_runtime::config::ConfigError>(())
//! ```
//!
//! Where a setting comes from:
//! - **defaults**: [`Settings::default`];
//! - **file**: the TOML file named by `REEL_CONFIG`; keys are the field names below,
//!   per-stage settings in their section (`[download] max_clip_bytes = …`); an unknown
//!   key is an error, so a typo fails at start instead of being ignored;
//! - **environment**: the names of CONTRACT §7 as they are ([`CONTRACT_VARIABLES`]:
//!   `GOOGLE_CLOUD_PROJECT`, `JOB_TIMEOUT_MINUTES`, …), and every other key as
//!   `REEL_{KEY}` (`REEL_TOPIC_PREFIX`), `REEL_{SECTION}_{KEY}`
//!   (`REEL_DOWNLOAD_MAX_CLIP_BYTES`) or, where the key is unique, `REEL_{KEY}` for a
//!   section's key too (`REEL_MAX_CLIPS`). Lists are comma-separated. An empty variable
//!   counts as unset.
//!
//! A bad value from any layer stops the program with a message that names the key and
//! the layer (`environment variable REEL_CONCURRENCY`, the file's path, or `default`).
//! Nothing else in reel reads the environment for settings: a program loads
//! [`Settings`] once and hands each stage and adapter its own typed part. See
//! docs/CONFIG.md for every key.

use config::{Config, Source, Value, ValueKind};
use reel_media::MediaConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every setting of a reel program.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Google Cloud project (`GOOGLE_CLOUD_PROJECT`).
    pub google_cloud_project: Option<String>,
    /// The bucket clips, manifests, work files and reels live in (`VIDEO_STORAGE_BUCKET`).
    pub video_storage_bucket: Option<String>,
    /// A job not finished this many minutes after it was accepted fails with `timeout`
    /// (`JOB_TIMEOUT_MINUTES`, default 15, at least 1).
    pub job_timeout_minutes: u64,
    /// Retries of a transient failure before a stage gives up (`MAX_RETRY_ATTEMPTS`,
    /// default 3: four attempts in all).
    pub max_retry_attempts: u32,
    /// Scratch space for ffmpeg and downloads (`TEMP_DIR`).
    pub temp_dir: PathBuf,
    /// A job that has not ended this many minutes after its deadline reads `failed`
    /// (`timeout`), and `reel sweep` publishes its `job.failed` (`REEL_JOB_GRACE_MINUTES`,
    /// default 5: the stage holding it stops at the deadline and reports in far less).
    pub job_grace_minutes: u64,
    /// A job that passes its deadline is resumed from its checkpoint (its workspace) with
    /// a new deadline this many times before it fails with `timeout`
    /// (`REEL_TIMEOUT_RESUMES`, default 1).
    pub timeout_resumes: u32,
    /// Fault injection, for tests and drills only: while this file exists, every
    /// delivery fails transiently before the handler runs (`REEL_FAULT_FILE`; unset in
    /// production). `{stage}` and `{jobId}` in the path stand for the delivery's, so one
    /// job can be made to fail at one stage. Removing the file is "fixing the cause".
    pub fault_file: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug`, `trace`, `off`, or tracing directives of the form
    /// `target=level` (`LOG_LEVEL`, default `info`).
    pub log_level: String,
    /// `json` (Cloud Logging) or `pretty` (`REEL_LOG_FORMAT`, default `json`).
    pub log_format: LogFormat,
    /// Whether `/metrics` is served (`METRICS_ENABLED`).
    pub metrics_enabled: bool,
    /// `host:port` of the Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`).
    pub pubsub_emulator_host: Option<String>,
    /// `http://host:port` of the storage emulator (`STORAGE_EMULATOR_HOST`).
    pub storage_emulator_host: Option<String>,
    /// Port that `reel-api` and push-mode stages listen on (`PORT`, default 8080); when
    /// set, a pull-mode stage serves `/healthz` and `/metrics` on it (Cloud Run, GKE).
    pub port: Option<u16>,
    /// Topic and subscription name prefix (default `reel-`).
    pub topic_prefix: String,
    /// Where jobs' intermediate files live: `gs://bucket/prefix` or a local directory.
    /// Default: `gs://{VIDEO_STORAGE_BUCKET}/work` when a bucket is set.
    pub work_root: Option<String>,
    /// Roots that clip and output paths must lie in (`gs://bucket[/prefix]` or local
    /// directories; `{projectId}` stands for the job's project). Default: the
    /// `VIDEO_STORAGE_BUCKET` bucket.
    pub allowed_roots: Vec<String>,
    /// Messages a stage works on at once (at least 1).
    pub concurrency: usize,
    /// Override the stage subscriptions' ack deadline (seconds, 10–600). A crashed
    /// worker's message is redelivered after this long.
    pub ack_deadline_seconds: Option<u64>,
    /// Override the subscriptions' minimum retry backoff (seconds, 0–600).
    pub min_backoff_seconds: Option<u64>,
    /// The lease a pull-mode worker keeps on the message it works on (seconds, 10–600,
    /// default 15): renewed every third of it while the handler runs, so a message of a
    /// program that died comes back to another within this long (plus the retry
    /// backoff), however long the work itself may take.
    pub lease_seconds: u64,
    /// Which tier this program serves (`REEL_TIER`: `standard`, or `large`: stitch reads
    /// the larger tier's subscription, `reel-stitch-large`).
    pub tier: crate::topology::Tier,
    /// Whether a larger stitch tier runs (`REEL_LARGE_TIER`, default false; terraform
    /// sets it on the standard stitch service): stitch work that runs out of memory or
    /// disk on the standard tier is sent there, instead of being retried at the same size.
    pub large_tier: bool,
    /// The validate stage's settings.
    pub validate: ValidateConfig,
    /// Per-user quotas, enforced by validate on every entry path (section `[quota]`).
    pub quota: Quotas,
    /// The download stage's settings.
    pub download: DownloadConfig,
    /// How ffmpeg and ffprobe are run and the bounds every clip must fit (download and
    /// stitch; `reel_media::MediaConfig`, whose fields are the keys of `[media]`).
    pub media: MediaConfig,
    /// The service's size and the prices a job's cost is reckoned at (section `[cost]`).
    pub cost: crate::cost::CostConfig,
    /// The generation job's settings (section `[generate]`).
    pub generate: GenerateConfig,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line in Cloud Logging's structure.
    Json,
    /// Human-readable, on standard error.
    Pretty,
}

/// The validate stage's settings (section `[validate]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// At most this many clips per job (`REEL_MAX_CLIPS`, default 100, at least 2).
    pub max_clips: usize,
    /// One active job per project: validate takes a lock (`REEL_PROJECT_LOCK`,
    /// default true; the local CLI turns it off).
    pub project_lock: bool,
    /// Buckets whose manifests may start jobs (`REEL_MANIFEST_BUCKETS`; default: the
    /// `VIDEO_STORAGE_BUCKET` bucket). A notification from any other bucket is refused.
    pub manifest_buckets: Vec<String>,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig { max_clips: 100, project_lock: true, manifest_buckets: Vec::new() }
    }
}

/// Who makes a prompt's clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    /// Veo on Vertex AI (`REEL_VEO_ENDPOINT` overrides its endpoint).
    Veo,
    /// A titled test pattern rendered with ffmpeg, for people without Vertex AI (the
    /// local `reel generate`, and tests).
    TestPattern,
}

/// The generation job's settings (section `[generate]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateConfig {
    /// `veo` (default) or `test-pattern` (`REEL_GENERATOR`).
    pub generator: GeneratorKind,
    /// A generation job's deadline, minutes (`REEL_GENERATE_TIMEOUT_MINUTES`, default 30).
    pub timeout_minutes: u64,
    /// Most prompts per job (`REEL_MAX_PROMPTS`, default and at most 20).
    pub max_prompts: usize,
    /// The Vertex AI endpoint (`REEL_VEO_ENDPOINT`; default the location's,
    /// `https://{location}-aiplatform.googleapis.com`). An `http://` endpoint gets no
    /// credentials, as the emulators.
    pub veo_endpoint: Option<String>,
    /// The project Veo runs in (`REEL_VEO_PROJECT`; default `GOOGLE_CLOUD_PROJECT`).
    pub veo_project: Option<String>,
    /// The Vertex AI location (`REEL_VEO_LOCATION`, default `us-central1`).
    pub veo_location: String,
    /// The model (`REEL_VEO_MODEL`, default `veo-3.0-generate-001`).
    pub veo_model: String,
    /// Between two polls of a generation, ms (`REEL_VEO_POLL_MILLIS`, default 10000).
    pub veo_poll_millis: u64,
    /// How long one delivery waits for Veo before handing the item back to be polled
    /// again by the next, s (`REEL_DELIVERY_BUDGET_SECONDS`, default 480; within the
    /// clips' subscription's 600 s ack deadline, which push mode cannot extend).
    pub delivery_budget_seconds: u64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            generator: GeneratorKind::Veo,
            timeout_minutes: 30,
            max_prompts: 20,
            veo_endpoint: None,
            veo_project: None,
            veo_location: "us-central1".into(),
            veo_model: "veo-3.0-generate-001".into(),
            veo_poll_millis: 10_000,
            delivery_budget_seconds: 480,
        }
    }
}

impl Settings {
    /// A generation job's deadline.
    pub fn generate_timeout(&self) -> chrono::Duration {
        chrono::Duration::minutes(self.generate.timeout_minutes as i64)
    }
}

/// Per-user quotas (section `[quota]`; 0 = unlimited), counted from the records of
/// [`crate::tenancy`] by validate, and checked early by `reel-api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Jobs queued or running at once (`REEL_QUOTA_ACTIVE_JOBS`, default 2).
    pub active_jobs: usize,
    /// Jobs started in any sliding hour (`REEL_QUOTA_JOBS_PER_HOUR`, default 30).
    pub jobs_per_hour: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { active_jobs: 2, jobs_per_hour: 30 }
    }
}

/// The download stage's settings (section `[download]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// At most this many bytes per clip (`REEL_MAX_CLIP_BYTES`, default 2 GiB).
    pub max_clip_bytes: u64,
    /// At most this many seconds per clip (`REEL_MAX_CLIP_SECONDS`, default 600).
    pub max_clip_seconds: f64,
    /// At most this many bytes of clips per job, checked before any is downloaded
    /// (`REEL_MAX_JOB_BYTES`, default 8 GiB).
    pub max_job_bytes: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            max_clip_bytes: 2 * 1024 * 1024 * 1024,
            max_clip_seconds: 600.0,
            max_job_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            google_cloud_project: None,
            video_storage_bucket: None,
            job_timeout_minutes: 15,
            max_retry_attempts: 3,
            temp_dir: std::env::temp_dir().join("reel"),
            job_grace_minutes: 5,
            timeout_resumes: 1,
            fault_file: None,
            log_level: "info".into(),
            log_format: LogFormat::Json,
            metrics_enabled: true,
            pubsub_emulator_host: None,
            storage_emulator_host: None,
            port: None,
            topic_prefix: crate::topology::DEFAULT_PREFIX.into(),
            work_root: None,
            allowed_roots: Vec::new(),
            concurrency: 1,
            ack_deadline_seconds: None,
            min_backoff_seconds: None,
            lease_seconds: 15,
            tier: crate::topology::Tier::Standard,
            large_tier: false,
            validate: ValidateConfig::default(),
            quota: Quotas::default(),
            download: DownloadConfig::default(),
            media: MediaConfig::default(),
            cost: crate::cost::CostConfig::default(),
            generate: GenerateConfig::default(),
        }
    }
}

/// The environment variables of CONTRACT §7, read under their own names (every other
/// key is read as `REEL_…`).
pub const CONTRACT_VARIABLES: [&str; 10] = [
    "GOOGLE_CLOUD_PROJECT",
    "VIDEO_STORAGE_BUCKET",
    "JOB_TIMEOUT_MINUTES",
    "MAX_RETRY_ATTEMPTS",
    "TEMP_DIR",
    "LOG_LEVEL",
    "METRICS_ENABLED",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "PORT",
];

/// The variable naming the config file.
pub const CONFIG_FILE_VARIABLE: &str = "REEL_CONFIG";

/// Why the settings could not be loaded. The message names the key and the layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: config::ConfigError,
    },
    /// The config file has a key reel does not know.
    #[error("config file {path}: unknown key `{key}` (see docs/CONFIG.md)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key, dotted for a section's key.
        key: String,
    },
    /// A value has the wrong type (a word where a number belongs, …).
    #[error("{0}")]
    Type(#[source] config::ConfigError),
    /// A value has the right type but is out of range.
    #[error("{key} from {layer}: {message}")]
    Invalid {
        /// The key, dotted for a section's key.
        key: String,
        /// Where the value came from: `environment variable X`, the file, or `default`.
        layer: String,
        /// What is wrong.
        message: String,
    },
}

impl Settings {
    /// Defaults, then the file named by `REEL_CONFIG` (if any), then the environment.
    pub fn load() -> Result<Settings, ConfigError> {
        Settings::load_over(Settings::default())
    }

    /// [`Settings::load`] over a program's own defaults (the `reel` command line logs
    /// only errors, for people, unless told otherwise).
    pub fn load_over(defaults: Settings) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let file = std::env::var_os(CONFIG_FILE_VARIABLE).map(PathBuf::from);
        Settings::load_layers(defaults, file.as_deref(), &vars)
    }

    /// [`Settings::load`] with explicit inputs (tests, tools).
    pub fn load_from(file: Option<&Path>, vars: &[(String, String)]) -> Result<Settings, ConfigError> {
        Settings::load_layers(Settings::default(), file, vars)
    }

    fn load_layers(
        defaults: Settings,
        file: Option<&Path>,
        vars: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let known = flatten_keys(&serde_json::to_value(&defaults).expect("settings serialize"));
        let mut builder = Config::builder().add_source(Config::try_from(&defaults).map_err(ConfigError::Type)?);
        // Which layer set each key last, for messages about values out of range.
        let mut layers: BTreeMap<String, String> = BTreeMap::new();
        if let Some(path) = file {
            let source = config::File::from(path.to_path_buf()).format(config::FileFormat::Toml).required(true);
            let file_error = |source| ConfigError::File { path: path.to_path_buf(), source };
            let in_file = source.collect().map_err(file_error)?;
            let in_file: serde_json::Value = Value::new(None, in_file).try_deserialize().map_err(file_error)?;
            if let Some(key) = flatten_keys(&in_file).into_keys().find(|k| !known.contains_key(k)) {
                return Err(ConfigError::UnknownKey { path: path.to_path_buf(), key });
            }
            layers.extend(flatten_keys(&in_file).into_keys().map(|k| (k, format!("config file {}", path.display()))));
            builder = builder.add_source(source);
        }
        let environment = Environment::new(vars, &known);
        layers.extend(environment.layers.clone());
        builder = builder.add_source(environment);
        let layered = builder.build().map_err(ConfigError::Type)?;
        let settings: Settings = layered.try_deserialize().map_err(|e| {
            // The crate names the key but not always the layer: add it.
            let text = e.to_string();
            let key = text.split("key `").nth(1).and_then(|rest| rest.split('`').next()).map(String::from);
            match key.and_then(|k| layers.get(&k).map(|layer| (k, layer.clone()))) {
                Some((key, layer)) if !text.contains(&layer) => ConfigError::Invalid { key, layer, message: text },
                _ => ConfigError::Type(e),
            }
        })?;
        settings.check().map_err(|(key, message)| ConfigError::Invalid {
            layer: layers.get(key).cloned().unwrap_or_else(|| "default".into()),
            key: key.to_string(),
            message,
        })?;
        Ok(settings)
    }

    /// Every rule a value must pass beyond its type: `(key, what is wrong)`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        use crate::location::parse_root;
        if self.job_timeout_minutes == 0 {
            return Err(("job_timeout_minutes", "expected minutes > 0".into()));
        }
        if self.concurrency == 0 {
            return Err(("concurrency", "expected a count > 0".into()));
        }
        if self.ack_deadline_seconds.is_some_and(|s| !(10..=600).contains(&s)) {
            return Err(("ack_deadline_seconds", "expected 10-600 seconds (Pub/Sub's range)".into()));
        }
        if self.min_backoff_seconds.is_some_and(|s| s > 600) {
            return Err(("min_backoff_seconds", "expected 0-600 seconds (Pub/Sub's range)".into()));
        }
        if self.temp_dir.as_os_str().is_empty() {
            return Err(("temp_dir", "expected a directory".into()));
        }
        check_log_level(&self.log_level).map_err(|m| ("log_level", m))?;
        if self.validate.max_clips < 2 {
            return Err(("validate.max_clips", "expected at least 2 (a reel needs two clips)".into()));
        }
        if self.download.max_clip_bytes == 0 {
            return Err(("download.max_clip_bytes", "expected bytes > 0".into()));
        }
        if !self.download.max_clip_seconds.is_finite() || self.download.max_clip_seconds <= 0.0 {
            return Err(("download.max_clip_seconds", "expected seconds > 0".into()));
        }
        if !(10..=600).contains(&self.lease_seconds) {
            return Err(("lease_seconds", "expected 10-600 seconds (Pub/Sub's range)".into()));
        }
        self.media.validate().map_err(|m| ("media", m))?;
        self.cost.validate().map_err(|m| ("cost", m))?;
        if self.generate.timeout_minutes == 0 {
            return Err(("generate.timeout_minutes", "expected minutes > 0".into()));
        }
        if !(1..=20).contains(&self.generate.max_prompts) {
            return Err(("generate.max_prompts", "expected 1-20 prompts (the contract's limit)".into()));
        }
        if !(10..=590).contains(&self.generate.delivery_budget_seconds) {
            return Err((
                "generate.delivery_budget_seconds",
                "expected 10-590 seconds (within the 600 s ack deadline of the clips' subscription)".into(),
            ));
        }
        if let Some(root) = &self.work_root {
            parse_root(root).map_err(|e| ("work_root", e.to_string()))?;
        }
        for root in &self.allowed_roots {
            parse_root(&root.replace("{projectId}", "p")).map_err(|e| ("allowed_roots", format!("{root:?}: {e}")))?;
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

    /// The trust boundary these settings draw (allowed roots and the work area).
    pub fn boundary(&self) -> crate::stage::Boundary {
        crate::stage::Boundary::new(self.effective_allowed_roots(), self.effective_work_root())
    }

    /// The port to listen on: `PORT`, or 8080.
    pub fn listen_port(&self) -> u16 {
        self.port.unwrap_or(8080)
    }

    /// The buckets whose manifests may start jobs: `[validate] manifest_buckets`, else the
    /// `VIDEO_STORAGE_BUCKET` bucket, else none.
    pub fn manifest_buckets(&self) -> Vec<String> {
        if self.validate.manifest_buckets.is_empty() {
            self.video_storage_bucket.iter().cloned().collect()
        } else {
            self.validate.manifest_buckets.clone()
        }
    }

    /// The job timeout as a duration.
    pub fn job_timeout(&self) -> chrono::Duration {
        chrono::Duration::minutes(self.job_timeout_minutes as i64)
    }

    /// When a job without an end event counts as failed (`timeout`).
    pub fn overdue(&self) -> reel_events::fold::Overdue {
        reel_events::fold::Overdue::minutes(self.job_timeout_minutes, self.job_grace_minutes)
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

/// A log level must be one a person means: a level name, or `target=level` directives.
/// A bare unknown word (`verbose`) would parse as a target name and silently turn
/// logging off, so it is refused.
fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let bad = || format!("{text:?} is not a log level: use one of {} or target=level directives", LEVELS.join(", "));
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    if text.trim().is_empty() {
        return Err(bad());
    }
    tracing_subscriber::EnvFilter::try_new(text).map(|_| ()).map_err(|e| format!("{text:?}: {e}"))
}

/// Dotted key → value of every leaf of a table (sections are tables).
fn flatten_keys(table: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for (key, value) in table.as_object().into_iter().flatten() {
        match value {
            serde_json::Value::Object(_) => {
                for (sub, v) in flatten_keys(value) {
                    out.insert(format!("{key}.{sub}"), v);
                }
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

/// The environment layer: maps variable names to keys (see the module docs) and
/// remembers each value's variable as its origin.
#[derive(Debug, Clone)]
struct Environment {
    values: config::Map<String, Value>,
    /// Key → `environment variable NAME`.
    layers: BTreeMap<String, String>,
}

impl Environment {
    fn new(vars: &[(String, String)], known: &BTreeMap<String, serde_json::Value>) -> Environment {
        let mut values = config::Map::new();
        let mut layers = BTreeMap::new();
        for (name, text) in vars {
            if text.is_empty() {
                continue;
            }
            let Some(key) = env_key(name, known) else {
                continue;
            };
            let origin = format!("environment variable {name}");
            let kind = match known.get(&key) {
                Some(serde_json::Value::Array(_)) => ValueKind::Array(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::new(Some(&origin), s))
                        .collect(),
                ),
                _ => ValueKind::String(text.clone()),
            };
            values.insert(key.clone(), Value::new(Some(&origin), kind));
            layers.insert(key, origin);
        }
        Environment { values, layers }
    }
}

/// The key a variable sets, if any: a contract variable's own key, or the key whose
/// dotted name with `.` written `_` or `__` follows `REEL_` (`REEL_MEDIA_LIMITS_MAX_FPS`),
/// or the one key whose last part follows `REEL_` (`REEL_MAX_CLIPS`).
fn env_key(name: &str, known: &BTreeMap<String, serde_json::Value>) -> Option<String> {
    if CONTRACT_VARIABLES.contains(&name) {
        return Some(name.to_ascii_lowercase());
    }
    let rest = name.strip_prefix("REEL_")?.to_ascii_lowercase();
    if rest.is_empty() || CONTRACT_VARIABLES.iter().any(|c| c.eq_ignore_ascii_case(&rest)) {
        return None;
    }
    if let Some(key) = known.keys().find(|k| k.replace('.', "_") == rest || k.replace('.', "__") == rest) {
        return Some(key.clone());
    }
    let mut by_last_part = known.keys().filter(|k| k.contains('.') && k.rsplit('.').next() == Some(rest.as_str()));
    match (by_last_part.next(), by_last_part.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

impl Source for Environment {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, Value>, config::ConfigError> {
        Ok(self.values.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!(s.job_timeout_minutes, 15);
        assert_eq!(s.max_retry_attempts, 3);
        assert_eq!((s.port, s.listen_port()), (None, 8080));
        assert_eq!(s.topic_prefix, "reel-");
        assert_eq!(s.validate.max_clips, 100);
        assert!(s.validate.project_lock);
    }

    #[test]
    fn environment_wins_over_file() {
        let (_dir, path) = file(
            "job_timeout_minutes = 5\nport = 9000\nvideo_storage_bucket = \"from-file\"\npubsub_emulator_host = \"127.0.0.1:1\"\n[download]\nmax_clip_seconds = 30.0\n",
        );
        let s = Settings::load_from(
            Some(&path),
            &vars(&[("PORT", "9100"), ("MAX_RETRY_ATTEMPTS", "5"), ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")]),
        )
        .unwrap();
        assert_eq!(s.job_timeout_minutes, 5);
        assert_eq!(s.port, Some(9100));
        assert_eq!(s.max_retry_attempts, 5);
        assert_eq!(s.download.max_clip_seconds, 30.0);
        assert_eq!(s.video_storage_bucket.as_deref(), Some("from-file"));
        assert_eq!(s.effective_work_root(), "gs://from-file/work");
        assert_eq!(s.effective_allowed_roots(), vec!["gs://from-file".to_string()]);
        assert_eq!(s.pubsub_emulator_host.as_deref(), Some("127.0.0.1:8085"));
    }

    #[test]
    fn emulator_hosts_and_project_from_the_file_are_used() {
        let (_dir, path) = file("google_cloud_project = \"p\"\npubsub_emulator_host = \"127.0.0.1:1\"\nstorage_emulator_host = \"http://127.0.0.1:2\"\n");
        let s = Settings::load_from(Some(&path), &[]).unwrap();
        assert_eq!(s.google_cloud_project.as_deref(), Some("p"));
        assert_eq!(s.pubsub_emulator_host.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(s.storage_emulator_host.as_deref(), Some("http://127.0.0.1:2"));
    }

    #[test]
    fn every_key_has_a_variable() {
        let s = Settings::load_from(
            None,
            &vars(&[
                ("REEL_MAX_CLIPS", "7"),
                ("REEL_DOWNLOAD_MAX_CLIP_BYTES", "1000"),
                ("REEL_DOWNLOAD__MAX_CLIP_SECONDS", "12.5"),
                ("REEL_PROJECT_LOCK", "false"),
                ("REEL_ALLOWED_ROOTS", "gs://abc, /tmp/b,"),
                ("REEL_LOG_FORMAT", "pretty"),
                ("REEL_NATIVE_PROBE", "0"),
                ("REEL_ENCODE_THREADS", "1"),
                ("REEL_INSTANCE_MEMORY", "512Mi"),
                ("REEL_INSTANCE_VCPUS", "2"),
                ("REEL_MEDIA_LIMITS_MAX_FPS", "120"),
                ("REEL_FFMPEG", "/opt/ffmpeg"),
                ("REEL_HOME", "/ignored"),
                ("TEMP_DIR", ""),
            ]),
        )
        .unwrap();
        assert_eq!(s.validate.max_clips, 7);
        assert_eq!(s.download.max_clip_bytes, 1000);
        assert_eq!(s.download.max_clip_seconds, 12.5);
        assert!(!s.validate.project_lock);
        assert_eq!(s.allowed_roots, vec!["gs://abc".to_string(), "/tmp/b".to_string()]);
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert!(!s.media.native_probe);
        assert_eq!(s.media.encode_threads, 1);
        assert_eq!((s.cost.instance_memory.0, s.cost.instance_vcpus), (0.5, 2.0));
        assert_eq!(s.media.limits.max_fps, 120.0);
        assert_eq!(s.media.ffmpeg, PathBuf::from("/opt/ffmpeg"));
        assert_eq!(s.temp_dir, Settings::default().temp_dir, "an empty variable counts as unset");
    }

    #[test]
    fn bad_values_fail_with_their_name_and_layer() {
        let err = Settings::load_from(None, &vars(&[("JOB_TIMEOUT_MINUTES", "soon")])).unwrap_err();
        assert!(err.to_string().contains("JOB_TIMEOUT_MINUTES"), "{err}");
        let err = Settings::load_from(None, &vars(&[("LOG_LEVEL", "verbose")])).unwrap_err();
        assert!(err.to_string().contains("LOG_LEVEL") && err.to_string().contains("verbose"), "{err}");
        let err = Settings::load_from(None, &vars(&[("REEL_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("REEL_LOG_FORMAT"), "{err}");

        let (_dir, path) = file("job_timeout_minuts = 5\n");
        let err = Settings::load_from(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("job_timeout_minuts"), "{err}");
        let (_dir, path) = file("[download]\nmax_clip_byte = 5\n");
        let err = Settings::load_from(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("download.max_clip_byte"), "{err}");
    }

    /// Range checks apply whatever the layer: `concurrency = 0` in the file is refused
    /// just as `REEL_CONCURRENCY=0` is, and the message names where it came from.
    #[test]
    fn file_values_are_checked_like_environment_values() {
        let (_dir, path) = file("concurrency = 0\n");
        let err = Settings::load_from(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("concurrency") && err.contains(&path.display().to_string()), "{err}");
        let err = Settings::load_from(None, &vars(&[("REEL_CONCURRENCY", "0")])).unwrap_err().to_string();
        assert!(err.contains("environment variable REEL_CONCURRENCY"), "{err}");
        let (_dir, path) = file("[validate]\nmax_clips = 1\n");
        let err = Settings::load_from(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("validate.max_clips"), "{err}");
        let err = Settings::load_from(None, &vars(&[("REEL_ACK_DEADLINE_SECONDS", "5")])).unwrap_err().to_string();
        assert!(err.contains("REEL_ACK_DEADLINE_SECONDS"), "{err}");
    }

    #[test]
    fn log_levels_people_mean_are_accepted() {
        for ok in ["info", "DEBUG", "reel_runtime=debug,info", "off"] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "", "loud=debug2"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tier_is_named_in_words() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!((s.tier, s.large_tier), (crate::topology::Tier::Standard, false));
        let s = Settings::load_from(None, &vars(&[("REEL_TIER", "large"), ("REEL_LARGE_TIER", "true")])).unwrap();
        assert_eq!((s.tier, s.large_tier), (crate::topology::Tier::Large, true));
        let err = Settings::load_from(None, &vars(&[("REEL_TIER", "huge")])).unwrap_err();
        assert!(err.to_string().contains("REEL_TIER"), "{err}");
    }

    #[test]
    fn the_lease_is_short_by_default_and_within_pub_subs_range() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!(s.lease_seconds, 15);
        let s = Settings::load_from(None, &vars(&[("REEL_LEASE_SECONDS", "30")])).unwrap();
        assert_eq!(s.lease_seconds, 30);
        for value in ["9", "601", "soon"] {
            let err = Settings::load_from(None, &vars(&[("REEL_LEASE_SECONDS", value)])).unwrap_err();
            assert!(err.to_string().contains("REEL_LEASE_SECONDS"), "{value}: {err}");
        }
    }
}
