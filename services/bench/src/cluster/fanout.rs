//! Issue 14's cluster figures: how a re-encode scales out over stitch programs (the
//! fan-out), a model of the original workload on as many instances as it has clips, the
//! bytes each stage program moved for the copy-path job, and each stage's longest
//! delivery and peak scratch against its subscription's ack deadline.
//!
//! The programs log what each delivery did (runtime `meter`: `storage_ops`,
//! `bytes_read`, `bytes_written`, `scratch_bytes` and `elapsed_ms` on "stage done"), and
//! stitch logs each clip it encodes (`encode_ms`, `video_seconds` on "clip encoded").

use super::logs::{Done, Seen};
use super::run::{Ctx, Stack};
use super::{ClusterReport, ClusterRow, JobRun, Status, STAGES};
use crate::units::{met, secs};
use anyhow::Result;
use reel_events::payload::JobCost;
use reel_testkit::Program;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The speed-up 2 stitch programs must reach over 1 (issue 14).
const SPEEDUP_TARGET: f64 = 1.8;
/// The original design's "time to first frame", s.
const MODEL_TARGET_S: f64 = 30.0;
/// The original workload: clips of this length, s, as many as `ORIGINAL_CLIPS`.
const ORIGINAL_CLIP_S: f64 = 30.0;
const ORIGINAL_CLIPS: usize = 15;
/// Bytes a copy-path stage may move through itself, as a share of the reel.
const COPY_IO_SHARE: f64 = 0.01;

/// One re-encode job on the cluster with a given number of stitch programs.
#[derive(Debug, Clone)]
pub struct FanOutRun {
    /// reel-stitch processes.
    pub workers: usize,
    /// `REEL_ENCODE_THREADS`.
    pub threads: u32,
    /// Publish of `stitch.requested` → `job.completed`, s.
    pub wall_s: f64,
    /// `job.downloaded` → `job.stitched` on the event log, s.
    pub stitch_s: f64,
    /// Each clip encoded: (video s, encode ms).
    pub encodes: Vec<(f64, f64)>,
    /// Encode items each program ran.
    pub per_program: Vec<usize>,
    /// Whether the output checked out, or why not.
    pub check: Result<(), String>,
    /// What `job.completed` says the job cost.
    pub cost: Option<JobCost>,
}

/// The longest delivery and largest scratch of one kind of delivery, over every phase.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStat {
    /// Deliveries seen.
    pub count: usize,
    /// Longest handler run, ms.
    pub longest_ms: f64,
    /// Largest scratch at its end (its peak), bytes.
    pub peak_scratch: u64,
    /// Most bytes through the program in one delivery (read + written).
    pub most_bytes: u64,
}

/// The kind of a "stage done" line: its stage, or `stitch (encode item)`.
fn kind(d: &Done) -> String {
    let stage = d.stage_index.map(|i| STAGES[i]).unwrap_or("?");
    if d.ce_type.ends_with(".job.encode") {
        format!("{stage} (encode item)")
    } else {
        stage.to_string()
    }
}

/// Fold a phase's deliveries into the report's per-kind maxima.
pub(super) fn record_deliveries(rep: &mut ClusterReport, done: &[Done]) {
    for d in done {
        let stat = rep.deliveries.entry(kind(d)).or_default();
        stat.count += 1;
        if d.elapsed_ms > stat.longest_ms {
            stat.longest_ms = d.elapsed_ms;
        }
        stat.peak_scratch = stat.peak_scratch.max(d.scratch_bytes);
        stat.most_bytes = stat.most_bytes.max(d.bytes_read + d.bytes_written);
    }
}

/// What each stage program moved for `job`: stage → (bytes read, bytes written, operations).
pub(super) fn job_io(done: &[Done], job: &str) -> BTreeMap<String, (u64, u64, u64)> {
    let mut io: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for d in done.iter().filter(|d| d.job == job) {
        let e = io.entry(d.stage_index.map(|i| STAGES[i]).unwrap_or("?").to_string()).or_default();
        e.0 += d.bytes_read;
        e.1 += d.bytes_written;
        e.2 += d.storage_ops;
    }
    io
}

