//! The sweeper's bus side: whoever holds the fold of the whole event log (`reel-api`'s
//! follower) calls [`publish_overdue`] now and then, so that a job that outlived its
//! deadline plus the grace without an end event ends with a `job.failed` (`timeout`)
//! that every subscriber sees. The events are deterministic
//! ([`reel_events::sweep`]): several sweepers, or repeated sweeps, publish duplicates
//! the fold ignores, and once folded the job is no longer overdue.

use chrono::{DateTime, Utc};
use reel_events::fold::{JobState, Overdue};
use std::collections::BTreeMap;

use crate::bus::{Bus, BusError};
use crate::topology::Names;

/// Publish the `job.failed` of every job in `jobs` overdue at `now` to the event log;
/// returns the job ids.
pub async fn publish_overdue(
    bus: &dyn Bus,
    names: &Names,
    jobs: &BTreeMap<String, JobState>,
    now: DateTime<Utc>,
    policy: &Overdue,
) -> Result<Vec<String>, BusError> {
    let mut failed = Vec::new();
    for event in reel_events::sweep::overdue_failures(jobs, now, policy) {
        crate::worker::publish_event(bus, names, &event).await?;
        failed.push(reel_events::envelope::job_id_of(&event).unwrap_or_default());
    }
    Ok(failed)
}
