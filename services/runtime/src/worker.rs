//! The worker loop: pull, admit, handle, settle.
//!
//! Per message: [`Worker::admit`] (size, decoding — binary or structured CloudEvent, or a
//! storage notification — type, then the job's deadline, cancel marker and completion)
//! either yields an [`Outcome`] at once or lets the handler run, with its lease
//! extended, progress published and cancellation watched; a stop from outside
//! (shutdown, deadline, cancel) becomes an outcome too. Then [`Worker::settle`], the one
//! place that publishes what follows, acks, nacks, dead-letters or publishes
//! `job.failed` / `job.cancelled`. Nothing is acked before what follows it is safely
//! published. A message that can never be processed is dead-lettered at once with its
//! reason; a worker never panics on input and never stalls other jobs. The runtime
//! never names a stage: a handler declares what it wants on a late redelivery
//! ([`Handler::on_completed_job`]).

use chrono::{DateTime, Utc};
use futures::FutureExt;
use reel_events::binding::{self, BindingError};
use reel_events::payload::{JobCancelled, JobEnvelope, JobFailed, JobProgress, JobRef};
use reel_events::{envelope, types, AttributesReader, ErrorType, Event, Stage};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::bus::{Bus, BusError, Delivery, Message};
use crate::config::Settings;
use crate::cost::LedgerEntry;
use crate::location::StoreResolver;
use crate::meter::{MeteredResolver, MeteredStore, StorageMeter};
use crate::metrics::MessageOutcome;
use crate::stage::{
    cancel_marker_key, job_completed, work_prefix, Boundary, Context, Failure, Handler, LateDelivery, Outcome,
    ProgressReporter,
};
use crate::store::Store;
use crate::topology::{Names, Queue, Topology};

/// Pub/Sub's message size limit; larger messages are dead-lettered unread.
pub use crate::bus::MAX_MESSAGE_BYTES;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Subscriptions to pull (validate has two).
    pub subscriptions: Vec<String>,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Stop when no message arrived for this long (Cloud Run Jobs).
    pub exit_when_idle: Option<Duration>,
    /// Time in-flight work gets to finish after shutdown before it is stopped and nacked.
    pub shutdown_grace: Duration,
    /// Progress is published at least this often while a handler works (≤ 5 s).
    pub heartbeat: Duration,
    /// How often the cancel marker and deadline are checked while working.
    pub cancel_poll: Duration,
    /// Deliveries of a transiently failing message before the job fails
    /// (`MAX_RETRY_ATTEMPTS` + 1).
    pub max_retry_attempts: u32,
    /// Where scratch directories go (`TEMP_DIR`).
    pub temp_dir: PathBuf,
    /// `JOB_TIMEOUT_MINUTES`, named in timeout messages.
    pub job_timeout_minutes: u64,
    /// `REEL_FAULT_FILE`: while it exists, deliveries fail transiently (drills, tests).
    pub fault_file: Option<PathBuf>,
    /// Whether a replayed job retakes its project's lock (`REEL_PROJECT_LOCK`).
    pub project_lock: bool,
    /// Times a job past its deadline is resumed before it fails (`REEL_TIMEOUT_RESUMES`).
    pub timeout_resumes: u32,
    /// Pull mode: the lease kept on a message while it is worked on (`REEL_LEASE_SECONDS`),
    /// renewed every third of it; how soon a dead program's message comes back.
    pub lease: Duration,
    /// The work topic of a larger tier to send work that ran out of memory or disk to
    /// (standard stitch with `REEL_LARGE_TIER`), instead of retrying it at the same size.
    pub larger_tier: Option<String>,
    /// The service's size and prices, for each delivery's cost (`[cost]`).
    pub cost: crate::cost::CostConfig,
}

impl WorkerOptions {
    /// The options of `stage` under `settings`.
    pub fn for_stage(stage: Stage, settings: &Settings) -> WorkerOptions {
        WorkerOptions {
            subscriptions: settings.topology().names().consumed_by_tier(stage, settings.tier),
            concurrency: settings.concurrency,
            exit_when_idle: None,
            shutdown_grace: Duration::from_secs(20),
            heartbeat: Duration::from_secs(4),
            cancel_poll: Duration::from_secs(1),
            max_retry_attempts: settings.max_retry_attempts,
            temp_dir: settings.temp_dir.clone(),
            job_timeout_minutes: match stage {
                Stage::Generate => settings.generate.timeout_minutes,
                _ => settings.job_timeout_minutes,
            },
            fault_file: settings.fault_file.clone(),
            project_lock: settings.validate.project_lock,
            timeout_resumes: settings.timeout_resumes,
            lease: Duration::from_secs(settings.lease_seconds),
            larger_tier: settings
                .topology()
                .names()
                .larger_tier(stage)
                .filter(|_| settings.large_tier && settings.tier == crate::topology::Tier::Standard),
            cost: settings.cost,
        }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it (processed, skipped, failed the job, or dead-lettered).
    Ack,
    /// Let the bus redeliver it later.
    Nack,
}

/// Why work on a message was stopped from outside the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Shutdown,
    Deadline,
    Cancelled,
}

/// One message as settle sees it: where it came from, and (once decoded) its event
/// and job.
struct Inbound<'a> {
    subscription: &'a str,
    message: &'a Message,
    delivery_attempt: u32,
    event: Option<Event>,
    envelope: JobEnvelope,
    /// Earlier runs of this stage on the job died without an outcome more often than
    /// retries allow (see [`crate::unfinished`]): give up now.
    killed_too_often: bool,
}

/// A stage's worker.
pub struct Worker {
    bus: Arc<dyn Bus>,
    handler: Arc<dyn Handler>,
    work: Arc<dyn Store>,
    resolver: Arc<dyn StoreResolver>,
    boundary: Arc<Boundary>,
    topology: Topology,
    options: WorkerOptions,
    /// Counters, durations and throughput, for `/metrics`.
    pub metrics: Arc<crate::metrics::StageMetrics>,
    /// The completion rates ([`crate::eta`]) and when they were read.
    rates: tokio::sync::Mutex<Option<(Instant, Arc<crate::eta::Rates>)>>,
}

/// How long a worker trusts the completion rates it read: a few seconds, so that what
/// a job just taught is used by the next (one small read per stage and interval).
const RATES_FRESH: Duration = Duration::from_secs(5);

