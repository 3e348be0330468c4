//! The folded state of every job, in memory: `jobId → JobState`.
//!
//! Filled by the [`crate::follower`] from the event log (and, for immediacy, by the
//! API itself with the events it publishes). [`JobState::apply`] is a join: folding
//! an event twice, or in any order, gives the same state, so the book never has to
//! care where an event came from or whether it has seen it already.

use chrono::{DateTime, Duration, Utc};
use reel_events::fold::{JobState, JobStatus};
use reel_events::{envelope, Event};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;

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

/// Every job's folded state.
#[derive(Debug, Default)]
pub struct JobBook {
    jobs: RwLock<BTreeMap<String, JobState>>,
    ready: AtomicBool,
    generation: AtomicU64,
    /// Counters.
    pub stats: BookStats,
}

impl JobBook {
    /// An empty book, not ready.
    pub fn new() -> JobBook {
        JobBook::default()
    }

    /// Fold one event into its job; returns the job id, or `None` when the event names
    /// no job.
    pub fn apply(&self, event: &Event) -> Option<String> {
        let job_id = envelope::job_id_of(event)?;
        let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
        jobs.entry(job_id.clone()).or_insert_with(|| JobState::new(&job_id)).apply(event);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Some(job_id)
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
        self.read(|jobs| jobs.get(job_id).map(JobState::to_status))
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
