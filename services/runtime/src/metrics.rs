//! The metrics every program exports (Prometheus text format), with bounded labels.
//!
//! - `job_duration_seconds{stage}` — histogram of the time a stage spent on a message;
//! - `job_memory_usage_mb{kind="current"|"peak"}` — the process's resident memory;
//! - `job_success_rate{stage}` — share of handled messages that did not fail their job;
//! - `video_processing_rate_mbps{stage}` — megabytes of video per second of work;
//! - `reel_messages_total{stage, outcome}` — counters behind the rate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::worker::WorkerStats;

const BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// A fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [u64; 12],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Record one observation in seconds.
    pub fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What a worker measures.
#[derive(Debug, Default)]
pub struct StageMetrics {
    /// Handling durations.
    pub durations: Mutex<Histogram>,
    /// Bytes of video in the outputs of successful handling.
    pub bytes: AtomicU64,
    /// Microseconds spent on successful handling that produced those bytes.
    pub busy_micros: AtomicU64,
}

/// Resident memory of this process in MiB: (current, peak), from /proc.
pub fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Render the Prometheus text for one stage.
pub fn render(stage: &str, stats: &WorkerStats, metrics: &StageMetrics) -> String {
    let mut out = String::new();
    let h = metrics.durations.lock().expect("metrics lock");
    let _ = writeln!(out, "# HELP job_duration_seconds Time a stage spent on one message.");
    let _ = writeln!(out, "# TYPE job_duration_seconds histogram");
    for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
        let _ = writeln!(out, "job_duration_seconds_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "job_duration_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "job_duration_seconds_sum{{stage=\"{stage}\"}} {}", h.sum);
    let _ = writeln!(out, "job_duration_seconds_count{{stage=\"{stage}\"}} {}", h.count);
    drop(h);
    let (current, peak) = memory_mb();
    let _ = writeln!(out, "# HELP job_memory_usage_mb Resident memory of the process.");
    let _ = writeln!(out, "# TYPE job_memory_usage_mb gauge");
    let _ = writeln!(out, "job_memory_usage_mb{{stage=\"{stage}\",kind=\"current\"}} {current:.1}");
    let _ = writeln!(out, "job_memory_usage_mb{{stage=\"{stage}\",kind=\"peak\"}} {peak:.1}");
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let ok = get(&stats.emitted) + get(&stats.skipped);
    let failed = get(&stats.failed);
    let rate = if ok + failed == 0 { 1.0 } else { ok as f64 / (ok + failed) as f64 };
    let _ = writeln!(out, "# HELP job_success_rate Share of handled messages that did not fail their job.");
    let _ = writeln!(out, "# TYPE job_success_rate gauge");
    let _ = writeln!(out, "job_success_rate{{stage=\"{stage}\"}} {rate}");
    let busy = get(&metrics.busy_micros) as f64 / 1e6;
    let mbps = if busy > 0.0 { get(&metrics.bytes) as f64 / 1e6 / busy } else { 0.0 };
    let _ = writeln!(out, "# HELP video_processing_rate_mbps Megabytes of video per second of stage work.");
    let _ = writeln!(out, "# TYPE video_processing_rate_mbps gauge");
    let _ = writeln!(out, "video_processing_rate_mbps{{stage=\"{stage}\"}} {mbps:.3}");
    let _ = writeln!(out, "# HELP reel_messages_total Messages by outcome.");
    let _ = writeln!(out, "# TYPE reel_messages_total counter");
    for (outcome, counter) in [
        ("received", &stats.received),
        ("emitted", &stats.emitted),
        ("skipped", &stats.skipped),
        ("retried", &stats.retried),
        ("failed", &stats.failed),
        ("dead_lettered", &stats.dead_lettered),
        ("cancelled", &stats.cancelled),
    ] {
        let _ = writeln!(out, "reel_messages_total{{stage=\"{stage}\",outcome=\"{outcome}\"}} {}", get(counter));
    }
    out
}

/// Bytes of video named in an emitted event's data (`reel.sizeBytes`, or the clips'
/// `sizeBytes`).
pub fn video_bytes(data: &serde_json::Value) -> u64 {
    if let Some(n) = data.get("reel").and_then(|r| r.get("sizeBytes")).and_then(|v| v.as_u64()) {
        return n;
    }
    data.get("clips")
        .and_then(|c| c.as_array())
        .map(|clips| clips.iter().filter_map(|c| c.get("sizeBytes").and_then(|v| v.as_u64())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let stats = WorkerStats::default();
        stats.emitted.fetch_add(3, Ordering::Relaxed);
        stats.failed.fetch_add(1, Ordering::Relaxed);
        let m = StageMetrics::default();
        m.durations.lock().unwrap().observe(0.3);
        m.bytes.fetch_add(10_000_000, Ordering::Relaxed);
        m.busy_micros.fetch_add(2_000_000, Ordering::Relaxed);
        let text = render("stitch", &stats, &m);
        for name in [
            "job_duration_seconds_bucket",
            "job_memory_usage_mb",
            "job_success_rate{stage=\"stitch\"} 0.75",
            "video_processing_rate_mbps{stage=\"stitch\"} 5.000",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(text.contains("job_duration_seconds_bucket{stage=\"stitch\",le=\"0.5\"} 1"));
        assert!(text.contains("job_duration_seconds_bucket{stage=\"stitch\",le=\"0.25\"} 0"));
        assert!(memory_mb().0 > 0.0);
    }

    #[test]
    fn counts_video_bytes() {
        assert_eq!(video_bytes(&serde_json::json!({"reel": {"sizeBytes": 5}})), 5);
        assert_eq!(video_bytes(&serde_json::json!({"clips": [{"sizeBytes": 2}, {"sizeBytes": 3}]})), 5);
    }
}
