//! `reel-bench`: the benchmark of issue 7. Run it through `scripts/bench.sh`.
//!
//! In one run, alternating the contenders, median of `--runs` (5; quick: 3):
//! * copy path: bare `ffmpeg -f concat -safe 0 -i LIST -c copy -movflags +faststart`
//!   against `reel stitch` on the same clips;
//! * re-encode path: bare ffmpeg with reel's filter graph and x264/AAC settings (one
//!   command per clip, then the concat demuxer, as reel does; and a single
//!   `filter_complex` command as a second reference) against
//!   `reel stitch --compression optimized` on clips of mixed sizes;
//! * peak RSS of the reel process (all five stages run in it in embedded mode) and of
//!   its ffmpeg/ffprobe children, at two clip sizes;
//! * the embedded bus's per-hop latency;
//! * on the local cluster (the five stage programs on the Pub/Sub emulator and
//!   fake-gcs-server; `--no-cluster` skips it): one job end to end, per-hop latency,
//!   each stage process's peak RSS at two clip sizes, and small jobs submitted at once
//!   (see `cluster.rs`);
//! * reel-api's state with 100,000 finished jobs in the store: start time and RSS, and
//!   RSS while one job reports an hour of progress (`apimem.rs`; `--api-only` runs just
//!   this and prints its section).
//!
//! Then writes the markdown report (`--out`, default `docs/BENCHMARKS.md`).

mod apimem;
mod bus;
mod cluster;
mod corpus;
mod proc;
mod recipe;
mod report;
mod stats;
mod units;
mod whatif;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use corpus::{ClipSpec, Corpus};
use proc::{Measured, ToolRun};
use reel_events::{Compression, Orientation};
use reel_media::EncodeTarget;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "reel-bench", about = "reel against bare ffmpeg (issue 7); writes docs/BENCHMARKS.md")]
struct Args {
    /// A fast run: 4 small clips of 5 s, 3 runs per contender.
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// The reel binary (default: `reel` next to this program).
    #[arg(long)]
    reel: Option<PathBuf>,
    /// Where generated clips are cached.
    #[arg(long, default_value = "target/bench-corpus")]
    corpus: PathBuf,
    /// Scratch directory for outputs, state dirs and logs.
    #[arg(long, default_value = "target/bench-run")]
    work: PathBuf,
    /// Timed runs per contender (default 5; quick: 3).
    #[arg(long)]
    runs: Option<usize>,
    /// Messages per embedded-bus latency experiment.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Skip the local-cluster measurements (emulators + stage programs).
    #[arg(long)]
    no_cluster: bool,
    /// The cluster measurements run by default; accepted for old command lines.
    #[arg(long, hide = true)]
    cluster: bool,
    /// Small jobs (2 clips × 2 s) submitted at once to the cluster (default 50; quick: 10).
    #[arg(long)]
    cluster_jobs: Option<usize>,
    /// Small jobs run one at a time on the cluster, for the idle per-hop latency
    /// (default 20; quick: 4).
    #[arg(long)]
    cluster_idle_jobs: Option<usize>,
    /// reel-stitch processes during the burst of small jobs.
    #[arg(long, default_value_t = 1)]
    cluster_stitch_workers: usize,
    /// Parts to skip (comma-separated): copy, reencode, rss, bus, cluster (all of the
    /// cluster), cluster-recovery (the cluster's kill-and-resume phase), cluster-fanout
    /// (the re-encode scale-out phases), api.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Finished jobs in the store for reel-api's memory and start-time rows.
    #[arg(long, default_value_t = 100_000)]
    api_jobs: usize,
    /// Progress events one job reports in reel-api's memory rows (720: one every 5 s for
    /// an hour).
    #[arg(long, default_value_t = 720)]
    api_progress: usize,
    /// Run only reel-api's memory and start-time rows (no ffmpeg, no reel binary) and
    /// print their section instead of writing the report.
    #[arg(long)]
    api_only: bool,
}

/// The workloads of one mode.
struct Plan {
    mode: &'static str,
    copy_large: Vec<ClipSpec>,
    copy_small: Vec<ClipSpec>,
    reencode: Vec<ClipSpec>,
    /// 2 clips × 2 s: the cluster's small jobs.
    cluster_tiny: Vec<ClipSpec>,
    runs: usize,
    cluster_jobs: usize,
    cluster_idle_jobs: usize,
    bus_messages: usize,
}

