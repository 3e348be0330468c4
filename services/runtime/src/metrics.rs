//! What a stage program exports at `/metrics` (OpenMetrics text, through the
//! `prometheus-client` crate), under the `reel_stage_` namespace with base units and
//! `_total` counters; rates are for the queries (`rate(...)`), so nothing reads `NaN`
//! or a made-up value when no job ran. Plus the standard `process_*` metrics.
//!
//! - `reel_stage_messages_total{stage, outcome}`: messages by what became of them;
//! - `reel_stage_handler_duration_seconds{stage}`: how long the handler worked on one;
//! - `reel_stage_video_bytes_total{stage}` and `reel_stage_video_seconds_total{stage}`:
//!   bytes of video in the outputs of successful deliveries, and the handler time that
//!   produced them (their ratio is the stage's throughput);
//! - `process_resident_memory_bytes`, `process_cpu_seconds_total`,
//!   `process_start_time_seconds`, `process_open_fds`.
//!
//! The job metrics of the original design (`job_duration_seconds`, …) are per job and
//! come from the logs (terraform's log-based metrics), so no two programs export one
//! name with two meanings.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// A stage's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

/// A stage and an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    stage: String,
    outcome: &'static str,
}

/// What became of a message, for `reel_stage_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Received.
    Received,
    /// Its work was done and what follows published.
    Emitted,
    /// Acked without work (a duplicate, a completed job).
    Skipped,
    /// Handed back for a retry.
    Retried,
    /// Its job failed.
    Failed,
    /// Dead-lettered.
    DeadLettered,
    /// Its job was cancelled.
    Cancelled,
}

impl MessageOutcome {
    fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Received => "received",
            MessageOutcome::Emitted => "emitted",
            MessageOutcome::Skipped => "skipped",
            MessageOutcome::Retried => "retried",
            MessageOutcome::Failed => "failed",
            MessageOutcome::DeadLettered => "dead_lettered",
            MessageOutcome::Cancelled => "cancelled",
        }
    }
}

/// Upper bounds of the handler duration buckets, s.
const BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// A stage program's metrics.
#[derive(Debug)]
pub struct StageMetrics {
    stage: String,
    registry: Registry,
    messages: Family<OutcomeLabels, Counter>,
    durations: Family<StageLabel, Histogram>,
    video_bytes: Family<StageLabel, Counter>,
    video_seconds: Family<StageLabel, Counter<f64, AtomicU64>>,
}

impl StageMetrics {
    /// The metrics of a program of `stage`.
    pub fn new(stage: &str) -> StageMetrics {
        let mut registry = Registry::default();
        let messages = Family::<OutcomeLabels, Counter>::default();
        let durations = Family::<StageLabel, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        let video_bytes = Family::<StageLabel, Counter>::default();
        let video_seconds = Family::<StageLabel, Counter<f64, AtomicU64>>::default();
        {
            let reel = registry.sub_registry_with_prefix("reel_stage");
            reel.register("messages", "Messages a stage program received, by what became of them", messages.clone());
            reel.register_with_unit(
                "handler_duration",
                "Time a stage's handler worked on one message",
                Unit::Seconds,
                durations.clone(),
            );
            reel.register_with_unit(
                "video",
                "Bytes of video in the outputs of successful deliveries",
                Unit::Bytes,
                video_bytes.clone(),
            );
            reel.register_with_unit(
                "video",
                "Handler time of the successful deliveries that produced those bytes",
                Unit::Seconds,
                video_seconds.clone(),
            );
        }
        registry.register_collector(Box::new(ProcessCollector));
        StageMetrics { stage: stage.to_string(), registry, messages, durations, video_bytes, video_seconds }
    }

    /// Count a message's outcome.
    pub fn count(&self, outcome: MessageOutcome) {
        self.messages.get_or_create(&OutcomeLabels { stage: self.stage.clone(), outcome: outcome.as_str() }).inc();
    }

    /// How many messages had `outcome` so far.
    pub fn counted(&self, outcome: MessageOutcome) -> u64 {
        self.messages.get_or_create(&OutcomeLabels { stage: self.stage.clone(), outcome: outcome.as_str() }).get()
    }

    /// One handler run of `seconds`, whose outputs name `video_bytes` of video.
    pub fn observe(&self, seconds: f64, video_bytes: u64) {
        let label = StageLabel { stage: self.stage.clone() };
        self.durations.get_or_create(&label).observe(seconds);
        if video_bytes > 0 {
            self.video_bytes.get_or_create(&label).inc_by(video_bytes);
            self.video_seconds.get_or_create(&label).inc_by(seconds);
        }
    }

    /// The OpenMetrics text of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

/// The content type of [`StageMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The standard `process_*` metrics, read from `/proc` at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rss = ConstGauge::new(crate::cost::rss_of("self") as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        // CPU time of this process alone (its children's is in the delivery costs).
        let cpu = crate::cost::rusage_seconds(libc::RUSAGE_SELF);
        let cpu = ConstCounter::new(cpu);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let start = ConstGauge::new(process_start_unix());
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        let fds = ConstGauge::new(std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0));
        fds.encode(encoder.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            fds.metric_type(),
        )?)?;
        Ok(())
    }
}

/// When this process started, unix seconds (from `/proc/self/stat` and the boot time).
fn process_start_unix() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let ticks = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse::<i64>().ok())
            .unwrap_or(0);
        let boot = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<i64>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        boot + ticks / hz
    })
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
    fn renders_counters_histograms_and_process_metrics_in_base_units() {
        let m = StageMetrics::new("stitch");
        let empty = m.render();
        assert!(!empty.contains("NaN"), "{empty}");
        m.count(MessageOutcome::Received);
        m.count(MessageOutcome::Emitted);
        m.observe(0.3, 10_000_000);
        let text = m.render();
        for line in [
            "reel_stage_messages_total{stage=\"stitch\",outcome=\"received\"} 1",
            "reel_stage_messages_total{stage=\"stitch\",outcome=\"emitted\"} 1",
            "# TYPE reel_stage_handler_duration_seconds histogram",
            "reel_stage_handler_duration_seconds_bucket{le=\"0.5\",stage=\"stitch\"} 1",
            "reel_stage_handler_duration_seconds_bucket{le=\"0.25\",stage=\"stitch\"} 0",
            "reel_stage_video_bytes_total{stage=\"stitch\"} 10000000",
            "reel_stage_video_seconds_total{stage=\"stitch\"} 0.3",
            "# TYPE process_resident_memory_bytes gauge",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert_eq!(m.counted(MessageOutcome::Emitted), 1);
    }

    #[test]
    fn counts_video_bytes() {
        assert_eq!(video_bytes(&serde_json::json!({"reel": {"sizeBytes": 5}})), 5);
        assert_eq!(video_bytes(&serde_json::json!({"clips": [{"sizeBytes": 2}, {"sizeBytes": 3}]})), 5);
    }
}
