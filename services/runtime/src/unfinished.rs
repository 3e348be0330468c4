//! Deliveries that never finish: a stage program killed while it works (SIGKILL, the
//! OOM killer) produces no outcome, so nothing would ever count it — Pub/Sub would
//! redeliver until its own dead-lettering (10 deliveries) swallowed the job without a
//! word. So the worker writes a small record before the handler runs and removes it
//! once the handler has produced any outcome; a record left behind is a run that died.
//! When a delivery finds more such runs than `MAX_RETRY_ATTEMPTS`, the job fails with
//! `resource_exhausted` (and its message is dead-lettered for a replay on a larger
//! machine) instead of running again.
//!
//! The record is `control/running/{jobId}/{run}` in the work store (outside the job's
//! workspace, which the stages list), JSON `{"unfinished": n}`; `run` is the stage, or
//! the stage and the part of the job when parts run at once (`stitch-encode-003`). Two
//! deliveries of one part racing may miscount by one; that only moves the limit by one run.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::store::{PutMode, Store, StoreError};

/// The record's key.
pub fn record_key(job_id: &str, run: &str) -> String {
    format!("control/running/{job_id}/{run}")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    unfinished: u32,
}

/// Note that a run named `run` on `job_id` starts; returns how many earlier runs
/// started and never finished.
pub async fn begin(store: &dyn Store, job_id: &str, run: &str) -> Result<u32, StoreError> {
    let key = record_key(job_id, run);
    let earlier = match store.get(&key).await {
        Ok(mut reader) => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).await.map_err(|e| StoreError::Transient(e.to_string()))?;
            serde_json::from_slice::<Record>(&bytes).unwrap_or_default().unfinished
        }
        Err(StoreError::NotFound(_)) => 0,
        Err(e) => return Err(e),
    };
    let body = serde_json::to_vec(&Record { unfinished: earlier + 1 }).expect("record serializes");
    store.put(&key, Box::pin(std::io::Cursor::new(body)), PutMode::Overwrite).await?;
    Ok(earlier)
}

/// Note that the run produced an outcome.
pub async fn finish(store: &dyn Store, job_id: &str, run: &str) -> Result<(), StoreError> {
    store.delete(&record_key(job_id, run)).await.map(|_| ())
}
