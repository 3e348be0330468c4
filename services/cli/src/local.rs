//! `reel stitch` on one machine: the five stages as tasks on the embedded bus, a
//! directory as the work store, and an append-only event log file.
//!
//! State lives in the state directory (`REEL_HOME`, else `$XDG_STATE_HOME/reel`, else
//! `~/.local/state/reel`): `events.jsonl` (the log), `dead-letter/{stage}.jsonl`,
//! `work/` (jobs' intermediate files) and `tmp/`. The job id is derived from the inputs,
//! so running the same command again after a crash finds the job on the log and resumes
//! it from the last stage that finished.

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use reel_events::fold::JobState;
use reel_events::fold::Status;
use reel_events::payload::{GenerateRequested, GenerateStitch, StitchRequested};
use reel_events::{binding, envelope, types, AttributesReader, Compression, Event, Orientation, Stage};
use reel_runtime::bus::Bus;
use reel_runtime::embedded::{DirStore, EmbeddedBus, EventLog};
use reel_runtime::local::LocalResolver;
use reel_runtime::location::{Location, StoreResolver};
use reel_runtime::output::{self, Refusal};
use reel_runtime::stage::{FromSettings, Handler};
use reel_runtime::topology::{Queue, SubscriptionSpec, Topology};
use reel_runtime::worker::{Worker, WorkerOptions};
use reel_runtime::Settings;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where local state lives.
pub fn state_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("REEL_HOME") {
        return PathBuf::from(home);
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(state).join("reel");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".local/state/reel")
}

/// The local event log file.
pub fn log_path(state: &Path) -> PathBuf {
    state.join("events.jsonl")
}

/// Read every event on the local log (undecodable lines are skipped).
pub fn read_log(state: &Path) -> Result<Vec<Event>> {
    let path = log_path(state);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let logged = EventLog::read(&path).with_context(|| format!("reading the event log {}", path.display()))?;
    Ok(logged.iter().filter_map(|m| binding::decode(&m.message).ok()).collect())
}

/// What the caller asked for.
#[derive(Debug, Clone)]
pub struct StitchJob {
    /// Absolute clip paths.
    pub clips: Vec<PathBuf>,
    /// Absolute output path.
    pub output: PathBuf,
    /// Frame.
    pub orientation: Orientation,
    /// Preset.
    pub compression: Compression,
    /// Replace OUT if it is reel's own earlier output (sends `forceRestart`); a file reel
    /// did not write is never replaced.
    pub overwrite: bool,
}

