//! The markdown report, the machine description and the profile analysis.

use crate::cluster;
use crate::proc::ToolRun;
use crate::stats::{self, Summary};
use crate::units::{flat, met, mib, secs};
use crate::{PathResult, Profile, Results};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// RSS target of a stage process, MiB.
const STAGE_RSS_MIB: f64 = 50.0;
/// Above this relative spread (max − min) / median, wall times are called noisy.
const NOISY_SPREAD: f64 = 0.25;

/// reel's median CPU time / bare ffmpeg's.
fn cpu_ratio(r: &PathResult) -> Option<f64> {
    let c = r.contenders.get(1)?.cpu_summary()?;
    let b = r.contenders.first()?.cpu_summary()?;
    stats::ratio(c.median, b.median)
}

/// Embedded per-hop p50 target, ms.
const EMBEDDED_HOP_P50_MS: f64 = 2.0;

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
}

/// The machine, as (what, value) rows.
pub fn machine(ffmpeg: &Path) -> Vec<(String, String)> {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let mem = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    let ffv = std::process::Command::new(ffmpeg)
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.split(" Copyright").next().unwrap_or(l).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let libs = std::process::Command::new("ldd")
        .arg(ffmpeg.with_file_name("ffprobe"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count());
    let ffv = match libs {
        Some(n) => format!("{ffv} (ffprobe links {n} shared libraries)"),
        None => ffv,
    };
    vec![
        ("CPU".into(), format!("{cpu}, {nproc} logical CPU(s) (nproc)")),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("ffmpeg".into(), ffv),
        ("reel".into(), format!("release build of the working tree at commit {rev}")),
    ]
}

/// (event type, publish time ns) of each event, and the stitch mode.
pub type Timeline = (Vec<(String, u128)>, Option<String>);

/// The job's events from a `REEL_HOME/events.jsonl`: (short type, publish time ns), and
/// the stitch mode from `job.stitched`.
pub fn timeline(log: &Path) -> Result<Timeline> {
    let mut out = Vec::new();
    let mut mode = None;
    for m in reel_runtime::embedded::EventLog::read(log)? {
        let ty = m.message.attributes.get("ce-type").cloned().unwrap_or_default();
        let short = ty.strip_prefix("phoenix.reel.v1.").unwrap_or(&ty).to_string();
        let ns = m.publish_time.timestamp_nanos_opt().unwrap_or(0).max(0) as u128;
        if short == "job.stitched" {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.message.data) {
                mode = v.pointer("/reel/mode").and_then(|x| x.as_str()).map(str::to_string);
            }
        }
        out.push((short, ns));
    }
    Ok((out, mode))
}

fn mib_s(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", mib(k))).unwrap_or_else(|| "—".into())
}