impl Worker {
    /// A worker for `handler`, with the topology and trust boundary of `settings`.
    pub fn new(
        bus: Arc<dyn Bus>,
        handler: Arc<dyn Handler>,
        settings: &Settings,
        work: Arc<dyn Store>,
        resolver: Arc<dyn StoreResolver>,
        options: WorkerOptions,
    ) -> Worker {
        let stage = handler.stage();
        Worker {
            bus,
            handler,
            work,
            resolver,
            boundary: Arc::new(settings.boundary()),
            topology: settings.topology(),
            options,
            metrics: Arc::new(crate::metrics::StageMetrics::new(stage.as_str())),
            rates: tokio::sync::Mutex::new(None),
        }
    }

    /// Teach the completion rates what a completed job's stages took ([`crate::eta`]).
    /// A job that was retried, resumed or replayed waited for other reasons than its
    /// size; it teaches nothing, nor does a leg longer than a job may take.
    async fn learn(&self, inbound: &Inbound<'_>, usage: &crate::cost::JobUsage) {
        let envelope = &inbound.envelope;
        if envelope.retry_attempt > 0 || envelope.timeout_resumes > 0 {
            return;
        }
        let limit = self.options.job_timeout_minutes as f64 * 60.0;
        let legs: BTreeMap<Stage, f64> =
            usage.legs.iter().filter(|(_, s)| **s <= limit).map(|(k, v)| (*k, *v)).collect();
        match crate::eta::learn(self.work.as_ref(), &usage.shape, &legs).await {
            Ok(rates) => {
                info!(jobs = rates.jobs, legs = ?legs, "completion rates learned from the job");
                *self.rates.lock().await = Some((Instant::now(), Arc::new(rates)));
            }
            Err(e) => warn!(error = %e, "could not update the completion rates"),
        }
    }

    /// The completion rates, read again when older than [`RATES_FRESH`].
    async fn rates(&self) -> Arc<crate::eta::Rates> {
        let mut cached = self.rates.lock().await;
        if let Some((_, rates)) = cached.as_ref().filter(|(at, _)| at.elapsed() < RATES_FRESH) {
            return rates.clone();
        }
        let rates = Arc::new(crate::eta::load(self.work.as_ref()).await.unwrap_or_else(|e| {
            warn!(error = %e, "could not read the completion rates; estimates use the defaults");
            crate::eta::Rates::default()
        }));
        *cached = Some((Instant::now(), rates.clone()));
        rates
    }

    fn names(&self) -> Names {
        self.topology.names()
    }

    fn stage(&self) -> Stage {
        self.handler.stage()
    }

    /// The Prometheus text of this worker's metrics.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Pull and process until `shutdown` fires (then finish or nack in-flight work within
    /// the grace period) or, with `exit_when_idle`, until the subscriptions stay empty.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), BusError> {
        let stage = self.stage();
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let work_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_message = Instant::now();
        let subs = self.options.subscriptions.clone();
        let mut next_sub = 0usize;
        info!(stage = %stage, subscriptions = ?subs, "worker started");
        let temp_dir = self.options.temp_dir.clone();
        let _ = tokio::task::spawn_blocking(move || sweep_orphaned_scratch(&temp_dir)).await;
        'outer: loop {
            while tasks.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(idle) = self.options.exit_when_idle {
                if tasks.is_empty() && last_message.elapsed() >= idle {
                    info!(stage = %stage, idle_secs = idle.as_secs(), "subscriptions idle; exiting");
                    break;
                }
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = shutdown.cancelled() => break 'outer,
            };
            let sub = subs[next_sub % subs.len()].clone();
            next_sub += 1;
            // With several subscriptions (validate: requests and storage notifications) a
            // long wait on one delays what arrives on the other; a short one costs a
            // look at a local buffer (streaming pull, embedded bus) or one pull.
            let wait = if subs.len() > 1 { Duration::from_millis(20) } else { Duration::from_secs(1) };
            let received = tokio::select! {
                r = self.bus.receive(&sub, 1, wait) => r,
                _ = shutdown.cancelled() => break 'outer,
            };
            let deliveries = match received {
                Ok(d) => d,
                Err(BusError::Closed) => break,
                Err(e) => {
                    warn!(stage = %stage, subscription = %sub, error = %e, "receive failed; backing off");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(delivery) = deliveries.into_iter().next() else {
                continue;
            };
            last_message = Instant::now();
            let worker = self.clone();
            let stop = work_stop.clone();
            tasks.spawn(async move {
                let _permit = permit;
                worker.process_delivery(&sub, delivery, stop).await;
            });
        }
        // Shutdown: give in-flight work its grace period, then stop it (it nacks).
        if !tasks.is_empty() {
            info!(stage = %stage, in_flight = tasks.len(), grace_secs = self.options.shutdown_grace.as_secs(), "draining");
            let drained =
                tokio::time::timeout(self.options.shutdown_grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                warn!(stage = %stage, "grace period over; stopping in-flight work");
                work_stop.cancel();
                while tasks.join_next().await.is_some() {}
            }
        }
        info!(stage = %stage, "worker stopped");
        Ok(())
    }

    /// Pull mode: process one delivery, then carry out the disposition on the bus.
    async fn process_delivery(&self, subscription: &str, delivery: Delivery, stop: CancellationToken) {
        let lease = self.spawn_lease_extender(subscription, &delivery.ack_id);
        let disposition =
            self.process(subscription, &delivery.message, &delivery.message_id, delivery.delivery_attempt, stop).await;
        lease.cancel();
        let result = match disposition {
            Disposition::Ack => self.bus.ack(subscription, &delivery.ack_id).await,
            Disposition::Nack => self.bus.nack(subscription, &delivery.ack_id).await,
        };
        if let Err(e) = result {
            // The message will be redelivered; every stage is idempotent.
            warn!(subscription, error = %e, ?disposition, "could not settle message; it will be redelivered");
        }
    }

