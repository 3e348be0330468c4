//! The cluster's figures as the report's rows, configuration and method lines.

use super::logs::{JobEta, ETA_LEVELS};
use super::{
    ClusterReport, ClusterRow, Corpora, HopSample, Options, ProcStat, RssPhase, Status, HOP_P50_TARGET_MS, INPUTS,
    STAGES, STAGE_RSS_MIB,
};
use crate::stats;
use crate::units::{flat, met, mib, secs};
use std::fmt::Write as _;

fn pct(v: &[f64], p: f64) -> f64 {
    stats::percentile(v, p).unwrap_or(f64::NAN)
}

fn ms_s(ms: f64) -> String {
    if ms.is_nan() {
        "—".into()
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The largest VmHWM of `stage` in a phase.
fn stage_hwm(phase: &RssPhase, stage: &str) -> Option<u64> {
    phase.procs.iter().filter(|p| p.stage == stage).filter_map(|p| p.hwm_kib).max()
}

fn phase<'a>(rep: &'a ClusterReport, name: &str) -> Option<&'a RssPhase> {
    rep.rss.iter().find(|p| p.phase == name)
}

fn failed_or_not_run(rep: &ClusterReport) -> Status {
    match &rep.error {
        Some(e) => Status::Failed(e.lines().next().unwrap_or("").chars().take(300).collect()),
        None => Status::NotRun("not measured".into()),
    }
}

/// The median hop into stage `i`, ms (NaN without samples).
fn stage_p50(samples: &[HopSample], i: usize) -> f64 {
    let values: Vec<f64> = samples.iter().filter(|s| s.stage == i).map(|s| s.ms).collect();
    pct(&values, 50.0)
}

fn hop_values(samples: &[HopSample]) -> Vec<f64> {
    samples.iter().map(|s| s.ms).collect()
}