/// "clip encoded" lines of `programs` for `job`: (program index, video s, encode ms).
fn encodes(programs: &[Program], job: &str) -> Vec<(usize, f64, f64)> {
    let mut out = Vec::new();
    for (i, p) in programs.iter().enumerate() {
        for line in std::fs::read_to_string(&p.log).unwrap_or_default().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["message"] != "clip encoded" || v["job_id"] != job {
                continue;
            }
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            out.push((i, num("video_seconds"), num("encode_ms")));
        }
    }
    out
}

fn first(events: &[Seen], job: &str, ty: &str) -> Option<i128> {
    events.iter().filter(|e| e.job == job && e.ty == ty).map(|e| e.publish_ns).min()
}

/// One re-encode job of the mixed clips on fresh programs, stitch × `workers`, each
/// clip's encode limited to `threads` threads.
pub(super) async fn run_phase(
    ctx: &Ctx,
    rep: &mut ClusterReport,
    paths: &[String],
    expected: f64,
    workers: usize,
    threads: u32,
) -> Result<FanOutRun> {
    let name = format!("fanout-{workers}x{threads}");
    eprintln!("cluster: phase {name}: one re-encode of {} mixed clips, reel-stitch × {workers}, {threads} encode thread(s) each", paths.len());
    let overrides = [("REEL_ENCODE_THREADS".to_string(), threads.to_string())];
    let mut st: Stack = ctx.start_stack(&name, workers, &overrides).await?;
    let sub = ctx.submit(&st, paths, &format!("bench-{name}"), &format!("reels/{name}.mp4")).await?;
    let pending = ctx.wait_jobs(&mut st, std::slice::from_ref(&sub.job), Duration::from_secs(900)).await?;
    let mut stats = Ctx::snapshot(&st);
    let mut run = FanOutRun {
        workers,
        threads,
        wall_s: 0.0,
        stitch_s: 0.0,
        encodes: Vec::new(),
        per_program: Vec::new(),
        check: Err("not checked".into()),
        cost: None,
    };
    let outcome = st.terminal(&sub.job).cloned();
    match outcome {
        Some(done) if done.ty == "job.completed" => {
            run.wall_s = (done.publish_ns - sub.t0_ns) as f64 / 1e9;
            if let (Some(a), Some(b)) =
                (first(&st.events, &sub.job, "job.downloaded"), first(&st.events, &sub.job, "job.stitched"))
            {
                run.stitch_s = (b - a) as f64 / 1e9;
            }
            run.check = ctx.check_output(&sub.output_key, expected, paths.len(), false).await.map(|_| ());
            run.cost = done.data.get("cost").and_then(|c| serde_json::from_value(c.clone()).ok());
        }
        Some(other) => run.check = Err(format!("{}: {}", other.ty, other.data)),
        None => run.check = Err(format!("not finished ({pending} pending)")),
    }
    Ctx::stop(&mut st, &mut stats).await;
    rep.etas.extend(super::logs::job_etas(&st.events, &name));
    let (done, issues) = super::logs::parse_logs(&st.cluster.programs);
    for ((stage, sev, msg), n) in issues {
        *rep.log_issues.entry((name.clone(), stage, sev, msg)).or_default() += n;
    }
    record_deliveries(rep, &done);
    let encoded = encodes(&st.cluster.programs, &sub.job);
    let stitch_programs: Vec<usize> =
        st.cluster.programs.iter().enumerate().filter(|(_, p)| p.name == "stitch").map(|(i, _)| i).collect();
    run.per_program = stitch_programs.iter().map(|i| encoded.iter().filter(|(p, _, _)| p == i).count()).collect();
    run.encodes = encoded.into_iter().map(|(_, s, ms)| (s, ms)).collect();
    if run.encodes.len() != paths.len() {
        run.check = Err(format!("{} clip(s) encoded for {} clips", run.encodes.len(), paths.len()));
    }
    Ok(run)
}

