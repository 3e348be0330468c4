//! The state follower: reads the event log subscription and folds it into the
//! [`JobBook`], with a snapshot and a journal in the work store so a restart (or a
//! crash) loses nothing.
//!
//! One batch: receive (gathering messages for up to `batch_window`) → decode → write
//! the batch's events to one **journal** object → fold → ack. The journal is what makes
//! acking safe: once a message is acked, Pub/Sub will not deliver it again, so its
//! event must be durable before that. If the journal cannot be written, the batch is
//! still folded (the status stays fresh) but not acked, so Pub/Sub redelivers it.
//!
//! **Snapshot**: every `snapshot_interval` (and on shutdown) the follower folds any
//! journal object it has not folded yet (another instance's, during a rollout); writes
//! the record of every finished job whose record is missing or out of date (with the
//! book's [`crate::book::Archive`]: once per job, in practice); takes out of memory the
//! jobs finished longer than `retain_finished` ago; writes `snapshot_key`: the
//! unfinished jobs in full and the finished ones in memory by reference (layout in
//! [`crate::snapshot`]); and deletes the journal objects that snapshot covers once they
//! are older than `journal_retention`. Keeping them that long lets an overlapping
//! instance (old and new revision during a deploy) fold them too before its own
//! snapshot replaces this one, so whichever writes last has every event. A journal
//! object is covered once its events are in the snapshot or in job records.
//!
//! **Restore**: load the snapshot (none yet: start empty) and the records of the
//! finished jobs it names that are within the retention, fold every journal object,
//! mark the book ready, and continue from the subscription. Before events are folded,
//! the records of the jobs they name that are not in memory are loaded, so a late event
//! of an old job joins its whole state. Events that are both in the snapshot and
//! redelivered are folded twice, which changes nothing.
//!
//! Messages that are not CloudEvents, or name no job, are acked and counted: a poison
//! message on the log never blocks the follower.

use chrono::{DateTime, Utc};
use reel_events::fold::JobState;
use reel_events::{binding, envelope, AttributesReader, Event};
use reel_runtime::bus::{Bus, BusError, Delivery};
use reel_runtime::store::{PutMode, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::book::{ended_at, read_all, submitted_at, Archive, JobBook};
use crate::config::ApiConfig;
use crate::snapshot::{self, FinishedRef, SnapshotError};

/// Job records written or loaded at once.
const ARCHIVE_CONCURRENCY: usize = 16;

/// How the follower runs.
#[derive(Debug, Clone)]
pub struct FollowerOptions {
    /// The event-log subscription (`reel-api` by default).
    pub subscription: String,
    /// Key of the snapshot in the work store.
    pub snapshot_key: String,
    /// Prefix of journal objects; `None` turns the journal off.
    pub journal_prefix: Option<String>,
    /// Time between snapshots.
    pub snapshot_interval: Duration,
    /// Journal objects covered by a snapshot are deleted once this old.
    pub journal_retention: Duration,
    /// An unchanged snapshot is rewritten after this long anyway, so a bucket lifecycle
    /// rule on object age (35 days on `control/`) never deletes it while the API idles.
    pub snapshot_refresh: Duration,
    /// How long a batch gathers messages after its first one.
    pub batch_window: Duration,
    /// Most messages in a batch.
    pub batch_max: usize,
    /// How long one receive waits for a first message.
    pub receive_wait: Duration,
    /// Finished jobs leave memory once they ended this long ago (and were requested
    /// more than an hour ago, so the hourly quota still counts them); their records
    /// answer for them from then on. Only with an archive (see [`JobBook::with_archive`]).
    pub retain_finished: Duration,
    /// How often the sweeper runs: jobs of the book that outlived their deadline plus the
    /// grace without an end event get their `job.failed` (`timeout`) published
    /// ([`reel_runtime::sweep`]), so subscribers learn it too. `None`: no sweeper.
    pub sweep: Option<Sweep>,
}

/// The sweeper's settings.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Time between sweeps.
    pub every: Duration,
    /// When a job is overdue.
    pub policy: reel_events::fold::Overdue,
    /// Where the `job.failed` events go (the event log).
    pub names: reel_runtime::topology::Names,
}