impl StitchJob {
    /// The job id: the same inputs give the same id, so a rerun resumes.
    pub fn job_id(&self) -> String {
        let mut hasher = Sha256::new();
        for clip in &self.clips {
            hasher.update(clip.to_string_lossy().as_bytes());
            hasher.update([0]);
        }
        hasher.update(self.output.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(self.orientation.as_str().as_bytes());
        hasher.update(self.compression.as_str().as_bytes());
        let hex: String = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("local_{hex}")
    }
}

/// How a run ended.
pub struct RunResult {
    /// The job id.
    pub job_id: String,
    /// Its final state.
    pub state: JobState,
    /// Whether this run resumed an interrupted one.
    pub resumed_from: Option<Stage>,
}

/// Something that wants to hear about the job's events (the progress bar).
pub trait Observer: Send {
    /// A job event arrived (only events of this job).
    fn on_event(&mut self, event: &Event, state: &JobState);
}

/// The embedded pipeline.
pub struct LocalPipeline {
    state: PathBuf,
    settings: Arc<Settings>,
    bus: Arc<EmbeddedBus>,
    topology: Topology,
    shutdown: CancellationToken,
    workers: tokio::task::JoinSet<()>,
}

/// The project every local job belongs to; the person at the keyboard owns it.
pub const LOCAL_PROJECT: &str = "local";

/// The output rule (`reel_runtime::output`) before anything runs, so that a refusal names
/// the file at once instead of after the clips were read and encoded. Upload applies the
/// same rule again when it writes.
async fn check_output(output: &Path, overwrite: bool) -> Result<()> {
    let (store, key) = LocalResolver::new().resolve(&Location::Local(output.to_path_buf()))?;
    let existing = store.head(&key).await.with_context(|| format!("checking {}", output.display()))?;
    match output::decide(existing.as_ref(), LOCAL_PROJECT, overwrite) {
        Ok(_) => Ok(()),
        Err(Refusal::NeedsForceRestart) => {
            bail!("{} already exists (a reel made earlier); pass --overwrite to replace it", output.display())
        }
        Err(Refusal::NotWrittenByReel | Refusal::OtherProject) => bail!(
            "{} already exists and was not written by this reel installation; reel does not replace files it \
             did not write, even with --overwrite: remove it or choose another -o",
            output.display()
        ),
    }
}

/// What `reel generate` asked for.
#[derive(Debug, Clone)]
pub struct GenerateJob {
    /// One clip per prompt.
    pub prompts: Vec<String>,
    /// Length of each clip, s.
    pub clip_seconds: u32,
    /// Frame.
    pub orientation: Orientation,
    /// Where the clips go (absolute; a directory of the job's own by default).
    pub clips_dir: PathBuf,
    /// The reel to stitch them into, and its preset.
    pub reel: Option<(PathBuf, Compression)>,
    /// Replace the reel if it is reel's own earlier output.
    pub overwrite: bool,
}

impl GenerateJob {
    /// The job id: the same prompts and settings give the same id.
    pub fn job_id(prompts: &[String], clip_seconds: u32, orientation: Orientation) -> String {
        let mut hasher = Sha256::new();
        for prompt in prompts {
            hasher.update(prompt.as_bytes());
            hasher.update([0]);
        }
        hasher.update(clip_seconds.to_le_bytes());
        hasher.update(orientation.as_str().as_bytes());
        let hex: String = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("local_gen_{hex}")
    }

    fn id(&self) -> String {
        GenerateJob::job_id(&self.prompts, self.clip_seconds, self.orientation)
    }
}

/// How a `reel generate` ended: the generation job, and the reel's job if one was asked
/// for and started.
pub struct GenerateResult {
    /// The generation job's final state.
    pub generation: JobState,
    /// The stitching job's, when `--stitch` started one.
    pub reel: Option<JobState>,
}

/// The subscription the CLI watches the log through.
const WATCH_SUBSCRIPTION: &str = "reel-cli-watch";

impl LocalPipeline {
    /// Start the five stages on the embedded bus.
    pub async fn start(state: &Path, mut settings: Settings) -> Result<LocalPipeline> {
        std::fs::create_dir_all(state).with_context(|| format!("creating the state directory {}", state.display()))?;
        settings.allowed_roots = vec!["/".into()];
        // Separate local runs may share the state dir; they are not one project's queue.
        settings.validate.project_lock = false;
        // One person's laptop: no tenants to share it fairly between.
        settings.quota = reel_runtime::config::Quotas { active_jobs: 0, jobs_per_hour: 0 };
        settings.work_root = Some(state.join("work").display().to_string());
        if settings.temp_dir == Settings::default().temp_dir {
            // Unless TEMP_DIR says otherwise, scratch lives beside the state.
            settings.temp_dir = state.join("tmp");
        }
        let settings = Arc::new(settings);
        let mut topology = settings.topology();
        for sub in &mut topology.subscriptions {
            // Local retries: quick first, capped low; a person is waiting.
            sub.min_backoff = Duration::from_millis(200);
            sub.max_backoff = Duration::from_secs(5);
            sub.max_delivery_attempts = 5;
        }
        let names = topology.names();
        topology.subscriptions.push(SubscriptionSpec {
            name: WATCH_SUBSCRIPTION.into(),
            topic: names.events(),
            ack_deadline: Duration::from_secs(60),
            dead_letter_topic: None,
            max_delivery_attempts: 5,
            min_backoff: Duration::ZERO,
            max_backoff: Duration::from_secs(1),
            message_retention: Duration::from_secs(3600),
            exactly_once: false,
        });
        let mut bus = EmbeddedBus::new()
            .with_persisted_topic(names.events(), log_path(state))
            .with_context(|| format!("opening the event log {}", log_path(state).display()))?;
        for queue in Queue::ALL {
            let path = dead_letter_path(state, queue);
            bus = bus
                .with_persisted_topic(names.dead_letter_topic(queue), &path)
                .with_context(|| format!("opening {}", path.display()))?;
        }
        let bus = Arc::new(bus);
        bus.ensure_topology(&topology).await?;
        let work_dir = state.join("work");
        let work: Arc<dyn reel_runtime::Store> = Arc::new(DirStore::new(&work_dir)?);
        let resolver = Arc::new(LocalResolver::new());
        let shutdown = CancellationToken::new();
        let mut workers = tokio::task::JoinSet::new();
        let handlers: Vec<Arc<dyn Handler>> = vec![
            Arc::new(reel_validate::Validate::from_settings(&settings)),
            Arc::new(reel_download::Download::from_settings(&settings)),
            Arc::new(reel_stitch::Stitch::from_settings(&settings)),
            Arc::new(reel_upload::Upload::from_settings(&settings)),
            Arc::new(reel_finalize::Finalize::from_settings(&settings)),
            // Locally, clips from prompts are test patterns: no Vertex AI on a laptop.
            Arc::new(reel_generate::Generate::new(
                Arc::new(reel_generate::TestPattern::new(settings.media.clone())),
                settings.generate.clone(),
                settings.quota,
            )),
        ];
        for handler in handlers {
            let mut options = WorkerOptions::for_stage(handler.stage(), &settings);
            options.shutdown_grace = Duration::from_secs(2);
            let worker =
                Arc::new(Worker::new(bus.clone(), handler, &settings, work.clone(), resolver.clone(), options));
            let stop = shutdown.clone();
            workers.spawn(async move {
                let _ = worker.run(stop).await;
            });
        }
        Ok(LocalPipeline { state: state.to_path_buf(), settings, bus, topology, shutdown, workers })
    }

