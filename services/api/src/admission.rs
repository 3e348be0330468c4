//! Whether a new stitch request may start: one active job per project, and per-user
//! quotas, decided from the folded state alone.
//!
//! The API's answer is a fast, friendly first line. The rule that holds under races
//! between API instances, `reel submit` and the storage trigger is validate's atomic
//! project lock; the API keeps its own check atomic within one process by deciding and
//! folding the new request under one write lock of the book.

use chrono::{DateTime, Duration, Utc};
use reel_events::fold::JobState;
use std::collections::BTreeMap;

use crate::book::{is_active, owned_by, submitted_at};
use crate::config::Quotas;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it.
    Accept,
    /// The project has a queued or running job (409).
    AlreadyRunning {
        /// That job.
        job_id: String,
        /// Whether it is the caller's own (only then is its id shown).
        mine: bool,
    },
    /// A quota is used up (429).
    QuotaExceeded {
        /// Which, in words.
        message: String,
        /// Seconds until a retry may pass (`Retry-After`).
        retry_after: u64,
    },
}

/// Decide on a request of `user` for `project` at `now`. Jobs requested longer than
/// `stale_after` ago are not active any more (see [`is_active`]).
pub fn decide(
    jobs: &BTreeMap<String, JobState>,
    project: &str,
    user: &str,
    force_restart: bool,
    quotas: Quotas,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Decision {
    if !force_restart {
        if let Some(job) = jobs.values().find(|j| j.project_id == project && is_active(j, now, stale_after)) {
            return Decision::AlreadyRunning { job_id: job.job_id.clone(), mine: owned_by(job, user) };
        }
    }
    let mine: Vec<&JobState> = jobs.values().filter(|j| owned_by(j, user)).collect();
    if quotas.active_jobs > 0 {
        let active: Vec<&JobState> = mine.iter().copied().filter(|j| is_active(j, now, stale_after)).collect();
        if active.len() >= quotas.active_jobs {
            // The soonest expected end of one of them, if any reports an estimate.
            let soonest = active.iter().filter_map(|j| j.to_status().estimated_completion).min();
            let retry_after = soonest.map(|t| seconds_until(now, t).clamp(1, 900)).unwrap_or(30);
            return Decision::QuotaExceeded {
                message: format!(
                    "you have {} jobs queued or running; the limit is {} at once",
                    active.len(),
                    quotas.active_jobs
                ),
                retry_after,
            };
        }
    }
    if quotas.jobs_per_hour > 0 {
        let hour = Duration::hours(1);
        let mut recent: Vec<DateTime<Utc>> =
            mine.iter().filter_map(|j| submitted_at(j)).filter(|t| now - *t < hour).collect();
        if recent.len() >= quotas.jobs_per_hour {
            recent.sort();
            // Once this many of the oldest have left the window, one more fits.
            let leaving = recent[recent.len() - quotas.jobs_per_hour];
            return Decision::QuotaExceeded {
                message: format!(
                    "you requested {} jobs in the last hour; the limit is {} an hour",
                    recent.len(),
                    quotas.jobs_per_hour
                ),
                retry_after: seconds_until(now, leaving + hour).max(1),
            };
        }
    }
    Decision::Accept
}

/// Whole seconds from `now` to `then`, rounded up; 0 if past.
fn seconds_until(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    let ms = (then - now).num_milliseconds();
    if ms <= 0 {
        0
    } else {
        (ms as u64).div_ceil(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::fold::{AttemptState, Status};

    fn job(id: &str, project: &str, user: &str, status: Status, requested: DateTime<Utc>) -> (String, JobState) {
        let mut state = JobState::new(id);
        state.project_id = project.into();
        state.user_id = user.into();
        state
            .attempts
            .insert(0, AttemptState { status: Some(status), requested_at: Some(requested), ..Default::default() });
        (id.to_string(), state)
    }

    #[test]
    fn one_active_job_per_project_unless_forced() {
        let now = Utc::now();
        let stale = Duration::minutes(20);
        let quotas = Quotas { active_jobs: 0, jobs_per_hour: 0 };
        let jobs: BTreeMap<_, _> = [job("j1", "p", "bob", Status::Running, now - Duration::minutes(1))].into();
        assert_eq!(
            decide(&jobs, "p", "alice", false, quotas, stale, now),
            Decision::AlreadyRunning { job_id: "j1".into(), mine: false }
        );
        assert_eq!(
            decide(&jobs, "p", "bob", false, quotas, stale, now),
            Decision::AlreadyRunning { job_id: "j1".into(), mine: true }
        );
        assert_eq!(decide(&jobs, "p", "alice", true, quotas, stale, now), Decision::Accept);
        assert_eq!(decide(&jobs, "q", "alice", false, quotas, stale, now), Decision::Accept);
        // Finished or abandoned jobs do not hold the project.
        let jobs: BTreeMap<_, _> = [
            job("j1", "p", "bob", Status::Completed, now - Duration::minutes(1)),
            job("j2", "p", "bob", Status::Queued, now - Duration::minutes(21)),
        ]
        .into();
        assert_eq!(decide(&jobs, "p", "alice", false, quotas, stale, now), Decision::Accept);
    }

    #[test]
    fn quotas_count_the_callers_jobs_and_say_when_to_retry() {
        let now = Utc::now();
        let stale = Duration::minutes(20);
        let jobs: BTreeMap<_, _> = [
            job("a1", "p1", "alice", Status::Running, now - Duration::minutes(2)),
            job("a2", "p2", "alice", Status::Queued, now - Duration::minutes(1)),
            job("b1", "p3", "bob", Status::Running, now - Duration::minutes(1)),
        ]
        .into();
        let quotas = Quotas { active_jobs: 2, jobs_per_hour: 30 };
        match decide(&jobs, "p9", "alice", false, quotas, stale, now) {
            Decision::QuotaExceeded { retry_after, .. } => assert_eq!(retry_after, 30),
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(&jobs, "p9", "bob", false, quotas, stale, now), Decision::Accept);

        let jobs: BTreeMap<_, _> = [
            job("a1", "p1", "alice", Status::Completed, now - Duration::minutes(50)),
            job("a2", "p2", "alice", Status::Failed, now - Duration::minutes(10)),
            job("a3", "p3", "alice", Status::Completed, now - Duration::minutes(70)),
        ]
        .into();
        let quotas = Quotas { active_jobs: 2, jobs_per_hour: 2 };
        match decide(&jobs, "p9", "alice", false, quotas, stale, now) {
            // The job of 50 minutes ago leaves the window in 10 minutes.
            Decision::QuotaExceeded { retry_after, .. } => assert!((599..=601).contains(&retry_after), "{retry_after}"),
            other => panic!("{other:?}"),
        }
    }
}