/// A clip of the mixed re-encode corpus: portrait 1080×1920, landscape 1280×720, and a
/// square 720×720 at 25 fps with 44.1 kHz mono audio, in turn.
fn mixed(i: u32, seconds: u32) -> ClipSpec {
    let seed = 200 + i;
    match i % 3 {
        0 => ClipSpec { noise: 8, ..ClipSpec::portrait(seconds, seed) },
        1 => ClipSpec { width: 1280, height: 720, video_kbps: 5_300, noise: 8, ..ClipSpec::portrait(seconds, seed) },
        _ => ClipSpec {
            width: 720,
            height: 720,
            fps: 25,
            video_kbps: 3_000,
            noise: 8,
            sample_rate: 44_100,
            channels: 1,
            ..ClipSpec::portrait(seconds, seed)
        },
    }
}

fn plan(quick: bool, runs: Option<usize>) -> Plan {
    if quick {
        let small = |seconds, seed| ClipSpec {
            width: 540,
            height: 960,
            video_kbps: 3_000,
            ..ClipSpec::portrait(seconds, seed)
        };
        Plan {
            mode: "quick",
            copy_large: (0..4).map(|i| small(5, 1 + i)).collect(),
            copy_small: (0..4).map(|i| small(1, 101 + i)).collect(),
            reencode: (0..3).map(|i| mixed(i, 3)).collect(),
            cluster_tiny: (0..2).map(|i| small(2, 301 + i)).collect(),
            runs: runs.unwrap_or(3),
            cluster_jobs: 10,
            cluster_idle_jobs: 4,
            bus_messages: 100,
        }
    } else {
        Plan {
            mode: "full",
            copy_large: (0..15).map(|i| ClipSpec::portrait(30, 1 + i)).collect(),
            copy_small: (0..15).map(|i| ClipSpec::portrait(3, 101 + i)).collect(),
            reencode: (0..6).map(|i| mixed(i, 10)).collect(),
            cluster_tiny: (0..2).map(|i| ClipSpec::portrait(2, 301 + i)).collect(),
            runs: runs.unwrap_or(5),
            cluster_jobs: 50,
            cluster_idle_jobs: 20,
            bus_messages: 300,
        }
    }
}

/// Paths and binaries shared by every measurement.
pub struct Env {
    reel: PathBuf,
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
    bench_exe: PathBuf,
    work: PathBuf,
    counter: std::cell::Cell<u32>,
}

impl Env {
    fn next(&self) -> u32 {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        n
    }