pub(super) fn build_rows(rep: &mut ClusterReport, opts: &Options, corpora: &Corpora) {
    let mut rows = Vec::new();
    let fail = failed_or_not_run(rep);

    // One job end to end.
    for (name, corpus) in [("large", corpora.large), ("small", corpora.small)] {
        let what = format!(
            "one job end to end on the emulators ({} × {:.1} MB, copy path): publish of `stitch.requested` → `job.completed` on the event log",
            corpus.clips.len(),
            corpus.mean_mb()
        );
        let status = match rep.jobs.iter().find(|j| j.phase == name) {
            Some(j) if j.failure.is_none() && j.wall_s > 0.0 => {
                let check = match &j.check {
                    Ok(()) => format!(
                        "output checked: ffprobe {:.2} s vs {:.2} s of clips, {:.0} MB, mode {}",
                        j.output_s.unwrap_or(f64::NAN),
                        j.expected_s,
                        j.output_mb,
                        j.mode
                    ),
                    Err(e) => format!("output check failed: {e}"),
                };
                let embedded = match (name, opts.embedded_large_s) {
                    ("large", Some(e)) => {
                        format!("; embedded `reel stitch` on the same clips: {} median ({:.1}×)", secs(e), j.wall_s / e)
                    }
                    _ => String::new(),
                };
                Status::Measured {
                    figure: format!("{}{embedded}; {check}", secs(j.wall_s)),
                    result: if j.check.is_ok() {
                        "completed, output verified".into()
                    } else {
                        "**output check failed**".into()
                    },
                }
            }
            Some(j) => Status::Failed(j.failure.clone().unwrap_or_else(|| "no job.completed".into())),
            None => fail.clone(),
        };
        rows.push(ClusterRow { what, target: "—".into(), status, in_targets: false });
    }
    if !rep.idle_job_s.is_empty() {
        let s = stats::Summary::of(&rep.idle_job_s).expect("non-empty");
        rows.push(ClusterRow {
            what: format!("small job end to end (2 clips × 2 s, {:.1} MB each), one at a time", corpora.tiny.mean_mb()),
            target: "—".into(),
            status: Status::Measured {
                figure: format!("median {} ({} – {}, {} jobs)", secs(s.median), secs(s.min), secs(s.max), s.n),
                result: "—".into(),
            },
            in_targets: false,
        });
    }

    rows.extend(eta_rows(&rep.etas));

    // Hops.
    let idle = hop_values(&rep.hops_idle);
    let what =
        "per-hop latency on the Pub/Sub emulator (publish → handler start), p50 / p95, jobs one at a time".to_string();
    let status = if idle.is_empty() {
        fail.clone()
    } else {
        let p50 = pct(&idle, 50.0);
        let worst = (0..5)
            .map(|i| (i, stage_p50(&rep.hops_idle, i)))
            .filter(|(_, v)| !v.is_nan())
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let worst = worst
            .map(|(i, v)| format!("; slowest hop {} → {} p50 {}", INPUTS[i], STAGES[i], ms_s(v)))
            .unwrap_or_default();
        Status::Measured {
            figure: format!(
                "p50 {} / p95 {} over {} hops of {} jobs{worst}",
                ms_s(p50),
                ms_s(pct(&idle, 95.0)),
                idle.len(),
                idle.len() / 5
            ),
            result: if p50 <= HOP_P50_TARGET_MS {
                met(true).into()
            } else {
                format!("{} by {}", met(false), ms_s(p50 - HOP_P50_TARGET_MS))
            },
        }
    };
    rows.push(ClusterRow { what, target: format!("p50 ≤ {HOP_P50_TARGET_MS:.0} ms"), status, in_targets: true });
    match &rep.bus_hops {
        Some(Ok(h)) => rows.push(ClusterRow {
            what: "… the bus alone: `PubSubBus` publish → `receive` returned on the emulator, one message at a time"
                .into(),
            target: "—".into(),
            status: Status::Measured {
                figure: format!(
                    "p50 {} / p95 {} over {} messages",
                    ms_s(pct(&h.latencies_us, 50.0) / 1000.0),
                    ms_s(pct(&h.latencies_us, 95.0) / 1000.0),
                    h.latencies_us.len()
                ),
                result: "—".into(),
            },
            in_targets: false,
        }),
        Some(Err(e)) => rows.push(ClusterRow {
            what: "… the bus alone (`PubSubBus` on the emulator)".into(),
            target: "—".into(),
            status: Status::Failed(e.clone()),
            in_targets: false,
        }),
        None => {}
    }
    for b in rep.bursts.iter().filter(|b| !b.hops.is_empty()) {
        let load = hop_values(&b.hops);
        rows.push(ClusterRow {
            what: format!("… under load: the {}-job burst (queueing included)", b.jobs),
            target: "—".into(),
            status: Status::Measured {
                figure: format!(
                    "p50 {} / p95 {} over {} hops",
                    ms_s(pct(&load, 50.0)),
                    ms_s(pct(&load, 95.0)),
                    load.len()
                ),
                result: "—".into(),
            },
            in_targets: false,
        });
    }

    // RSS.
    let (large, small) = (phase(rep, "large"), phase(rep, "small"));
    let what = "peak RSS of each stage process (cluster mode, own VmHWM), two clip sizes".to_string();
    let status = match (large, small) {
        (Some(l), Some(s)) => {
            let all: Vec<(String, &str, u64)> = rep
                .rss
                .iter()
                .flat_map(|ph| {
                    ph.procs.iter().filter_map(move |p| p.hwm_kib.map(|k| (ph.phase.clone(), p.stage.as_str(), k)))
                })
                .collect();
            let worst = all.iter().max_by_key(|x| x.2);
            let per: Vec<String> = STAGES
                .iter()
                .map(|st| {
                    format!(
                        "{st} {:.1} / {:.1}",
                        stage_hwm(l, st).map(mib).unwrap_or(f64::NAN),
                        stage_hwm(s, st).map(mib).unwrap_or(f64::NAN)
                    )
                })
                .collect();
            match worst {
                Some((ph, st, k)) => Status::Measured {
                    figure: format!(
                        "MiB at {:.1} / {:.1} MB clips: {}; largest anywhere: {st} {:.1} MiB ({ph} phase)",
                        l.clip_mb,
                        s.clip_mb,
                        per.join(", "),
                        mib(*k)
                    ),
                    result: if mib(*k) <= STAGE_RSS_MIB {
                        met(true).into()
                    } else {
                        format!("{} by {:.1} MiB", met(false), mib(*k) - STAGE_RSS_MIB)
                    },
                },
                None => Status::Failed("no VmHWM read".into()),
            }
        }
        _ => fail.clone(),
    };
    rows.push(ClusterRow { what, target: format!("≤ {STAGE_RSS_MIB:.0} MiB each"), status, in_targets: true });
    let what = "… and flat with clip size (each stage: large within 10 % + 2 MiB of small)".to_string();
    let status = match (large, small) {
        (Some(l), Some(s)) => {
            let diffs: Vec<(&str, u64, u64)> =
                STAGES.iter().filter_map(|st| Some((*st, stage_hwm(l, st)?, stage_hwm(s, st)?))).collect();
            if diffs.is_empty() {
                Status::Failed("no VmHWM read".into())
            } else {
                let grow = diffs
                    .iter()
                    .max_by(|a, b| (mib(a.1) - mib(a.2)).total_cmp(&(mib(b.1) - mib(b.2))))
                    .expect("non-empty");
                let not_flat: Vec<&str> = diffs.iter().filter(|d| !flat(d.1, d.2)).map(|d| d.0).collect();
                Status::Measured {
                    figure: format!(
                        "largest change: {} {:+.1} MiB ({:.1} MiB at {:.1} MB clips vs {:.1} MiB at {:.1} MB)",
                        grow.0,
                        mib(grow.1) - mib(grow.2),
                        mib(grow.1),
                        l.clip_mb,
                        mib(grow.2),
                        s.clip_mb
                    ),
                    result: if not_flat.is_empty() {
                        met(true).into()
                    } else {
                        format!("{} ({})", met(false), not_flat.join(", "))
                    },
                }
            }
        }
        _ => fail.clone(),
    };
    rows.push(ClusterRow { what, target: "flat".into(), status, in_targets: true });

    // The burst, at the default settings.
    if rep.bursts.is_empty() {
        let what = format!(
            "throughput: {} jobs of 2 clips × 2 s submitted at once to the local cluster: jobs/min, all completed",
            opts.jobs
        );
        rows.push(ClusterRow {
            what,
            target: format!("all {} completed", opts.jobs),
            status: fail.clone(),
            in_targets: true,
        });
    }
    for b in &rep.bursts {
        let what = format!(
            "throughput: {} jobs of 2 clips × 2 s submitted at once to the local cluster at the default delivery settings: jobs/min; all completed, none timed out, none dead-lettered",
            b.jobs
        );
        let all = b.completed == b.jobs && b.failed.is_empty() && b.unfinished == 0 && b.dead_lettered.is_empty();
        let lat = if b.latencies_s.is_empty() {
            String::new()
        } else {
            format!(
                "; per job publish → completed p50 {} / max {}",
                secs(pct(&b.latencies_s, 50.0)),
                secs(pct(&b.latencies_s, 100.0))
            )
        };
        let check = match &b.sample_check {
            Some(Ok((d, e))) => format!("; one output checked ({d:.2} s vs {e:.2} s)"),
            Some(Err(e)) => format!("; **output check failed**: {e}"),
            None => String::new(),
        };
        let dead = if b.dead_lettered.is_empty() {
            String::new()
        } else {
            format!(
                "; **dead-lettered by the emulator after {} delivery attempts**: {}",
                reel_runtime::topology::PUBSUB_MAX_DELIVERY_ATTEMPTS,
                b.dead_lettered
                    .iter()
                    .map(|(k, v)| format!("{v} on {k}'s subscription"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let status = Status::Measured {
            figure: format!(
                "{}/{} completed in {} (first publish → last `job.completed`): **{:.1} jobs/min**; {} outputs in the bucket; {} job.failed ({} timeout){}{dead}{lat}{check}; reel-stitch × {}",
                b.completed,
                b.jobs,
                secs(b.secs),
                b.per_min(),
                b.outputs_present,
                b.failed.len(),
                b.timed_out,
                if b.unfinished > 0 { format!(", {} unfinished", b.unfinished) } else { String::new() },
                b.stitch_workers
            ),
            result: if all { met(true).into() } else { format!("{} ({} of {} completed)", met(false), b.completed, b.jobs) },
        };
        rows.push(ClusterRow {
            what,
            target: format!("all {} completed, 0 timeout, 0 dead letter", b.jobs),
            status,
            in_targets: true,
        });
    }
    if let Some(r) = &rep.recovery {
        let what = "recovery: a job whose reel-stitch program is SIGKILLed mid-work, a fresh program started at once (as Cloud Run does), default delivery settings: SIGKILL → stitch at work on the job again (its first progress or `job.stitched`), and → `job.completed`".to_string();
        let status = match r {
            Ok(r) => Status::Measured {
                figure: format!(
                    "resumed after **{}**, completed after {} (stitch completed on delivery attempt {}; lease {} s)",
                    secs(r.resumed_s),
                    secs(r.completed_s),
                    r.attempt,
                    r.lease_s
                ),
                result: met(r.resumed_s <= 30.0).into(),
            },
            Err(e) => Status::Failed(e.clone()),
        };
        rows.push(ClusterRow { what, target: "≤ 30 s".into(), status, in_targets: true });
    }
    super::fanout::rows(rep, &mut rows);
    super::fanout::cost_rows(rep, &mut rows);
    if let Some(e) = &rep.fanout_error {
        rows.push(ClusterRow {
            what: "re-encode fan-out phases".into(),
            target: "—".into(),
            status: Status::Failed(e.lines().next().unwrap_or("").chars().take(300).collect()),
            in_targets: false,
        });
    }
    rep.rows = rows;

    // Where the large job's time went.
    if let (Some(ph), Some(j)) = (phase(rep, "large"), rep.jobs.iter().find(|j| j.phase == "large")) {
        let gcs = ph.emulators_cpu_s.iter().find(|(n, _)| n == "fake-gcs-server").map(|x| x.1).unwrap_or(f64::NAN);
        if gcs > 0.5 * ph.wall_s {
            let stitch = j.stages.get(2).and_then(|s| s.1).map(|ms| format!(" (the stitch handler, which downloads the clips from the workspace and uploads the {:.0} MB reel to it, ran {})", j.output_mb, secs(ms / 1000.0))).unwrap_or_default();
            let put = rep.transfers.iter().find(|t| t.0.starts_with("PUT of the same")).map(|t| format!("; the bench's own PUT of the reel as one object took {} ({:.0} MB/s) against {:.0} MB/s for 50 MB clips", secs(t.2), t.1 / t.2, rep.transfers.first().map(|c| c.1 / c.2).unwrap_or(f64::NAN))).unwrap_or_default();
            rep.notes.push(format!(
                "The large job on the cluster is mostly the storage emulator's time: fake-gcs-server (in-memory backend) used {} of CPU during the {} phase{stitch}{put}. On real Cloud Storage these transfers run at the network's rate; this figure says little about reel itself.",
                secs(gcs),
                secs(ph.wall_s)
            ));
        }
    }
    // Where the hops' time goes.
    if let Some(Ok(h)) = &rep.bus_hops {
        let by_stage = |i: usize| stage_p50(&rep.hops_idle, i);
        let others = pct(&(1..5).map(by_stage).filter(|v| !v.is_nan()).collect::<Vec<_>>(), 50.0);
        let mut text = format!(
            "Every hop includes the emulator's delivery: the bus alone (`PubSubBus` publish → `receive` returned, no worker, no storage) takes p50 {} on the emulator; the hops into download, stitch, upload and finalize have a median p50 of {}.",
            ms_s(pct(&h.latencies_us, 50.0) / 1000.0),
            ms_s(others)
        );
        let validate = by_stage(0);
        if validate > 1.5 * others {
            text.push_str(&format!(
                " The hop into validate is slower (p50 {}): validate pulls two subscriptions (requests and storage notifications), alternating between them, and the bus polls an empty subscription every 100 ms (every second after a minute without messages; services/gcp/src/pubsub/bus.rs), so a request waits for validate's next poll of the requests subscription on top of the delivery.",
                ms_s(validate)
            ));
        }
        rep.notes.push(text);
    }
}

impl ClusterReport {
    /// Rows for the report's Targets table.
    pub fn target_rows(&self) -> impl Iterator<Item = &ClusterRow> {
        self.rows.iter().filter(|r| r.in_targets)
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for r in &self.rows {
            let text = match &r.status {
                Status::Measured { figure, result } => format!("{figure} [{result}]"),
                Status::Failed(e) => format!("FAILED: {e}"),
                Status::NotRun(why) => why.clone(),
            };
            let what: String = r.what.chars().take(100).collect();
            let _ = writeln!(
                s,
                "cluster: {what}{}: {}",
                if what.len() < r.what.len() { "…" } else { "" },
                text.replace("**", "")
            );
        }
        s
    }

    /// The report's section.
    pub fn render(&self, w: &mut String) {
        let _ = writeln!(w, "## On the emulators / local cluster\n");
        if !self.ran {
            let _ = writeln!(w, "| measurement | target | figure | result |\n| --- | --- | --- | --- |");
            for row in &self.rows {
                let (fig, result) = cells(row);
                let _ = writeln!(w, "| {} | {} | {fig} | {result} |", row.what, row.target);
            }
            let _ =
                writeln!(w, "\nSkipped in this run (`--no-cluster`). `services/bench/src/cluster/` measures them.\n");
            return;
        }
        for line in &self.config {
            let _ = writeln!(w, "{line}\n");
        }
        let _ = writeln!(w, "| measurement | target | figure | result |\n| --- | --- | --- | --- |");
        for row in &self.rows {
            let (fig, result) = cells(row);
            let _ = writeln!(w, "| {} | {} | {fig} | {result} |", row.what, row.target);
        }
        let _ = writeln!(w);
        if let Some(e) = &self.error {
            let _ = writeln!(w, "**The cluster measurements stopped early**:\n\n```\n{e}\n```\n");
        }

        super::fanout::render_deliveries(self, w);

        // RSS per stage.
        if !self.rss.is_empty() {
            let _ = writeln!(w, "### Peak RSS of each stage program\n");
            let _ = writeln!(
                w,
                "Each stage is its own process; `VmHWM` (its own peak resident set) read from `/proc/PID/status` once the phase's measured job had completed (large, small: the one job; burst: all jobs), on fresh processes per phase. ffmpeg/ffprobe are separate processes; the largest of them appears in `wait4`'s `ru_maxrss` of the stage (in brackets).\n"
            );
            let mut head = String::from("| stage |");
            let mut sep = String::from("| --- |");
            for ph in &self.rss {
                let _ = write!(head, " {} ({}) |", ph.phase, ph.label);
                sep.push_str(" --- |");
            }
            head.push_str(" flat (large vs small) |");
            sep.push_str(" --- |");
            let _ = writeln!(w, "{head}\n{sep}");
            for stage in STAGES {
                let mut line = format!("| {stage} |");
                for ph in &self.rss {
                    let procs: Vec<&ProcStat> = ph.procs.iter().filter(|p| p.stage == stage).collect();
                    let cell: Vec<String> = procs
                        .iter()
                        .map(|p| {
                            format!(
                                "{}{}",
                                p.hwm_kib.map(|k| format!("{:.1} MiB", mib(k))).unwrap_or_else(|| "—".into()),
                                p.tree_maxrss_kib
                                    .filter(|t| Some(*t) > p.hwm_kib)
                                    .map(|t| format!(" [{:.0}]", mib(t)))
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    let _ = write!(line, " {} |", if cell.is_empty() { "—".into() } else { cell.join("; ") });
                }
                let f = match (
                    phase(self, "large").and_then(|p| stage_hwm(p, stage)),
                    phase(self, "small").and_then(|p| stage_hwm(p, stage)),
                ) {
                    (Some(l), Some(s)) => {
                        format!("{:+.1} MiB: {}", mib(l) - mib(s), if flat(l, s) { "yes" } else { "**no**" })
                    }
                    _ => "—".into(),
                };
                let _ = writeln!(w, "{line} {f} |");
            }
            let _ = writeln!(w);
            let _ = writeln!(
                w,
                "CPU time (user + system) of each stage process over its life (its ffmpeg/ffprobe children included; `wait4` when stopped; the small phase also ran the small jobs one at a time) and how it ended; the emulators' CPU time (`/proc/PID/stat`) and the wall time from the programs' start to the end of the phase's measured job(s):\n"
            );
            let mut head = String::from("| stage |");
            let mut sep = String::from("| --- |");
            for ph in &self.rss {
                let _ = write!(head, " {} |", ph.phase);
                sep.push_str(" --- |");
            }
            let _ = writeln!(w, "{head}\n{sep}");
            for stage in STAGES {
                let mut line = format!("| {stage} |");
                for ph in &self.rss {
                    let cell: Vec<String> = ph
                        .procs
                        .iter()
                        .filter(|p| p.stage == stage)
                        .map(|p| {
                            format!(
                                "{} ({})",
                                p.cpu_s.map(secs).unwrap_or_else(|| "—".into()),
                                if p.exit.is_empty() { "?" } else { &p.exit }
                            )
                        })
                        .collect();
                    let _ = write!(line, " {} |", cell.join("; "));
                }
                let _ = writeln!(w, "{line}");
            }
            for name in ["Pub/Sub emulator", "fake-gcs-server"] {
                let mut line = format!("| {name} |");
                for ph in &self.rss {
                    let v = ph
                        .emulators_cpu_s
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, s)| secs(*s))
                        .unwrap_or_else(|| "—".into());
                    let _ = write!(line, " {v} |");
                }
                let _ = writeln!(w, "{line}");
            }
            let mut line = String::from("| wall time (programs' start → measured jobs done, or the wait gave up) |");
            for ph in &self.rss {
                let _ = write!(line, " {} |", secs(ph.wall_s));
            }
            let _ = writeln!(w, "{line}\n");
        }
        if !self.transfers.is_empty() {
            let _ = writeln!(w, "Transfers to and from fake-gcs-server through `reel_gcp::GcsStore` (the stages' client), timed by the bench outside the jobs:\n");
            let _ = writeln!(w, "| transfer | MB | time | rate |\n| --- | --- | --- | --- |");
            for (what, mb, t) in &self.transfers {
                let _ = writeln!(w, "| {what} | {mb:.0} | {} | {:.0} MB/s |", secs(*t), mb / t.max(1e-9));
            }
            let _ = writeln!(w);
        }

        // Hops.
        if !self.hops_idle.is_empty() || self.bursts.iter().any(|b| !b.hops.is_empty()) {
            let _ = writeln!(w, "### Per-hop latency on the emulator, by hop\n");
            let mut head = String::from("| hop | jobs one at a time: n | p50 | p95 | max |");
            let mut sep = String::from("| --- | --- | --- | --- | --- |");
            for b in &self.bursts {
                let _ = write!(head, " {}: n | p50 | p95 | max |", b.phase);
                sep.push_str(" --- | --- | --- | --- |");
            }
            let _ = writeln!(w, "{head}\n{sep}");
            let row = |samples: &[HopSample], i: Option<usize>| -> String {
                let v: Vec<f64> = samples.iter().filter(|s| i.is_none_or(|i| s.stage == i)).map(|s| s.ms).collect();
                if v.is_empty() {
                    return "0 | — | — | —".into();
                }
                format!("{} | {} | {} | {}", v.len(), ms_s(pct(&v, 50.0)), ms_s(pct(&v, 95.0)), ms_s(pct(&v, 100.0)))
            };
            for i in (0..5).map(Some).chain([None]) {
                let name = match i {
                    Some(i) => format!("`{}` → {}", INPUTS[i], STAGES[i]),
                    None => "all hops".into(),
                };
                let mut line = format!("| {name} | {} |", row(&self.hops_idle, i));
                for b in &self.bursts {
                    let _ = write!(line, " {} |", row(&b.hops, i));
                }
                let _ = writeln!(w, "{line}");
            }
            if let Some(Ok(h)) = &self.bus_hops {
                let v: Vec<f64> = h.latencies_us.iter().map(|u| u / 1000.0).collect();
                let _ = writeln!(
                    w,
                    "| bus alone (`PubSubBus`, publish → `receive` returned) | {} | {} | {} | {} |{}",
                    v.len(),
                    ms_s(pct(&v, 50.0)),
                    ms_s(pct(&v, 95.0)),
                    ms_s(pct(&v, 100.0)),
                    " | | | |".repeat(self.bursts.len())
                );
            }
            let _ = writeln!(w);
            for b in &self.bursts {
                if !b.attempts.is_empty() {
                    let list: Vec<String> =
                        b.attempts.iter().map(|(k, (n, max))| format!("{k} {n} runs, up to attempt {max}")).collect();
                    let _ = writeln!(w, "Handler runs in {} (delivery attempts): {}.\n", b.phase, list.join("; "));
                }
            }
            if !self.hop_gaps.is_empty() || self.redeliveries > 0 {
                let gaps: Vec<String> = self.hop_gaps.iter().map(|(k, v)| format!("{k} ({v})")).collect();
                let _ = writeln!(
                    w,
                    "Hops not counted: {}. Handler runs from a redelivery (delivery attempt > 1): {}.\n",
                    if gaps.is_empty() { "none".into() } else { gaps.join("; ") },
                    self.redeliveries
                );
            }
        }

        // The jobs stage by stage.
        for j in &self.jobs {
            if j.stages.iter().all(|s| s.0.is_none() && s.1.is_none()) {
                continue;
            }
            let _ = writeln!(w, "### The {} job on the cluster, stage by stage ({} wall)\n", j.phase, secs(j.wall_s));
            let _ = writeln!(w, "Workload: {}.\n", j.workload);
            let _ = writeln!(
                w,
                "| stage | hop into it (publish → handler start) | handler (its `elapsed_ms`) |\n| --- | --- | --- |"
            );
            let (mut hops, mut handlers) = (0.0, 0.0);
            for (i, (hop, handler)) in j.stages.iter().enumerate() {
                hops += hop.unwrap_or(0.0);
                handlers += handler.unwrap_or(0.0);
                let _ = writeln!(
                    w,
                    "| {} | {} | {} |",
                    STAGES[i],
                    hop.map(ms_s).unwrap_or_else(|| "—".into()),
                    handler.map(|h| secs(h / 1000.0)).unwrap_or_else(|| "—".into())
                );
            }
            let _ = writeln!(
                w,
                "| sum | {} | {} |\n\nThe rest of the wall time ({}) is finalize's publish of `job.completed` and the bench's publish call before the emulator stamped `stitch.requested` ({} here).\n",
                ms_s(hops),
                secs(handlers / 1000.0),
                secs(j.wall_s - hops / 1000.0 - handlers / 1000.0),
                ms_s(j.publish_stamp_ms)
            );
        }

        for b in &self.bursts {
            if !b.failed.is_empty() {
                let _ = writeln!(w, "Jobs of {} that failed:\n", b.phase);
                for f in b.failed.iter().take(10) {
                    let _ = writeln!(w, "- {f}");
                }
                let _ = writeln!(w);
            }
            let _ = writeln!(
                w,
                "{}: the {} requests were published concurrently in {}.\n",
                b.phase,
                b.jobs,
                secs(b.publish_s)
            );
        }

        if self.log_issues.is_empty() {
            let _ = writeln!(
                w,
                "No WARNING or ERROR lines (and no lines that are not JSON) in the stage programs' logs.\n"
            );
        } else {
            let _ = writeln!(w, "### Warnings and errors in the stage programs' logs\n");
            let _ = writeln!(w, "| phase | stage | severity | message | lines |\n| --- | --- | --- | --- | --- |");
            for ((ph, st, sev, msg), n) in self.log_issues.iter().take(30) {
                let _ = writeln!(w, "| {ph} | {st} | {sev} | {} | {n} |", msg.replace('|', "\\|").replace('\n', " "));
            }
            let _ = writeln!(w);
        }
        for n in &self.notes {
            let _ = writeln!(w, "{n}\n");
        }
        if let Some(d) = &self.logs_dir {
            let _ = writeln!(
                w,
                "The programs' logs of this run: `{}` (one JSON line per record). The cluster part took {:.0} s.\n",
                d.display(),
                self.seconds
            );
        }
    }

    /// Method lines for the report.
    pub fn method(&self) -> Vec<String> {
        if !self.ran {
            return Vec::new();
        }
        vec![
            "Cluster: one job end to end = the bench's clock just before it publishes `stitch.requested` (as `reel submit` does: to the event log, then to validate's topic) → the Pub/Sub emulator's publish time of `job.completed` on the event log (same machine, same clock); read by the bench through its own subscription on the event log. The output is then downloaded from fake-gcs-server and checked with ffprobe: its duration must be the clips' summed durations within 0.1 s + 0.05 s per clip.".to_string(),
            "Cluster per-hop latency (publish → handler start): for each job and stage, (the emulator's publish time of the stage's output event − the emulator's publish time of its input event) − the handler's own time (`elapsed_ms` of the worker's \"stage done\" log line, measured from just before `Handler::handle` to just before publishing). Every stage publishes its event to the event log first and then to the next stage's topic, so both ends carry one publish (client batching of up to 5 ms + round trip), which cancel; `elapsed_ms` is whole milliseconds. The hop therefore includes the producer's second publish (to the work topic), delivery over streaming pull, and the worker's checks before the handler (decode, deadline, the cancel marker and, for download, stitch and upload, the completed marker: each a HEAD on fake-gcs-server). Idle = jobs run one at a time (the large job, the small-corpus job and the small jobs); under load = the burst.".to_string(),
            "Cluster RSS: `VmHWM` of each stage program (its own peak, not its children's) from `/proc/PID/status`, fresh programs per phase (large clips, small clips, each burst); the ≤ 50 MiB verdict takes the largest over all phases, the flatness verdict compares the large and small phases stage by stage. CPU time and `ru_maxrss` from `wait4` when the bench stops them with SIGTERM.".to_string(),
            "Cluster throughput: all requests published concurrently; jobs/min = completed jobs / (first publish → last `job.completed` publish time) × 60; every job's terminal event is read from the event log (`job.completed`, `job.failed` or `job.cancelled`), every output is checked to exist (HEAD) and one is downloaded and checked with ffprobe. Each job has its own project id (validate allows one active job per project).".to_string(),
            "Cluster estimatedCompletion error: for every job that completed (the recovery phase's killed job left out), its progress events on the event log in publish order; at 10, 50 and 90 % overall progress, the first event at or past that level, |its `estimatedCompletion` − the emulator's publish time of the job's `job.completed`|. The estimates come from the rates the jobs before taught (`reel_runtime::eta`, in the bench bucket's work area, which every phase shares), so the first job of the run is estimated from the priors alone.".to_string(),
        ]
    }
}

fn cells(row: &ClusterRow) -> (String, String) {
    match &row.status {
        Status::NotRun(why) => ("—".into(), why.clone()),
        Status::Measured { figure, result } => (figure.clone(), result.clone()),
        Status::Failed(e) => ("—".into(), format!("**failed**: {}", e.replace('|', "\\|"))),
    }
}

/// The figure and result cells of a row.
pub fn row_cells(row: &ClusterRow) -> (String, String) {
    cells(row)
}

/// The estimate's error (issue 15): jobs one at a time, and the burst, apart.
fn eta_rows(etas: &[JobEta]) -> Vec<ClusterRow> {
    let groups =
        [("jobs one at a time (large, small, idle, fan-out phases)", false), ("jobs submitted at once (burst)", true)];
    let mut rows = Vec::new();
    for (label, burst) in groups {
        let jobs: Vec<&JobEta> = etas.iter().filter(|e| e.phase.starts_with("burst") == burst).collect();
        if jobs.is_empty() {
            continue;
        }
        let first = jobs.iter().filter(|e| e.first_has_estimate).count();
        let levels: Vec<String> = ETA_LEVELS
            .iter()
            .map(|level| {
                let errors: Vec<f64> = jobs.iter().filter_map(|e| e.errors.get(level).copied()).collect();
                format!(
                    "at {level} %: median {} / p90 {} ({} jobs)",
                    secs(pct(&errors, 50.0)),
                    secs(pct(&errors, 90.0)),
                    errors.len()
                )
            })
            .collect();
        rows.push(ClusterRow {
            what: format!("estimatedCompletion error |estimate − actual|, {label}"),
            target: "present from the first event".into(),
            status: Status::Measured {
                figure: format!(
                    "{}; first progress event had one in {first} of {} jobs",
                    levels.join("; "),
                    jobs.len()
                ),
                result: met(first == jobs.len()).into(),
            },
            in_targets: true,
        });
    }
    rows
}
