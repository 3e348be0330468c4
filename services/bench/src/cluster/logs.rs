//! What the cluster's logs say: the event log (as the bench's watch subscription saw it)
//! and the "stage done" lines of the stage programs, joined into per-hop latencies.

use super::{HopSample, INPUTS, STAGES};
use reel_testkit::Program;
use std::collections::{BTreeMap, HashSet};

/// An event seen on the event log.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub id: String,
    /// Its type without the common prefix (`job.completed`).
    pub ty: String,
    pub job: String,
    /// The emulator's publish time, ns since the epoch.
    pub publish_ns: i128,
    pub data: serde_json::Value,
}

/// An event type without the common prefix.
pub(super) fn short(ty: &str) -> String {
    ty.strip_prefix(reel_events::types::TYPE_PREFIX).unwrap_or(ty).to_string()
}

/// A "stage done" line of a stage program's log.
#[derive(Debug, Clone)]
pub(super) struct Done {
    pub stage_index: Option<usize>,
    pub ce_id: String,
    pub job: String,
    pub time_ns: i128,
    pub elapsed_ms: f64,
    pub emitted: Vec<String>,
    pub attempt: u32,
    /// The input event's type.
    pub ce_type: String,
    /// What the delivery did to storage, and its peak scratch (runtime `meter`).
    pub storage_ops: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub scratch_bytes: u64,
}

pub(super) type Issues = BTreeMap<(String, String, String), usize>;

/// The "stage done" lines, and WARNING/ERROR lines counted by (stage, severity, message).
pub(super) fn parse_logs(programs: &[Program]) -> (Vec<Done>, Issues) {
    let mut done = Vec::new();
    let mut issues = Issues::new();
    for p in programs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                if !line.trim().is_empty() {
                    *issues
                        .entry((p.name.clone(), "non-JSON".into(), line.chars().take(120).collect()))
                        .or_default() += 1;
                }
                continue;
            };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            let severity = s("severity");
            if severity == "WARNING" || severity == "ERROR" {
                let mut msg = s("message");
                if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    msg = format!("{msg}: {}", e.chars().take(120).collect::<String>());
                }
                *issues.entry((p.name.clone(), severity.clone(), msg)).or_default() += 1;
            }
            if s("message") != "stage done" {
                continue;
            }
            let time_ns = chrono::DateTime::parse_from_rfc3339(&s("time"))
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .unwrap_or(0) as i128;
            let emitted = match v.get("emitted") {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).map(short).collect(),
                Some(serde_json::Value::String(text)) => text.split('"').skip(1).step_by(2).map(short).collect(),
                _ => Vec::new(),
            };
            done.push(Done {
                stage_index: STAGES.iter().position(|x| *x == s("stage")),
                ce_id: s("ce_id"),
                job: s("job_id"),
                time_ns,
                elapsed_ms: v.get("elapsed_ms").and_then(|x| x.as_f64()).unwrap_or(f64::NAN),
                emitted,
                attempt: v.get("delivery_attempt").and_then(|x| x.as_u64()).unwrap_or(1) as u32,
                ce_type: s("ce_type"),
                storage_ops: n("storage_ops"),
                bytes_read: n("bytes_read"),
                bytes_written: n("bytes_written"),
                scratch_bytes: n("scratch_bytes"),
            });
        }
    }
    (done, issues)
}

/// Per-hop latency, publish → handler start, for the jobs in `jobs`:
///
/// * publish = the emulator's publish time of the stage's input event on the event log
///   (the producer publishes every event to the log first, then to the next stage's
///   work topic);
/// * handler start = the emulator's publish time of the stage's output event (its first
///   `emitted` type, published to the log first, right after the handler returned)
///   minus the handler's own `elapsed_ms` from its "stage done" log line (the worker
///   measures it from just before `Handler::handle` to just before publishing).
///
/// So latency = (output publish time − input publish time) − handler time. Both ends
/// include one publish's client-side batching and round trip (the producer's on the
/// input side, the consumer's on the output side), which cancel; `elapsed_ms` is
/// truncated to whole milliseconds. Returns the samples, the hops that could not be
/// computed by reason, and how many "stage done" lines came from a redelivery.
pub(super) fn hop_samples(
    events: &[Seen],
    done: &[Done],
    jobs: &HashSet<String>,
) -> (Vec<HopSample>, BTreeMap<String, usize>, usize) {
    let mut samples = Vec::new();
    let mut gaps: BTreeMap<String, usize> = BTreeMap::new();
    let mut redeliveries = 0;
    let mut seen_hops: HashSet<(usize, String)> = HashSet::new();
    let mut ordered: Vec<&Done> = done.iter().filter(|d| jobs.contains(&d.job)).collect();
    ordered.sort_by_key(|d| d.time_ns);
    for d in ordered {
        let Some(stage) = d.stage_index else { continue };
        if d.attempt > 1 {
            redeliveries += 1;
        }
        // The first handler run per stage and job.
        if !seen_hops.insert((stage, d.job.clone())) {
            continue;
        }
        let Some(input) = events.iter().find(|e| e.id == d.ce_id) else {
            *gaps.entry(format!("{}: input event not on the log", STAGES[stage])).or_default() += 1;
            continue;
        };
        if input.ty != INPUTS[stage] {
            *gaps.entry(format!("{}: consumed {} (not {})", STAGES[stage], input.ty, INPUTS[stage])).or_default() += 1;
            continue;
        }
        let Some(out_ty) = d.emitted.first() else {
            *gaps.entry(format!("{}: emitted nothing", STAGES[stage])).or_default() += 1;
            continue;
        };
        // The output event: published after the input, before the log line (20 ms slack
        // for the two clocks' reading order), the latest such.
        let out = events
            .iter()
            .filter(|e| {
                e.job == d.job
                    && &e.ty == out_ty
                    && e.publish_ns >= input.publish_ns
                    && e.publish_ns <= d.time_ns + 20_000_000
            })
            .max_by_key(|e| e.publish_ns);
        let Some(out) = out else {
            *gaps.entry(format!("{}: output event {out_ty} not on the log", STAGES[stage])).or_default() += 1;
            continue;
        };
        let start_ns = out.publish_ns as f64 - d.elapsed_ms * 1e6;
        let ms = (start_ns - input.publish_ns as f64) / 1e6;
        if ms.is_nan() {
            *gaps.entry(format!("{}: no elapsed_ms", STAGES[stage])).or_default() += 1;
            continue;
        }
        samples.push(HopSample { stage, job: d.job.clone(), ms, attempt: d.attempt });
    }
    (samples, gaps, redeliveries)
}