    /// A fresh, empty directory under the work dir.
    fn fresh_dir(&self, what: &str) -> Result<PathBuf> {
        let dir = self.work.join(format!("{what}-{}", self.next()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.join("logs").join(format!("{name}.stderr"))
    }

    /// `reel stitch CLIPS -o OUT EXTRA --quiet` with a fresh `REEL_HOME` and nothing of
    /// the caller's reel/cloud settings in its environment.
    fn reel_cmd(
        &self,
        home: &Path,
        clips: &[PathBuf],
        out: &Path,
        extra: &[&str],
        wrappers: Option<&(PathBuf, PathBuf)>,
    ) -> Command {
        let mut cmd = Command::new(&self.reel);
        cmd.arg("stitch").args(clips).arg("-o").arg(out).args(extra).arg("--quiet");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("REEL_")
                || k.starts_with("GOOGLE_")
                || matches!(
                    k.as_ref(),
                    "PUBSUB_EMULATOR_HOST" | "STORAGE_EMULATOR_HOST" | "TEMP_DIR" | "LOG_LEVEL" | "XDG_STATE_HOME"
                )
            {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env("REEL_HOME", home).stdout(Stdio::null());
        if let Some((ffmpeg, ffprobe)) = wrappers {
            cmd.env("REEL_FFMPEG", ffmpeg).env("REEL_FFPROBE", ffprobe);
        }
        cmd
    }

    fn ffmpeg_cmd(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.ffmpeg);
        cmd.args(args).stdout(Stdio::null());
        cmd
    }
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// One contender's timed runs.
#[derive(Debug, Clone, Default)]
pub struct Contender {
    /// Its name in the table.
    pub name: String,
    /// The command, for the table's footnotes.
    pub command: String,
    /// Runs, in order.
    pub runs: Vec<Measured>,
}

impl Contender {
    fn new(name: &str, command: String) -> Contender {
        Contender { name: name.into(), command, runs: Vec::new() }
    }

    /// Wall times, seconds.
    pub fn walls(&self) -> Vec<f64> {
        self.runs.iter().map(|m| m.wall.as_secs_f64()).collect()
    }

    /// Median wall time, seconds.
    pub fn summary(&self) -> Option<stats::Summary> {
        stats::Summary::of(&self.walls())
    }

    /// Summary of the CPU times (user + system, children included), seconds.
    pub fn cpu_summary(&self) -> Option<stats::Summary> {
        stats::Summary::of(&self.runs.iter().map(|m| m.cpu.as_secs_f64()).collect::<Vec<_>>())
    }
}

/// A timed comparison.
#[derive(Debug, Clone, Default)]
pub struct PathResult {
    /// `copy` or `re-encode`.
    pub title: String,
    /// The workload.
    pub workload: String,
    /// [0] is the baseline (bare ffmpeg), [1] is reel, more are references.
    pub contenders: Vec<Contender>,
    /// The target for reel / baseline.
    pub target_ratio: f64,
    /// Facts worth a line under the table.
    pub notes: Vec<String>,
    /// Seconds of video in the workload.
    pub video_seconds: Option<f64>,
}

/// A wrapped run of reel: RSS of every process and where the time went.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// What ran.
    pub label: String,
    /// The workload.
    pub workload: String,
    /// Mean clip size, MB.
    pub clip_mb: f64,
    /// Number of clips.
    pub clips: usize,
    /// reel's wall time in this (wrapped) run, seconds.
    pub wall_s: f64,
    /// reel's own peak RSS (VmHWM), KiB.
    pub reel_hwm_kib: Option<u64>,
    /// reel's own peak over the timed runs of the same workload (the largest), KiB.
    pub reel_hwm_timed_kib: Option<u64>,
    /// Bare ffmpeg's peak on the same workload, KiB.
    pub bare_maxrss_kib: Option<u64>,
    /// Every ffmpeg/ffprobe reel started.
    pub tools: Vec<ToolRun>,
    /// When reel was started, ns since the epoch.
    pub started_ns: u128,
    /// When it ended.
    pub ended_ns: u128,
    /// (event type, publish time ns) from the job's event log.
    pub timeline: Vec<(String, u128)>,
    /// The stitch mode reel reported (copy / reencode).
    pub mode: Option<String>,
}

/// Embedded-bus results.
pub type BusResults = Vec<bus::HopResult>;

/// Everything the report shows.
#[derive(Default)]
pub struct Results {
    pub mode: String,
    pub runs: usize,
    pub machine: Vec<(String, String)>,
    pub corpora: Vec<(String, String, bool, f64)>,
    pub copy: Option<Result<PathResult, String>>,
    pub reencode: Option<Result<PathResult, String>>,
    pub profiles: Vec<Result<Profile, String>>,
    pub bus: Option<Result<BusResults, String>>,
    pub cluster: cluster::ClusterReport,
    pub messages: usize,
    pub started: String,
    pub total_seconds: f64,
    pub command_check: Option<Result<usize, String>>,
    /// reel-api's memory and start time.
    pub api: Option<Result<apimem::Report, String>>,
    /// `ffprobe -version` / `ffmpeg -version`: what one spawn costs with nothing to do
    /// (tool, wall summary, peak RSS KiB).
    pub spawn_floor: Vec<(String, stats::Summary, u64)>,
    /// The copy path's overheads in isolation.
    pub whatif: Option<Result<whatif::WhatIf, String>>,
    /// `/proc/loadavg` (1, 5, 15 min) at the start and the end.
    pub load: (String, String),
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.get(1).map(|a| a == "__wrap").unwrap_or(false) {
        std::process::exit(proc::wrap_main(&raw[2..]));
    }
    if raw.get(1).map(|a| a == "__api-state").unwrap_or(false) {
        std::process::exit(apimem::child_main(&raw[2..]));
    }
    if raw.get(1).map(|a| a == "__copy-floor").unwrap_or(false) {
        std::process::exit(copy_floor_main(&raw[2..]));
    }
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("reel-bench: {e:#}");
        std::process::exit(1);
    }
}

/// `__copy-floor OUT CLIP…`: the copy path's floor, the clips' bytes appended to OUT by
/// the kernel (`std::io::copy` between files is `copy_file_range` on Linux), as the
/// zero-copy assembly copies them, with no header and no checks.
fn copy_floor_main(args: &[std::ffi::OsString]) -> i32 {
    let Some((out, clips)) = args.split_first() else {
        eprintln!("usage: reel-bench __copy-floor OUT CLIP...");
        return 2;
    };
    let copy = || -> std::io::Result<()> {
        let mut out = std::fs::File::create(out)?;
        for clip in clips {
            std::io::copy(&mut std::fs::File::open(clip)?, &mut out)?;
        }
        Ok(())
    };
    match copy() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("copy floor: {e}");
            1
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(std::path::absolute(p)?)
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let plan = plan(args.quick, args.runs);
    if plan.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench_exe = std::env::current_exe().context("locating reel-bench")?;
    let api_options = apimem::Options { jobs: args.api_jobs, progress: args.api_progress, runs: plan.runs };
    if args.api_only {
        let work = absolute(&args.work)?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        eprintln!("reel-api state: {} finished jobs, {} progress events", args.api_jobs, args.api_progress);
        let report = apimem::run(&bench_exe, &work, api_options, &rt)?;
        print!("{}", apimem::markdown(&report));
        eprint!("{}", apimem::summary_lines(&report));
        return Ok(());
    }
    let reel = match &args.reel {
        Some(p) => absolute(p)?,
        None => bench_exe.parent().map(|d| d.join("reel")).context("no parent directory")?,
    };
    if !reel.is_file() {
        bail!("reel binary not found at {} (build it: cargo build --release -p reel)", reel.display());
    }
    let ffmpeg = proc::which("ffmpeg").context("ffmpeg is not on PATH (scripts/install-deps.sh installs it)")?;
    let ffprobe = proc::which("ffprobe").context("ffprobe is not on PATH")?;
    let work = absolute(&args.work)?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(work.join("logs"))?;
    let corpus_root = absolute(&args.corpus)?;
    let env = Env { reel, ffmpeg, ffprobe, bench_exe, work, counter: Default::default() };
    let skip = |part: &str| args.skip.iter().any(|s| s == part);

    let mut results = Results {
        mode: plan.mode.into(),
        runs: plan.runs,
        messages: args.messages,
        started: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: report::machine(&env.ffmpeg),
        load: (loadavg(), String::new()),
        ..Default::default()
    };

    eprintln!("reel-bench: {} mode, {} runs per contender", plan.mode, plan.runs);
    eprintln!("corpus (cached in {}):", corpus_root.display());
    let large = corpus::ensure(&corpus_root, &format!("{}-copy-large", plan.mode), &plan.copy_large, &env.ffmpeg)?;
    let small = corpus::ensure(&corpus_root, &format!("{}-copy-small", plan.mode), &plan.copy_small, &env.ffmpeg)?;
    let mixed = corpus::ensure(&corpus_root, &format!("{}-reencode-mixed", plan.mode), &plan.reencode, &env.ffmpeg)?;
    let run_cluster = !(args.no_cluster || skip("cluster"));
    let tiny = if run_cluster {
        Some(corpus::ensure(&corpus_root, &format!("{}-cluster-2s", plan.mode), &plan.cluster_tiny, &env.ffmpeg)?)
    } else {
        None
    };
    for c in [Some(&large), Some(&small), Some(&mixed), tiny.as_ref()].into_iter().flatten() {
        results.corpora.push((c.name.clone(), c.describe(), c.generated, c.generate_seconds));
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    // Copy path.
    let mut bare_large_rss = None;
    let mut reel_large_hwm = None;
    if !skip("copy") {
        eprintln!("copy path: {} × {:.1} MB", large.clips.len(), large.mean_mb());
        let r = copy_path(&env, &large, plan.runs, &rt);
        if let Ok(p) = &r {
            bare_large_rss = p.contenders[0].runs.iter().map(|m| m.tree_maxrss_kib).max();
            reel_large_hwm = p.contenders[1].runs.iter().filter_map(|m| m.own_hwm_kib).max();
        }
        results.copy = Some(r.map_err(|e| format!("{e:#}")));
    }

    // RSS at two clip sizes, and the profile of where reel's time goes.
    if !skip("rss") {
        for (corpus, bare_rss, timed) in [(&large, bare_large_rss, reel_large_hwm), (&small, None, None)] {
            eprintln!("profile + RSS (wrapped ffmpeg/ffprobe): {}", corpus.name);
            let r = profile(&env, corpus, &[], "copy path").and_then(|mut p| {
                p.bare_maxrss_kib = match bare_rss {
                    Some(k) => Some(k),
                    None => Some(bare_concat_once(&env, corpus)?),
                };
                p.reel_hwm_timed_kib = timed;
                Ok(p)
            });
            results.profiles.push(r.map_err(|e| format!("{e:#}")));
        }
    }

    // The copy path's overheads in isolation, with reel's own ffprobe commands.
    if !skip("rss") {
        let tools = results.profiles.first().and_then(|p| p.as_ref().ok()).map(|p| p.tools.clone());
        if let Some(tools) = tools {
            eprintln!("what-if: reel's ffprobe passes and a CRC32C pass over {} clips", large.clips.len());
            results.whatif = Some(
                whatif::run(&env, &large.clips, large.total_bytes(), &tools, plan.runs).map_err(|e| format!("{e:#}")),
            );
        }
    }

    // Re-encode path.
    if !skip("reencode") {
        eprintln!("re-encode path: {}", mixed.describe());
        let r = reencode_path(&env, &mixed, plan.runs, &rt);
        let (bare_rss, reel_hwm) = match &r {
            Ok(p) => (
                p.contenders[0].runs.iter().map(|m| m.tree_maxrss_kib).max(),
                p.contenders[1].runs.iter().filter_map(|m| m.own_hwm_kib).max(),
            ),
            Err(_) => (None, None),
        };
        results.reencode = Some(r.map_err(|e| format!("{e:#}")));
        if !skip("rss") {
            eprintln!("profile + RSS (wrapped): re-encode");
            let extra = ["--compression", "optimized", "--orientation", "portrait"];
            let r = profile(&env, &mixed, &extra, "re-encode path").map(|mut p| {
                p.bare_maxrss_kib = bare_rss;
                p.reel_hwm_timed_kib = reel_hwm;
                p
            });
            if let Ok(p) = &r {
                results.command_check = Some(check_commands(&env, &mixed, p, &rt));
            }
            results.profiles.push(r.map_err(|e| format!("{e:#}")));
        }
    }

    // What one ffmpeg/ffprobe process costs before it does anything.
    if !skip("rss") {
        for tool in [&env.ffprobe, &env.ffmpeg] {
            match spawn_floor(&env, tool, plan.runs.max(5)) {
                Ok(x) => results.spawn_floor.push(x),
                Err(e) => eprintln!("spawn floor of {}: {e:#}", tool.display()),
            }
        }
    }

    // Embedded bus.
    if !skip("bus") {
        eprintln!("embedded bus: {} messages per experiment", args.messages);
        let log = env.work.join("bus-log").join("events.jsonl");
        let n = args.messages;
        let r: Result<BusResults> = rt.block_on(async {
            Ok(vec![
                bus::idle_hops("idle hop, in-memory topic", n, 50, None).await?,
                bus::idle_hops("idle hop, persisted topic (event-log append)", n, 50, Some(&log)).await?,
                bus::burst("burst (all published at once)", n).await?,
            ])
        });
        results.bus = Some(r.map_err(|e| format!("{e:#}")));
    }

    // reel-api's state with many finished jobs.
    if !skip("api") {
        eprintln!("reel-api state: {} finished jobs, {} progress events", args.api_jobs, args.api_progress);
        results.api = Some(apimem::run(&env.bench_exe, &env.work, api_options, &rt).map_err(|e| format!("{e:#}")));
    }

    // The local cluster.
    match &tiny {
        None => results.cluster = cluster::not_run("not run: --no-cluster"),
        Some(tiny) => {
            let embedded_large_s = match &results.copy {
                Some(Ok(p)) => p.contenders.get(1).and_then(|c| c.summary()).map(|s| s.median),
                _ => None,
            };
            let opts = cluster::Options {
                jobs: args.cluster_jobs.unwrap_or(plan.cluster_jobs),
                idle_jobs: args.cluster_idle_jobs.unwrap_or(plan.cluster_idle_jobs),
                stitch_workers: args.cluster_stitch_workers.max(1),
                recovery: !skip("cluster-recovery"),
                fanout: !skip("cluster-fanout"),
                bus_messages: plan.bus_messages,
                embedded_large_s,
            };
            eprintln!("local cluster: {} small jobs at once, {} one at a time", opts.jobs, opts.idle_jobs);
            let corpora = cluster::Corpora { large: &large, small: &small, tiny, mixed: &mixed };
            results.cluster = cluster::run(&env, &opts, &corpora, &rt);
        }
    }

    results.load.1 = loadavg();
    results.total_seconds = started.elapsed().as_secs_f64();

    let text = report::render(&results);
    let out = absolute(&args.out)?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} ({:.0} s in all)", out.display(), results.total_seconds);
    print!("{}", report::summary_lines(&results));
    Ok(())
}

fn copy_path(env: &Env, corpus: &Corpus, runs: usize, rt: &tokio::runtime::Runtime) -> Result<PathResult> {
    corpus.warm_cache()?;
    let list = env.work.join(format!("{}.concat.txt", corpus.name));
    std::fs::write(&list, recipe::concat_list(&corpus.clips))?;
    let out_dir = env.fresh_dir("out")?;
    let bare_out = out_dir.join("bare.mp4");
    let reel_out = out_dir.join("reel.mp4");
    let bare_args = recipe::concat_args(&list, &bare_out, false);
    let mut bare = Contender::new("bare ffmpeg (concat demuxer, -c copy)", format!("ffmpeg {}", bare_args.join(" ")));
    let mut reel = Contender::new(
        "reel stitch",
        format!("reel stitch CLIP×{} -o OUT (fresh REEL_HOME per run)", corpus.clips.len()),
    );
    let floor_out = out_dir.join("floor.bin");
    let mut floor = Contender::new(
        "floor: copy_file_range of the clips",
        format!("reel-bench __copy-floor OUT CLIP×{} (the clips' bytes, appended in-kernel)", corpus.clips.len()),
    );
    let log = env.log("copy");
    // One warm-up each (not counted), then alternate.
    for round in 0..=runs {
        remove(&bare_out);
        let b = proc::run(&mut env.ffmpeg_cmd(&bare_args), false, &log)?;
        remove(&reel_out);
        let home = env.fresh_dir("home")?;
        let r = proc::run(&mut env.reel_cmd(&home, &corpus.clips, &reel_out, &[], None), true, &log)?;
        remove(&home);
        remove(&floor_out);
        let mut floor_cmd = Command::new(&env.bench_exe);
        floor_cmd.arg("__copy-floor").arg(&floor_out).args(&corpus.clips).stdout(Stdio::null());
        let f = proc::run(&mut floor_cmd, false, &log)?;
        eprintln!(
            "  round {round}{}: bare {:.2} s, reel {:.2} s, floor {:.2} s",
            if round == 0 { " (warm-up, not counted)" } else { "" },
            b.wall.as_secs_f64(),
            r.wall.as_secs_f64(),
            f.wall.as_secs_f64()
        );
        if round > 0 {
            bare.runs.push(b);
            reel.runs.push(r);
            floor.runs.push(f);
        }
    }
    let mut notes = Vec::new();
    let (b, r) = rt.block_on(async {
        (
            reel_media::probe(&crate::recipe::probe_config(), &bare_out).await,
            reel_media::probe(&crate::recipe::probe_config(), &reel_out).await,
        )
    });
    match (b, r) {
        (Ok(b), Ok(r)) => notes.push(format!(
            "Both outputs checked with ffprobe: bare {:.2} s / {:.0} MB, reel {:.2} s / {:.0} MB.",
            b.duration_seconds,
            file_mb(&bare_out),
            r.duration_seconds,
            file_mb(&reel_out)
        )),
        (b, r) => notes.push(format!("Output check failed: bare {:?}, reel {:?}", b.err(), r.err())),
    }
    remove(&out_dir);
    Ok(PathResult {
        title: "copy path".into(),
        workload: corpus.describe(),
        contenders: vec![bare, reel, floor],
        target_ratio: 0.5,
        notes,
        video_seconds: Some(corpus.total_seconds() as f64),
    })
}

/// `TOOL -version`, `runs` times: the cost of starting one ffmpeg/ffprobe process.
fn spawn_floor(env: &Env, tool: &Path, runs: usize) -> Result<(String, stats::Summary, u64)> {
    let mut walls = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        let mut cmd = Command::new(tool);
        cmd.arg("-version").stdout(Stdio::null());
        let m = proc::run(&mut cmd, false, &env.log("spawn-floor"))?;
        walls.push(m.wall.as_secs_f64());
        rss = rss.max(m.tree_maxrss_kib);
    }
    let name = tool.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((format!("{name} -version"), stats::Summary::of(&walls).context("no runs")?, rss))
}