    /// Keep the delivery leased for [`WorkerOptions::lease`] from now on, renewed every
    /// third of it until the returned token is cancelled. The first renewal is at once:
    /// from then on a program that dies holds its message for one short lease, not for
    /// the subscription's ack deadline (which push mode needs long).
    fn spawn_lease_extender(&self, subscription: &str, ack_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let lease = self.options.lease.max(Duration::from_secs(1));
        let every = lease / 3;
        let (bus, sub, id, t) = (self.bus.clone(), subscription.to_string(), ack_id.to_string(), token.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = bus.modify_deadline(&sub, &id, lease.as_secs() as u32).await {
                    warn!(subscription = %sub, error = %e, "could not extend lease");
                }
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        token
    }

    /// Process one message and say what to do with it. Used by pull mode (which then
    /// acks or nacks) and push mode (which answers 2xx or 5xx).
    pub async fn process(
        &self,
        subscription: &str,
        message: &Message,
        message_id: &str,
        delivery_attempt: u32,
        stop: CancellationToken,
    ) -> Disposition {
        self.metrics.count(MessageOutcome::Received);
        let mut inbound = Inbound {
            subscription,
            message,
            delivery_attempt,
            event: None,
            envelope: JobEnvelope::default(),
            killed_too_often: false,
        };
        let event = match self.admit_message(message, message_id) {
            Ok(event) => event,
            Err(outcome) => return self.settle(&inbound, outcome).await,
        };
        let data = envelope::data_json(&event).unwrap_or(serde_json::Value::Null);
        // Storage notifications name objects, not jobs: validate derives the job id.
        if !event.ty().starts_with("google.cloud.storage.") {
            inbound.envelope = JobEnvelope::from_data(&data, event.subject());
        }
        let span = tracing::info_span!(
            "message",
            stage = %self.stage(),
            job_id = %inbound.envelope.job.job_id,
            ce_id = %event.id(),
            ce_type = %event.ty(),
            delivery_attempt,
            job_type = self.stage().job_type().as_str(),
            trace = envelope::extension_str(&event, envelope::TRACEPARENT).unwrap_or(""),
        );
        inbound.event = Some(event);
        async {
            let event = inbound.event.as_ref().expect("decoded above");
            let outcome = match self.admit_job(&inbound.envelope, self.claims(inbound.event.as_ref())).await {
                Some(outcome) => outcome,
                None => {
                    let outcome = match self.begin_run(&inbound).await {
                        Err(failure) => {
                            inbound.killed_too_often = true;
                            Outcome::Retry(failure)
                        }
                        Ok(()) => self.run_handler(event, &inbound.envelope, delivery_attempt, stop).await,
                    };
                    // An outcome exists; giving up counts too, so a replay starts afresh.
                    self.end_run(&inbound.envelope.job.job_id, inbound.event.as_ref()).await;
                    outcome
                }
            };
            self.settle(&inbound, outcome).await
        }
        .instrument(span)
        .await
    }

    /// Admission, part one: is this a message this stage can ever process?
    fn admit_message(&self, message: &Message, message_id: &str) -> Result<Event, Outcome> {
        let unprocessable = |reason: String| Outcome::Unprocessable(Failure::new(ErrorType::InvalidRequest, reason));
        if message.wire_size() > MAX_MESSAGE_BYTES {
            return Err(unprocessable(format!(
                "message of {} bytes exceeds the {} byte limit",
                message.wire_size(),
                MAX_MESSAGE_BYTES
            )));
        }
        let event = self.decode(message, message_id).map_err(unprocessable)?;
        if !self.handler.accepts().contains(&event.ty()) {
            return Err(unprocessable(format!(
                "event type {:?} is not consumed by the {} stage",
                event.ty(),
                self.stage()
            )));
        }
        Ok(event)
    }

    fn decode(&self, message: &Message, message_id: &str) -> Result<Event, String> {
        if let Some(event) = binding::decode_storage_notification(message, message_id) {
            return event.map_err(|e| e.to_string());
        }
        match binding::decode(message) {
            Ok(event) => Ok(event),
            Err(BindingError::NotACloudEvent) if self.handler.accepts().contains(&types::STITCH_REQUESTED) => {
                // A bare JSON request, as a simple Pub/Sub client would publish it.
                binding::wrap_bare_request(message, message_id).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Admission, part two: may the job's work run now? `None` lets the handler run.
    async fn admit_job(&self, envelope: &JobEnvelope, claim: bool) -> Option<Outcome> {
        if let Some(deadline) = envelope.deadline.filter(|d| Utc::now() > *d) {
            return Some(self.past_deadline(envelope, &format!("the job passed its deadline ({deadline})")));
        }
        let job_id = envelope.job.job_id.as_str();
        if claim {
            return None;
        }
        if !job_id.is_empty() && self.cancel_requested(job_id).await {
            return Some(Outcome::Cancel);
        }
        if self.handler.on_completed_job() == LateDelivery::Skip
            && !envelope.force_restart
            && self.completed(job_id).await
        {
            return Some(Outcome::Skip("the job already completed".into()));
        }
        None
    }

    /// Before the handler runs: count the run (a run killed without an outcome is seen
    /// by the next delivery, [`crate::unfinished`]) and retake the project of a replayed
    /// job. `Err` gives up on a job whose runs keep dying.
    async fn begin_run(&self, inbound: &Inbound<'_>) -> Result<(), Failure> {
        let job = &inbound.envelope.job;
        // Nothing is recorded under an id that is only a claim (a request's).
        if !job.job_id.is_empty() && !self.claims(inbound.event.as_ref()) {
            // With a larger tier to go to, one run that died is enough: on Cloud Run a
            // program dies without a word (SIGKILL) when it runs out of memory.
            let allowed = if self.options.larger_tier.is_some() { 0 } else { self.options.max_retry_attempts };
            match crate::unfinished::begin(self.work.as_ref(), &job.job_id, &self.run_name(inbound.event.as_ref()))
                .await
            {
                Ok(died) if died > allowed => {
                    return Err(Failure::new(
                        ErrorType::ResourceExhausted,
                        format!(
                            "the {} stage's program died {died} times while working on this job without finishing \
                             (killed: out of memory, or a crash); {} allowed",
                            self.stage(),
                            allowed
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "could not record the run; a kill of this run will not be counted"),
            }
        }
        if let Some(deadline) = inbound.envelope.deadline.filter(|_| {
            self.options.project_lock && inbound.message.attributes.contains_key(reel_events::replay::REPLAYED_AT)
        }) {
            // The lock outlives the deadline by what validate gives it.
            let expires = deadline + chrono::Duration::minutes(5);
            match crate::lock::acquire(self.work.as_ref(), &job.project_id, &job.job_id, expires, false).await {
                Ok(crate::lock::Acquire::Acquired) => info!("replayed job took its project's lock again"),
                Ok(crate::lock::Acquire::Held(other)) => {
                    warn!(other_job = %other.job_id, "replayed job runs while another job holds its project")
                }
                Err(e) => warn!(error = %e, "could not retake the project lock for the replay"),
            }
        }
        Ok(())
    }

    /// Whether the job id of `event` is only a claim ([`Handler::job_id_is_a_claim`]).
    fn claims(&self, event: Option<&Event>) -> bool {
        event.is_some_and(|e| self.handler.job_id_is_a_claim(e.ty()))
    }

    /// The name runs of this delivery's work are counted under: the stage, or the stage
    /// and the part of the job ([`Handler::part_of`]) when parts of one job run at once.
    fn run_name(&self, event: Option<&Event>) -> String {
        match event.and_then(|e| self.handler.part_of(e)) {
            Some(part) => format!("{}-{part}", self.stage()),
            None => self.stage().to_string(),
        }
    }

    /// Put one delivery's cost in its job's ledger ([`crate::cost`]). The job is the
    /// envelope's, or, while its id is only a claim, the one the handler decided on.
    async fn record_cost(&self, event: &Event, envelope: &JobEnvelope, outcome: &Outcome, entry: LedgerEntry) {
        let job_id = if self.handler.job_id_is_a_claim(event.ty()) {
            match outcome {
                Outcome::Emit(events) => events.first().and_then(|e| e.subject().map(String::from)),
                Outcome::Retry(f) | Outcome::Reject(f) => f.job.as_ref().map(|j| j.job_id.clone()),
                _ => None,
            }
        } else {
            Some(envelope.job.job_id.clone())
        };
        let Some(job_id) = job_id.filter(|j| !j.is_empty()) else { return };
        let entry = LedgerEntry {
            run: self.run_name(None),
            queued_at: event.time().copied(),
            ended_at: Some(Utc::now()),
            ..entry
        };
        if let Err(e) = crate::cost::record(self.work.as_ref(), &job_id, &entry).await {
            warn!(error = %e, "could not record the delivery's cost; the job's total leaves it out");
        }
    }

    /// The handler produced an outcome: the run did not die (see [`Worker::begin_run`]).
    async fn end_run(&self, job_id: &str, event: Option<&Event>) {
        if job_id.is_empty() || self.claims(event) {
            return;
        }
        if let Err(e) = crate::unfinished::finish(self.work.as_ref(), job_id, &self.run_name(event)).await {
            warn!(error = %e, "could not clear the run record");
        }
    }

    /// Run the handler in a scratch directory with its helpers (lease, progress,
    /// watcher), and say what came of it: the handler's outcome, unless work was stopped
    /// from outside and produced nothing.
    async fn run_handler(
        &self,
        event: &Event,
        envelope: &JobEnvelope,
        delivery_attempt: u32,
        stop: CancellationToken,
    ) -> Outcome {
        let fault = self.options.fault_file.as_ref().map(|f| {
            let named = f.to_string_lossy().replace("{stage}", self.stage().as_str());
            PathBuf::from(named.replace("{jobId}", &envelope.job.job_id))
        });
        // A fault file that says `stall` hangs the work instead (until it is removed, or
        // the work is stopped): a stage stuck on a dependency.
        let stall = fault.as_ref().filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.trim() == "stall")).cloned();
        if let Some(fault) = fault.filter(|f| f.exists() && stall.is_none()) {
            return Outcome::Retry(Failure::new(
                ErrorType::Internal,
                format!("injected fault: {} exists (REEL_FAULT_FILE)", fault.display()),
            ));
        }
        let scratch = scratch_dir(&self.options.temp_dir, self.stage());
        if let Err(e) = tokio::fs::create_dir_all(&scratch).await {
            return Outcome::Retry(Failure::new(
                ErrorType::ResourceExhausted,
                format!("cannot create scratch dir {}: {e}", scratch.display()),
            ));
        }
        let progress = ProgressReporter::default();
        let meter = Arc::new(StorageMeter::default());
        let ctx = Context {
            stage: self.stage(),
            boundary: self.boundary.clone(),
            work: Arc::new(MeteredStore::new(self.work.clone(), meter.clone())),
            resolver: Arc::new(MeteredResolver::new(self.resolver.clone(), meter.clone())),
            cancel: CancellationToken::new(),
            delivery_attempt,
            job: envelope.job.clone(),
            scratch: scratch.clone(),
            progress,
        };
        let mut watched = envelope.clone();
        if self.handler.job_id_is_a_claim(event.ty()) {
            // Nothing is said or watched under an id the handler has not accepted yet.
            watched.job = JobRef::default();
        }
        // What the event says of the job's size: for the estimate, and for the ledger.
        let shape = crate::eta::Shape::of_data(&envelope::data_json(event).unwrap_or_default());
        let watch = Watch {
            envelope: watched,
            trace: envelope::extension_str(event, envelope::TRACEPARENT).map(String::from),
            rates: self.rates().await,
            shape: shape.clone(),
            stage_started: event.time().copied().unwrap_or_else(Utc::now),
        };
        let (watcher, stopped) = self.spawn_watcher(watch, &ctx, stop);
        let started = Instant::now();
        let cpu_before = crate::cost::cpu_seconds_now();
        let peak_memory = spawn_memory_sampler();
        // A panicking handler fails its job and frees the message, instead of leaving it
        // leased until Pub/Sub gives up on it with no word to anyone.
        let work = async {
            if let Some(stall) = &stall {
                while stall.exists() && !ctx.cancel.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if ctx.cancel.is_cancelled() {
                    return Outcome::Retry(Failure::new(ErrorType::Internal, "injected stall (REEL_FAULT_FILE)"));
                }
            }
            self.handler.handle(&ctx, event).await
        };
        let outcome = match AssertUnwindSafe(work).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Outcome::Reject(Failure::new(ErrorType::Internal, format!("the {} stage failed: {what}", self.stage())))
            }
        };
        watcher.cancel();
        ctx.cancel.cancel();
        // Nothing in a delivery's scratch is removed before it ends: its size now is the
        // delivery's peak.
        let scratch_bytes = tokio::task::spawn_blocking({
            let scratch = scratch.clone();
            move || dir_size(&scratch)
        })
        .await
        .unwrap_or_default();
        remove_dir_quietly(&scratch).await;
        let elapsed = started.elapsed();
        let used = meter.totals();
        let cost = self.options.cost.price(elapsed, crate::cost::cpu_seconds_now() - cpu_before, used);
        let peak_memory_mb = peak_memory.stop() as f64 / 1e6;
        let entry = LedgerEntry { cost: cost.clone(), peak_memory_mb, shape, ..LedgerEntry::default() };
        self.record_cost(event, envelope, &outcome, entry).await;
        let (emitted, bytes): (Vec<String>, u64) = match &outcome {
            Outcome::Emit(events) => (
                events.iter().map(|e| e.ty().to_string()).collect(),
                events
                    .iter()
                    .filter_map(|e| envelope::data_json(e).ok())
                    .map(|d| crate::metrics::video_bytes(&d))
                    .sum(),
            ),
            _ => (Vec::new(), 0),
        };
        self.metrics.observe(elapsed.as_secs_f64(), bytes);
        // "stage done" when the work was done (the per-stage metric reads it).
        let message = match outcome {
            Outcome::Emit(_) => crate::telemetry::STAGE_DONE,
            _ => "delivery ended without output",
        };
        info!(
            elapsed_ms = elapsed.as_millis() as u64,
            emitted = ?emitted,
            outcome = outcome_name(&outcome),
            storage_ops = used.operations,
            bytes_read = used.bytes_read,
            bytes_written = used.bytes_written,
            scratch_bytes,
            cpu_seconds = cost.cpu_seconds,
            estimated_usd = cost.estimated_usd,
            "{message}"
        );
        let stopped = *stopped.lock().expect("stop lock");
        match (outcome, stopped) {
            // Finished work stands, whatever stopped it afterwards.
            (done @ (Outcome::Emit(_) | Outcome::Skip(_)), _) | (done, None) => done,
            (_, Some(StopReason::Shutdown)) => Outcome::Requeue("stopped by shutdown".into()),
            (_, Some(StopReason::Cancelled)) => Outcome::Cancel,
            (_, Some(StopReason::Deadline)) => {
                self.past_deadline(envelope, "the job ran past its deadline; work was stopped")
            }
        }
    }

    /// A job past its deadline: resumed from its checkpoint with a new deadline while it
    /// has resumes left (the matrix's "job timeout → save progress, schedule retry"),
    /// failed with `timeout` after that.
    fn past_deadline(&self, envelope: &JobEnvelope, what: &str) -> Outcome {
        let (done, allowed, minutes) =
            (envelope.timeout_resumes, self.options.timeout_resumes, self.options.job_timeout_minutes);
        if done < allowed {
            return Outcome::Resume(format!(
                "{what}; resumed from where it stopped with a new deadline ({} of {allowed} resumes; \
                 JOB_TIMEOUT_MINUTES is {minutes})",
                done + 1
            ));
        }
        let resumed = if done > 0 { format!(" after {done} resume(s)") } else { String::new() };
        Outcome::Reject(Failure::new(ErrorType::Timeout, format!("{what}{resumed}; JOB_TIMEOUT_MINUTES is {minutes}")))
    }

    /// Send the job's message back to this stage as a new attempt with a fresh deadline
    /// and the warning `why`, to the event log too (so its status shows it), keeping its
    /// workspace: what was done is not done again.
    async fn resume(&self, inbound: &Inbound<'_>, why: &str) -> Disposition {
        let job = &inbound.envelope.job;
        if self.completed(&job.job_id).await {
            info!(job_id = %job.job_id, "the job completed meanwhile; nothing to resume");
            return Disposition::Ack;
        }
        let timeout = chrono::Duration::minutes(self.options.job_timeout_minutes as i64);
        let renewed = reel_events::replay::resume_message(inbound.message, Utc::now(), timeout, why);
        let names = self.names();
        let topic = match self.queue(inbound) {
            Some(queue) => names.return_topic(queue, inbound.message),
            None => names.work_topic(self.stage()),
        };
        if let Err(e) = self.bus.publish(&topic, renewed.clone()).await {
            warn!(error = %e, "could not resume the job; will retry");
            return Disposition::Nack;
        }
        if let Ok(event) = binding::decode(&renewed) {
            if let Err(e) = self.bus.publish(&names.events(), binding::encode_binary(&event)).await {
                warn!(error = %e, "could not log the resumed attempt; its status shows it once work goes on");
            }
        }
        warn!(job_id = %job.job_id, reason = %why, "job resumed after its deadline");
        self.metrics.count(MessageOutcome::Retried);
        Disposition::Ack
    }

    /// Send the job's message to the larger tier (`WorkerOptions::larger_tier`) as a new
    /// attempt with a fresh deadline and a warning saying why, to the event log too; the
    /// workspace is kept (what was done is not done again).
    async fn escalate(&self, inbound: &Inbound<'_>, failure: &Failure) -> Disposition {
        let job = &inbound.envelope.job;
        let Some(topic) = &self.options.larger_tier else { return Disposition::Nack };
        if self.completed(&job.job_id).await {
            info!(job_id = %job.job_id, "the job completed meanwhile; nothing to move");
            return Disposition::Ack;
        }
        let why = format!(
            "the {} stage ran out of resources on the standard tier ({}); retried on the larger tier",
            self.stage(),
            failure.message
        );
        let timeout = chrono::Duration::minutes(self.options.job_timeout_minutes as i64);
        let moved = reel_events::replay::escalate_message(inbound.message, Utc::now(), timeout, &why);
        if let Err(e) = self.bus.publish(topic, moved.clone()).await {
            warn!(error = %e, "could not send the job to the larger tier; will retry");
            return Disposition::Nack;
        }
        if let Ok(event) = binding::decode(&moved) {
            if let Err(e) = self.bus.publish(&self.names().events(), binding::encode_binary(&event)).await {
                warn!(error = %e, "could not log the move to the larger tier");
            }
        }
        warn!(job_id = %job.job_id, reason = %why, larger_tier = %topic, "job sent to the larger tier");
        self.metrics.count(MessageOutcome::Retried);
        Disposition::Ack
    }

    /// The one place that turns an outcome into bus actions (see [`Outcome`]).
    async fn settle(&self, inbound: &Inbound<'_>, outcome: Outcome) -> Disposition {
        match outcome {
            Outcome::Emit(events) => {
                for next in &events {
                    if let Err(e) = self.publish_event(next).await {
                        warn!(error = %e, "could not publish the next event; will retry");
                        self.metrics.count(MessageOutcome::Retried);
                        return Disposition::Nack;
                    }
                }
                for completed in events.iter().filter(|e| e.ty() == types::JOB_COMPLETED) {
                    let data = envelope::data_json(completed).unwrap_or_default();
                    let usage = crate::cost::job_usage(self.work.as_ref(), &inbound.envelope.job.job_id).await.ok();
                    let reel_bytes = data.get("sizeBytes").and_then(|v| v.as_u64());
                    self.log_job_ended(inbound, "completed", "none", usage.as_ref(), reel_bytes);
                    if let Some(usage) = usage {
                        self.learn(inbound, &usage).await;
                    }
                }
                self.metrics.count(MessageOutcome::Emitted);
                Disposition::Ack
            }
            Outcome::Skip(why) => {
                self.metrics.count(MessageOutcome::Skipped);
                info!(reason = %why, "skipped");
                Disposition::Ack
            }
            Outcome::Requeue(why) => {
                info!(reason = %why, "handing the message back; it will be redelivered");
                self.metrics.count(MessageOutcome::Retried);
                Disposition::Nack
            }
            Outcome::Retry(failure)
                if failure.error_type == ErrorType::ResourceExhausted && self.options.larger_tier.is_some() =>
            {
                self.escalate(inbound, &failure).await
            }
            Outcome::Retry(failure)
                if inbound.delivery_attempt <= self.options.max_retry_attempts && !inbound.killed_too_often =>
            {
                warn!(error_type = %failure.error_type, error = %failure.message, delivery_attempt = inbound.delivery_attempt, "transient failure; will retry");
                self.metrics.count(MessageOutcome::Retried);
                Disposition::Nack
            }
            Outcome::Retry(failure) => {
                error!(error_type = %failure.error_type, error = %failure.message, delivery_attempt = inbound.delivery_attempt, "retries exhausted; failing the job and dead-lettering the message");
                // The workspace stays for a replay (until the work bucket's lifecycle rule,
                // as long as dead letters are kept); the project lock is released.
                let end = JobEnd::Failed { failure: failure.clone(), retryable: true, keep_workspace: true };
                match self.end_job(inbound, end).await {
                    Disposition::Ack => self.dead_letter(inbound, &failure).await,
                    nack => nack,
                }
            }
            Outcome::Reject(failure) => {
                let retryable = failure.error_type.passes_later();
                self.end_job(inbound, JobEnd::Failed { failure, retryable, keep_workspace: false }).await
            }
            Outcome::Cancel => self.end_job(inbound, JobEnd::Cancelled).await,
            Outcome::Resume(why) => self.resume(inbound, &why).await,
            Outcome::Unprocessable(failure) => {
                warn!(reason = %failure.message, "unprocessable message");
                self.dead_letter(inbound, &failure).await
            }
        }
    }

    /// End the job: unless it completed meanwhile, release its lock and clean its
    /// workspace (kept when the message is dead-lettered, for a replay), then publish
    /// `job.failed` or `job.cancelled` (clean first, so whoever sees the event finds no
    /// work files left).
    async fn end_job(&self, inbound: &Inbound<'_>, end: JobEnd) -> Disposition {
        let job = match &end {
            JobEnd::Failed { failure, .. } => failure.job.as_ref().unwrap_or(&inbound.envelope.job),
            JobEnd::Cancelled => &inbound.envelope.job,
        };
        if !inbound.envelope.force_restart && self.completed(&job.job_id).await {
            // A duplicate delivery raced the job's completion, which took the workspace
            // with it: whatever went wrong here is an artefact of that race.
            info!(job_id = %job.job_id, "the job completed meanwhile; not reporting it failed or cancelled");
            self.metrics.count(MessageOutcome::Skipped);
            return Disposition::Ack;
        }
        let stage = self.stage();
        let retry_attempt = inbound.envelope.retry_attempt;
        let usage = match crate::cost::job_usage(self.work.as_ref(), &job.job_id).await {
            Ok(usage) => Some(usage),
            Err(e) => {
                warn!(error = %e, "could not add up the job's cost");
                None
            }
        };
        let cost = usage.as_ref().map(|u| u.cost.clone());
        let (ty, id_stage, data) = match &end {
            JobEnd::Failed { failure, retryable, .. } => {
                warn!(error_type = %failure.error_type, error = %failure.message, job_id = %job.job_id, "job failed");
                let data = JobFailed {
                    job_id: job.job_id.clone(),
                    project_id: job.project_id.clone(),
                    user_id: job.user_id.clone(),
                    stage,
                    error_type: failure.error_type,
                    message: failure.message.clone(),
                    retryable: *retryable,
                    attempts: inbound.delivery_attempt,
                    retry_attempt: Some(retry_attempt),
                    cost: cost.clone(),
                };
                (types::JOB_FAILED, stage.as_str(), serde_json::to_value(data))
            }
            JobEnd::Cancelled => {
                info!(job_id = %job.job_id, "job cancelled");
                let data = JobCancelled {
                    job_id: job.job_id.clone(),
                    project_id: job.project_id.clone(),
                    user_id: job.user_id.clone(),
                    stage,
                    retry_attempt: Some(retry_attempt),
                    cost: cost.clone(),
                };
                (types::JOB_CANCELLED, "", serde_json::to_value(data))
            }
        };
        let id = envelope::deterministic_id(&job.job_id, retry_attempt, ty, id_stage);
        let built = data.map_err(|e| e.to_string()).and_then(|data| {
            envelope::build(ty, &envelope::source_for(stage.as_str()), id, &job.job_id, Utc::now(), &data)
                .map_err(|e| e.to_string())
        });
        let mut event = match built {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, event_type = ty, "cannot build the event that ends the job");
                return Disposition::Ack;
            }
        };
        if let Some(cause) = &inbound.event {
            envelope::carry_trace(cause, &mut event);
            if matches!(end, JobEnd::Cancelled) {
                if let Err(e) = self.handler.withdraw(self.resolver.as_ref(), cause).await {
                    warn!(error = %e, "could not take back the cancelled job's output; will retry");
                    return Disposition::Nack;
                }
            }
        }
        let keep_workspace = matches!(end, JobEnd::Failed { keep_workspace: true, .. });
        self.clean_workspace(job, keep_workspace).await;
        if let Err(e) = self.publish_event(&event).await {
            warn!(error = %e, event_type = ty, "could not publish the end of the job; will retry");
            return Disposition::Nack;
        }
        match &end {
            JobEnd::Failed { failure, .. } => {
                self.log_job_ended(inbound, "failed", failure.error_type.as_str(), usage.as_ref(), None);
                self.metrics.count(MessageOutcome::Failed)
            }
            JobEnd::Cancelled => {
                self.log_job_ended(inbound, "cancelled", "cancelled", usage.as_ref(), None);
                self.metrics.count(MessageOutcome::Cancelled)
            }
        };
        // The job has ended and said so: its cancel marker has done its work (removed only
        // now, so a redelivery after a failed publish still sees it).
        if let Err(e) = self.work.delete(&cancel_marker_key(&job.job_id)).await {
            warn!(error = %e, "could not remove the cancel marker");
        }
        Disposition::Ack
    }

    /// Release the job's project lock and, unless a replay will need it, remove its
    /// workspace.
    async fn clean_workspace(&self, job: &JobRef, keep_workspace: bool) {
        let job_id = job.job_id.as_str();
        if job_id.is_empty() {
            return;
        }
        crate::tenancy::release(self.work.as_ref(), job).await;
        if !keep_workspace {
            if let Err(e) = crate::store::delete_prefix(self.work.as_ref(), &work_prefix(job_id)).await {
                warn!(error = %e, "could not clean the job's workspace");
            }
        }
    }

    async fn dead_letter(&self, inbound: &Inbound<'_>, failure: &Failure) -> Disposition {
        let letter = DeadLetter {
            stage: self.stage(),
            subscription: inbound.subscription.to_string(),
            error_type: failure.error_type,
            reason: failure.message.clone(),
            attempts: inbound.delivery_attempt,
        };
        let queue = self.queue(inbound).unwrap_or(Queue::Stage(letter.stage));
        let topic = self.names().dead_letter_topic(queue);
        match dead_letter(self.bus.as_ref(), &topic, inbound.message, &letter).await {
            Ok(()) => {
                self.metrics.count(MessageOutcome::DeadLettered);
                warn!(dead_letter_topic = %topic, reason = %letter.reason, "message dead-lettered");
                Disposition::Ack
            }
            Err(e) => {
                error!(error = %e, "could not dead-letter; the message will be redelivered");
                Disposition::Nack
            }
        }
    }

    /// The [`crate::telemetry::JOB_ENDED`] line of a job that ended with this message:
    /// what the log-based job metrics read.
    fn log_job_ended(
        &self,
        inbound: &Inbound<'_>,
        status: &str,
        error_type: &str,
        usage: Option<&crate::cost::JobUsage>,
        reel_bytes: Option<u64>,
    ) {
        let envelope = &inbound.envelope;
        let duration_seconds =
            envelope.accepted_at.map_or(0.0, |t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        let video_count = inbound
            .event
            .as_ref()
            .and_then(|e| envelope::data_json(e).ok())
            .and_then(|d| d.get("job").and_then(|j| j.get("clipPaths")).and_then(|c| c.as_array()).map(Vec::len))
            .unwrap_or(0);
        let processing_rate_mbps = match reel_bytes {
            Some(bytes) if duration_seconds > 0.0 => bytes as f64 / 1e6 / duration_seconds,
            _ => 0.0,
        };
        info!(
            job_type = self.stage().job_type().as_str(),
            status,
            retry_attempt = envelope.retry_attempt,
            error_type,
            duration_seconds,
            memory_usage_mb = usage.map_or(0.0, |u| u.peak_memory_mb),
            video_count,
            processing_rate_mbps,
            estimated_usd = usage.map_or(0.0, |u| u.cost.estimated_usd),
            "job ended"
        );
    }

    /// The queue a message is work of: by its event type, or (an event that did not
    /// decode) by the subscription it came from. Its dead letters go to that queue's
    /// topic, and a resumed attempt goes back to it.
    fn queue(&self, inbound: &Inbound<'_>) -> Option<Queue> {
        let names = self.names();
        inbound.event.as_ref().and_then(|e| Queue::of_event_type(e.ty())).or_else(|| {
            let sub = inbound.subscription.rsplit('/').next().unwrap_or(inbound.subscription);
            (sub == names.encode_subscription()).then_some(Queue::Encode)
        })
    }

    /// Whether the job completed; an unreadable record counts as not completed (the
    /// work is idempotent, so doing it again is safe).
    async fn completed(&self, job_id: &str) -> bool {
        job_completed(self.work.as_ref(), job_id).await.unwrap_or(false)
    }

    async fn cancel_requested(&self, job_id: &str) -> bool {
        matches!(self.work.head(&cancel_marker_key(job_id)).await, Ok(Some(_)))
    }

    /// Publish an event to the log and, for internal work events, to the consuming
    /// stage's work topic.
    pub async fn publish_event(&self, event: &Event) -> Result<(), BusError> {
        publish_event(self.bus.as_ref(), &self.names(), event).await
    }

    /// While the handler works: stop it on shutdown, deadline or cancel marker (and say
    /// which), and publish `job.progress` at least every heartbeat. Returns the token
    /// that ends the watcher and the slot holding the stop reason.
    fn spawn_watcher(
        &self,
        watch: Watch,
        ctx: &Context,
        stop: CancellationToken,
    ) -> (CancellationToken, Arc<Mutex<Option<StopReason>>>) {
        let done = CancellationToken::new();
        let reason: Arc<Mutex<Option<StopReason>>> = Arc::default();
        let (bus, work, names, stage) = (self.bus.clone(), self.work.clone(), self.names(), self.stage());
        let (heartbeat, poll, d, slot) =
            (self.options.heartbeat, self.options.cancel_poll, done.clone(), reason.clone());
        let (cancel, progress) = (ctx.cancel.clone(), ctx.progress.clone());
        tokio::spawn(async move {
            let job = &watch.envelope.job;
            let marker = cancel_marker_key(&job.job_id);
            let set = |why: StopReason| {
                slot.lock().expect("stop lock").get_or_insert(why);
                cancel.cancel();
            };
            let mut last_published: Option<(u64, Instant)> = None;
            let mut last_poll = Instant::now();
            // The first progress event (with its estimate) goes out as the work starts.
            let mut pause = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = d.cancelled() => return,
                    _ = stop.cancelled() => { set(StopReason::Shutdown); return; }
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = Duration::from_millis(250);
                if watch.envelope.deadline.is_some_and(|dl| Utc::now() > dl) {
                    set(StopReason::Deadline);
                    return;
                }
                if job.job_id.is_empty() {
                    continue;
                }
                if last_poll.elapsed() >= poll {
                    last_poll = Instant::now();
                    if matches!(work.head(&marker).await, Ok(Some(_))) {
                        set(StopReason::Cancelled);
                        return;
                    }
                }
                let snapshot = progress.snapshot();
                let due = match last_published {
                    None => true,
                    Some((version, at)) => {
                        (snapshot.version != version && at.elapsed() >= Duration::from_millis(900))
                            || at.elapsed() >= heartbeat
                    }
                };
                if due {
                    if let Some(event) = watch.progress_event(stage, &snapshot) {
                        if let Err(e) = bus.publish(&names.events(), binding::encode_binary(&event)).await {
                            warn!(error = %e, "could not publish progress");
                        }
                    }
                    last_published = Some((snapshot.version, Instant::now()));
                }
            }
        });
        (done, reason)
    }
}

/// How a job ends when it does not complete.
enum JobEnd {
    /// `keep_workspace`: the message is dead-lettered, and a replay resumes from the
    /// workspace.
    Failed {
        failure: Failure,
        retryable: bool,
        keep_workspace: bool,
    },
    Cancelled,
}

/// What the progress watcher needs of the message.
struct Watch {
    envelope: JobEnvelope,
    trace: Option<String>,
    /// The completion rates, the job's size as this stage's event gives it, and when
    /// the stage began (its event's time), for the estimate.
    rates: Arc<crate::eta::Rates>,
    shape: crate::eta::Shape,
    stage_started: DateTime<Utc>,
}

impl Watch {
    fn progress_event(&self, stage: Stage, snapshot: &crate::stage::ProgressState) -> Option<Event> {
        let job = &self.envelope.job;
        let overall = stage.overall_progress(snapshot.stage_progress);
        let data = JobProgress {
            job_id: job.job_id.clone(),
            project_id: job.project_id.clone(),
            stage,
            progress: (overall * 10.0).round() / 10.0,
            stage_progress: (snapshot.stage_progress * 10.0).round() / 10.0,
            estimated_completion: Some(self.rates.completion(
                &self.shape,
                stage,
                snapshot.stage_progress,
                self.stage_started,
                Utc::now(),
            )),
            retry_attempt: Some(self.envelope.retry_attempt),
        };
        let id = format!("job.progress-{}", uuid::Uuid::new_v4().simple());
        let mut event = envelope::build(
            types::JOB_PROGRESS,
            &envelope::source_for(stage.as_str()),
            id,
            &job.job_id,
            Utc::now(),
            &data,
        )
        .ok()?;
        if let Some(tp) = &self.trace {
            event.set_extension(envelope::TRACEPARENT, tp.clone());
        }
        Some(event)
    }
}

/// Attribute names the worker adds to a dead-lettered message.
pub mod dead_letter_attrs {
    /// The stage that gave up.
    pub const STAGE: &str = "reel-dl-stage";
    /// The contract errorType.
    pub const ERROR_TYPE: &str = "reel-dl-error-type";
    /// Delivery attempts made.
    pub const ATTEMPTS: &str = "reel-dl-attempts";
    /// The reason (first 1000 characters).
    pub const REASON: &str = "reel-dl-reason";
    /// When (RFC 3339).
    pub const AT: &str = "reel-dl-time";
    /// The subscription it came from.
    pub const SUBSCRIPTION: &str = "reel-dl-subscription";
}

/// Why a message is dead-lettered: the attributes it gets.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The stage that gave up.
    pub stage: Stage,
    /// The subscription the message came from.
    pub subscription: String,
    /// The contract errorType.
    pub error_type: ErrorType,
    /// Why, for a person.
    pub reason: String,
    /// Delivery attempts made.
    pub attempts: u32,
}