// ---------------------------------------------------------------------------------------
#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, ty: &str, job: &str, ms: i128) -> Seen {
        Seen {
            id: id.into(),
            ty: ty.into(),
            job: job.into(),
            publish_ns: ms * 1_000_000,
            data: serde_json::Value::Null,
        }
    }

    /// A "stage done" line at `ms` (since the epoch).
    fn done(stage: usize, ce_id: &str, job: &str, ms: i128, elapsed_ms: f64, emitted: &str, attempt: u32) -> Done {
        Done {
            stage_index: Some(stage),
            ce_id: ce_id.into(),
            job: job.into(),
            time_ns: ms * 1_000_000,
            elapsed_ms,
            emitted: vec![emitted.into()],
            attempt,
            ce_type: String::new(),
            storage_ops: 0,
            bytes_read: 0,
            bytes_written: 0,
            scratch_bytes: 0,
        }
    }

    #[test]
    fn hops_are_output_minus_input_minus_handler() {
        let events = vec![
            seen("r1", "stitch.requested", "j", 1000),
            seen("v1", "job.validated", "j", 1100),
            seen("d1", "job.downloaded", "j", 2100),
        ];
        let done = vec![
            done(0, "r1", "j", 1105, 60.0, "job.validated", 1),
            done(1, "v1", "j", 2105, 990.0, "job.downloaded", 1),
            // Another job's line is ignored.
            Done { emitted: vec![], ..done(1, "x", "k", 0, 1.0, "", 2) },
        ];
        let jobs: HashSet<String> = ["j".to_string()].into();
        let (samples, gaps, redeliveries) = hop_samples(&events, &done, &jobs);
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(redeliveries, 0);
        assert_eq!(samples.len(), 2);
        assert!((samples[0].ms - 40.0).abs() < 1e-6);
        assert!((samples[1].ms - 10.0).abs() < 1e-6);
    }

    #[test]
    fn missing_events_are_counted_not_guessed() {
        let events = vec![seen("r1", "stitch.requested", "j", 1000)];
        let done = vec![done(0, "r1", "j", 1105, 60.0, "job.validated", 1)];
        let (samples, gaps, _) = hop_samples(&events, &done, &["j".to_string()].into());
        assert!(samples.is_empty());
        assert_eq!(gaps.values().sum::<usize>(), 1);
    }
}

/// How one completed job's estimates of its completion held up.
#[derive(Debug, Clone)]
pub struct JobEta {
    /// The phase it ran in.
    pub phase: String,
    /// Whether its first progress event carried an estimate.
    pub first_has_estimate: bool,
    /// At 10, 50 and 90 % overall progress: |estimatedCompletion − the job.completed's
    /// publish time| of the first progress event at or past that, s.
    pub errors: BTreeMap<u32, f64>,
}

/// The progress levels the estimate's error is reported at.
pub const ETA_LEVELS: [u32; 3] = [10, 50, 90];

/// [`JobEta`] of every job of `events` that completed.
pub(super) fn job_etas(events: &[Seen], phase: &str) -> Vec<JobEta> {
    let mut out = Vec::new();
    for done in events.iter().filter(|e| e.ty == "job.completed") {
        let mut progress: Vec<&Seen> = events.iter().filter(|e| e.ty == "job.progress" && e.job == done.job).collect();
        progress.sort_by_key(|e| e.publish_ns);
        let Some(first) = progress.first() else { continue };
        let estimate_ns = |e: &Seen| {
            let text = e.data.get("estimatedCompletion")?.as_str()?;
            let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
            at.timestamp_nanos_opt().map(i128::from)
        };
        let mut errors = BTreeMap::new();
        for level in ETA_LEVELS {
            let reached = progress
                .iter()
                .find(|e| e.data.get("progress").and_then(|p| p.as_f64()).is_some_and(|p| p >= f64::from(level)));
            if let Some(ns) = reached.and_then(|e| estimate_ns(e)) {
                errors.insert(level, (ns - done.publish_ns).abs() as f64 / 1e9);
            }
        }
        out.push(JobEta { phase: phase.to_string(), first_has_estimate: estimate_ns(first).is_some(), errors });
    }
    out
}