fn file_mb(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN)
}

fn bare_concat_once(env: &Env, corpus: &Corpus) -> Result<u64> {
    let list = env.work.join(format!("{}.concat.txt", corpus.name));
    std::fs::write(&list, recipe::concat_list(&corpus.clips))?;
    let dir = env.fresh_dir("out")?;
    let m = proc::run(
        &mut env.ffmpeg_cmd(&recipe::concat_args(&list, &dir.join("bare.mp4"), false)),
        false,
        &env.log("bare-once"),
    )?;
    remove(&dir);
    Ok(m.tree_maxrss_kib)
}

fn probe_all(corpus: &Corpus, rt: &tokio::runtime::Runtime) -> Result<Vec<(PathBuf, reel_events::ClipInfo)>> {
    rt.block_on(async {
        let mut out = Vec::new();
        for c in &corpus.clips {
            let info = reel_media::probe(&crate::recipe::probe_config(), c)
                .await
                .with_context(|| format!("probing {}", c.display()))?;
            out.push((c.clone(), info));
        }
        Ok(out)
    })
}

fn reencode_target() -> EncodeTarget {
    EncodeTarget::new(Orientation::Portrait, Compression::Optimized)
}

/// The bare per-clip commands (segments in `seg_dir`) and the concat of the segments.
fn bare_reencode_cmds(
    infos: &[(PathBuf, reel_events::ClipInfo)],
    seg_dir: &Path,
    out: &Path,
) -> Result<(Vec<Vec<String>>, Vec<String>, PathBuf)> {
    let t = reencode_target();
    let segs: Vec<PathBuf> = (0..infos.len()).map(|i| seg_dir.join(format!("seg{i:03}.mp4"))).collect();
    let per_clip = infos.iter().zip(&segs).map(|((p, info), s)| recipe::normalize_args(p, info, &t, s)).collect();
    let list = seg_dir.join("segments.txt");
    std::fs::write(&list, recipe::concat_list(&segs))?;
    Ok((per_clip, recipe::concat_args(&list, out, true), list))
}