/// Move `message` to `topic` with the failure attributes (the caller acks afterwards).
pub async fn dead_letter(bus: &dyn Bus, topic: &str, message: &Message, letter: &DeadLetter) -> Result<(), BusError> {
    let mut copy = message.clone();
    let mut attributes: BTreeMap<String, String> = copy.attributes.clone();
    attributes.insert(dead_letter_attrs::STAGE.into(), letter.stage.as_str().into());
    attributes.insert(dead_letter_attrs::ERROR_TYPE.into(), letter.error_type.as_str().into());
    attributes.insert(dead_letter_attrs::ATTEMPTS.into(), letter.attempts.to_string());
    attributes.insert(dead_letter_attrs::REASON.into(), letter.reason.chars().take(1000).collect());
    attributes.insert(dead_letter_attrs::AT.into(), Utc::now().to_rfc3339());
    attributes.insert(dead_letter_attrs::SUBSCRIPTION.into(), letter.subscription.clone());
    copy.attributes = attributes;
    // An oversized message cannot be republished whole: keep its head for the operator.
    if copy.wire_size() > MAX_MESSAGE_BYTES {
        copy.data.truncate(64 * 1024);
        copy.attributes.insert("reel-dl-truncated".into(), "true".into());
    }
    bus.publish(topic, copy).await.map(|_| ())
}

