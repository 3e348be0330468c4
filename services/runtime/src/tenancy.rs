//! Who owns what, recorded where every request passes (validate) and read by the API:
//! projects, job ids, and each user's quota slots. Records live in the work store's
//! control area (which no request path may name, see [`crate::Boundary`]) and are written
//! create-only, so the first writer wins atomically and a record is never changed.
//!
//! | record | key | written | removed |
//! | --- | --- | --- | --- |
//! | project owner | `control/projects/{projectId}` | the first job of the project | never |
//! | job id owner | `control/jobs/{jobId}` | validate accepts the job | never |
//! | quota slot | `control/users/{user}/active/{jobId}` | validate accepts the job | the job ends (or its deadline + grace pass) |
//! | quota history | `control/users/{user}/jobs/{jobId}` | validate accepts the job | never (bucket lifecycle) |
//!
//! Quota usage is counted from these records, so it survives restarts and is the same
//! for every validate instance. Two requests of one user racing through two validators at
//! the same instant may both pass the quota check (the check and the slot are two
//! writes); the project lock and the job-id record are exact.

use chrono::{DateTime, Duration, Utc};
use reel_events::payload::JobRef;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Quotas;
use crate::store::{PutMode, Store, StoreError};

/// How long a quota slot outlives its job's deadline before it stops counting (a job
/// whose end was never recorded cannot hold its user's quota forever).
pub const SLOT_GRACE_MINUTES: i64 = 5;

/// Who owns a project: the user who first started a job in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRecord {
    /// The owning user (`userId`).
    pub owner: String,
    /// The job that claimed the project.
    pub first_job: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Whose a job id is: the project and user of the request that first used it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The job's project.
    pub project_id: String,
    /// The job's user.
    pub user_id: String,
    /// When validate accepted it first.
    pub created_at: DateTime<Utc>,
}

impl JobRecord {
    /// Whether this record is the job of `project_id` and `user_id`.
    pub fn is_of(&self, project_id: &str, user_id: &str) -> bool {
        self.project_id == project_id && self.user_id == user_id
    }
}

/// The key of a project's owner record.
pub fn project_key(project_id: &str) -> String {
    format!("control/projects/{project_id}")
}

/// The key of a job id's owner record.
pub fn job_key(job_id: &str) -> String {
    format!("control/jobs/{job_id}")
}

/// The key of a user's quota slot for a job.
pub fn slot_key(user_id: &str, job_id: &str) -> String {
    format!("{}active/{job_id}", user_prefix(user_id))
}

/// The key of a user's record of having started a job (counted for the hourly quota).
pub fn history_key(user_id: &str, job_id: &str) -> String {
    format!("{}jobs/{job_id}", user_prefix(user_id))
}

/// A user's area in the control store. User ids are the callers' (emails, subjects,
/// Phoenix's ids): every byte outside `A-Z a-z 0-9 _ - @` is written `%XX`, so an id
/// is always one safe key segment and two ids never share one.
fn user_prefix(user_id: &str) -> String {
    let mut segment = String::with_capacity(user_id.len());
    for b in user_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'@' {
            segment.push(b as char);
        } else {
            segment.push_str(&format!("%{b:02X}"));
        }
    }
    if segment.is_empty() {
        // Never a real id (validate refuses it), but still one segment of its own.
        segment.push('%');
    }
    format!("control/users/{segment}/")
}

async fn read_json<T: serde::de::DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<T>, StoreError> {
    let Some(bytes) = crate::store::read_all(store, key).await? else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Other(format!("{key} is not a record: {e}")))
}

/// Write `record` under `key` unless something is there, and return whatever stands
/// there afterwards: ours, or the one a faster writer left.
async fn claim<T: Serialize + serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
    record: T,
) -> Result<T, StoreError> {
    let body = serde_json::to_vec(&record).expect("records serialize");
    match store.put(key, Box::pin(std::io::Cursor::new(body)), PutMode::CreateOnly).await {
        Ok(_) => Ok(record),
        Err(StoreError::AlreadyExists(_)) => read_json(store, key)
            .await?
            .ok_or_else(|| StoreError::Transient(format!("{key} vanished right after a create found it"))),
        Err(e) => Err(e),
    }
}

/// The owner record of a project, if it has one.
pub async fn project_record(work: &dyn Store, project_id: &str) -> Result<Option<ProjectRecord>, StoreError> {
    read_json(work, &project_key(project_id)).await
}