fn reencode_path(env: &Env, corpus: &Corpus, runs: usize, rt: &tokio::runtime::Runtime) -> Result<PathResult> {
    corpus.warm_cache()?;
    let infos = probe_all(corpus, rt)?;
    let t = reencode_target();
    let out_dir = env.fresh_dir("out")?;
    let seg_dir = out_dir.join("segments");
    std::fs::create_dir_all(&seg_dir)?;
    let (bare_out, reel_out, fc_out) = (out_dir.join("bare.mp4"), out_dir.join("reel.mp4"), out_dir.join("fc.mp4"));
    let (per_clip, concat, _list) = bare_reencode_cmds(&infos, &seg_dir, &bare_out)?;
    let fc_args = recipe::filter_complex_args(&infos, &t, &fc_out);
    let extra = ["--compression", "optimized", "--orientation", "portrait"];
    let mut bare = Contender::new(
        "bare ffmpeg, per clip + concat (reel's graph and settings)",
        format!(
            "{} × `ffmpeg -i CLIP -filter_complex <reel's graph> {} SEG`, then `ffmpeg {}`",
            per_clip.len(),
            recipe::encoder_args(&t).join(" "),
            concat.join(" ")
        ),
    );
    let mut reel = Contender::new(
        "reel stitch --compression optimized",
        format!("reel stitch CLIP×{} -o OUT {}", corpus.clips.len(), extra.join(" ")),
    );
    let mut fc = Contender::new(
        "bare ffmpeg, one filter_complex concat (reference)",
        "ffmpeg -i CLIP… -filter_complex '<reel's chains per clip>;…concat=n=N:v=1:a=1[v][a]' <same encoder args> OUT"
            .into(),
    );
    let log = env.log("reencode");
    for round in 1..=runs {
        for s in std::fs::read_dir(&seg_dir)?.flatten() {
            if s.path().extension().is_some_and(|e| e == "mp4") {
                remove(&s.path());
            }
        }
        remove(&bare_out);
        let mut cmds: Vec<Command> =
            per_clip.iter().chain(std::iter::once(&concat)).map(|a| env.ffmpeg_cmd(a)).collect();
        bare.runs.push(proc::run_sequence(&mut cmds, false, &log)?);
        remove(&reel_out);
        let home = env.fresh_dir("home")?;
        reel.runs.push(proc::run(&mut env.reel_cmd(&home, &corpus.clips, &reel_out, &extra, None), true, &log)?);
        remove(&home);
        remove(&fc_out);
        fc.runs.push(proc::run(&mut env.ffmpeg_cmd(&fc_args), false, &log)?);
        eprintln!(
            "  round {round}: bare {:.1} s, reel {:.1} s, filter_complex {:.1} s",
            bare.runs[round - 1].wall.as_secs_f64(),
            reel.runs[round - 1].wall.as_secs_f64(),
            fc.runs[round - 1].wall.as_secs_f64()
        );
    }
    let mut notes = Vec::new();
    let outs = rt.block_on(async {
        let mut v = Vec::new();
        for p in [&bare_out, &reel_out, &fc_out] {
            v.push(
                reel_media::probe(&crate::recipe::probe_config(), p)
                    .await
                    .map(|i| (i.duration_seconds, i.video.width, i.video.height)),
            );
        }
        v
    });
    let parts: Vec<String> = ["bare", "reel", "filter_complex"]
        .iter()
        .zip(&outs)
        .map(|(n, r)| match r {
            Ok((d, w, h)) => format!("{n} {d:.2} s {w}x{h}"),
            Err(e) => format!("{n}: {e}"),
        })
        .collect();
    notes.push(format!("Outputs checked with ffprobe: {}.", parts.join(", ")));
    notes.push(format!(
        "Work kept bounded: {} clips of {} s ({} s of video) rather than 15 × 30 s; every clip is re-encoded to 1080x1920 (veryfast, CRF 23), which costs about the same per output second whatever the input size.",
        corpus.clips.len(),
        corpus.specs.first().map(|s| s.seconds).unwrap_or(0),
        corpus.total_seconds()
    ));
    remove(&out_dir);
    Ok(PathResult {
        title: "re-encode path".into(),
        workload: corpus.describe(),
        contenders: vec![bare, reel, fc],
        target_ratio: 1.05,
        notes,
        video_seconds: Some(corpus.total_seconds() as f64),
    })
}