/// Publish an event to the log and, for internal work events, to its work topic.
pub async fn publish_event(bus: &dyn Bus, names: &Names, event: &Event) -> Result<(), BusError> {
    let message = binding::encode_binary(event);
    bus.publish(&names.events(), message.clone()).await?;
    if let Some(topic) = names.work_topic_for(event.ty()) {
        bus.publish(&topic, message).await?;
    }
    Ok(())
}

/// The most memory the program and its children hold from now until `stop`, sampled
/// every 250 ms.
struct MemorySampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    done: CancellationToken,
}

impl MemorySampler {
    /// Stop sampling; the peak, bytes.
    fn stop(self) -> u64 {
        self.done.cancel();
        let now = crate::cost::rss_bytes_now();
        self.peak.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

fn spawn_memory_sampler() -> MemorySampler {
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(crate::cost::rss_bytes_now()));
    let done = CancellationToken::new();
    let (p, d) = (peak.clone(), done.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = d.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let now = tokio::task::spawn_blocking(crate::cost::rss_bytes_now).await.unwrap_or(0);
            p.fetch_max(now, Ordering::Relaxed);
        }
    });
    MemorySampler { peak, done }
}

/// The bytes of the files under `dir` (0 where it cannot be read).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// An outcome's name, for logs.
fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Emit(_) => "emit",
        Outcome::Skip(_) => "skip",
        Outcome::Retry(_) => "retry",
        Outcome::Reject(_) => "reject",
        Outcome::Cancel => "cancel",
        Outcome::Resume(_) => "resume",
        Outcome::Requeue(_) => "requeue",
        Outcome::Unprocessable(_) => "unprocessable",
    }
}