fn ms(us: f64) -> String {
    if us < 1000.0 {
        format!("{:.3} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// What kind of child process a wrapped run was.
pub fn kind(t: &ToolRun) -> &'static str {
    let has = |s: &str| t.args.iter().any(|a| a == s);
    match t.tool.as_str() {
        "ffprobe" if has("-show_data_hash") => "ffprobe: codec-header fingerprint",
        "ffprobe" => "ffprobe: probe",
        "ffmpeg" if has("concat") => "ffmpeg: concat -c copy",
        "ffmpeg" if has("-filter_complex") => "ffmpeg: normalise (re-encode)",
        "ffmpeg" if has("-version") => "ffmpeg -version (install check)",
        _ => "ffmpeg: other",
    }
}

/// A phase of a profiled run.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Its name.
    pub name: String,
    /// Start, ns since the epoch.
    pub start: u128,
    /// End.
    pub end: u128,
}

/// The phases of a run, from the job's events: start-up, the five stages, exit.
pub fn phases(p: &Profile) -> Vec<Phase> {
    let at = |ty: &str| p.timeline.iter().find(|(t, _)| t == ty).map(|(_, ns)| *ns);
    let marks = [
        ("start-up (process start → request published)", Some(p.started_ns)),
        ("validate", at("stitch.requested")),
        ("download (fetch + probe clips)", at("job.validated")),
        ("stitch", at("job.downloaded")),
        ("upload (to the output path)", at("job.stitched")),
        ("finalize", at("job.uploaded")),
        ("exit (job completed → process gone)", at("job.completed")),
    ];
    if marks.iter().any(|(_, t)| t.is_none()) {
        return vec![Phase { name: "whole run (events missing)".into(), start: p.started_ns, end: p.ended_ns }];
    }
    let mut out = Vec::new();
    for (i, (name, start)) in marks.iter().enumerate() {
        let end = marks.get(i + 1).and_then(|(_, t)| *t).unwrap_or(p.ended_ns);
        out.push(Phase { name: name.to_string(), start: start.unwrap_or(0), end: end.max(start.unwrap_or(0)) });
    }
    out
}

/// Length of the union of `[start, end)` intervals clipped to `[lo, hi)`, ns.
pub fn union_within(intervals: &[(u128, u128)], lo: u128, hi: u128) -> u128 {
    let mut v: Vec<(u128, u128)> =
        intervals.iter().map(|&(s, e)| (s.max(lo), e.min(hi))).filter(|(s, e)| s < e).collect();
    v.sort();
    let mut total = 0;
    let mut cur: Option<(u128, u128)> = None;
    for (s, e) in v {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

/// Whether a child process is the work itself (the join or an encode), which bare
/// ffmpeg does too, rather than overhead.
fn is_main_work(k: &str) -> bool {
    matches!(k, "ffmpeg: concat -c copy" | "ffmpeg: normalise (re-encode)")
}

/// The overhead children of a run: (how many, summed wall s, wall-clock s they occupied
/// (union of their intervals), most running at once).
fn overhead_children(p: &Profile) -> (usize, f64, f64, usize) {
    let tools: Vec<&ToolRun> = p.tools.iter().filter(|t| !is_main_work(kind(t))).collect();
    let intervals: Vec<(u128, u128)> = tools.iter().map(|t| (t.start_unix_ns, t.start_unix_ns + t.wall_ns)).collect();
    let sum = tools.iter().map(|t| t.wall_ns as f64 / 1e9).sum();
    let union = union_within(&intervals, 0, u128::MAX) as f64 / 1e9;
    (tools.len(), sum, union, max_concurrency(&intervals))
}

/// The largest number of `[start, end)` intervals that overlap at one moment.
pub fn max_concurrency(intervals: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = intervals.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant: touching intervals do not overlap.
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in edges {
        cur += d;
        best = best.max(cur);
    }
    best.max(0) as usize
}

/// Per-phase breakdown: (phase, wall s, [(kind, runs, s)], child s, reel's own s).
type PhaseRow = (String, f64, Vec<(&'static str, usize, f64)>, f64, f64);

fn breakdown(p: &Profile) -> Vec<PhaseRow> {
    let mut rows = Vec::new();
    for ph in phases(p) {
        let tools: Vec<&ToolRun> =
            p.tools.iter().filter(|t| t.start_unix_ns >= ph.start && t.start_unix_ns < ph.end).collect();
        let intervals: Vec<(u128, u128)> =
            tools.iter().map(|t| (t.start_unix_ns, t.start_unix_ns + t.wall_ns)).collect();
        let child = union_within(&intervals, ph.start, ph.end.max(intervals.iter().map(|i| i.1).max().unwrap_or(0)))
            as f64
            / 1e9;
        let wall = (ph.end - ph.start) as f64 / 1e9;
        let mut kinds: Vec<(&'static str, usize, f64)> = Vec::new();
        for t in tools {
            let k = kind(t);
            match kinds.iter_mut().find(|(n, _, _)| *n == k) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t.wall_ns as f64 / 1e9;
                }
                None => kinds.push((k, 1, t.wall_ns as f64 / 1e9)),
            }
        }
        rows.push((ph.name, wall, kinds, child, (wall - child).max(0.0)));
    }
    rows
}

/// (kind, runs, total s, mean ms, max RSS KiB) over a whole run.
fn by_kind(p: &Profile) -> Vec<(&'static str, usize, f64, f64, u64)> {
    let mut out: Vec<(&'static str, usize, f64, f64, u64)> = Vec::new();
    for t in &p.tools {
        let k = kind(t);
        let s = t.wall_ns as f64 / 1e9;
        match out.iter_mut().find(|e| e.0 == k) {
            Some(e) => {
                e.1 += 1;
                e.2 += s;
                e.4 = e.4.max(t.maxrss_kib);
            }
            None => out.push((k, 1, s, 0.0, t.maxrss_kib)),
        }
    }
    for e in &mut out {
        e.3 = e.2 / e.1 as f64 * 1000.0;
    }
    out
}

fn max_rss_of(p: &Profile, tool: &str) -> Option<u64> {
    p.tools.iter().filter(|t| t.tool == tool).map(|t| t.maxrss_kib).max()
}

fn path_ratio(r: &PathResult, i: usize) -> Option<(f64, Summary, Summary)> {
    let b = r.contenders.first()?.summary()?;
    let c = r.contenders.get(i)?.summary()?;
    Some((stats::ratio(c.median, b.median)?, c, b))
}

/// The copy-path profiles (large, small) in order, when both exist.
fn copy_profiles(res: &Results) -> Vec<&Profile> {
    res.profiles.iter().filter_map(|p| p.as_ref().ok()).filter(|p| p.label == "copy path").collect()
}

fn hop_summary(res: &Results, i: usize) -> Option<(f64, f64, f64, f64)> {
    let h = res.bus.as_ref()?.as_ref().ok()?.get(i)?;
    let l = &h.latencies_us;
    Some((
        stats::percentile(l, 50.0)?,
        stats::percentile(l, 95.0)?,
        stats::percentile(l, 99.0)?,
        l.iter().copied().fold(0.0, f64::max),
    ))
}

/// Renders the whole report.
pub fn render(res: &Results) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "# reel benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `scripts/bench.sh{}` (the `reel-bench` program, services/bench) on {}, **{} mode**, {} timed run(s) per contender; the whole benchmark took {:.0} s. Do not edit by hand: rerun the script.\n",
        if res.mode == "quick" { " --quick" } else { "" },
        res.started,
        res.mode,
        res.runs,
        res.total_seconds
    );

    // Targets.
    let _ = writeln!(w, "## Targets (issue 7)\n");
    let _ = writeln!(w, "| target | figure | result |");
    let _ = writeln!(w, "| --- | --- | --- |");
    for (path, label) in [
        (&res.copy, "copy path ≤ 0.5 × bare ffmpeg (issue 14)"),
        (&res.reencode, "re-encode path ≤ 1.05 × bare ffmpeg"),
    ] {
        match path {
            Some(Ok(r)) => match path_ratio(r, 1) {
                Some((ratio, c, b)) => {
                    let ok = ratio <= r.target_ratio;
                    let by = if ok {
                        String::new()
                    } else {
                        format!(" by {:.2}× ({:+.2} s)", ratio - r.target_ratio, c.median - b.median * r.target_ratio)
                    };
                    let fastest = stats::ratio(c.min, b.min).unwrap_or(f64::NAN);
                    let cpu = cpu_ratio(r).unwrap_or(f64::NAN);
                    let spread = c.relative_spread().max(b.relative_spread());
                    let agree = [fastest, cpu].iter().all(|x| x.is_nan() || (*x <= r.target_ratio) == ok);
                    let noisy = if spread > NOISY_SPREAD && !agree {
                        format!(
                            " — **inconclusive**: wall times were noisy (spread up to {:.0} %, other work shared the CPUs) and the steadier figures say {}",
                            spread * 100.0,
                            if ok { "missed" } else { "met" }
                        )
                    } else if spread > NOISY_SPREAD {
                        format!(
                            " (wall times noisy, spread up to {:.0} %, but the fastest-run and CPU-time ratios agree)",
                            spread * 100.0
                        )
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        w,
                        "| {label} | {ratio:.2}× median wall ({} vs {}); fastest runs {fastest:.2}×; CPU time {cpu:.2}× | {}{by}{noisy} |",
                        secs(c.median),
                        secs(b.median),
                        met(ok)
                    );
                }
                None => {
                    let _ = writeln!(w, "| {label} | no data | — |");
                }
            },
            Some(Err(e)) => {
                let _ = writeln!(w, "| {label} | failed: {} | — |", one_line(e));
            }
            None => {
                let _ = writeln!(w, "| {label} | skipped | — |");
            }
        }
    }
    let copies = copy_profiles(res);
    let reel_peaks: Vec<(f64, u64)> = res
        .profiles
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .filter_map(|p| p.reel_hwm_kib.map(|k| (p.clip_mb, k.max(p.reel_hwm_timed_kib.unwrap_or(0)))))
        .collect();
    if reel_peaks.is_empty() {
        let _ = writeln!(w, "| each stage's peak RSS ≤ {STAGE_RSS_MIB} MiB (embedded: one reel process runs all five) | not measured | — |");
    } else {
        let worst = reel_peaks.iter().map(|x| x.1).max().unwrap_or(0);
        let figs: Vec<String> = res
            .profiles
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter_map(|p| {
                p.reel_hwm_kib.map(|k| {
                    format!(
                        "{:.1} MiB ({}, {:.1} MB clips)",
                        mib(k.max(p.reel_hwm_timed_kib.unwrap_or(0))),
                        p.label,
                        p.clip_mb
                    )
                })
            })
            .collect();
        let _ = writeln!(
            w,
            "| each stage's peak RSS ≤ {STAGE_RSS_MIB} MiB (embedded: one reel process runs all five stages) | {} | {} |",
            figs.join("; "),
            met(mib(worst) <= STAGE_RSS_MIB)
        );
    }
    if let [large, small, ..] = copies.as_slice() {
        if let (Some(l), Some(s)) = (large.reel_hwm_kib, small.reel_hwm_kib) {
            let _ = writeln!(
                w,
                "| … and flat with clip size (large within 10 % + 2 MiB of small) | {:.1} MiB at {:.1} MB clips vs {:.1} MiB at {:.1} MB clips ({:+.1} MiB) | {} |",
                mib(l),
                large.clip_mb,
                mib(s),
                small.clip_mb,
                mib(l) - mib(s),
                met(flat(l, s))
            );
        }
    }
    match hop_summary(res, 0) {
        Some((p50, p95, _, _)) => {
            let _ = writeln!(
                w,
                "| per-hop p50 ≤ {EMBEDDED_HOP_P50_MS} ms, embedded bus | p50 {} / p95 {} (in-memory topic); persisted: {} | {} |",
                ms(p50),
                ms(p95),
                hop_summary(res, 1).map(|h| format!("p50 {} / p95 {}", ms(h.0), ms(h.1))).unwrap_or_else(|| "—".into()),
                met(p50 / 1000.0 <= EMBEDDED_HOP_P50_MS && hop_summary(res, 1).is_none_or(|h| h.0 / 1000.0 <= EMBEDDED_HOP_P50_MS))
            );
        }
        None => {
            let _ = writeln!(w, "| per-hop p50 ≤ {EMBEDDED_HOP_P50_MS} ms, embedded bus | not measured | — |");
        }
    }
    for row in res.cluster.target_rows() {
        let (fig, result) = cluster::row_cells(row);
        let _ = writeln!(w, "| {} — {} (emulators) | {fig} | {result} |", row.what, row.target);
    }
    let _ = writeln!(w);

    // Machine.
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n| --- | --- |");
    for (k, v) in &res.machine {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let _ = writeln!(
        w,
        "| load average (1/5/15 min) | {} at the start, {} at the end (anything above ~0 besides the benchmark means other work shared the 2 cores: compare the spreads) |",
        res.load.0, res.load.1
    );
    let _ = writeln!(w);

    // Workloads.
    let _ = writeln!(w, "## Workloads\n");
    let _ = writeln!(w, "Generated with ffmpeg (`testsrc2` + temporal `noise`, libx264 ultrafast at a fixed bitrate, AAC), cached under `target/bench-corpus/`.\n");
    let _ = writeln!(w, "| corpus | clips | this run |\n| --- | --- | --- |");
    for (name, desc, generated, secs_) in &res.corpora {
        let how = if *generated { format!("generated in {secs_:.0} s") } else { "reused from the cache".into() };
        let _ = writeln!(w, "| `{name}` | {desc} | {how} |");
    }
    let _ = writeln!(w);

    // Paths.
    for path in [&res.copy, &res.reencode].into_iter().flatten() {
        match path {
            Ok(r) => render_path(w, r, res),
            Err(e) => {
                let _ = writeln!(w, "## A timed path failed\n\n```\n{e}\n```\n");
            }
        }
    }

    // RSS.
    render_rss(w, res);

    // Bus.
    let _ = writeln!(w, "## Embedded bus: per-hop latency\n");
    match &res.bus {
        Some(Ok(hops)) => {
            let _ = writeln!(
                w,
                "`reel_runtime::embedded::EmbeddedBus`, one topic and one subscription, ~1 KB messages with CloudEvent attributes; latency = `publish` called → the subscriber's `receive(sub, 1, …)` returned (where the worker starts the handler); {} messages per experiment after 50 warm-up messages (burst: none). Measured in-process on a multi-threaded tokio runtime, as reel runs.\n",
                res.messages
            );
            let _ = writeln!(w, "| experiment | messages | p50 | p95 | p99 | max | throughput |\n| --- | --- | --- | --- | --- | --- | --- |");
            for h in hops {
                let l = &h.latencies_us;
                let p = |q| stats::percentile(l, q).map(ms).unwrap_or_else(|| "—".into());
                let max = l.iter().copied().fold(0.0, f64::max);
                let tp = h.throughput_per_s.map(|t| format!("{t:.0} msg/s")).unwrap_or_else(|| "—".into());
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} | {tp} |",
                    h.label,
                    l.len(),
                    p(50.0),
                    p(95.0),
                    p(99.0),
                    ms(max)
                );
            }
            let _ = writeln!(w);
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "failed: {e}\n");
        }
        None => {
            let _ = writeln!(w, "skipped\n");
        }
    }

    // Cluster.
    res.cluster.render(w);

    // Profiles.
    render_profiles(w, res);

    // What-if.
    match &res.whatif {
        Some(Ok(wi)) => {
            let _ = writeln!(w, "## The copy path's overheads in isolation\n");
            let _ = writeln!(
                w,
                "reel's own ffprobe commands (arguments taken from the profiled run) over the {} large clips, and one checksum pass over their bytes; median of {} alternating repetitions.\n",
                wi.clips,
                res.runs
            );
            let _ = writeln!(w, "| variant | median | min – max |\n| --- | --- | --- |");
            for v in &wi.variants {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} – {} |",
                    v.what,
                    secs(v.summary.median),
                    secs(v.summary.min),
                    secs(v.summary.max)
                );
            }
            let _ = writeln!(w);
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "## The copy path's overheads in isolation\n\nfailed: {}\n", one_line(e));
        }
        None => {}
    }

    // reel-api's state.
    match &res.api {
        Some(Ok(api)) => w.push_str(&crate::apimem::markdown(api)),
        Some(Err(e)) => {
            let _ = writeln!(w, "## reel-api: memory and start time\n\nfailed: {}\n", one_line(e));
        }
        None => {}
    }

    // Findings.
    let findings = findings(res);
    if !findings.is_empty() {
        let _ = writeln!(w, "## Findings\n");
        for f in findings {
            let _ = writeln!(w, "- {f}");
        }
        let _ = writeln!(w);
    }

    // Method.
    let _ = writeln!(w, "## Method\n");
    for line in [
        "Timed runs alternate the contenders (bare, reel, bare, reel, …); the copy path has one untimed warm-up of each first. Every clip is read once before a path starts, so all contenders see a warm page cache. Medians are reported with min–max and the spread (max − min) / median.",
        "Wall time is spawn → reap (`wait4`) of the contender's process (for the per-clip bare re-encode: first spawn → last reap of the sequence). CPU time is user + system time of the process and all its children (`wait4`'s rusage). The targets are on the median wall time; when other work shares the machine (see the load average) wall times get noisy, so the ratio of the fastest runs and the CPU-time ratio are shown too: a verdict is called inconclusive when the spread is above 25 % and they disagree with the medians.",
        "Every reel run gets a fresh, empty `REEL_HOME` under `target/bench-run/` (same filesystem as the clips, so reel's hard links work) and an environment without `REEL_*`, cloud or emulator variables; outputs are deleted before each run, outside the timing.",
        "Peak RSS: bare ffmpeg's from `wait4`'s `ru_maxrss`. reel's own from `/proc/PID/status` `VmHWM`, polled every 10 ms while it runs (`ru_maxrss` of reel would include its largest child). reel's ffmpeg/ffprobe children were measured in a separate profiled run with `REEL_FFMPEG`/`REEL_FFPROBE` pointing at a wrapper (`reel-bench __wrap`) that `wait4`s the real tool and logs its arguments, times and `ru_maxrss`. The wrapper adds ~1–2 ms per child (counted as reel's own time in the profile), so profiled runs are never used for the timed medians.",
        "The profile's phases come from the publish times of the job's events in `REEL_HOME/events.jsonl`; child processes are assigned to the phase in which they started.",
        "The re-encode contender's per-clip commands are rebuilt from reel's recipe (`reel_media::EncodeTarget`, docs/MEDIA.md) and compared argument by argument with the commands reel ran in the profiled run.",
    ] {
        let _ = writeln!(w, "- {line}");
    }
    for line in res.cluster.method() {
        let _ = writeln!(w, "- {line}");
    }
    o
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

