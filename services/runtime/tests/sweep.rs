//! The sweeper publishes the `job.failed` of a job that outlived its deadline plus the
//! grace, once: folded, the job reads failed with `timeout` and is no longer overdue.

use chrono::Utc;
use reel_events::payload::{JobSpec, JobValidated};
use reel_events::{binding, envelope, fold::Status, types, AttributesReader, ErrorType};
use reel_runtime::bus::Bus;
use reel_runtime::embedded::EmbeddedBus;
use reel_runtime::sweep::publish_overdue;
use reel_runtime::Settings;
use reel_testkit::fixtures;
use std::time::Duration;

#[tokio::test]
async fn an_overdue_job_is_failed_on_the_log_once_and_reads_failed() {
    let settings = Settings::default();
    let mut topology = settings.topology();
    let names = topology.names();
    topology.subscriptions.push(fixtures::subscription("sweep-watch", &names.events()));
    let bus = EmbeddedBus::new();
    bus.ensure_topology(&topology).await.unwrap();

    // Accepted half an hour ago (JOB_TIMEOUT_MINUTES 15, grace 5), never heard of since.
    let sample = fixtures::job_spec("job_lost");
    let accepted_at = Utc::now() - chrono::Duration::minutes(30);
    let spec = JobSpec { accepted_at, deadline: accepted_at + settings.job_timeout(), ..sample };
    let validated = envelope::build(
        types::JOB_VALIDATED,
        "//reel/validate",
        "v-lost",
        "job_lost",
        accepted_at,
        &JobValidated { job: spec },
    )
    .unwrap();
    let mut jobs = reel_events::fold::fold_all([&validated]);
    let policy = settings.overdue();
    let now = Utc::now();
    assert_eq!(publish_overdue(&bus, &names, &jobs, now, &policy).await.unwrap(), vec!["job_lost".to_string()]);

    let delivered = bus.receive("sweep-watch", 10, Duration::from_secs(1)).await.unwrap();
    let event = binding::decode(&delivered[0].message).unwrap();
    assert_eq!(event.ty(), types::JOB_FAILED);
    jobs.get_mut("job_lost").unwrap().apply(&event);
    let status = jobs["job_lost"].to_status();
    assert_eq!((status.status, status.error_type), (Status::Failed, Some(ErrorType::Timeout)));
    // Folded, the job has ended: the next sweep publishes nothing.
    assert!(publish_overdue(&bus, &names, &jobs, now, &policy).await.unwrap().is_empty());
}