/// One reel run with ffmpeg/ffprobe wrapped: RSS of every process, timeline of stages.
fn profile(env: &Env, corpus: &Corpus, extra: &[&str], label: &str) -> Result<Profile> {
    corpus.warm_cache()?;
    let dir = env.fresh_dir("profile")?;
    let tool_log = dir.join("tools.jsonl");
    let wrappers = proc::write_wrappers(&dir, &env.bench_exe, &env.ffmpeg, &env.ffprobe, &tool_log)?;
    let home = dir.join("home");
    let out = dir.join("reel.mp4");
    let m =
        proc::run(&mut env.reel_cmd(&home, &corpus.clips, &out, extra, Some(&wrappers)), true, &env.log("profile"))?;
    let ended_ns = proc::unix_ns();
    let tools = proc::read_tool_log(&tool_log);
    let (timeline, mode) = report::timeline(&home.join("events.jsonl"))?;
    // Keep the logs of the last profile of each kind for a person to look at.
    let keep = env.work.join("logs").join(format!("profile-{}", corpus.name));
    remove(&keep);
    std::fs::create_dir_all(&keep)?;
    let _ = std::fs::copy(&tool_log, keep.join("tools.jsonl"));
    let _ = std::fs::copy(home.join("events.jsonl"), keep.join("events.jsonl"));
    remove(&dir);
    Ok(Profile {
        label: label.into(),
        workload: corpus.describe(),
        clip_mb: corpus.mean_mb(),
        clips: corpus.clips.len(),
        wall_s: m.wall.as_secs_f64(),
        reel_hwm_kib: m.own_hwm_kib,
        reel_hwm_timed_kib: None,
        bare_maxrss_kib: None,
        tools,
        started_ns: m.started_unix_ns,
        ended_ns,
        timeline,
        mode,
    })
}

/// Compares the bench's per-clip commands with those reel ran in `profile`.
fn check_commands(
    env: &Env,
    corpus: &Corpus,
    profile: &Profile,
    rt: &tokio::runtime::Runtime,
) -> Result<usize, String> {
    let infos = probe_all(corpus, rt).map_err(|e| format!("{e:#}"))?;
    let (ours, _, _) = bare_reencode_cmds(&infos, &env.work, Path::new("/unused.mp4")).map_err(|e| format!("{e:#}"))?;
    let mut reels: Vec<&ToolRun> =
        profile.tools.iter().filter(|t| t.tool == "ffmpeg" && t.args.iter().any(|a| a == "-filter_complex")).collect();
    reels.sort_by_key(|t| t.start_unix_ns);
    let reels: Vec<Vec<String>> = reels.into_iter().map(|t| t.args.clone()).collect();
    recipe::compare_with_reel(&ours, &reels)
}