    /// Run one job to its end (or resume it), telling `observer` about its events.
    /// Returns when the job completed, failed or was cancelled, or when `interrupt` fires.
    pub async fn run(
        &mut self,
        job: &StitchJob,
        observer: &mut dyn Observer,
        interrupt: CancellationToken,
    ) -> Result<RunResult> {
        let job_id = job.job_id();
        let names = self.topology.names();
        let history: Vec<Event> = read_log(&self.state)?
            .into_iter()
            .filter(|e| envelope::job_id_of(e).as_deref() == Some(job_id.as_str()))
            .collect();
        let mut state = JobState::new(&job_id);
        for e in &history {
            state.apply(e);
        }
        let current_attempt = state.current().map(|(n, _)| n).unwrap_or(0);
        let mut resumed_from = None;
        let interrupted = !history.is_empty() && !state.status().is_terminal();
        if interrupted {
            // Resume: hand the latest finished stage's event to the next stage again.
            let latest = history
                .iter()
                .filter(|e| attempt_of(e) == current_attempt)
                .filter_map(|e| Stage::completed_by(e.ty()).filter(|s| *s != Stage::Finalize).map(|s| (s, e)))
                .max_by_key(|(s, e)| (*s, e.time().copied()));
            match latest {
                Some((stage, event)) => {
                    let next = Stage::ALL[stage.index() + 1];
                    resumed_from = Some(next);
                    self.bus.publish(&names.work_topic(next), binding::encode_binary(event)).await?;
                }
                None => {
                    let request =
                        history.iter().filter(|e| e.ty() == types::STITCH_REQUESTED).max_by_key(|e| e.time().copied());
                    match request {
                        Some(request) => {
                            resumed_from = Some(Stage::Validate);
                            self.bus.publish(&names.requests(), binding::encode_binary(request)).await?;
                        }
                        None => self.submit(job, &job_id, current_attempt, false).await?,
                    }
                }
            }
        } else {
            check_output(&job.output, job.overwrite).await?;
            let attempt = if history.is_empty() { 0 } else { current_attempt + 1 };
            state = JobState::new(&job_id);
            self.submit(job, &job_id, attempt, attempt > 0 || job.overwrite).await?;
        }

        loop {
            let Some(events) = self.watch(&interrupt).await? else {
                return Ok(RunResult { job_id, state, resumed_from });
            };
            for event in events {
                if envelope::job_id_of(&event).as_deref() != Some(job_id.as_str()) {
                    continue;
                }
                state.apply(&event);
                observer.on_event(&event, &state);
            }
            if state.status().is_terminal() {
                return Ok(RunResult { job_id, state, resumed_from });
            }
        }
    }