fn render_path(w: &mut String, r: &PathResult, res: &Results) {
    let _ = writeln!(w, "## {} (wall time)\n", capitalize(&r.title));
    let _ = writeln!(w, "Workload: {}.\n", r.workload);
    let _ = writeln!(w, "| contender | median | min – max | spread | ratio to bare ffmpeg (medians) | ratio of fastest runs | CPU time (user + sys, median) | CPU ratio | peak RSS (`wait4`) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let base = r.contenders.first().and_then(|c| c.summary());
    let base_cpu = r.contenders.first().and_then(|c| c.cpu_summary());
    for (i, c) in r.contenders.iter().enumerate() {
        let Some(s) = c.summary() else { continue };
        let ratio = base.and_then(|b| stats::ratio(s.median, b.median)).map(|x| format!("{x:.2}×")).unwrap_or_default();
        let ratio = if i == 1 { format!("**{ratio}** (target ≤ {:.2}×)", r.target_ratio) } else { ratio };
        let rss = c.runs.iter().map(|m| m.tree_maxrss_kib).max();
        let rss = if i == 1 {
            let own = c.runs.iter().filter_map(|m| m.own_hwm_kib).max();
            format!("{} (reel alone: {})", mib_s(rss), mib_s(own))
        } else {
            mib_s(rss)
        };
        let cpu = c.cpu_summary();
        let cpu_ratio = match (cpu, base_cpu) {
            (Some(c), Some(b)) => stats::ratio(c.median, b.median).map(|x| format!("{x:.2}×")).unwrap_or_default(),
            _ => String::new(),
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} – {} | {:.0} % | {ratio} | {} | {} | {cpu_ratio} | {rss} |",
            c.name,
            secs(s.median),
            secs(s.min),
            secs(s.max),
            s.relative_spread() * 100.0,
            base.and_then(|b| stats::ratio(s.min, b.min)).map(|x| format!("{x:.2}×")).unwrap_or_default(),
            cpu.map(|c| secs(c.median)).unwrap_or_default()
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Runs (s, in order):\n");
    for c in &r.contenders {
        let list: Vec<String> = c.walls().iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(w, "- {}: {}", c.name, list.join(", "));
    }
    let _ = writeln!(w);
    for n in &r.notes {
        let _ = writeln!(w, "{n}\n");
    }
    if r.title == "re-encode path" {
        match &res.command_check {
            Some(Ok(n)) => {
                let _ = writeln!(w, "Same commands: the bench's {n} per-clip commands are identical to the ones reel ran (captured through `REEL_FFMPEG`), from `-filter_complex` to the output: same graph, same x264/AAC settings.\n");
            }
            Some(Err(e)) => {
                let _ = writeln!(
                    w,
                    "**Command check failed**: {e}. The bare contender may not do the same work as reel.\n"
                );
            }
            None => {}
        }
    }
    let _ = writeln!(w, "<details><summary>Commands</summary>\n");
    for c in &r.contenders {
        let _ = writeln!(w, "- {}: `{}`", c.name, c.command.replace('`', "'"));
    }
    let _ = writeln!(w, "\n</details>\n");
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn render_rss(w: &mut String, res: &Results) {
    let profiles: Vec<&Profile> = res.profiles.iter().filter_map(|p| p.as_ref().ok()).collect();
    let _ = writeln!(w, "## Peak RSS\n");
    if profiles.is_empty() {
        let _ = writeln!(w, "not measured\n");
        return;
    }
    let _ = writeln!(
        w,
        "In embedded mode (`reel stitch`) all five stages run as tasks in one reel process, so \"each stage's peak\" is bounded by that process's peak. ffmpeg and ffprobe are separate processes started by the stages.\n"
    );
    let _ = writeln!(w, "| workload | mean clip | reel process (all stages), profiled run | reel process, timed runs (largest) | largest ffmpeg child | largest ffprobe child | bare ffmpeg |\n| --- | --- | --- | --- | --- | --- | --- |");
    for p in &profiles {
        let _ = writeln!(
            w,
            "| {} ({} clips) | {:.1} MB | {} | {} | {} | {} | {} |",
            p.label,
            p.clips,
            p.clip_mb,
            mib_s(p.reel_hwm_kib),
            mib_s(p.reel_hwm_timed_kib),
            mib_s(max_rss_of(p, "ffmpeg")),
            mib_s(max_rss_of(p, "ffprobe")),
            mib_s(p.bare_maxrss_kib)
        );
    }
    let _ = writeln!(w);
    for res_err in res.profiles.iter().filter_map(|p| p.as_ref().err()) {
        let _ = writeln!(w, "A profiled run failed: {}\n", one_line(res_err));
    }
}

fn render_profiles(w: &mut String, res: &Results) {
    let profiles: Vec<&Profile> = res.profiles.iter().filter_map(|p| p.as_ref().ok()).collect();
    if profiles.is_empty() {
        return;
    }
    let _ = writeln!(w, "## Where reel's time goes (profiled runs)\n");
    if !res.spawn_floor.is_empty() {
        let _ = writeln!(w, "What starting one child process costs before it reads a byte:\n");
        let _ = writeln!(w, "| command | median wall | min – max | peak RSS |\n| --- | --- | --- | --- |");
        for (name, s, rss) in &res.spawn_floor {
            let _ = writeln!(
                w,
                "| `{name}` | {:.0} ms | {:.0} – {:.0} ms | {:.1} MiB |",
                s.median * 1000.0,
                s.min * 1000.0,
                s.max * 1000.0,
                mib(*rss)
            );
        }
        let _ = writeln!(w);
    }
    for p in profiles {
        let _ = writeln!(
            w,
            "### {}, {:.1} MB clips: {} wall in the profiled run (stitch mode: {})\n",
            p.label,
            p.clip_mb,
            secs(p.wall_s),
            p.mode.as_deref().unwrap_or("?")
        );
        let _ = writeln!(w, "| phase | wall | child processes (runs = summed time) | wall-clock with a child running | reel's own time |\n| --- | --- | --- | --- | --- |");
        for (name, wall, kinds, child, own) in breakdown(p) {
            let k: Vec<String> = kinds.iter().map(|(k, n, s)| format!("{k}: {n} × = {}", secs(*s))).collect();
            let _ = writeln!(
                w,
                "| {name} | {} | {} | {} | {} |",
                secs(wall),
                if k.is_empty() { "—".into() } else { k.join("; ") },
                secs(child),
                secs(own)
            );
        }
        let _ = writeln!(w);
        let _ =
            writeln!(w, "| child process | runs | total | mean | largest peak RSS |\n| --- | --- | --- | --- | --- |");
        for (k, n, total, mean_ms, rss) in by_kind(p) {
            let _ = writeln!(w, "| {k} | {n} | {} | {mean_ms:.0} ms | {:.1} MiB |", secs(total), mib(rss));
        }
        let _ = writeln!(w);
    }
}

/// Findings with numbers: why a target is missed, from the profiles.
pub fn findings(res: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let profiles: Vec<&Profile> = res.profiles.iter().filter_map(|p| p.as_ref().ok()).collect();
    let explain = |out: &mut Vec<String>, r: &PathResult, p: &Profile| {
        let Some((ratio, c, b)) = path_ratio(r, 1) else {
            return;
        };
        let extra = c.median - b.median;
        let mut parts = Vec::new();
        let kinds = by_kind(p);
        let overhead: Vec<&(&'static str, usize, f64, f64, u64)> =
            kinds.iter().filter(|k| !is_main_work(k.0)).collect();
        let (n_over, t_over, wall_over, conc) = overhead_children(p);
        if n_over > 0 {
            let list: Vec<String> = overhead.iter().map(|k| format!("{} × {} = {}", k.1, k.0, secs(k.2))).collect();
            let floor = res
                .spawn_floor
                .iter()
                .find(|f| f.0.starts_with("ffprobe"))
                .map(|f| format!("; starting an ffprobe that does nothing (`ffprobe -version`) already takes {:.0} ms, so {n_over} spawns cost ≥ {} of process time by themselves", f.1.median * 1000.0, secs(f.1.median * n_over as f64)))
                .unwrap_or_default();
            let how = if conc <= 1 { "one after another".to_string() } else { format!("up to {conc} at a time") };
            parts.push(format!(
                "{n_over} extra child processes that bare ffmpeg does not need ran {how}: {} of process time ({}), occupying {} of reel's wall-clock{floor}",
                secs(t_over),
                list.join(", "),
                secs(wall_over)
            ));
        }
        let rows = breakdown(p);
        let own_total: f64 = rows.iter().map(|r| r.4).sum();
        let mut own_sorted: Vec<&PhaseRow> = rows.iter().collect();
        own_sorted.sort_by(|a, b| b.4.total_cmp(&a.4));
        let top: Vec<String> =
            own_sorted.iter().take(3).filter(|r| r.4 >= 0.005).map(|r| format!("{} {}", r.0, secs(r.4))).collect();
        parts.push(format!(
            "reel's own work outside any child process took {} (largest: {})",
            secs(own_total),
            top.join(", ")
        ));
        let verdict = if ratio <= r.target_ratio { "meets" } else { "misses" };
        out.push(format!(
            "{}: reel {verdict} the target at {ratio:.2}× ({} vs {}, {:+.2} s). In the profiled run ({} wall): {}.",
            capitalize(&r.title),
            secs(c.median),
            secs(b.median),
            extra,
            secs(p.wall_s),
            parts.join("; ")
        ));
    };
    if let Some(Ok(r)) = &res.copy {
        if let Some(p) = profiles.iter().find(|p| p.label == "copy path") {
            explain(&mut out, r, p);
            if let Some((_, c, b)) = path_ratio(r, 1) {
                let (_, _, spawns, _) = overhead_children(p);
                let est = c.median - spawns;
                out.push(format!(
                    "Estimate by subtraction: without the {} of wall-clock its ffprobe / `ffmpeg -version` runs occupied, reel would take ≈ {} ≈ {:.2}× bare ffmpeg; the rest is reel's own time (see the phases above) and its concat run.",
                    secs(spawns),
                    secs(est),
                    est / b.median
                ));
            }
        }
    }
    if let Some(Ok(r)) = &res.reencode {
        if let Some(p) = profiles.iter().find(|p| p.label == "re-encode path") {
            explain(&mut out, r, p);
            if let (Some((_, _, b)), Some(secs_video)) = (path_ratio(r, 1), r.video_seconds) {
                // Wall-clock the overhead children occupied, plus reel's own time.
                let over: f64 = overhead_children(p).2 + breakdown(p).iter().map(|r| r.4).sum::<f64>();
                let per_clip = over / p.clips.max(1) as f64;
                let seed_bare = b.median / secs_video * 450.0;
                let seed_over = per_clip * 15.0;
                out.push(format!(
                    "The re-encode overhead is per clip, not per second of video: {} in the profiled run ({} per clip: wall-clock of ffprobe spawns and reel's own work). On this bounded workload ({secs_video:.0} s of video) that is {:.1} % of bare ffmpeg's {}; for the seed workload re-encoded (15 × 30 s = 450 s of video, ≈ {} of encoding at this run's speed) the same per-clip cost would be ≈ {} ≈ {:.1} % (an estimate by proportion, not measured).",
                    secs(over),
                    secs(per_clip),
                    over / b.median * 100.0,
                    secs(b.median),
                    secs(seed_bare),
                    secs(seed_over),
                    seed_over / seed_bare * 100.0
                ));
            }
            if let Some((fr, fc, _)) = path_ratio(r, 2) {
                out.push(format!(
                    "Re-encode reference: one ffmpeg with a filter_complex concat took {} ({fr:.2}× the per-clip bare run): one encoder for the whole reel instead of one per clip.",
                    secs(fc.median)
                ));
            }
        }
    }
    if let Some(Ok(wi)) = &res.whatif {
        let m = |i: usize| wi.variants.get(i).map(|v| v.summary.median);
        if let (Some(probe), Some(fp), Some(merged), Some(par), Some(crc)) = (m(0), m(1), m(2), m(4), m(5)) {
            out.push(format!(
                "ffprobe passes, measured in isolation on the {} clips with reel's own arguments: a probe per clip (download) {} and a codec-header fingerprint per clip (stitch) {}, one after another; one ffprobe doing both {} (saves {}); doing both {} at a time {} (saves {}). Reading the headers in-process instead of spawning ffprobe would save nearly all of it: most of each ffprobe's time is starting the process (see `ffprobe -version` above).",
                wi.clips,
                secs(probe),
                secs(fp),
                secs(merged),
                secs(probe + fp - merged),
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
                secs(par),
                secs(probe + fp - par),
            ));
            let copies = copy_profiles(res);
            if let [large, small, ..] = copies.as_slice() {
                let (l, s) = (breakdown(large), breakdown(small));
                let grow: Vec<String> = l
                    .iter()
                    .zip(&s)
                    .filter(|(a, b)| a.0 == b.0 && a.4 - b.4 >= 0.03)
                    .map(|(a, b)| format!("{} {:+.2} s", a.0, a.4 - b.4))
                    .collect();
                if !grow.is_empty() {
                    out.push(format!(
                        "reel's own time grows with the bytes: from {:.1} MB to {:.1} MB clips, {} — while one CRC32C pass over all {:.0} MB of clips costs {} here. The embedded store reads whole files to checksum them: `DirStore::head` computes a CRC32C of every file it describes, so download reads each clip once (`head` of the source), stitch reads the reel once (`crc32c_of_file`) and upload reads it again (`head` of the output after the hard link): about three reads of the job's bytes besides ffmpeg's own.",
                        small.clip_mb,
                        large.clip_mb,
                        grow.join(", "),
                        wi.bytes as f64 / 1e6,
                        secs(crc)
                    ));
                }
            }
        }
    }
    if let Some(p) = profiles.iter().find(|p| p.label == "copy path") {
        if let Some(t) = p.tools.iter().find(|t| kind(t) == "ffmpeg: concat -c copy") {
            if let Some(Ok(r)) = &res.copy {
                if let Some(b) = r.contenders.first().and_then(|c| c.summary()) {
                    out.push(format!(
                        "The join itself is not where the time goes: reel's concat ffmpeg ran {} in the profiled run, bare ffmpeg's whole run {} (median).",
                        secs(t.wall_ns as f64 / 1e9),
                        secs(b.median)
                    ));
                }
            }
        }
    }
    out
}

/// A few lines for the terminal.
pub fn summary_lines(res: &Results) -> String {
    let mut s = String::new();
    for (path, name) in [(&res.copy, "copy"), (&res.reencode, "re-encode")] {
        if let Some(Ok(r)) = path {
            if let Some((ratio, c, b)) = path_ratio(r, 1) {
                let _ = writeln!(
                    s,
                    "{name}: reel {} vs bare {} = {ratio:.2}× (target ≤ {:.2}×: {})",
                    secs(c.median),
                    secs(b.median),
                    r.target_ratio,
                    met(ratio <= r.target_ratio)
                );
            }
        }
    }
    for p in res.profiles.iter().filter_map(|p| p.as_ref().ok()) {
        let _ = writeln!(
            s,
            "RSS {} @ {:.1} MB clips: reel {} ffmpeg {} ffprobe {}",
            p.label,
            p.clip_mb,
            mib_s(p.reel_hwm_kib),
            mib_s(max_rss_of(p, "ffmpeg")),
            mib_s(max_rss_of(p, "ffprobe"))
        );
    }
    if let Some((p50, p95, _, _)) = hop_summary(res, 0) {
        let _ = writeln!(s, "embedded hop: p50 {} p95 {}", ms(p50), ms(p95));
    }
    if let Some(Ok(api)) = &res.api {
        s.push_str(&crate::apimem::summary_lines(api));
    }
    s.push_str(&res.cluster.summary());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_intervals() {
        assert_eq!(union_within(&[], 0, 10), 0);
        assert_eq!(union_within(&[(1, 3), (2, 5), (7, 8)], 0, 10), 5);
        assert_eq!(union_within(&[(1, 30)], 5, 10), 5);
    }

    #[test]
    fn concurrency() {
        assert_eq!(max_concurrency(&[]), 0);
        assert_eq!(max_concurrency(&[(0, 2), (2, 4)]), 1);
        assert_eq!(max_concurrency(&[(0, 3), (1, 4), (2, 5), (6, 7)]), 3);
    }

    #[test]
    fn flatness() {
        assert!(flat(20 * 1024, 19 * 1024));
        assert!(!flat(40 * 1024, 20 * 1024));
    }
}
