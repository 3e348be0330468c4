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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedBus;
    use reel_events::{binding, fold::Status, types, AttributesReader};

    #[tokio::test]
    async fn an_overdue_job_is_failed_on_the_log_once_and_reads_failed() {
        let settings = crate::Settings::default();
        let mut topology = settings.topology();
        let names = topology.names();
        topology.subscriptions.push(watch_subscription(&names.events()));
        let bus = EmbeddedBus::new();
        bus.ensure_topology(&topology).await.unwrap();

        let spec = reel_events::payload::JobSpec {
            job_id: "job_lost".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            clip_paths: vec![],
            output_path: "gs://b/o.mp4".into(),
            orientation: reel_events::Orientation::Portrait,
            compression: reel_events::Compression::Optimized,
            retry_attempt: 0,
            force_restart: false,
            accepted_at: Utc::now() - chrono::Duration::minutes(30),
            deadline: Utc::now() - chrono::Duration::minutes(15),
        };
        let validated = reel_events::envelope::build(
            types::JOB_VALIDATED,
            "//reel/validate",
            "v",
            "job_lost",
            spec.accepted_at,
            &reel_events::payload::JobValidated { job: spec },
        )
        .unwrap();
        let mut jobs = reel_events::fold::fold_all([&validated]);
        let policy = settings.overdue();
        let now = Utc::now();
        assert_eq!(publish_overdue(&bus, &names, &jobs, now, &policy).await.unwrap(), vec!["job_lost".to_string()]);

        let delivered = bus.receive("sweep-watch", 10, std::time::Duration::from_secs(1)).await.unwrap();
        let event = binding::decode(&delivered[0].message).unwrap();
        assert_eq!(event.ty(), types::JOB_FAILED);
        jobs.get_mut("job_lost").unwrap().apply(&event);
        let status = jobs["job_lost"].to_status();
        assert_eq!((status.status, status.error_type), (Status::Failed, Some(reel_events::ErrorType::Timeout)));
        // Folded, the job has ended: the next sweep publishes nothing.
        assert!(publish_overdue(&bus, &names, &jobs, now, &policy).await.unwrap().is_empty());
    }

    fn watch_subscription(topic: &str) -> crate::topology::SubscriptionSpec {
        crate::topology::SubscriptionSpec {
            name: "sweep-watch".into(),
            topic: topic.into(),
            ack_deadline: std::time::Duration::from_secs(10),
            dead_letter_topic: None,
            max_delivery_attempts: 5,
            min_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(10),
            message_retention: std::time::Duration::from_secs(600),
            exactly_once: false,
        }
    }
}