    /// Run a generation job (and the reel's job, with `--stitch`) to its end, telling
    /// `observer` about both jobs' events.
    pub async fn generate(
        &mut self,
        job: &GenerateJob,
        observer: &mut dyn Observer,
        interrupt: CancellationToken,
    ) -> Result<GenerateResult> {
        let job_id = job.id();
        let reel_id = format!("{job_id}-reel");
        let attempt = read_log(&self.state)?
            .iter()
            .filter(|e| envelope::job_id_of(e).as_deref() == Some(job_id.as_str()))
            .map(|e| attempt_of(e) + 1)
            .max()
            .unwrap_or(0);
        if let Some((output, _)) = &job.reel {
            check_output(output, job.overwrite).await?;
        }
        let mut prefix = job.clips_dir.display().to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let request = GenerateRequested {
            job_id: Some(job_id.clone()),
            project_id: LOCAL_PROJECT.into(),
            user_id: local_user(),
            prompts: job.prompts.clone(),
            clip_seconds: job.clip_seconds,
            orientation: job.orientation,
            output_prefix: prefix,
            stitch: job.reel.as_ref().map(|(output, compression)| GenerateStitch {
                output_path: output.display().to_string(),
                compression: *compression,
            }),
            retry_attempt: Some(attempt),
            force_restart: Some(attempt > 0 || job.overwrite),
        };
        let id = format!("generate.requested-{}", uuid::Uuid::new_v4().simple());
        let event = envelope::build(types::GENERATE_REQUESTED, "//reel/cli", id, &job_id, Utc::now(), &request)?;
        reel_runtime::worker::publish_event(self.bus.as_ref(), &self.topology.names(), &event).await?;
        let mut generation = JobState::new(&job_id);
        let mut reel = None::<JobState>;
        loop {
            let Some(events) = self.watch(&interrupt).await? else {
                return Ok(GenerateResult { generation, reel });
            };
            for event in events {
                let state = match envelope::job_id_of(&event) {
                    Some(id) if id == job_id => &mut generation,
                    Some(id) if id == reel_id => reel.get_or_insert_with(|| JobState::new(&reel_id)),
                    _ => continue,
                };
                state.apply(&event);
                observer.on_event(&event, state);
            }
            let done = match generation.status() {
                Status::Completed if job.reel.is_some() => reel.as_ref().is_some_and(|r| r.status().is_terminal()),
                status => status.is_terminal(),
            };
            if done {
                return Ok(GenerateResult { generation, reel });
            }
        }
    }

    /// The next events on the log (up to half a second's wait), acked; `None` once
    /// `interrupt` fires.
    async fn watch(&self, interrupt: &CancellationToken) -> Result<Option<Vec<Event>>> {
        let deliveries = tokio::select! {
            d = self.bus.receive(WATCH_SUBSCRIPTION, 64, Duration::from_millis(500)) => d?,
            _ = interrupt.cancelled() => return Ok(None),
        };
        let mut events = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let _ = self.bus.ack(WATCH_SUBSCRIPTION, &delivery.ack_id).await;
            events.extend(binding::decode(&delivery.message).ok());
        }
        Ok(Some(events))
    }

    async fn submit(&self, job: &StitchJob, job_id: &str, attempt: u32, force: bool) -> Result<()> {
        let request = StitchRequested {
            job_id: Some(job_id.to_string()),
            project_id: LOCAL_PROJECT.into(),
            user_id: local_user(),
            clip_paths: job.clips.iter().map(|p| p.display().to_string()).collect(),
            output_path: job.output.display().to_string(),
            orientation: job.orientation,
            compression: job.compression,
            retry_attempt: Some(attempt),
            force_restart: Some(force),
        };
        let id = format!("stitch.requested-{}", uuid::Uuid::new_v4().simple());
        let event = envelope::build(types::STITCH_REQUESTED, "//reel/cli", id, job_id, Utc::now(), &request)?;
        // To the log (so a rerun finds it) and to validate's topic.
        reel_runtime::worker::publish_event(self.bus.as_ref(), &self.topology.names(), &event).await?;
        Ok(())
    }