/// The model's figures: (total s, the parts as text).
fn model(rep: &ClusterReport, large: Option<&JobRun>) -> Option<(f64, String)> {
    let one = rep.fanout.iter().find(|r| r.workers == 1 && r.threads == 2 && r.check.is_ok())?;
    // Encode seconds per second of video, per clip shape: the slowest sets the pace.
    let rate = one.encodes.iter().map(|(v, ms)| ms / 1000.0 / v).fold(f64::NAN, f64::max);
    let encoding: f64 = one.encodes.iter().map(|(_, ms)| ms / 1000.0).sum();
    // Everything in the stitch span that is not encoding: the fan-out delivery, the hops
    // of the items, the join (one program, so nothing overlaps).
    let fan_overhead = (one.stitch_s - encoding).max(0.0);
    let longest_clip = ORIGINAL_CLIP_S * rate;
    // Before and after stitch: the large copy job's own stages (the same 15 × 30 s clips).
    let (before, after) = match large {
        Some(j) if j.failure.is_none() => {
            let part = |r: std::ops::Range<usize>| -> f64 {
                j.stages[r].iter().map(|(hop, run)| hop.unwrap_or(0.0) + run.unwrap_or(0.0)).sum::<f64>() / 1000.0
            };
            (part(0..2), part(3..5) + j.stages.get(2).and_then(|s| s.0).unwrap_or(0.0) / 1000.0)
        }
        _ => return None,
    };
    let total = before + fan_overhead + longest_clip + after;
    let text = format!(
        "{} = validate + download of the {ORIGINAL_CLIPS} × {ORIGINAL_CLIP_S:.0} s clips {} (measured, large job) + fan-out and join {} (measured: the 1-program stitch span less its encoding) + one {ORIGINAL_CLIP_S:.0} s clip's encode {} ({:.2} s of encode per s of video, the slowest clip shape at 2 threads: one 2-vCPU instance per clip) + upload and finalize {} (measured, large job)",
        secs(total),
        secs(before),
        secs(fan_overhead),
        secs(longest_clip),
        rate,
        secs(after)
    );
    Some((total, text))
}

