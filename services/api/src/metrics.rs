//! `/metrics`: OpenMetrics text (through the `prometheus-client` crate), read from the
//! book at scrape time, under the `reel_api_` namespace: the jobs in memory by status,
//! whether the state is loaded, the follower's counters (`_total`), the last snapshot's
//! time, and the standard `process_*` metrics.
//!
//! Rates and per-job figures are not exported here as gauges (they would read `NaN`
//! with no job, and lose jobs that left memory): the job metrics of the original design
//! (`job_duration_seconds`, `job_success_rate`, …) are log-based, per job, declared in
//! terraform from the `job ended` line every ending job logs.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use reel_events::fold::Status;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::book::JobBook;

/// The metric families this module writes, as they appear after `# TYPE` (for docs and
/// tests).
pub const METRIC_NAMES: [&str; 8] = [
    "reel_api_jobs",
    "reel_api_ready",
    "reel_api_events_folded",
    "reel_api_messages_skipped",
    "reel_api_snapshots_written",
    "reel_api_snapshot_failures",
    "reel_api_journal_failures",
    "reel_api_last_snapshot_timestamp_seconds",
];

/// The content type of [`render`]'s text.
pub use reel_runtime::metrics::CONTENT_TYPE;

/// The book's figures at scrape time.
#[derive(Debug)]
struct BookCollector {
    book: Arc<JobBook>,
}

impl Collector for BookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let statuses: Vec<Status> = self.book.read(|jobs| jobs.values().map(|j| j.status()).collect());
        let by_status = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        for status in [Status::Queued, Status::Running, Status::Completed, Status::Failed, Status::Cancelled] {
            let n = statuses.iter().filter(|s| **s == status).count() as i64;
            by_status.get_or_create(&vec![("status", status.as_str())]).set(n);
        }
        by_status.encode(encoder.encode_descriptor(
            "reel_api_jobs",
            "Jobs in reel-api's memory, by status (unfinished ones, and finished ones within the retention)",
            None,
            by_status.metric_type(),
        )?)?;
        let ready = ConstGauge::new(i64::from(self.book.is_ready()));
        ready.encode(encoder.encode_descriptor(
            "reel_api_ready",
            "1 once the snapshot is loaded and the API serves",
            None,
            ready.metric_type(),
        )?)?;
        let stats = &self.book.stats;
        let counters = [
            ("reel_api_events_folded", "Events folded from the event log", &stats.events_folded),
            ("reel_api_snapshots_written", "Snapshots written to the store", &stats.snapshots_written),
            ("reel_api_snapshot_failures", "Snapshot writes that failed", &stats.snapshot_failures),
            (
                "reel_api_journal_failures",
                "Journal writes that failed (the batch was left for redelivery)",
                &stats.journal_failures,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let skipped =
            Family::<Vec<(&'static str, &'static str)>, prometheus_client::metrics::counter::Counter>::default();
        skipped.get_or_create(&vec![("reason", "undecodable")]).inc_by(stats.undecodable.load(Ordering::Relaxed));
        skipped.get_or_create(&vec![("reason", "no_job")]).inc_by(stats.without_job.load(Ordering::Relaxed));
        skipped.encode(encoder.encode_descriptor(
            "reel_api_messages_skipped",
            "Messages on the event log acked without folding, by reason",
            None,
            skipped.metric_type(),
        )?)?;
        let last = ConstGauge::new(stats.last_snapshot_unix.load(Ordering::Relaxed));
        last.encode(encoder.encode_descriptor(
            "reel_api_last_snapshot_timestamp_seconds",
            "Unix time of the last snapshot written or loaded (0: none)",
            None,
            last.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Render every metric of `book` (and of this process).
pub fn render(book: &Arc<JobBook>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BookCollector { book: book.clone() }));
    registry.register_collector(Box::new(reel_runtime::metrics::ProcessCollector));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("metrics encode into a String");
    out
}