    /// Stop the stages (in-flight work is stopped and left for the next run to resume).
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.workers.join_next().await.is_some() {}
        let _ = &self.settings;
    }
}

/// The person at the keyboard.
fn local_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "local".into())
}

fn attempt_of(event: &Event) -> u32 {
    envelope::data_json(event)
        .ok()
        .and_then(|d| d.get("job").unwrap_or(&d).get("retryAttempt").and_then(|v| v.as_u64()))
        .unwrap_or(0) as u32
}

/// Fold the whole local log.
pub fn fold_log(state: &Path) -> Result<std::collections::BTreeMap<String, JobState>> {
    let events = read_log(state)?;
    Ok(reel_events::fold::fold_all(events.iter()))
}

/// `reel sweep` on the local log: append the `job.failed` (`timeout`) of every job that
/// outlived its deadline plus `REEL_JOB_GRACE_MINUTES` without an end (a `reel stitch`
/// killed mid-job leaves one). Returns the jobs failed.
pub fn sweep(state: &Path, settings: &Settings, dry_run: bool) -> Result<Vec<String>> {
    let jobs = fold_log(state)?;
    let now = Utc::now();
    let overdue = reel_events::sweep::overdue_failures(&jobs, now, &settings.overdue());
    let mut failed = Vec::new();
    for event in overdue {
        if !dry_run {
            let logged = reel_runtime::embedded::LoggedMessage {
                message_id: event.id().to_string(),
                publish_time: now,
                message: binding::encode_binary(&event),
            };
            EventLog::append(&log_path(state), &logged).context("appending to the event log")?;
        }
        failed.push(envelope::job_id_of(&event).unwrap_or_default());
    }
    Ok(failed)
}

/// The local dead-letter file of a queue.
pub fn dead_letter_path(state: &Path, queue: Queue) -> PathBuf {
    state.join("dead-letter").join(format!("{}.jsonl", queue.as_str()))
}

/// Dead letters waiting in the local dead-letter queue of `queue`.
pub fn dead_letters(state: &Path, queue: Queue) -> Result<Vec<reel_runtime::embedded::LoggedMessage>> {
    let path = dead_letter_path(state, queue);
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(EventLog::read(&path)?)
}

/// Replace the local dead-letter queue of `queue` with `keep` (atomically: temp file + rename).
pub fn rewrite_dead_letters(state: &Path, queue: Queue, keep: &[reel_runtime::embedded::LoggedMessage]) -> Result<()> {
    let path = dead_letter_path(state, queue);
    let tmp = path.with_extension("jsonl.tmp");
    let _ = std::fs::remove_file(&tmp);
    for message in keep {
        EventLog::append(&tmp, message)?;
    }
    if keep.is_empty() {
        std::fs::write(&tmp, b"")?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

impl LocalPipeline {
    /// Send `messages` back to `queue` and wait until their jobs end (or `timeout`).
    pub async fn replay(
        &mut self,
        queue: Queue,
        messages: Vec<reel_runtime::bus::Message>,
        timeout: Duration,
    ) -> Result<Vec<JobState>> {
        let names = self.topology.names();
        let mut jobs: std::collections::BTreeMap<String, JobState> = Default::default();
        for message in messages {
            if let Ok(event) = binding::decode(&message) {
                if let Some(job) = envelope::job_id_of(&event) {
                    jobs.insert(job.clone(), JobState::new(&job));
                }
            }
            self.bus.publish(&names.return_topic(queue, &message), message).await?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline && jobs.values().any(|j| !j.status().is_terminal()) {
            for event in self.watch(&CancellationToken::new()).await?.unwrap_or_default() {
                if let Some(state) = envelope::job_id_of(&event).and_then(|j| jobs.get_mut(&j)) {
                    state.apply(&event);
                }
            }
        }
        Ok(jobs.into_values().collect())
    }
}
