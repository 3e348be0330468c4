//! One active stitch job per project: a create-only lock object per project in the work
//! store, carrying the job id and an expiry so a crashed job cannot hold it forever.
//!
//! Taken by validate (atomically: create-only put), released when the job completes
//! (finalize), fails or is cancelled (the worker), and ignored once expired. Two
//! validators racing for one project: exactly one create succeeds; racing to take over
//! an expired (or forced) lock, exactly one replacement succeeds, since each replaces
//! only the generation it read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{PutMode, Store, StoreError};

/// The lock's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectLock {
    /// The job holding the project.
    pub job_id: String,
    /// After this instant the lock is void.
    pub expires_at: DateTime<Utc>,
}

/// What happened when a job asked for its project.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquire {
    /// The job holds the lock now (or already did).
    Acquired,
    /// Another job holds it until the given time.
    Held(ProjectLock),
}

/// The lock key of a project.
pub fn lock_key(project_id: &str) -> String {
    format!("control/locks/{project_id}")
}

async fn read(store: &dyn Store, key: &str) -> Result<Option<ProjectLock>, StoreError> {
    Ok(read_generation(store, key).await?.map(|(lock, _)| lock).unwrap_or_default())
}

/// The lock (`None` when unreadable: treated as void, as it would otherwise block the
/// project forever) and the generation it was read at; `None` when there is no lock.
/// The generation is taken before the content, so a replacement conditioned on it
/// fails if anything changed in between.
async fn read_generation(store: &dyn Store, key: &str) -> Result<Option<(Option<ProjectLock>, i64)>, StoreError> {
    let Some(meta) = store.head(key).await? else { return Ok(None) };
    let Some(bytes) = crate::store::read_all(store, key).await? else { return Ok(None) };
    Ok(Some((serde_json::from_slice(&bytes).ok(), meta.generation)))
}

/// Try to take `project_id` for `job_id` until `expires_at`. With `force`, a lock held
/// by another job is taken over (`forceRestart`).
pub async fn acquire(
    store: &dyn Store,
    project_id: &str,
    job_id: &str,
    expires_at: DateTime<Utc>,
    force: bool,
) -> Result<Acquire, StoreError> {
    let key = lock_key(project_id);
    let body = serde_json::to_vec(&ProjectLock { job_id: job_id.to_string(), expires_at }).expect("lock serializes");
    for _ in 0..3 {
        let mode = match read_generation(store, &key).await? {
            None => PutMode::CreateOnly,
            // Ours already; a later expiry (a resumed or replayed job) extends it.
            Some((Some(lock), _)) if lock.job_id == job_id && lock.expires_at >= expires_at => {
                return Ok(Acquire::Acquired)
            }
            Some((Some(lock), generation)) if lock.job_id == job_id => PutMode::IfGeneration(generation),
            Some((Some(lock), _)) if lock.expires_at > Utc::now() && !force => return Ok(Acquire::Held(lock)),
            // Expired, unreadable, or forced: replace exactly what was read.
            Some((_, generation)) => PutMode::IfGeneration(generation),
        };
        match store.put(&key, Box::pin(std::io::Cursor::new(body.clone())), mode).await {
            Ok(_) => return Ok(Acquire::Acquired),
            // Someone else wrote it meanwhile: look again.
            Err(StoreError::AlreadyExists(_) | StoreError::PreconditionFailed(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match read(store, &key).await? {
        Some(lock) if lock.job_id == job_id => Ok(Acquire::Acquired),
        Some(lock) => Ok(Acquire::Held(lock)),
        None => Err(StoreError::Transient("project lock kept changing".into())),
    }
}

/// Release `project_id` if `job_id` holds it. Returns whether it did.
pub async fn release(store: &dyn Store, project_id: &str, job_id: &str) -> Result<bool, StoreError> {
    if project_id.is_empty() {
        return Ok(false);
    }
    let key = lock_key(project_id);
    match read(store, &key).await? {
        Some(lock) if lock.job_id == job_id => store.delete(&key).await,
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::DirStore;
    use chrono::Duration;

    /// A job that holds its project's lock and asks again with a later expiry (a resumed
    /// job) extends it; an earlier one leaves it as it is.
    #[tokio::test]
    async fn asking_again_with_a_later_expiry_extends_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        let soon = Utc::now() + Duration::minutes(1);
        let later = soon + Duration::minutes(15);
        assert_eq!(acquire(&store, "p", "j", soon, false).await.unwrap(), Acquire::Acquired);
        assert_eq!(acquire(&store, "p", "j", later, false).await.unwrap(), Acquire::Acquired);
        assert_eq!(read(&store, &lock_key("p")).await.unwrap().unwrap().expires_at, later);
        assert_eq!(acquire(&store, "p", "j", soon, false).await.unwrap(), Acquire::Acquired);
        assert_eq!(read(&store, &lock_key("p")).await.unwrap().unwrap().expires_at, later);
    }

    /// Many validators racing to take over one expired lock: exactly one wins.
    #[tokio::test]
    async fn an_expired_lock_is_taken_over_by_exactly_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(DirStore::new(dir.path()).unwrap());
        let past = Utc::now() - Duration::minutes(1);
        assert_eq!(acquire(store.as_ref(), "p", "old", past, false).await.unwrap(), Acquire::Acquired);
        let future = Utc::now() + Duration::minutes(10);
        let racers = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { acquire(store.as_ref(), "p", &format!("j{i}"), future, false).await.unwrap() })
        });
        let results = futures::future::join_all(racers).await;
        let winners = results.iter().filter(|r| matches!(r.as_ref().unwrap(), Acquire::Acquired)).count();
        assert_eq!(winners, 1, "{results:?}");
    }
}