impl FollowerOptions {
    /// Options from the API's configuration, reading `subscription`.
    pub fn new(config: &ApiConfig, subscription: impl Into<String>) -> FollowerOptions {
        FollowerOptions {
            subscription: subscription.into(),
            snapshot_key: config.snapshot_key.clone(),
            journal_prefix: config.journal_prefix.clone(),
            snapshot_interval: config.snapshot_interval,
            journal_retention: config.journal_retention,
            snapshot_refresh: Duration::from_secs(24 * 3600),
            batch_window: config.batch_window,
            batch_max: config.batch_max.max(1),
            receive_wait: Duration::from_secs(1),
            retain_finished: config.retain_finished,
            sweep: None,
        }
    }
}

/// Why the follower stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowerError {
    /// The snapshot exists but cannot be read; an operator must look at it (starting
    /// empty would silently drop every job older than the log's retention).
    #[error("snapshot {key} is unreadable: {source}")]
    Snapshot {
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// The store refused us for good (permission, invalid key).
    #[error("work store: {0}")]
    Store(#[from] StoreError),
    /// The subscription does not exist (run `reel setup`) or the bus refused us.
    #[error("event log subscription: {0}")]
    Bus(#[from] BusError),
}

/// What a restore found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Jobs loaded from the snapshot.
    pub snapshot_jobs: usize,
    /// Finished jobs loaded from their records (those the snapshot names that ended
    /// within the retention).
    pub records: usize,
    /// Journal objects folded.
    pub journals: usize,
    /// Events folded from them.
    pub journal_events: usize,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Messages received.
    pub received: usize,
    /// Events folded.
    pub folded: usize,
    /// Messages skipped (not CloudEvents, or naming no job).
    pub skipped: usize,
    /// Whether the batch was acked (false when its journal could not be written).
    pub acked: bool,
}

/// Follows the event log into a [`JobBook`].
pub struct Follower {
    book: Arc<JobBook>,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    options: FollowerOptions,
    /// Names this process's journal objects apart from another run's.
    instance: String,
    journal_seq: AtomicU64,
    /// Journal objects whose events are in the book, with when they were written.
    journals: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// The book generation of the last snapshot written.
    snapshot_generation: AtomicU64,
    /// When the last snapshot was written by this process.
    snapshot_written: Mutex<Option<Instant>>,
    /// Finished jobs in memory whose record is in the store, with a hash of that
    /// record's content: a job whose record would differ is written again.
    recorded: Mutex<HashMap<String, u64>>,
    /// One puller at a time: the run loop's batches and the requests' catch-ups.
    pulling: tokio::sync::Mutex<()>,
    /// When a receive last found the subscription empty: the book had every event
    /// published before then.
    drained_at: Mutex<Option<Instant>>,
}

/// The hash of a record's content.
fn digest(body: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}

impl Follower {
    /// A follower filling `book`.
    pub fn new(book: Arc<JobBook>, bus: Arc<dyn Bus>, store: Arc<dyn Store>, options: FollowerOptions) -> Follower {
        let instance =
            format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Follower {
            book,
            bus,
            store,
            options,
            instance,
            journal_seq: AtomicU64::new(0),
            journals: Mutex::new(BTreeMap::new()),
            snapshot_generation: AtomicU64::new(u64::MAX),
            snapshot_written: Mutex::new(None),
            recorded: Mutex::new(HashMap::new()),
            pulling: tokio::sync::Mutex::new(()),
            drained_at: Mutex::new(None),
        }
    }

    /// The book.
    pub fn book(&self) -> &Arc<JobBook> {
        &self.book
    }

    /// Load the snapshot, the records of the recently finished jobs it names, and the
    /// journal, then mark the book ready.
    pub async fn restore(&self) -> Result<Restored, FollowerError> {
        let mut restored = Restored::default();
        match read_all(self.store.as_ref(), &self.options.snapshot_key).await {
            Ok(Some(bytes)) => {
                let decoded = snapshot::decode(&bytes)
                    .map_err(|source| FollowerError::Snapshot { key: self.options.snapshot_key.clone(), source })?;
                restored.snapshot_jobs = self.book.insert_states(decoded.states);
                if let Some(archive) = self.book.archive() {
                    // What the eviction would still keep: ended within the retention
                    // or the quota's hour (a job ends after it is requested).
                    let keep = self.options.retain_finished.max(Duration::from_secs(3600));
                    let since = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
                    let recent: Vec<String> = decoded
                        .finished
                        .into_iter()
                        .filter(|f| f.ended_at.is_some_and(|t| t > since))
                        .map(|f| f.job_id)
                        .collect();
                    restored.records = self.load_records(archive, recent).await?;
                }
                let taken_at = decoded.taken_at;
                self.book.stats.last_snapshot_unix.store(taken_at.timestamp(), Ordering::Relaxed);
                info!(key = %self.options.snapshot_key, jobs = restored.snapshot_jobs, records = restored.records, taken_at = %taken_at, "snapshot loaded");
            }
            Ok(None) => info!(key = %self.options.snapshot_key, "no snapshot yet; starting empty"),
            Err(e) => return Err(e.into()),
        }
        let (journals, journal_events) = self.fold_new_journals().await?;
        restored.journals = journals;
        restored.journal_events = journal_events;
        if journals > 0 {
            info!(journals, events = journal_events, "journal replayed");
        }
        self.book.set_ready();
        Ok(restored)
    }

    /// Receive one batch, journal it, fold it, ack it. `Ok` with `received == 0` when
    /// nothing arrived within `receive_wait`.
    pub async fn pull_once(&self) -> Result<Batch, BusError> {
        let _turn = self.pulling.lock().await;
        self.pull_batch(self.options.receive_wait).await
    }

    /// Fold everything waiting on the subscription now, unless the book was up to date
    /// less than `fresh` ago: what a request does before it answers from the book. On
    /// Cloud Run without an always-on instance the run loop only gets CPU while a request
    /// is served, so after a cold start or an idle spell the waiting events are folded
    /// here, and the answer is as current as the log. Returns the events folded.
    pub async fn catch_up(&self, fresh: Duration) -> Result<usize, BusError> {
        let recent = |at: &Mutex<Option<Instant>>| {
            at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t.elapsed() < fresh)
        };
        if recent(&self.drained_at) {
            return Ok(0);
        }
        let _turn = self.pulling.lock().await;
        let (mut folded, started) = (0, Instant::now());
        // The run loop may have drained it while this request waited for its turn; and
        // a log that never pauses does not hold a request for more than a few seconds.
        while !recent(&self.drained_at) && started.elapsed() < Duration::from_secs(5) {
            let batch = self.pull_batch(Duration::from_millis(200)).await?;
            folded += batch.folded;
        }
        Ok(folded)
    }

    /// [`Follower::pull_once`] with a first receive of `wait`; the caller holds `pulling`.
    async fn pull_batch(&self, wait: Duration) -> Result<Batch, BusError> {
        let sub = &self.options.subscription;
        let asked = Instant::now();
        let mut deliveries = self.bus.receive(sub, self.options.batch_max, wait).await?;
        if deliveries.is_empty() {
            *self.drained_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(asked);
            return Ok(Batch::default());
        }
        let started = Instant::now();
        while deliveries.len() < self.options.batch_max {
            let Some(left) = self.options.batch_window.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                break;
            };
            match self.bus.receive(sub, self.options.batch_max - deliveries.len(), left).await {
                Ok(more) if more.is_empty() => break,
                Ok(more) => deliveries.extend(more),
                Err(e) => {
                    warn!(subscription = %sub, error = %e, "receive failed while gathering a batch; processing what arrived");
                    break;
                }
            }
        }
        Ok(self.process(deliveries).await)
    }

    async fn process(&self, deliveries: Vec<Delivery>) -> Batch {
        let mut batch = Batch { received: deliveries.len(), ..Batch::default() };
        let mut events = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            match binding::decode(&delivery.message) {
                Ok(event) if envelope::job_id_of(&event).is_some() => events.push(event),
                Ok(event) => {
                    batch.skipped += 1;
                    self.book.stats.without_job.fetch_add(1, Ordering::Relaxed);
                    debug!(message_id = %delivery.message_id, ce_type = %event.ty(), "event names no job; skipped");
                }
                Err(e) => {
                    batch.skipped += 1;
                    self.book.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    warn!(message_id = %delivery.message_id, error = %e, "message on the event log is not a CloudEvent; skipped");
                }
            }
        }
        let journal = match (&self.options.journal_prefix, events.is_empty()) {
            (Some(prefix), false) => Some(self.write_journal(prefix, &events).await),
            _ => None,
        };
        if let Err(e) = self.fold_events(&events).await {
            // An old job's record could not be read: folding its event into nothing
            // would replace its state. Redelivery (or the journal object, at the next
            // snapshot) brings the batch again.
            warn!(error = %e, events = events.len(), "could not load job records; the batch will be redelivered");
            self.nack_all(&deliveries).await;
            return batch;
        }
        batch.folded = events.len();
        self.book.stats.events_folded.fetch_add(events.len() as u64, Ordering::Relaxed);
        match journal {
            Some(Err(e)) => {
                // Folded (the status stays fresh) but not durable: let Pub/Sub redeliver.
                self.book.stats.journal_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, events = events.len(), "could not write the journal; the batch will be redelivered");
                self.nack_all(&deliveries).await;
                return batch;
            }
            Some(Ok(key)) => {
                self.journals(|j| j.insert(key, Utc::now()));
            }
            None => {}
        }
        for delivery in &deliveries {
            if let Err(e) = self.bus.ack(&self.options.subscription, &delivery.ack_id).await {
                // Redelivered later and folded again: harmless.
                debug!(error = %e, message_id = %delivery.message_id, "ack failed; the message will come again");
            }
        }
        batch.acked = true;
        batch
    }

    async fn nack_all(&self, deliveries: &[Delivery]) {
        for delivery in deliveries {
            if let Err(e) = self.bus.nack(&self.options.subscription, &delivery.ack_id).await {
                debug!(error = %e, "nack failed; the lease will expire instead");
            }
        }
    }

    /// Note that `job`'s record in the store holds its current state.
    fn remember(&self, job: &JobState) {
        let hash = digest(&snapshot::encode_job(job));
        self.recorded(|r| r.insert(job.job_id.clone(), hash));
    }

    fn recorded<R>(&self, f: impl FnOnce(&mut HashMap<String, u64>) -> R) -> R {
        f(&mut self.recorded.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Load the records of `job_ids` into the book (a few at a time); returns how many
    /// were found.
    async fn load_records(&self, archive: &Archive, job_ids: Vec<String>) -> Result<usize, StoreError> {
        let mut found = 0;
        for chunk in job_ids.chunks(ARCHIVE_CONCURRENCY) {
            let loaded = futures::future::join_all(chunk.iter().map(|id| archive.load(id))).await;
            for job in loaded.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
                self.remember(&job);
                found += self.book.insert_states([job]);
            }
        }
        Ok(found)
    }

    /// Fold events into the book, first loading the records of the jobs they name that
    /// are not in memory (finished jobs taken out of it).
    async fn fold_events(&self, events: &[Event]) -> Result<(), StoreError> {
        if let Some(archive) = self.book.archive() {
            let missing: BTreeSet<String> = self.book.read(|jobs| {
                events.iter().filter_map(envelope::job_id_of).filter(|id| !jobs.contains_key(id)).collect()
            });
            self.load_records(archive, missing.into_iter().collect()).await?;
        }
        for event in events {
            self.book.apply(event);
        }
        Ok(())
    }

    async fn write_journal(&self, prefix: &str, events: &[Event]) -> Result<String, StoreError> {
        let seq = self.journal_seq.fetch_add(1, Ordering::Relaxed);
        let key = format!("{prefix}{}-{seq:08}.json", self.instance);
        let body = serde_json::to_vec(events).expect("CloudEvents serialize");
        self.store.put(&key, Box::pin(std::io::Cursor::new(body)), PutMode::CreateOnly).await?;
        Ok(key)
    }

    fn journals<R>(&self, f: impl FnOnce(&mut BTreeMap<String, DateTime<Utc>>) -> R) -> R {
        f(&mut self.journals.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Fold every journal object not folded yet (after a restart: all of them; later:
    /// another instance's). Returns (objects, events) folded.
    async fn fold_new_journals(&self) -> Result<(usize, usize), StoreError> {
        let Some(prefix) = &self.options.journal_prefix else {
            return Ok((0, 0));
        };
        let (mut objects, mut events_folded) = (0, 0);
        for object in self.store.list(prefix).await? {
            if self.journals(|j| j.contains_key(&object.key)) {
                continue;
            }
            let Some(bytes) = read_all(self.store.as_ref(), &object.key).await? else {
                continue;
            };
            match serde_json::from_slice::<Vec<Event>>(&bytes) {
                Ok(events) => {
                    // Not folded, not marked: the next call tries again.
                    if let Err(e) = self.fold_events(&events).await {
                        warn!(key = %object.key, error = %e, "could not load job records for a journal object; later");
                        continue;
                    }
                    objects += 1;
                    events_folded += events.len();
                    self.journals(|j| j.insert(object.key.clone(), object.updated));
                }
                // Puts are atomic, so this is not a torn write but a foreign object:
                // leave it for an operator rather than delete what we cannot read.
                Err(e) => {
                    error!(key = %object.key, error = %e, "journal object is unreadable; skipped")
                }
            }
        }
        Ok((objects, events_folded))
    }

    /// Fold journal objects written by others, write the snapshot if anything changed
    /// since the last one (or it is older than `snapshot_refresh`), then delete the
    /// journal objects it covers that are older than the retention. Returns whether a
    /// snapshot was written.
    pub async fn snapshot(&self) -> Result<bool, StoreError> {
        match self.fold_new_journals().await {
            Ok((0, _)) => {}
            Ok((objects, events)) => debug!(objects, events, "folded journal objects of another instance"),
            Err(e) => {
                warn!(error = %e, "could not list the journal; snapshotting what this instance has")
            }
        }
        // Take the journal list before reading the book: every listed journal's events
        // were folded before its key was listed, so the snapshot below contains them.
        let covered: BTreeMap<String, DateTime<Utc>> = self.journals(|j| j.clone());
        let generation = self.book.generation();
        let (records, evicted) = match self.book.archive() {
            Some(archive) => (self.write_records(archive).await, self.evict()),
            None => (0, 0),
        };
        let last_write = *self.snapshot_written.lock().unwrap_or_else(|p| p.into_inner());
        let due = last_write.is_none_or(|t| t.elapsed() >= self.options.snapshot_refresh);
        let written =
            due || records > 0 || evicted > 0 || generation != self.snapshot_generation.load(Ordering::Relaxed);
        if written {
            let taken_at = Utc::now();
            // Finished jobs whose record holds their state go by reference; the others
            // (unfinished, or a record write that failed) in full.
            let recorded: BTreeSet<String> = self.recorded(|r| r.keys().cloned().collect());
            let body = self.book.read(|jobs| {
                let (by_ref, full): (Vec<&JobState>, Vec<&JobState>) =
                    jobs.values().partition(|j| j.status().is_terminal() && recorded.contains(&j.job_id));
                let finished = by_ref
                    .into_iter()
                    .map(|j| FinishedRef { job_id: j.job_id.clone(), ended_at: ended_at(j) })
                    .collect();
                snapshot::encode(full, finished, taken_at)
            });
            let size = body.len();
            let put = self
                .store
                .put(&self.options.snapshot_key, Box::pin(std::io::Cursor::new(body)), PutMode::Overwrite)
                .await;
            if let Err(e) = put {
                self.book.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            self.snapshot_generation.store(generation, Ordering::Relaxed);
            *self.snapshot_written.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.book.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
            self.book.stats.last_snapshot_unix.store(taken_at.timestamp(), Ordering::Relaxed);
            debug!(bytes = size, jobs = self.book.len(), "snapshot written");
        }
        // With the generation unchanged nothing was folded since the last snapshot
        // written, so that one covers every journal listed above too.
        let retention = chrono::Duration::from_std(self.options.journal_retention).unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        for (key, written_at) in covered {
            if now - written_at < retention {
                continue;
            }
            match self.store.delete(&key).await {
                Ok(_) => {
                    self.journals(|j| j.remove(&key));
                }
                // Kept in the list: a later snapshot deletes it. Replaying it is harmless.
                Err(e) => warn!(key = %key, error = %e, "could not delete a journal object"),
            }
        }
        Ok(written)
    }

    /// Write the record of every finished job in memory whose record is missing or
    /// differs, then trim the index of the projects touched. A failed write leaves the
    /// job unrecorded: the snapshot then carries it in full, and the next one tries
    /// again. Returns the records written.
    async fn write_records(&self, archive: &Archive) -> usize {
        let recorded = self.recorded(|r| r.clone());
        let pending: Vec<(JobState, Vec<u8>, u64)> = self.book.read(|jobs| {
            jobs.values()
                .filter(|j| j.status().is_terminal())
                .filter_map(|j| {
                    let body = snapshot::encode_job(j);
                    let hash = digest(&body);
                    (recorded.get(&j.job_id) != Some(&hash)).then(|| (j.clone(), body, hash))
                })
                .collect()
        });
        let mut written = 0;
        let mut projects = BTreeSet::new();
        for chunk in pending.chunks(ARCHIVE_CONCURRENCY) {
            let saves = chunk.iter().map(|(job, body, _)| archive.save(job, body.clone()));
            for ((job, _, hash), result) in chunk.iter().zip(futures::future::join_all(saves).await) {
                match result {
                    Ok(()) => {
                        self.recorded(|r| r.insert(job.job_id.clone(), *hash));
                        projects.insert(job.project_id.clone());
                        written += 1;
                    }
                    Err(e) => {
                        self.recorded(|r| r.remove(&job.job_id));
                        warn!(job_id = %job.job_id, error = %e, "could not write the job record; the snapshot keeps the job");
                    }
                }
            }
        }
        for project in projects.iter().filter(|p| !p.is_empty()) {
            if let Err(e) = archive.trim_project(project).await {
                warn!(project_id = %project, error = %e, "could not trim the project index");
            }
        }
        if written > 0 {
            debug!(records = written, "job records written");
        }
        written
    }

    /// Take out of memory the finished jobs with an up-to-date record that ended more
    /// than `retain_finished` ago and were requested more than an hour ago. Returns how
    /// many.
    fn evict(&self) -> usize {
        let now = Utc::now();
        let retain = chrono::Duration::from_std(self.options.retain_finished).unwrap_or(chrono::Duration::MAX);
        let recorded = self.recorded(|r| r.clone());
        let evicted = self.book.evict(|job| {
            job.status().is_terminal()
                && recorded.contains_key(&job.job_id)
                && ended_at(job).is_none_or(|t| now - t >= retain)
                && submitted_at(job).is_none_or(|t| now - t >= chrono::Duration::hours(1))
        });
        self.recorded(|r| {
            for id in &evicted {
                r.remove(id);
            }
        });
        if !evicted.is_empty() {
            debug!(jobs = evicted.len(), "finished jobs left memory");
        }
        evicted.len()
    }

    /// Restore (retrying transient store errors), then follow the log until `shutdown`,
    /// snapshotting periodically; on shutdown write a last snapshot.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), FollowerError> {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.restore().await {
                Ok(_) => break,
                Err(FollowerError::Store(e)) if e.is_transient() => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not load the snapshot; retrying");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        info!(subscription = %self.options.subscription, jobs = self.book.len(), "following the event log");
        let mut last_snapshot = Instant::now();
        let mut last_sweep = Instant::now();
        while !shutdown.is_cancelled() {
            match self.pull_once().await {
                Ok(_) => {}
                Err(BusError::Closed) => break,
                Err(e @ (BusError::NotFound(_) | BusError::PermissionDenied(_))) => {
                    self.final_snapshot().await;
                    return Err(e.into());
                }
                Err(e) => {
                    warn!(subscription = %self.options.subscription, error = %e, "receive failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            if self.options.sweep.as_ref().is_some_and(|sweep| last_sweep.elapsed() >= sweep.every) {
                last_sweep = Instant::now();
                self.sweep().await;
            }
            if last_snapshot.elapsed() >= self.options.snapshot_interval {
                last_snapshot = Instant::now();
                if let Err(e) = self.snapshot().await {
                    warn!(key = %self.options.snapshot_key, error = %e, "could not write the snapshot; will try again");
                }
            }
        }
        self.final_snapshot().await;
        Ok(())
    }

    /// Publish the `job.failed` of every job in the book that is overdue now; returns
    /// their ids. Several instances sweeping at once publish identical events, which the
    /// fold takes once.
    pub async fn sweep(&self) -> Vec<String> {
        let Some(sweep) = &self.options.sweep else { return Vec::new() };
        let now = Utc::now();
        let overdue: BTreeMap<String, JobState> = self.book.read(|jobs| {
            jobs.iter()
                .filter(|(_, job)| job.overdue_after(&sweep.policy).is_some_and(|after| now > after))
                .map(|(id, job)| (id.clone(), job.clone()))
                .collect()
        });
        if overdue.is_empty() {
            return Vec::new();
        }
        match reel_runtime::sweep::publish_overdue(self.bus.as_ref(), &sweep.names, &overdue, now, &sweep.policy).await
        {
            Ok(ids) => {
                warn!(jobs = ?ids, "jobs outlived their deadline without an end; published their job.failed (timeout)");
                ids
            }
            Err(e) => {
                warn!(error = %e, "could not publish the failures of overdue jobs; the next sweep tries again");
                Vec::new()
            }
        }
    }

    async fn final_snapshot(&self) {
        for attempt in 1..=3 {
            match self.snapshot().await {
                Ok(_) => {
                    info!(key = %self.options.snapshot_key, jobs = self.book.len(), "final snapshot written");
                    return;
                }
                Err(e) if attempt < 3 => {
                    warn!(error = %e, attempt, "final snapshot failed; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => error!(
                    key = %self.options.snapshot_key,
                    error = %e,
                    "final snapshot failed; the journal still holds what was acked since the last one"
                ),
            }
        }
    }
}