/// Make `user_id` the owner of `project_id` if nobody is; returns the record that stands.
pub async fn claim_project(
    work: &dyn Store,
    project_id: &str,
    user_id: &str,
    job_id: &str,
) -> Result<ProjectRecord, StoreError> {
    let record = ProjectRecord { owner: user_id.into(), first_job: job_id.into(), created_at: Utc::now() };
    claim(work, &project_key(project_id), record).await
}

/// The owner record of a job id, if it was used.
pub async fn job_record(work: &dyn Store, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
    read_json(work, &job_key(job_id)).await
}

/// Record `job_id` as the job of `project_id` and `user_id` if it is nobody's; returns
/// the record that stands (compare with [`JobRecord::is_of`]).
pub async fn claim_job(
    work: &dyn Store,
    job_id: &str,
    project_id: &str,
    user_id: &str,
) -> Result<JobRecord, StoreError> {
    let record = JobRecord { project_id: project_id.into(), user_id: user_id.into(), created_at: Utc::now() };
    claim(work, &job_key(job_id), record).await
}

/// What a user has running and has started lately, from their records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Jobs holding a quota slot, with the slot's expiry.
    pub active: Vec<(String, DateTime<Utc>)>,
    /// When each job of the last hour started.
    pub started: Vec<DateTime<Utc>>,
}

/// A quota is used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// Which, in words.
    pub message: String,
    /// Seconds until a request may pass (`Retry-After`).
    pub retry_after: u64,
}

/// Count `user_id`'s usage at `now`, leaving out `except` (the job being decided, so a
/// redelivered request does not count against itself). A slot counts until the job ends
/// or `slot_lifetime` after it was taken (the job's timeout plus a grace).
pub async fn usage(
    work: &dyn Store,
    user_id: &str,
    except: &str,
    slot_lifetime: Duration,
    now: DateTime<Utc>,
) -> Result<Usage, StoreError> {
    let prefix = user_prefix(user_id);
    let mut usage = Usage::default();
    for meta in work.list(&format!("{prefix}active/")).await? {
        let job = meta.key.rsplit('/').next().unwrap_or_default().to_string();
        let expires = meta.updated + slot_lifetime;
        if job != except && expires > now {
            usage.active.push((job, expires));
        }
    }
    for meta in work.list(&format!("{prefix}jobs/")).await? {
        let job = meta.key.rsplit('/').next().unwrap_or_default();
        if job != except && now - meta.updated < Duration::hours(1) {
            usage.started.push(meta.updated);
        }
    }
    Ok(usage)
}

/// Whether one more job fits `quotas` (0 = unlimited), and if not, when it will.
pub fn check_quota(usage: &Usage, quotas: &Quotas, now: DateTime<Utc>) -> Result<(), QuotaExceeded> {
    if quotas.active_jobs > 0 && usage.active.len() >= quotas.active_jobs {
        let soonest = usage.active.iter().map(|(_, expires)| *expires).min().unwrap_or(now);
        return Err(QuotaExceeded {
            message: format!(
                "the user has {} jobs queued or running; the limit is {} at once",
                usage.active.len(),
                quotas.active_jobs
            ),
            retry_after: seconds_until(now, soonest).clamp(1, 60),
        });
    }
    if quotas.jobs_per_hour > 0 && usage.started.len() >= quotas.jobs_per_hour {
        let mut started = usage.started.clone();
        started.sort();
        // Once this many of the oldest have left the window, one more fits.
        let leaving = started[started.len() - quotas.jobs_per_hour];
        return Err(QuotaExceeded {
            message: format!(
                "the user started {} jobs in the last hour; the limit is {} an hour",
                started.len(),
                quotas.jobs_per_hour
            ),
            retry_after: seconds_until(now, leaving + Duration::hours(1)).max(1),
        });
    }
    Ok(())
}

/// Whole seconds from `now` to `then`, rounded up; 0 if past.
pub fn seconds_until(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    let ms = (then - now).num_milliseconds();
    if ms <= 0 {
        0
    } else {
        (ms as u64).div_ceil(1000)
    }
}

/// Take a quota slot for `job_id` and record that `user_id` started it.
pub async fn take_slot(work: &dyn Store, user_id: &str, job_id: &str) -> Result<(), StoreError> {
    let put = |key: String, mode| async move {
        match work.put(&key, Box::pin(std::io::Cursor::new(b"{}".to_vec())), mode).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    };
    // The history keeps the first start; the slot is renewed by a redelivery.
    put(history_key(user_id, job_id), PutMode::CreateOnly).await?;
    put(slot_key(user_id, job_id), PutMode::Overwrite).await
}