/// The rows of this module, appended to the cluster table.
pub(super) fn rows(rep: &ClusterReport, rows: &mut Vec<ClusterRow>) {
    let large = rep.jobs.iter().find(|j| j.phase == "large");
    // Bytes each stage program moved for the copy-path job.
    if let (Some(j), false) = (large, rep.large_io.is_empty()) {
        let reel = j.output_mb * 1e6;
        let parts: Vec<String> = STAGES
            .iter()
            .filter_map(|s| rep.large_io.get(*s).map(|(r, w, ops)| (s, r, w, ops)))
            .map(|(s, r, w, ops)| format!("{s} {} read / {} written ({ops} ops)", bytes(*r), bytes(*w)))
            .collect();
        rows.push(ClusterRow {
            what: format!(
                "copy path on the cluster ({} × {:.1} MB): bytes each stage program read from and wrote to storage (through itself), against the {:.0} MB reel",
                j.clips, j.clip_mb, j.output_mb
            ),
            target: format!("≤ {:.0} % of the reel, each stage after download", COPY_IO_SHARE * 100.0),
            status: Status::Measured {
                figure: format!("{}; largest after download {:.3} % of the reel", parts.join("; "), 100.0 * after_download(rep) / reel.max(1.0)),
                result: met(after_download(rep) <= COPY_IO_SHARE * reel).into(),
            },
            in_targets: true,
        });
    }
    // Scale-out.
    let one = rep.fanout.iter().find(|r| r.workers == 1 && r.threads == 1);
    let two = rep.fanout.iter().find(|r| r.workers == 2 && r.threads == 1);
    let what = "re-encode fan-out: one job of mixed clips, 1 vs 2 reel-stitch programs, encode threads limited to 1 each: `job.downloaded` → `job.stitched` (and publish → `job.completed`)".to_string();
    let status = match (one, two) {
        (Some(a), Some(b)) if a.check.is_ok() && b.check.is_ok() && b.stitch_s > 0.0 => {
            let speedup = a.stitch_s / b.stitch_s;
            Status::Measured {
                figure: format!(
                    "1 program {} ({} end to end), 2 programs {} ({} end to end): **{speedup:.2}×**; encode items per program {:?}",
                    secs(a.stitch_s),
                    secs(a.wall_s),
                    secs(b.stitch_s),
                    secs(b.wall_s),
                    b.per_program
                ),
                result: if speedup >= SPEEDUP_TARGET {
                    met(true).into()
                } else {
                    format!("{} by {:.2}×", met(false), SPEEDUP_TARGET - speedup)
                },
            }
        }
        (Some(a), Some(b)) => Status::Failed(format!(
            "{}; {}",
            a.check.clone().err().unwrap_or_default(),
            b.check.clone().err().unwrap_or_default()
        )),
        _ => Status::NotRun("not measured".into()),
    };
    rows.push(ClusterRow { what, target: format!("≥ {SPEEDUP_TARGET}×"), status, in_targets: true });
    let what = format!(
        "model: the original workload ({ORIGINAL_CLIPS} × {ORIGINAL_CLIP_S:.0} s clips, re-encoded) on {ORIGINAL_CLIPS} Cloud Run instances of 2 vCPU, publish → `job.completed`, from measured parts"
    );
    let status = match model(rep, large) {
        Some((total, text)) => Status::Measured {
            figure: text,
            result: if total < MODEL_TARGET_S {
                met(true).into()
            } else {
                format!("{} by {}", met(false), secs(total - MODEL_TARGET_S))
            },
        },
        None => Status::NotRun("needs the large job and the 1-program, 2-thread fan-out run".into()),
    };
    rows.push(ClusterRow { what, target: format!("< {MODEL_TARGET_S:.0} s"), status, in_targets: true });
}

/// The original design's estimate: $2.70 a month for 300 jobs.
const DESIGN_MONTH_USD: f64 = 2.70;

/// What one job costs, as its `job.completed` reports it, and what a month of them costs.
pub(super) fn cost_rows(rep: &ClusterReport, rows: &mut Vec<ClusterRow>) {
    let mut kinds: Vec<(String, JobCost)> = Vec::new();
    if let Some(j) = rep.jobs.iter().find(|j| j.phase == "large") {
        if let Some(c) = &j.cost {
            kinds.push((format!("copy path, {} × {:.0} MB clips", j.clips, j.clip_mb), c.clone()));
        }
    }
    if let Some(b) = rep.bursts.first() {
        if !b.costs.is_empty() {
            let mut mean = JobCost::default();
            b.costs.iter().for_each(|c| mean.add(c));
            let n = b.costs.len() as f64;
            mean.cpu_seconds /= n;
            mean.memory_gib_seconds /= n;
            mean.estimated_usd /= n;
            mean.storage_operations /= b.costs.len() as u64;
            mean.bytes_moved /= b.costs.len() as u64;
            kinds.push((format!("small job (2 × 2 s), mean of {}", b.costs.len()), mean));
        }
    }
    if let Some(r) = rep.fanout.iter().find(|r| r.workers == 1 && r.threads == 2) {
        if let Some(c) = &r.cost {
            kinds.push((format!("re-encode of {} mixed clips (fan-out)", r.encodes.len()), c.clone()));
        }
    }
    if kinds.is_empty() {
        return;
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(what, c)| {
            format!(
                "{what}: **${:.5}** ({:.1} CPU s, {:.0} GiB·s, {} storage ops, {} moved)",
                c.estimated_usd,
                c.cpu_seconds,
                c.memory_gib_seconds,
                c.storage_operations,
                bytes(c.bytes_moved)
            )
        })
        .collect();
    rows.push(ClusterRow {
        what: "cost of one job, as its `job.completed` reports it (every delivery of every stage; programs sized as terraform deploys them; Cloud Run and Cloud Storage list prices)".into(),
        target: "—".into(),
        status: Status::Measured { figure: parts.join("; "), result: "—".into() },
        in_targets: false,
    });
    let dearest = kinds.iter().map(|(_, c)| c.estimated_usd).fold(0.0, f64::max);
    let cheapest = kinds.iter().map(|(_, c)| c.estimated_usd).fold(f64::INFINITY, f64::min);
    rows.push(ClusterRow {
        what: format!(
            "a month of jobs at these per-job costs, against the original design's ${DESIGN_MONTH_USD:.2} for 300 jobs"
        ),
        target: format!("≤ ${DESIGN_MONTH_USD:.2} for 300 jobs"),
        status: Status::Measured {
            figure: format!(
                "300 jobs: ${:.2} – ${:.2}; 10,000 jobs: ${:.2} – ${:.2} (cheapest – dearest kind above)",
                300.0 * cheapest,
                300.0 * dearest,
                10_000.0 * cheapest,
                10_000.0 * dearest
            ),
            result: met(300.0 * dearest <= DESIGN_MONTH_USD).into(),
        },
        in_targets: true,
    });
}