/// ETA from the job's progress rate: elapsed × 100 / progress.
/// A delivery's scratch directory: `TEMP_DIR/{stage}-{pid}-{uuid}`. The pid lets a
/// worker that starts later remove what a killed process left (see
/// [`sweep_orphaned_scratch`]).
fn scratch_dir(temp_dir: &Path, stage: Stage) -> PathBuf {
    temp_dir.join(format!("{}-{}-{}", stage, std::process::id(), uuid::Uuid::new_v4().simple()))
}

/// Remove the scratch directories in `temp_dir` whose process is gone (SIGKILL, OOM
/// kill): nothing else would ever remove them. Several programs may share `TEMP_DIR`,
/// so a directory of a live process (or one not named by [`scratch_dir`]) is left
/// alone. Returns how many were removed.
pub fn sweep_orphaned_scratch(temp_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(temp_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let mut parts = name.splitn(3, '-');
        let (Some(stage), Some(pid), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if stage.parse::<Stage>().is_err() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if pid == std::process::id() || process_alive(pid) || !entry.path().is_dir() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                removed += 1;
                info!(path = %entry.path().display(), pid, "removed scratch left by a process that is gone");
            }
            Err(e) => {
                warn!(path = %entry.path().display(), error = %e, "could not remove orphaned scratch")
            }
        }
    }
    removed
}

/// Whether a process with this pid is running (on Linux, from `/proc/{pid}/stat`: a
/// zombie, killed but not yet reaped by its parent, counts as gone; elsewhere assume it
/// runs, so nothing of a live process is ever removed).
fn process_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        // "pid (comm) state …"; comm may contain spaces and parentheses.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn remove_dir_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "could not remove scratch dir");
        }
    }
}
