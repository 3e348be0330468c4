//! `/metrics`: Prometheus text format (0.0.4), computed from the book at scrape time.
//!
//! Job metrics describe the jobs in memory: every unfinished one and those finished
//! within `REEL_API_RETAIN_FINISHED_SECONDS` (older ones live in job records, see
//! [`crate::book`]), with rates over the last hour (`window="1h"`, exact while the
//! retention is at least an hour) and over the jobs in memory (`window="all"`); a rate
//! with no job to measure is `NaN`.

use chrono::{DateTime, Duration, Utc};
use reel_events::fold::{JobStatus, Status};
use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::book::JobBook;

/// Upper bounds of the `job_duration_seconds` buckets.
pub const DURATION_BUCKETS: [f64; 9] = [15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0];

/// The metric families this module writes (for docs and tests).
pub const METRIC_NAMES: [&str; 12] = [
    "jobs_by_status",
    "job_duration_seconds",
    "job_success_rate",
    "video_processing_rate_mbps",
    "reel_api_ready",
    "reel_api_jobs",
    "reel_api_events_folded_total",
    "reel_api_messages_skipped_total",
    "reel_api_snapshots_written_total",
    "reel_api_snapshot_failures_total",
    "reel_api_journal_failures_total",
    "reel_api_last_snapshot_timestamp_seconds",
];

/// Render every metric.
pub fn render(book: &JobBook, now: DateTime<Utc>) -> String {
    let statuses: Vec<JobStatus> = book.read(|jobs| jobs.values().map(|j| j.to_status()).collect());
    let mut out = String::new();

    header(&mut out, "jobs_by_status", "gauge", "Jobs known to reel-api, by status.");
    for status in [Status::Queued, Status::Running, Status::Completed, Status::Failed, Status::Cancelled] {
        let n = statuses.iter().filter(|s| s.status == status).count();
        let _ = writeln!(out, "jobs_by_status{{status=\"{}\"}} {n}", status.as_str());
    }

    // Completed jobs: (ended, seconds from the first stage to the end, bytes).
    let completed: Vec<(DateTime<Utc>, f64, Option<f64>)> = statuses
        .iter()
        .filter(|s| s.status == Status::Completed)
        .filter_map(|s| {
            let (start, end) = (s.started_at?, s.completed_at?);
            let seconds = ((end - start).num_milliseconds() as f64 / 1000.0).max(0.0);
            let bytes = s.result.as_ref().and_then(|r| r.get("sizeBytes")).and_then(|v| v.as_f64());
            Some((end, seconds, bytes))
        })
        .collect();

    header(&mut out, "job_duration_seconds", "histogram", "Time from a job's first stage to its completion.");
    for bound in DURATION_BUCKETS {
        let cumulative = completed.iter().filter(|(_, s, _)| *s <= bound).count();
        let _ = writeln!(out, "job_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "job_duration_seconds_bucket{{le=\"+Inf\"}} {}", completed.len());
    let _ = writeln!(out, "job_duration_seconds_sum {}", number(completed.iter().map(|(_, s, _)| s).sum()));
    let _ = writeln!(out, "job_duration_seconds_count {}", completed.len());

    let hour_ago = now - Duration::hours(1);
    header(
        &mut out,
        "job_success_rate",
        "gauge",
        "Completed jobs / (completed + failed), by when they ended; NaN without any.",
    );
    for (window, since) in [("1h", Some(hour_ago)), ("all", None)] {
        let ended = |s: &&JobStatus| s.completed_at.is_some_and(|t| since.is_none_or(|from| t >= from));
        let ok = statuses.iter().filter(ended).filter(|s| s.status == Status::Completed).count();
        let failed = statuses.iter().filter(ended).filter(|s| s.status == Status::Failed).count();
        let rate = if ok + failed == 0 { f64::NAN } else { ok as f64 / (ok + failed) as f64 };
        let _ = writeln!(out, "job_success_rate{{window=\"{window}\"}} {}", number(rate));
    }

    header(
        &mut out,
        "video_processing_rate_mbps",
        "gauge",
        "Reel megabytes (10^6 bytes) produced per second of job time, over completed jobs; NaN without any.",
    );
    for (window, since) in [("1h", Some(hour_ago)), ("all", None)] {
        let (bytes, seconds) = completed
            .iter()
            .filter(|(end, _, _)| since.is_none_or(|from| *end >= from))
            .filter_map(|(_, s, b)| b.map(|b| (b, *s)))
            .fold((0.0, 0.0), |(b, s), (bb, ss)| (b + bb, s + ss));
        let rate = if seconds > 0.0 { bytes / 1e6 / seconds } else { f64::NAN };
        let _ = writeln!(out, "video_processing_rate_mbps{{window=\"{window}\"}} {}", number(rate));
    }

    let stats = &book.stats;
    header(&mut out, "reel_api_ready", "gauge", "1 once the snapshot is loaded and the API serves.");
    let _ = writeln!(out, "reel_api_ready {}", u8::from(book.is_ready()));
    header(&mut out, "reel_api_jobs", "gauge", "Jobs in the folded state.");
    let _ = writeln!(out, "reel_api_jobs {}", statuses.len());
    counter(
        &mut out,
        "reel_api_events_folded_total",
        "Events folded from the event log.",
        stats.events_folded.load(Ordering::Relaxed),
    );
    header(
        &mut out,
        "reel_api_messages_skipped_total",
        "counter",
        "Messages on the event log acked without folding, by reason.",
    );
    let _ = writeln!(
        out,
        "reel_api_messages_skipped_total{{reason=\"undecodable\"}} {}",
        stats.undecodable.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "reel_api_messages_skipped_total{{reason=\"no_job\"}} {}",
        stats.without_job.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "reel_api_snapshots_written_total",
        "Snapshots written to the store.",
        stats.snapshots_written.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "reel_api_snapshot_failures_total",
        "Snapshot writes that failed.",
        stats.snapshot_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "reel_api_journal_failures_total",
        "Journal writes that failed (the batch was left for redelivery).",
        stats.journal_failures.load(Ordering::Relaxed),
    );
    header(
        &mut out,
        "reel_api_last_snapshot_timestamp_seconds",
        "gauge",
        "Unix time of the last snapshot written or loaded (0: none).",
    );
    let _ =
        writeln!(out, "reel_api_last_snapshot_timestamp_seconds {}", stats.last_snapshot_unix.load(Ordering::Relaxed));
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A sample value in the text format (`NaN`, integers without a fraction).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