/// The most one stage after download moved through itself for the large job, bytes.
fn after_download(rep: &ClusterReport) -> f64 {
    rep.large_io
        .iter()
        .filter(|(s, _)| !matches!(s.as_str(), "validate" | "download"))
        .map(|(_, (r, w, _))| (r + w) as f64)
        .fold(0.0, f64::max)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// The ack deadline of the subscription a kind of delivery comes from, s.
fn ack_deadline(kind: &str) -> Option<u64> {
    let topology = reel_runtime::topology::Topology::standard(reel_runtime::topology::DEFAULT_PREFIX);
    let names = topology.names();
    let sub = match kind {
        "stitch (encode item)" => names.encode_subscription(),
        stage => names.subscription(stage.parse().ok()?),
    };
    topology.subscription(&sub).map(|s| s.ack_deadline.as_secs())
}

/// The per-kind table of longest delivery and peak scratch.
pub(super) fn render_deliveries(rep: &ClusterReport, w: &mut String) {
    if rep.deliveries.is_empty() {
        return;
    }
    let _ = writeln!(w, "### Longest delivery and peak scratch, per stage\n");
    let _ = writeln!(
        w,
        "Over every phase above: each delivery's handler run (`elapsed_ms` of its \"stage done\" line), its scratch directory's size when it ended (nothing in scratch is removed before then, so this is its peak), and the bytes it moved through itself. Push mode cannot extend a delivery's ack deadline, so the longest delivery must fit its subscription's (docs/OPERATIONS.md, \"Every delivery is bounded\").\n"
    );
    let _ = writeln!(
        w,
        "| deliveries of | count | longest | ack deadline (push) | fits | peak scratch | most bytes through the program |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for (kind, s) in &rep.deliveries {
        let deadline = ack_deadline(kind);
        let fits = deadline.map(|d| met(s.longest_ms / 1000.0 < d as f64)).unwrap_or("—");
        let _ = writeln!(
            w,
            "| {kind} | {} | {} | {} | {fits} | {} | {} |",
            s.count,
            secs(s.longest_ms / 1000.0),
            deadline.map(|d| format!("{d} s")).unwrap_or_else(|| "—".into()),
            bytes(s.peak_scratch),
            bytes(s.most_bytes)
        );
    }
    let _ = writeln!(w);
    for r in &rep.fanout {
        let per_clip: Vec<String> =
            r.encodes.iter().map(|(v, ms)| format!("{v:.1} s in {}", secs(ms / 1000.0))).collect();
        let _ = writeln!(
            w,
            "Fan-out run, reel-stitch × {}, {} encode thread(s): clips encoded {}.\n",
            r.workers,
            r.threads,
            per_clip.join(", ")
        );
    }
}