/// What a job holds while it runs, given back when it ends, however it ends: the
/// project lock and the user's quota slot. Failures are logged: both expire on their own.
pub async fn release(work: &dyn Store, job: &JobRef) {
    if job.job_id.is_empty() {
        return;
    }
    if let Err(e) = crate::lock::release(work, &job.project_id, &job.job_id).await {
        warn!(error = %e, "could not release the project lock; it expires on its own");
    }
    if !job.user_id.is_empty() {
        if let Err(e) = work.delete(&slot_key(&job.user_id, &job.job_id)).await {
            warn!(error = %e, "could not release the quota slot; it expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::DirStore;

    fn store() -> (tempfile::TempDir, DirStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn user_ids_become_one_safe_segment_each() {
        assert_eq!(slot_key("user_456", "j"), "control/users/user_456/active/j");
        assert_eq!(slot_key("a.b@x.com", "j"), "control/users/a%2Eb@x%2Ecom/active/j");
        for hostile in ["..", ".", "a/b", "a/../b", "%2E", "", "ü"] {
            let key = slot_key(hostile, "j");
            crate::store::check_key(&key).unwrap_or_else(|e| panic!("{hostile:?}: {e}"));
            assert_eq!(key.matches('/').count(), 4, "{hostile:?} -> {key}");
        }
        assert_ne!(user_prefix("a.b"), user_prefix("a%2Eb"));
    }

    #[tokio::test]
    async fn the_first_claim_stands() {
        let (_dir, work) = store();
        let first = claim_project(&work, "p", "alice", "j1").await.unwrap();
        assert_eq!(first.owner, "alice");
        let second = claim_project(&work, "p", "mallory", "j2").await.unwrap();
        assert_eq!(second, first, "a second claim must return the owner that stands");
        assert_eq!(project_record(&work, "p").await.unwrap(), Some(first));
        assert_eq!(project_record(&work, "q").await.unwrap(), None);

        let job = claim_job(&work, "j1", "p", "alice").await.unwrap();
        assert!(job.is_of("p", "alice"));
        let again = claim_job(&work, "j1", "other", "mallory").await.unwrap();
        assert!(again.is_of("p", "alice") && !again.is_of("other", "mallory"));
    }

    #[tokio::test]
    async fn slots_count_until_released_and_history_counts_an_hour() {
        let (_dir, work) = store();
        let now = Utc::now();
        let life = Duration::minutes(20);
        take_slot(&work, "alice", "j1").await.unwrap();
        take_slot(&work, "alice", "j2").await.unwrap();
        take_slot(&work, "bob", "j3").await.unwrap();
        let quotas = Quotas { active_jobs: 2, jobs_per_hour: 30 };
        let alice = usage(&work, "alice", "new", life, now).await.unwrap();
        assert_eq!(alice.active.len(), 2);
        let refused = check_quota(&alice, &quotas, now).unwrap_err();
        assert!(refused.message.contains("2 jobs queued or running"), "{}", refused.message);
        // The job being decided does not count against itself (a redelivery).
        let redelivered = usage(&work, "alice", "j2", life, now).await.unwrap();
        assert!(check_quota(&redelivered, &quotas, now).is_ok());
        assert!(check_quota(&usage(&work, "bob", "new", life, now).await.unwrap(), &quotas, now).is_ok());

        release(&work, &JobRef { job_id: "j1".into(), project_id: "p".into(), user_id: "alice".into() }).await;
        let alice = usage(&work, "alice", "new", life, now).await.unwrap();
        assert_eq!(alice.active.len(), 1);
        assert_eq!(alice.started.len(), 2, "a finished job still counts for the hour");
        assert!(check_quota(&alice, &quotas, now).is_ok());
        let hourly = Quotas { active_jobs: 0, jobs_per_hour: 2 };
        let refused = check_quota(&alice, &hourly, now).unwrap_err();
        assert!(refused.retry_after > 3500, "{}", refused.retry_after);
        // A slot whose job never ended stops counting after its lifetime.
        let later = now + life + Duration::minutes(1);
        assert!(usage(&work, "alice", "new", life, later).await.unwrap().active.is_empty());
    }
}
