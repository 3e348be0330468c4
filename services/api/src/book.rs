//! The folded state of the jobs, `jobId → JobState`: in memory the jobs that are not
//! finished and those finished within the retention; the rest in the work store's job
//! records ([`Archive`]), read on demand.
//!
//! Filled by the [`crate::follower`] from the event log (and, for immediacy, by the
//! API itself with the events it publishes). [`JobState::apply`] is a join: folding
//! an event twice, or in any order, gives the same state, so the book never has to
//! care where an event came from or whether it has seen it already — which is why it
//! does not keep the event ids the fold records (see [`fold`]).

use chrono::{DateTime, Duration, Utc};
use reel_events::fold::{JobState, JobStatus, Overdue};
use reel_events::{envelope, Event};
use reel_runtime::store::{PutMode, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tracing::warn;

use crate::snapshot;

/// Counters about the follower and snapshots (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct BookStats {
    /// Events folded from the log.
    pub events_folded: AtomicU64,
    /// Messages on the log that are not CloudEvents (acked and skipped).
    pub undecodable: AtomicU64,
    /// Events that name no job (acked and skipped).
    pub without_job: AtomicU64,
    /// Snapshots written.
    pub snapshots_written: AtomicU64,
    /// Snapshot writes that failed.
    pub snapshot_failures: AtomicU64,
    /// Journal writes that failed (the batch was folded but not acked).
    pub journal_failures: AtomicU64,
    /// Unix time of the last snapshot written or loaded (0: none).
    pub last_snapshot_unix: AtomicI64,
}

/// Fold `event` into job `job_id` of `jobs`, and drop the event ids the fold records
/// in [`JobState::seen`]. Nothing in the fold reads them (every field is a join, so a
/// redelivered copy folds to the same state), and a running job reports progress about
/// once a second: kept, they would grow without bound.
pub fn fold(jobs: &mut BTreeMap<String, JobState>, job_id: &str, event: &Event) {
    let job = jobs.entry(job_id.to_string()).or_insert_with(|| JobState::new(job_id));
    job.apply(event);
    job.seen = BTreeSet::new();
}

/// A job's status with when it was requested (the order of a project's list).
type Dated = (Option<DateTime<Utc>>, JobStatus);

/// Every job's folded state: the unfinished and recently finished ones in memory, the
/// others in the [`Archive`].
#[derive(Debug, Default)]
pub struct JobBook {
    jobs: RwLock<BTreeMap<String, JobState>>,
    archive: Option<Archive>,
    /// When a job with no end event is shown failed (`timeout`); `None`: never.
    overdue: Option<Overdue>,
    ready: AtomicBool,
    generation: AtomicU64,
    /// Counters.
    pub stats: BookStats,
}

impl JobBook {
    /// An empty book, not ready, that keeps every job in memory (no archive).
    pub fn new() -> JobBook {
        JobBook::default()
    }

    /// An empty book whose finished jobs go to job records in `store` (the follower
    /// writes them and takes old ones out of memory; lookups read them on a miss).
    pub fn with_archive(store: Arc<dyn Store>) -> JobBook {
        JobBook { archive: Some(Archive::new(store)), ..JobBook::default() }
    }

    /// This book, showing a job that outlived its deadline plus the grace without an end
    /// event as failed with `timeout` (the fold's view at the time of the request).
    pub fn with_overdue(mut self, policy: Overdue) -> JobBook {
        self.overdue = Some(policy);
        self
    }

    /// The policy of [`JobBook::with_overdue`], if any.
    pub fn overdue(&self) -> Option<&Overdue> {
        self.overdue.as_ref()
    }

    /// A job's status as this book answers it: as of now, under the overdue policy.
    pub fn view(&self, job: &JobState) -> JobStatus {
        match &self.overdue {
            Some(policy) => job.to_status_at(Utc::now(), policy),
            None => job.to_status(),
        }
    }

    /// Where finished jobs are kept, if anywhere.
    pub fn archive(&self) -> Option<&Archive> {
        self.archive.as_ref()
    }

    /// Fold one event into its job; returns the job id, or `None` when the event names
    /// no job. A job not in memory starts from nothing here: the follower first loads
    /// the records of the jobs its events name ([`Archive::load`]).
    pub fn apply(&self, event: &Event) -> Option<String> {
        let job_id = envelope::job_id_of(event)?;
        let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
        fold(&mut jobs, &job_id, event);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Some(job_id)
    }

