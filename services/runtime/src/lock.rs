//! One active stitch job per project: a create-only lock object per project in the work
//! store, carrying the job id and an expiry so a crashed job cannot hold it forever.
//!
//! Taken by validate (atomically: create-only put), released when the job completes
//! (finalize), fails or is cancelled (the worker), and ignored once expired. Two
//! validators racing for one project: exactly one create succeeds.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

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
    let mut reader = match store.get(key).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.map_err(|e| StoreError::Transient(e.to_string()))?;
    // An unreadable lock is treated as void (it would otherwise block the project forever).
    Ok(serde_json::from_slice(&bytes).ok())
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
        match store.put(&key, Box::pin(std::io::Cursor::new(body.clone())), PutMode::CreateOnly).await {
            Ok(_) => return Ok(Acquire::Acquired),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        match read(store, &key).await? {
            Some(lock) if lock.job_id == job_id => return Ok(Acquire::Acquired),
            Some(lock) if lock.expires_at > Utc::now() && !force => return Ok(Acquire::Held(lock)),
            _ => {
                // Expired, unreadable, or forced: remove and race for it again.
                store.delete(&key).await?;
            }
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
