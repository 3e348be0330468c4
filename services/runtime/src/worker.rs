//! The worker loop: the one place that turns a handler's [`Outcome`] into bus actions.
//!
//! Per message: size check → decode (binary or structured CloudEvent, or a storage
//! notification) → type check → deadline and cancel check → handler, with its lease
//! extended, progress published and cancellation watched → outcome → publish, then
//! ack/nack/dead-letter. Nothing is acked before what follows it is safely published.
//! A message that can never be processed is dead-lettered at once with its reason; a
//! worker never panics on input and never stalls other jobs.

use chrono::{DateTime, Utc};
use reel_events::binding::{self, BindingError};
use reel_events::payload::{JobCancelled, JobFailed, JobProgress, JobRef};
use reel_events::{envelope, types, AttributesReader, ErrorType, Event, Stage};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::bus::{Bus, BusError, Delivery, Message};
use crate::config::Settings;
use crate::location::StoreResolver;
use crate::stage::{
    cancel_marker_key, completed_marker_key, work_prefix, Context, Failure, Handler, Outcome, ProgressReporter,
};
use crate::store::Store;
use crate::topology::{Names, Topology};

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
}

impl WorkerOptions {
    /// Defaults for `stage` under `names`.
    pub fn for_stage(stage: Stage, names: &Names) -> WorkerOptions {
        let mut subscriptions = vec![names.subscription(stage)];
        if stage == Stage::Validate {
            subscriptions.push(names.gcs_subscription());
        }
        WorkerOptions {
            subscriptions,
            concurrency: 1,
            exit_when_idle: None,
            shutdown_grace: Duration::from_secs(20),
            heartbeat: Duration::from_secs(4),
            cancel_poll: Duration::from_secs(1),
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

/// Counters a worker keeps (exported as metrics by the programs).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Messages received.
    pub received: AtomicU64,
    /// Outcomes Emit.
    pub emitted: AtomicU64,
    /// Outcomes Skip.
    pub skipped: AtomicU64,
    /// Nacks.
    pub retried: AtomicU64,
    /// Jobs failed.
    pub failed: AtomicU64,
    /// Messages dead-lettered by the worker.
    pub dead_lettered: AtomicU64,
    /// Jobs cancelled.
    pub cancelled: AtomicU64,
}

/// A stage's worker.
pub struct Worker {
    bus: Arc<dyn Bus>,
    handler: Arc<dyn Handler>,
    settings: Arc<Settings>,
    work: Arc<dyn Store>,
    resolver: Arc<dyn StoreResolver>,
    topology: Topology,
    options: WorkerOptions,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// Durations and throughput, for `/metrics`.
    pub metrics: Arc<crate::metrics::StageMetrics>,
}

impl Worker {
    /// A worker for `handler`.
    pub fn new(
        bus: Arc<dyn Bus>,
        handler: Arc<dyn Handler>,
        settings: Arc<Settings>,
        work: Arc<dyn Store>,
        resolver: Arc<dyn StoreResolver>,
        options: WorkerOptions,
    ) -> Worker {
        let topology = settings.topology();
        Worker {
            bus,
            handler,
            settings,
            work,
            resolver,
            topology,
            options,
            stats: Arc::default(),
            metrics: Arc::default(),
        }
    }

    fn names(&self) -> Names {
        self.topology.names()
    }

    /// The Prometheus text of this worker's metrics.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(self.handler.stage().as_str(), &self.stats, &self.metrics)
    }

    /// Pull and process until `shutdown` fires (then finish or nack in-flight work within
    /// the grace period) or, with `exit_when_idle`, until the subscriptions stay empty.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), BusError> {
        let stage = self.handler.stage();
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let work_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_message = Instant::now();
        let subs = self.options.subscriptions.clone();
        let mut next_sub = 0usize;
        info!(stage = %stage, subscriptions = ?subs, "worker started");
        let temp_dir = self.settings.temp_dir.clone();
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
            let Some(delivery) = deliveries.into_iter().next() else { continue };
            last_message = Instant::now();
            let worker = self.clone();
            let stop = work_stop.clone();
            tasks.spawn(async move {
                let _permit = permit;
                worker.process_and_settle(&sub, delivery, stop).await;
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

    async fn process_and_settle(&self, subscription: &str, delivery: Delivery, stop: CancellationToken) {
        let ack_id = delivery.ack_id.clone();
        let lease = self.spawn_lease_extender(subscription, &ack_id);
        let disposition =
            self.process(subscription, &delivery.message, &delivery.message_id, delivery.delivery_attempt, stop).await;
        lease.cancel();
        let result = match disposition {
            Disposition::Ack => self.bus.ack(subscription, &ack_id).await,
            Disposition::Nack => self.bus.nack(subscription, &ack_id).await,
        };
        if let Err(e) = result {
            // The message will be redelivered; every stage is idempotent.
            warn!(subscription, error = %e, ?disposition, "could not settle message; it will be redelivered");
        }
    }

    fn spawn_lease_extender(&self, subscription: &str, ack_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let deadline =
            self.topology.subscription(subscription).map(|s| s.ack_deadline).unwrap_or(Duration::from_secs(60));
        let every = (deadline / 2).max(Duration::from_secs(1));
        let (bus, sub, id, t) = (self.bus.clone(), subscription.to_string(), ack_id.to_string(), token.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tokio::time::sleep(every) => {
                        if let Err(e) = bus.modify_deadline(&sub, &id, deadline.as_secs() as u32).await {
                            warn!(subscription = %sub, error = %e, "could not extend lease");
                        }
                    }
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
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let stage = self.handler.stage();
        if message.wire_size() > MAX_MESSAGE_BYTES {
            let reason =
                format!("message of {} bytes exceeds the {} byte limit", message.wire_size(), MAX_MESSAGE_BYTES);
            return self.dead_letter(subscription, message, ErrorType::InvalidRequest, &reason, delivery_attempt).await;
        }
        let event = match self.decode(message, message_id) {
            Ok(event) => event,
            Err(reason) => {
                warn!(stage = %stage, message_id, reason = %reason, "undecodable message");
                return self
                    .dead_letter(subscription, message, ErrorType::InvalidRequest, &reason, delivery_attempt)
                    .await;
            }
        };
        if !self.handler.accepts().contains(&event.ty()) {
            let reason = format!("event type {:?} is not consumed by the {stage} stage", event.ty());
            warn!(stage = %stage, ce_type = event.ty(), "misrouted event");
            return self.dead_letter(subscription, message, ErrorType::InvalidRequest, &reason, delivery_attempt).await;
        }
        let data = envelope::data_json(&event).unwrap_or(serde_json::Value::Null);
        // Storage notifications name objects, not jobs: validate derives the job id.
        let job = if event.ty().starts_with("google.cloud.storage.") {
            JobRef::default()
        } else {
            JobRef::from_data(&data, event.subject())
        };
        let span = tracing::info_span!(
            "message",
            stage = %stage,
            job_id = %job.job_id,
            ce_id = %event.id(),
            ce_type = %event.ty(),
            delivery_attempt,
            trace = envelope::extension_str(&event, envelope::TRACEPARENT).unwrap_or(""),
        );
        self.process_event(subscription, message, &event, &data, job, delivery_attempt, stop).instrument(span).await
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

    #[allow(clippy::too_many_arguments)]
    async fn process_event(
        &self,
        subscription: &str,
        message: &Message,
        event: &Event,
        data: &serde_json::Value,
        job: JobRef,
        delivery_attempt: u32,
        stop: CancellationToken,
    ) -> Disposition {
        let stage = self.handler.stage();
        let retry_attempt = retry_attempt_of(data);
        let deadline = deadline_of(data);
        if let Some(deadline) = deadline {
            if Utc::now() > deadline {
                let failure = Failure::new(
                    ErrorType::Timeout,
                    format!(
                        "the job passed its deadline ({deadline}); JOB_TIMEOUT_MINUTES is {}",
                        self.settings.job_timeout_minutes
                    ),
                );
                return self.fail_job(event, &job, retry_attempt, failure, false, delivery_attempt).await;
            }
        }
        if !job.job_id.is_empty() && self.cancel_requested(&job.job_id).await {
            return self.cancel_job(event, &job, retry_attempt).await;
        }
        if self.completed_already(stage, &job, data).await {
            // A late redelivery (a lost ack, a program killed between publish and ack, a
            // request sent twice): the job finished and its workspace is gone. Doing the
            // work again would fail on the missing workspace and tell Phoenix the job
            // failed; there is nothing left to do.
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            info!(reason = "the job already completed", "skipped");
            return Disposition::Ack;
        }

        let scratch = scratch_dir(&self.settings.temp_dir, stage);
        if let Err(e) = tokio::fs::create_dir_all(&scratch).await {
            let failure = Failure::new(
                ErrorType::ResourceExhausted,
                format!("cannot create scratch dir {}: {e}", scratch.display()),
            );
            return self
                .retry_or_give_up(subscription, message, event, &job, retry_attempt, failure, delivery_attempt)
                .await;
        }
        let cancel = CancellationToken::new();
        let stop_reason: Arc<Mutex<Option<StopReason>>> = Arc::default();
        let progress = ProgressReporter::default();
        progress.set_accepted_at(accepted_at_of(data));
        let ctx = Context {
            stage,
            settings: self.settings.clone(),
            work: self.work.clone(),
            resolver: self.resolver.clone(),
            cancel: cancel.clone(),
            delivery_attempt,
            job: job.clone(),
            scratch: scratch.clone(),
            progress: progress.clone(),
        };
        let watcher = self.spawn_watchers(
            &job,
            event,
            retry_attempt,
            deadline,
            stop,
            cancel.clone(),
            stop_reason.clone(),
            progress,
        );
        let started = Instant::now();
        let outcome = self.handler.handle(&ctx, event).await;
        watcher.cancel();
        cancel.cancel();
        remove_dir_quietly(&scratch).await;
        let elapsed = started.elapsed();
        self.metrics.durations.lock().expect("metrics lock").observe(elapsed.as_secs_f64());
        let stopped = *stop_reason.lock().expect("stop lock");

        match (outcome, stopped) {
            (Outcome::Emit(events), _) => {
                for next in &events {
                    if let Err(e) = self.publish_event(next).await {
                        warn!(error = %e, "could not publish the next event; will retry");
                        self.stats.retried.fetch_add(1, Ordering::Relaxed);
                        return Disposition::Nack;
                    }
                }
                self.stats.emitted.fetch_add(1, Ordering::Relaxed);
                let bytes: u64 = events
                    .iter()
                    .filter_map(|e| envelope::data_json(e).ok())
                    .map(|d| crate::metrics::video_bytes(&d))
                    .sum();
                if bytes > 0 {
                    self.metrics.bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.metrics.busy_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                }
                info!(elapsed_ms = elapsed.as_millis() as u64, emitted = ?events.iter().map(|e| e.ty().to_string()).collect::<Vec<_>>(), "stage done");
                Disposition::Ack
            }
            (Outcome::Skip(why), _) => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                info!(reason = %why, "skipped");
                Disposition::Ack
            }
            (_, Some(StopReason::Shutdown)) => {
                info!("stopped by shutdown; the message will be redelivered");
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                Disposition::Nack
            }
            (_, Some(StopReason::Cancelled)) => self.cancel_job(event, &job, retry_attempt).await,
            (_, Some(StopReason::Deadline)) => {
                let failure = Failure::new(
                    ErrorType::Timeout,
                    format!(
                        "the job ran past its deadline (JOB_TIMEOUT_MINUTES={}); work was stopped",
                        self.settings.job_timeout_minutes
                    ),
                );
                self.fail_job(event, &job, retry_attempt, failure, false, delivery_attempt).await
            }
            (Outcome::Retry(failure), None) => {
                self.retry_or_give_up(subscription, message, event, &job, retry_attempt, failure, delivery_attempt)
                    .await
            }
            (Outcome::Reject(failure), None) => {
                if self.completed_already(stage, &job, data).await {
                    // The job completed while this (duplicate) delivery ran, and took
                    // its workspace with it: the failure is an artefact of the race.
                    info!(error = %failure.message, "failed, but the job completed meanwhile; not failing it");
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    return Disposition::Ack;
                }
                self.fail_job(event, &job, retry_attempt, failure, false, delivery_attempt).await
            }
        }
    }

    /// Whether the job this event belongs to already completed, for the stages between
    /// validate and finalize: validate checks the marker itself (and honours
    /// `forceRestart`), finalize re-emits the recorded `job.completed`. A forced
    /// restart runs again whatever the marker says.
    async fn completed_already(&self, stage: Stage, job: &JobRef, data: &serde_json::Value) -> bool {
        if !matches!(stage, Stage::Download | Stage::Stitch | Stage::Upload) || job.job_id.is_empty() {
            return false;
        }
        let forced = data.get("job").and_then(|j| j.get("forceRestart")).and_then(|v| v.as_bool()).unwrap_or(false);
        !forced && matches!(self.work.head(&completed_marker_key(&job.job_id)).await, Ok(Some(_)))
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_watchers(
        &self,
        job: &JobRef,
        cause: &Event,
        retry_attempt: u32,
        deadline: Option<DateTime<Utc>>,
        stop: CancellationToken,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
        progress: ProgressReporter,
    ) -> CancellationToken {
        let done = CancellationToken::new();
        let (bus, work, names, stage) = (self.bus.clone(), self.work.clone(), self.names(), self.handler.stage());
        let (job, heartbeat, poll, d) = (job.clone(), self.options.heartbeat, self.options.cancel_poll, done.clone());
        let trace = envelope::extension_str(cause, envelope::TRACEPARENT).map(String::from);
        let marker = cancel_marker_key(&job.job_id);
        tokio::spawn(async move {
            let set = |why: StopReason| {
                let mut slot = reason.lock().expect("stop lock");
                if slot.is_none() {
                    *slot = Some(why);
                }
                cancel.cancel();
            };
            let mut last_published: Option<(u64, Instant)> = None;
            let mut last_poll = Instant::now();
            loop {
                tokio::select! {
                    _ = d.cancelled() => return,
                    _ = stop.cancelled() => { set(StopReason::Shutdown); return; }
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                if deadline.is_some_and(|dl| Utc::now() > dl) {
                    set(StopReason::Deadline);
                    return;
                }
                if !job.job_id.is_empty() && last_poll.elapsed() >= poll {
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
                if due && !job.job_id.is_empty() {
                    let overall = stage.overall_progress(snapshot.stage_progress);
                    let eta = snapshot.accepted_at.and_then(|accepted| estimate(accepted, overall));
                    let data = JobProgress {
                        job_id: job.job_id.clone(),
                        project_id: job.project_id.clone(),
                        stage,
                        progress: (overall * 10.0).round() / 10.0,
                        stage_progress: (snapshot.stage_progress * 10.0).round() / 10.0,
                        estimated_completion: eta,
                        retry_attempt: Some(retry_attempt),
                    };
                    let id = format!("job.progress-{}", uuid::Uuid::new_v4().simple());
                    if let Ok(mut event) = envelope::build(
                        types::JOB_PROGRESS,
                        &envelope::source_for(stage.as_str()),
                        id,
                        &job.job_id,
                        Utc::now(),
                        &data,
                    ) {
                        if let Some(tp) = &trace {
                            event.set_extension(envelope::TRACEPARENT, tp.clone());
                        }
                        if let Err(e) = bus.publish(&names.events(), binding::encode_binary(&event)).await {
                            warn!(error = %e, "could not publish progress");
                        }
                    }
                    last_published = Some((snapshot.version, Instant::now()));
                }
            }
        });
        done
    }

    async fn cancel_requested(&self, job_id: &str) -> bool {
        matches!(self.work.head(&cancel_marker_key(job_id)).await, Ok(Some(_)))
    }

    /// Publish an event to the log and, for internal work events, to the consuming
    /// stage's work topic.
    pub async fn publish_event(&self, event: &Event) -> Result<(), BusError> {
        publish_event(self.bus.as_ref(), &self.names(), event).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn retry_or_give_up(
        &self,
        subscription: &str,
        message: &Message,
        event: &Event,
        job: &JobRef,
        retry_attempt: u32,
        failure: Failure,
        delivery_attempt: u32,
    ) -> Disposition {
        if delivery_attempt <= self.settings.max_retry_attempts {
            warn!(error_type = %failure.error_type, error = %failure.message, delivery_attempt, "transient failure; will retry");
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            return Disposition::Nack;
        }
        error!(error_type = %failure.error_type, error = %failure.message, delivery_attempt, "retries exhausted; failing the job and dead-lettering the message");
        if let Disposition::Nack =
            self.fail_job(event, job, retry_attempt, failure.clone(), true, delivery_attempt).await
        {
            return Disposition::Nack;
        }
        self.dead_letter(subscription, message, failure.error_type, &failure.message, delivery_attempt).await
    }

    async fn fail_job(
        &self,
        cause: &Event,
        job: &JobRef,
        retry_attempt: u32,
        failure: Failure,
        retryable: bool,
        attempts: u32,
    ) -> Disposition {
        let stage = self.handler.stage();
        let job = failure.job.as_ref().unwrap_or(job);
        warn!(error_type = %failure.error_type, error = %failure.message, job_id = %job.job_id, "job failed");
        let data = JobFailed {
            job_id: job.job_id.clone(),
            project_id: job.project_id.clone(),
            user_id: job.user_id.clone(),
            stage,
            error_type: failure.error_type,
            message: failure.message.clone(),
            retryable,
            attempts,
            retry_attempt: Some(retry_attempt),
        };
        let id = envelope::deterministic_id(&job.job_id, retry_attempt, types::JOB_FAILED, stage.as_str());
        let mut event = match envelope::build(
            types::JOB_FAILED,
            &envelope::source_for(stage.as_str()),
            id,
            &job.job_id,
            Utc::now(),
            &data,
        ) {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, "cannot build job.failed");
                return Disposition::Ack;
            }
        };
        envelope::carry_trace(cause, &mut event);
        // Clean first, so whoever sees job.failed finds no work files left.
        self.clean_workspace(job).await;
        if let Err(e) = self.publish_event(&event).await {
            warn!(error = %e, "could not publish job.failed; will retry");
            return Disposition::Nack;
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        Disposition::Ack
    }

    async fn cancel_job(&self, cause: &Event, job: &JobRef, retry_attempt: u32) -> Disposition {
        let stage = self.handler.stage();
        info!("job cancelled");
        let data = JobCancelled {
            job_id: job.job_id.clone(),
            project_id: job.project_id.clone(),
            user_id: job.user_id.clone(),
            stage,
            retry_attempt: Some(retry_attempt),
        };
        let id = envelope::deterministic_id(&job.job_id, retry_attempt, types::JOB_CANCELLED, "");
        let Ok(mut event) = envelope::build(
            types::JOB_CANCELLED,
            &envelope::source_for(stage.as_str()),
            id,
            &job.job_id,
            Utc::now(),
            &data,
        ) else {
            return Disposition::Ack;
        };
        envelope::carry_trace(cause, &mut event);
        self.clean_workspace(job).await;
        if let Err(e) = self.publish_event(&event).await {
            warn!(error = %e, "could not publish job.cancelled; will retry");
            return Disposition::Nack;
        }
        self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        Disposition::Ack
    }

    async fn clean_workspace(&self, job: &JobRef) {
        let job_id = job.job_id.as_str();
        if job_id.is_empty() {
            return;
        }
        if let Err(e) = crate::lock::release(self.work.as_ref(), &job.project_id, job_id).await {
            warn!(error = %e, "could not release the project lock; it expires on its own");
        }
        if let Err(e) = crate::store::delete_prefix(self.work.as_ref(), &work_prefix(job_id)).await {
            warn!(error = %e, "could not clean the job's workspace");
        }
    }

    async fn dead_letter(
        &self,
        subscription: &str,
        message: &Message,
        error_type: ErrorType,
        reason: &str,
        attempts: u32,
    ) -> Disposition {
        let stage = self.handler.stage();
        let topic = self.names().dead_letter_topic(stage);
        match dead_letter(self.bus.as_ref(), &topic, subscription, stage, message, error_type, reason, attempts).await {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                warn!(dead_letter_topic = %topic, reason, "message dead-lettered");
                Disposition::Ack
            }
            Err(e) => {
                error!(error = %e, "could not dead-letter; the message will be redelivered");
                Disposition::Nack
            }
        }
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

/// Move `message` to `topic` with the failure attributes (the caller acks afterwards).
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter(
    bus: &dyn Bus,
    topic: &str,
    subscription: &str,
    stage: Stage,
    message: &Message,
    error_type: ErrorType,
    reason: &str,
    attempts: u32,
) -> Result<(), BusError> {
    let mut copy = message.clone();
    let mut attributes: BTreeMap<String, String> = copy.attributes.clone();
    attributes.insert(dead_letter_attrs::STAGE.into(), stage.as_str().into());
    attributes.insert(dead_letter_attrs::ERROR_TYPE.into(), error_type.as_str().into());
    attributes.insert(dead_letter_attrs::ATTEMPTS.into(), attempts.to_string());
    attributes.insert(dead_letter_attrs::REASON.into(), reason.chars().take(1000).collect());
    attributes.insert(dead_letter_attrs::AT.into(), Utc::now().to_rfc3339());
    attributes.insert(dead_letter_attrs::SUBSCRIPTION.into(), subscription.into());
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
    if let Some(next) = Stage::consuming(event.ty()) {
        bus.publish(&names.work_topic(next), message).await?;
    }
    Ok(())
}

fn retry_attempt_of(data: &serde_json::Value) -> u32 {
    data.get("job").unwrap_or(data).get("retryAttempt").and_then(|v| v.as_u64()).unwrap_or(0) as u32
}

fn deadline_of(data: &serde_json::Value) -> Option<DateTime<Utc>> {
    let text = data.get("job")?.get("deadline")?.as_str()?;
    DateTime::parse_from_rfc3339(text).ok().map(|d| d.with_timezone(&Utc))
}

fn accepted_at_of(data: &serde_json::Value) -> Option<DateTime<Utc>> {
    let text = data.get("job")?.get("acceptedAt")?.as_str()?;
    DateTime::parse_from_rfc3339(text).ok().map(|d| d.with_timezone(&Utc))
}

/// ETA from the job's progress rate: elapsed × 100 / progress.
fn estimate(accepted: DateTime<Utc>, overall: f64) -> Option<DateTime<Utc>> {
    if overall < 3.0 {
        return None;
    }
    let elapsed = (Utc::now() - accepted).num_milliseconds().max(0) as f64;
    let total = elapsed * 100.0 / overall;
    Some(accepted + chrono::Duration::milliseconds(total as i64))
}

/// A delivery's scratch directory: `TEMP_DIR/{stage}-{pid}-{uuid}`. The pid lets a
/// worker that starts later remove what a killed process left (see
/// [`sweep_orphaned_scratch`]).
fn scratch_dir(temp_dir: &std::path::Path, stage: Stage) -> PathBuf {
    temp_dir.join(format!("{}-{}-{}", stage, std::process::id(), uuid::Uuid::new_v4().simple()))
}

/// Remove the scratch directories in `temp_dir` whose process is gone (SIGKILL, OOM
/// kill): nothing else would ever remove them. Several programs may share `TEMP_DIR`,
/// so a directory of a live process (or one not named by [`scratch_dir`]) is left
/// alone. Returns how many were removed.
pub fn sweep_orphaned_scratch(temp_dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(temp_dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let mut parts = name.splitn(3, '-');
        let (Some(stage), Some(pid), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
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
            Err(e) => warn!(path = %entry.path().display(), error = %e, "could not remove orphaned scratch"),
        }
    }
    removed
}

/// Whether a process with this pid is running (on Linux, from `/proc/{pid}/stat`: a
/// zombie, killed but not yet reaped by its parent, counts as gone; elsewhere assume it
/// runs, so nothing of a live process is ever removed).
fn process_alive(pid: u32) -> bool {
    let proc_root = std::path::Path::new("/proc");
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

async fn remove_dir_quietly(path: &PathBuf) {
    if let Err(e) = tokio::fs::remove_dir_all(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "could not remove scratch dir");
        }
    }
}