    /// Remove a job the API folded from its own `event` alone, unless more of it has
    /// been folded since (a publish failed; if it went through after all, the log
    /// brings the job back). Returns whether it was removed.
    pub fn forget_if_only(&self, job_id: &str, event: &Event) -> bool {
        let mut alone = BTreeMap::new();
        fold(&mut alone, job_id, event);
        self.write(|jobs| {
            let only = jobs.get(job_id) == alone.get(job_id);
            if only {
                jobs.remove(job_id);
            }
            only
        })
    }

    /// Take out of memory the jobs `evict` selects (their state must be in the archive
    /// already). Returns their ids.
    pub fn evict(&self, mut evict: impl FnMut(&JobState) -> bool) -> Vec<String> {
        let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = jobs.values().filter(|j| evict(j)).map(|j| j.job_id.clone()).collect();
        for id in &ids {
            jobs.remove(id);
        }
        ids
    }

    /// One job's status, from memory or else from its record: `Ok(None)` when there is
    /// no such job.
    pub async fn lookup(&self, job_id: &str) -> Result<Option<JobStatus>, StoreError> {
        if let Some(status) = self.status(job_id) {
            return Ok(Some(status));
        }
        match &self.archive {
            Some(archive) => Ok(archive.load(job_id).await?.map(|j| self.view(&j))),
            None => Ok(None),
        }
    }

