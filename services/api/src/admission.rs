//! Whether a new stitch request may start: the project is the caller's (or nobody's), the
//! caller's quotas hold, and the project has no active job.
//!
//! Owners and quotas are read from the tenancy records validate writes
//! ([`reel_runtime::tenancy`]) and judged by the same functions and settings validate
//! uses, so the API's 403 and 429 agree with validate's refusals. The API's answer is the
//! fast, friendly first line; validate's, on every entry path, is the authoritative one.
//! The one-active-job rule is decided from the folded state; under races between API
//! instances, `reel submit` and the storage trigger, validate's atomic project lock holds
//! it. The API keeps its own check atomic within one process by deciding and folding the
//! new request under one write lock of the book.

use chrono::{DateTime, Duration, Utc};
use reel_events::fold::JobState;
use reel_events::ErrorType;
use reel_runtime::config::Quotas;
use reel_runtime::store::Store;
use reel_runtime::tenancy;
use std::collections::BTreeMap;
use tracing::{info, warn};

use crate::book::{is_active, owned_by};
use crate::error::ApiError;

/// What to do with a request, as far as the folded state tells.
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
}

/// Decide on a request of `user` for `project` at `now`. Jobs requested longer than
/// `stale_after` ago are not active any more (see [`is_active`]).
pub fn decide(
    jobs: &BTreeMap<String, JobState>,
    project: &str,
    user: &str,
    force_restart: bool,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Decision {
    if !force_restart {
        if let Some(job) = jobs.values().find(|j| j.project_id == project && is_active(j, now, stale_after)) {
            return Decision::AlreadyRunning { job_id: job.job_id.clone(), mine: owned_by(job, user) };
        }
    }
    Decision::Accept
}

/// Whether `user` may start `job_id` in `project` at `now`, by the tenancy records: 403
/// when the project's owner record names another user, 429 with `Retry-After` when a
/// quota is used up (a slot counts for the job timeout `job_timeout` plus
/// [`tenancy::SLOT_GRACE_MINUTES`], as in validate), 503 when the records cannot be read.
pub async fn check_records(
    work: &dyn Store,
    project: &str,
    user: &str,
    job_id: &str,
    quotas: &Quotas,
    job_timeout: Duration,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let unreadable = |what: &str, e: reel_runtime::store::StoreError| {
        warn!(error = %e, "could not read {what}");
        ApiError::unavailable(format!("could not read {what}: {e}; try again"), 2)
    };
    let record = tenancy::project_record(work, project).await.map_err(|e| unreadable("the project's owner", e))?;
    if record.is_some_and(|r| r.owner != user) {
        return Err(ApiError::forbidden(format!(
            "project {project} belongs to another user; only its owner may start jobs in it"
        )));
    }
    let lifetime = job_timeout + Duration::minutes(tenancy::SLOT_GRACE_MINUTES);
    let usage =
        tenancy::usage(work, user, job_id, lifetime, now).await.map_err(|e| unreadable("the user's quota usage", e))?;
    if let Err(over) = tenancy::check_quota(&usage, quotas, now) {
        info!(user_quota = %over.message, retry_after = over.retry_after, "quota exceeded");
        return Err(ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, over.message)
            .typed(ErrorType::QuotaExceeded)
            .retry_after(over.retry_after));
    }
    Ok(())
}

/// Whether `user` may see the jobs of `project`: not when its owner record names another
/// user (they see none of its jobs, CONTRACT §5).
pub async fn may_see_project(work: &dyn Store, project: &str, user: &str) -> Result<bool, ApiError> {
    match tenancy::project_record(work, project).await {
        Ok(record) => Ok(record.is_none_or(|r| r.owner == user)),
        Err(e) => {
            warn!(error = %e, "could not read the project's owner");
            Err(ApiError::unavailable(format!("could not read the project's owner: {e}; try again"), 2))
        }
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
        let jobs: BTreeMap<_, _> = [job("j1", "p", "bob", Status::Running, now - Duration::minutes(1))].into();
        assert_eq!(
            decide(&jobs, "p", "alice", false, stale, now),
            Decision::AlreadyRunning { job_id: "j1".into(), mine: false }
        );
        assert_eq!(
            decide(&jobs, "p", "bob", false, stale, now),
            Decision::AlreadyRunning { job_id: "j1".into(), mine: true }
        );
        assert_eq!(decide(&jobs, "p", "alice", true, stale, now), Decision::Accept);
        assert_eq!(decide(&jobs, "q", "alice", false, stale, now), Decision::Accept);
        // Finished or abandoned jobs do not hold the project.
        let jobs: BTreeMap<_, _> = [
            job("j1", "p", "bob", Status::Completed, now - Duration::minutes(1)),
            job("j2", "p", "bob", Status::Queued, now - Duration::minutes(21)),
        ]
        .into();
        assert_eq!(decide(&jobs, "p", "alice", false, stale, now), Decision::Accept);
    }
}
