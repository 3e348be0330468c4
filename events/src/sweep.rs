//! Every job ends: the `job.failed` of jobs that outlived their deadline plus a grace
//! without an end event (a stage lost the message, a program died for good, a message
//! sat in a dead-letter queue). Whoever folds the log (`reel-api`'s follower, or
//! `reel sweep`) calls [`overdue_failures`] now and then and publishes what it returns.
//!
//! The events are deterministic — id from (job, attempt), time the instant the job
//! became overdue — so two sweepers, or one sweeping twice, publish the same event and
//! the fold sees a duplicate.

use chrono::{DateTime, Utc};
use cloudevents::Event;
use std::collections::BTreeMap;

use crate::envelope;
use crate::fold::{JobState, Overdue};
use crate::payload::JobFailed;
use crate::types;

/// The CloudEvent `source` of the sweeper's events.
pub const SOURCE: &str = "//reel/sweeper";

/// The `job.failed` (`timeout`) of every job in `jobs` that is overdue at `now`.
///
/// ```
/// # use reel_events::{envelope, fold::{fold_all, Overdue}, sweep, types, AttributesReader};
/// let spec = serde_json::json!({"job": {"jobId": "j", "projectId": "p", "userId": "u",
///     "deadline": "2030-01-01T00:15:00Z"}});
/// let validated = envelope::build(types::JOB_VALIDATED, "//reel/validate", "v", "j",
///     "2030-01-01T00:00:00Z".parse().unwrap(), &spec).unwrap();
/// let jobs = fold_all([&validated]);
/// let policy = Overdue::minutes(15, 5);
/// assert!(sweep::overdue_failures(&jobs, "2030-01-01T00:19:00Z".parse().unwrap(), &policy).is_empty());
/// let failed = sweep::overdue_failures(&jobs, "2030-01-01T00:21:00Z".parse().unwrap(), &policy);
/// assert_eq!(failed[0].ty(), types::JOB_FAILED);
/// ```
pub fn overdue_failures(jobs: &BTreeMap<String, JobState>, now: DateTime<Utc>, policy: &Overdue) -> Vec<Event> {
    jobs.values().filter_map(|job| overdue_failure(job, now, policy)).collect()
}

/// The `job.failed` of one job, if it is overdue at `now`.
pub fn overdue_failure(job: &JobState, now: DateTime<Utc>, policy: &Overdue) -> Option<Event> {
    let after = job.overdue_after(policy).filter(|after| now > *after)?;
    let (attempt, _) = job.current()?;
    let error = job.overdue_error(policy);
    let data = JobFailed {
        job_id: job.job_id.clone(),
        project_id: job.project_id.clone(),
        user_id: job.user_id.clone(),
        stage: error.stage,
        error_type: error.error_type,
        message: error.message,
        retryable: error.retryable,
        attempts: error.attempts,
        retry_attempt: Some(attempt),
        cost: None,
    };
    let id = envelope::deterministic_id(&job.job_id, attempt, types::JOB_FAILED, "sweeper");
    envelope::build(types::JOB_FAILED, SOURCE, id, &job.job_id, after, &data).ok()
}