    /// `user`'s jobs of `project`, newest first (by [`submitted_at`]), at most `limit`:
    /// those in memory, then the project's index in the archive, newest first, until
    /// `limit` are found. The index keeps the newest [`snapshot::PROJECT_INDEX_MAX`]
    /// finished jobs of a project.
    pub async fn project_jobs(&self, project: &str, user: &str, limit: usize) -> Result<Vec<JobStatus>, StoreError> {
        let (mut found, in_memory): (Vec<Dated>, BTreeSet<String>) = self.read(|jobs| {
            let of_project = jobs.values().filter(|j| j.project_id == project);
            let ids = of_project.clone().map(|j| j.job_id.clone()).collect();
            (of_project.filter(|j| owned_by(j, user)).map(|j| (submitted_at(j), self.view(j))).collect(), ids)
        });
        if let Some(archive) = &self.archive {
            let entries = archive.store.list_keys(&snapshot::project_prefix(project)).await?;
            let mut candidates =
                entries.iter().filter_map(|k| snapshot::job_of_entry(k)).filter(|j| !in_memory.contains(*j));
            let mut stored = 0;
            let mut done = BTreeSet::new();
            while stored < limit {
                let chunk: Vec<&str> = candidates.by_ref().filter(|j| done.insert(j.to_string())).take(16).collect();
                if chunk.is_empty() {
                    break;
                }
                let loaded = futures::future::join_all(chunk.iter().map(|j| archive.load(j))).await;
                for job in loaded.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
                    if owned_by(&job, user) && job.project_id == project {
                        stored += 1;
                        found.push((submitted_at(&job), self.view(&job)));
                    }
                }
            }
        }
        found.sort_by(|(a, sa), (b, sb)| b.cmp(a).then_with(|| sb.job_id.cmp(&sa.job_id)));
        found.truncate(limit);
        Ok(found.into_iter().map(|(_, s)| s).collect())
    }

    /// Put whole states in (a snapshot being loaded). A job already in the book is
    /// kept as it is: states cannot be joined, only events can.
    pub fn insert_states(&self, states: impl IntoIterator<Item = JobState>) -> usize {
        let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
        let mut inserted = 0;
        for state in states {
            if !jobs.contains_key(&state.job_id) {
                jobs.insert(state.job_id.clone(), state);
                inserted += 1;
            }
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        inserted
    }

    /// Read the whole book.
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, JobState>) -> R) -> R {
        f(&self.jobs.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Change the whole book atomically (admission: check, then fold).
    pub fn write<R>(&self, f: impl FnOnce(&mut BTreeMap<String, JobState>) -> R) -> R {
        let result = f(&mut self.jobs.write().unwrap_or_else(|p| p.into_inner()));
        self.generation.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// One job's status.
    pub fn status(&self, job_id: &str) -> Option<JobStatus> {
        self.read(|jobs| jobs.get(job_id).map(|j| self.view(j)))
    }

    /// Every job's status (tests and tools).
    pub fn statuses(&self) -> BTreeMap<String, JobStatus> {
        self.read(|jobs| jobs.iter().map(|(id, s)| (id.clone(), s.to_status())).collect())
    }

    /// How many jobs.
    pub fn len(&self) -> usize {
        self.read(BTreeMap::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bumped on every change; snapshots are skipped while it stays put.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether the snapshot is loaded (the API answers 503 until then).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Mark the snapshot loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// When the job was requested: the earliest `stitch.requested` of any attempt, else the
/// earliest stage report.
pub fn submitted_at(job: &JobState) -> Option<DateTime<Utc>> {
    let requested = job.attempts.values().filter_map(|a| a.requested_at).min();
    requested.or_else(|| job.attempts.values().filter_map(|a| a.started_at).min())
}

/// Whether the job holds its project and counts against its user's active quota: queued
/// or running, and not abandoned. A job whose current attempt was requested longer ago
/// than `stale_after` cannot be running any more (every stage stops at the job's
/// deadline, and validate's project lock expires then too), so it no longer counts,
/// even if its end never reached the log.
pub fn is_active(job: &JobState, now: DateTime<Utc>, stale_after: Duration) -> bool {
    if job.status().is_terminal() {
        return false;
    }
    let Some((_, attempt)) = job.current() else {
        return false;
    };
    match attempt.requested_at.or(attempt.started_at) {
        Some(since) => now - since < stale_after,
        None => true,
    }
}

/// Whether `user` owns the job.
pub fn owned_by(job: &JobState, user: &str) -> bool {
    !user.is_empty() && job.user_id == user
}

/// Whether `user` owns the job of this status.
pub fn status_owned_by(status: &JobStatus, user: &str) -> bool {
    !user.is_empty() && status.user_id == user
}

/// When a finished job ended: its terminal event's time.
pub fn ended_at(job: &JobState) -> Option<DateTime<Utc>> {
    job.status().is_terminal().then(|| job.to_status().completed_at).flatten()
}

/// Finished jobs in the work store: one record per job (`api/jobs/{jobId}.json`)
/// and an index per project (`api/projects/{projectId}/…`); see
/// [`crate::snapshot`] for the layout.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({})", self.store.describe())
    }
}

impl Archive {
    /// Finished jobs in `store`.
    pub fn new(store: Arc<dyn Store>) -> Archive {
        Archive { store }
    }

    /// A job's record, or `None` if it has none. A record that cannot be read counts as
    /// none (logged): one bad object must not fail every lookup of its job.
    pub async fn load(&self, job_id: &str) -> Result<Option<JobState>, StoreError> {
        let key = snapshot::job_key(job_id);
        if reel_runtime::store::check_key(&key).is_err() {
            return Ok(None);
        }
        let Some(bytes) = read_all(self.store.as_ref(), &key).await? else {
            return Ok(None);
        };
        match snapshot::decode_job(&bytes) {
            Ok(job) if job.job_id == job_id => Ok(Some(job)),
            Ok(job) => {
                warn!(key = %key, found = %job.job_id, "job record names another job; ignored");
                Ok(None)
            }
            Err(e) => {
                warn!(key = %key, error = %e, "job record is unreadable; ignored");
                Ok(None)
            }
        }
    }

    /// Write a finished job's record (`body`, from [`snapshot::encode_job`]) and its
    /// project index entry.
    pub async fn save(&self, job: &JobState, body: Vec<u8>) -> Result<(), StoreError> {
        let put = |key: String, body: Vec<u8>| async move {
            self.store.put(&key, Box::pin(std::io::Cursor::new(body)), PutMode::Overwrite).await
        };
        put(snapshot::job_key(&job.job_id), body).await?;
        if !job.project_id.is_empty() {
            put(snapshot::project_entry_key(&job.project_id, submitted_at(job), &job.job_id), Vec::new()).await?;
        }
        Ok(())
    }

    /// Delete a project's oldest index entries beyond [`snapshot::PROJECT_INDEX_MAX`].
    pub async fn trim_project(&self, project_id: &str) -> Result<usize, StoreError> {
        let keys = self.store.list_keys(&snapshot::project_prefix(project_id)).await?;
        let mut deleted = 0;
        for key in keys.iter().skip(snapshot::PROJECT_INDEX_MAX) {
            self.store.delete(key).await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

pub use reel_runtime::store::read_all;
