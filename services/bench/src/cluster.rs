//! The measurements of issue 7 on the local cluster: the five stage programs (each its
//! own process) on the Pub/Sub emulator and fake-gcs-server.
//!
//! In one run, after the embedded measurements:
//!
//! 1. the emulators are started on free ports by `reel_gcp::testing::Emulators` (each in
//!    its own process group, killed by PID when the value is dropped, and by the kernel
//!    if the bench dies); the bench uses its own bucket and a topic prefix per phase;
//! 2. **bus alone**: `reel_gcp::PubSubBus` publish → `receive` returned, one message at a
//!    time (the same experiment as the embedded bus's idle hop);
//! 3. the clips are uploaded to fake-gcs-server once (setup, not timed);
//! 4. **phase `large`**: `reel setup` with a fresh prefix, five fresh programs, one job on
//!    the large copy corpus: wall time from publish of `stitch.requested` to
//!    `job.completed` on the event log, the output downloaded and checked with ffprobe,
//!    then every program's `VmHWM` is read and the programs are stopped (SIGTERM, reaped
//!    with `wait4` for their CPU time);
//! 5. **phase `small`**: the same with the small copy corpus (`VmHWM` read after that
//!    job), then small jobs (2 clips × 2 s) one at a time, for the idle per-hop latency;
//! 6. **phase `burst`**: fresh programs (stitch possibly ×2), N small jobs submitted at
//!    once: jobs per minute, all completed, per-hop latency under load.
//!
//! A fresh prefix per phase matters on the emulator: it never notices that a stopped
//! program's streaming pull is gone and goes on delivering into it (see
//! `reel_gcp::pubsub`), so programs restarted on the same subscriptions would see
//! messages only after their ack deadline.
//!
//! Per-hop latency (publish → handler start) is computed from the event log and the
//! programs' own log lines; see [`hop_samples`] and the method lines of the report.

use crate::bus::{self as hopbus, HopResult};
use crate::corpus::Corpus;
use crate::report::secs;
use crate::{proc, stats, Env};
use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use reel_events::payload::StitchRequested;
use reel_events::{binding, envelope, types, AttributesReader, Compression, Orientation};
use reel_gcp::testing::{EmulatorOptions, Emulators};
use reel_gcp::{GcsClient, GcsStore, PubSubBus};
use reel_runtime::bus::Bus;
use reel_runtime::topology::{Names, SubscriptionSpec, TopicSpec, Topology};
use reel_runtime::{PutMode, Store};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The stages, in pipeline order.
pub const STAGES: [&str; 5] = ["validate", "download", "stitch", "upload", "finalize"];
/// The event each stage consumes (short type), in the same order.
const INPUTS: [&str; 5] = ["stitch.requested", "job.validated", "job.downloaded", "job.stitched", "job.uploaded"];

/// Settings every stage program gets besides the emulators, bucket and prefix: the
/// e2e harness's (services/e2e/src/lib.rs), for the emulator's sake.
pub const PROGRAM_SETTINGS: [(&str, &str); 4] = [
    ("REEL_ACK_DEADLINE_SECONDS", "10"),
    ("REEL_MIN_BACKOFF_SECONDS", "1"),
    ("REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES", "1"),
    ("LOG_LEVEL", "info"),
];

/// A wait for jobs ends when the event log stayed silent this long.
const STALL: Duration = Duration::from_secs(90);
/// Per-hop p50 target on the emulator, ms.
const HOP_P50_TARGET_MS: f64 = 50.0;
/// Stage RSS target, MiB.
const STAGE_RSS_MIB: f64 = 50.0;

/// How much to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small jobs submitted at once (50; quick: 10).
    pub jobs: usize,
    /// Small jobs run one at a time for the idle per-hop latency.
    pub idle_jobs: usize,
    /// reel-stitch processes in the burst phase.
    pub stitch_workers: usize,
    /// Also run the burst with `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES` = jobs (messages
    /// wait leased in each program instead of being released by nack).
    pub buffered_burst: bool,
    /// Messages of the bus-alone latency experiment.
    pub bus_messages: usize,
    /// Median of the embedded `reel stitch` on the large corpus, for comparison (s).
    pub embedded_large_s: Option<f64>,
}

/// What happened to one cluster measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not run, and why.
    NotRun(String),
    /// Measured: the figure, and the result (`met`, `**missed** …`, `—`, …).
    Measured { figure: String, result: String },
    /// It was attempted and failed.
    Failed(String),
}

/// One row of the cluster table.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRow {
    /// What is measured.
    pub what: String,
    /// The target, if any ("—").
    pub target: String,
    /// The outcome.
    pub status: Status,
    /// Whether the row belongs in the report's Targets table too.
    pub in_targets: bool,
}

/// One stage process at the end of a phase.
#[derive(Debug, Clone, Default)]
pub struct ProcStat {
    /// Its stage.
    pub stage: String,
    /// 0, 1, … when a stage runs several processes.
    pub instance: usize,
    /// Its own peak resident set (`VmHWM`), KiB.
    pub hwm_kib: Option<u64>,
    /// `ru_maxrss` from `wait4`: it or its largest ffmpeg/ffprobe child, KiB.
    pub tree_maxrss_kib: Option<u64>,
    /// CPU time (user + system) of it and its reaped children, s.
    pub cpu_s: Option<f64>,
    /// How it ended.
    pub exit: String,
}

/// The stage processes of one phase.
#[derive(Debug, Clone, Default)]
pub struct RssPhase {
    /// `large`, `small`, `burst`.
    pub phase: String,
    /// Column heading.
    pub label: String,
    /// Mean clip size of the phase's (first) job, MB.
    pub clip_mb: f64,
    /// Processes (VmHWM read when the phase's measured job had completed).
    pub procs: Vec<ProcStat>,
    /// From the programs' start to the measured jobs' end, s.
    pub wall_s: f64,
    /// CPU time the emulators used in that time (name, s).
    pub emulators_cpu_s: Vec<(String, f64)>,
}

/// One hop: the consuming stage, its job, publish → handler start.
#[derive(Debug, Clone)]
pub struct HopSample {
    /// Index into [`STAGES`] of the consuming stage.
    pub stage: usize,
    /// The job.
    pub job: String,
    /// Latency, ms.
    pub ms: f64,
    /// The delivery attempt that ran the handler.
    pub attempt: u32,
}

/// One job measured end to end.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// `large` / `small`.
    pub phase: String,
    /// The workload.
    pub workload: String,
    /// Clips.
    pub clips: usize,
    /// Mean clip size, MB.
    pub clip_mb: f64,
    /// Publish of `stitch.requested` → `job.completed` on the event log, s.
    pub wall_s: f64,
    /// The bench's publish call → the emulator's publish time of `stitch.requested`, ms.
    pub publish_stamp_ms: f64,
    /// Stitch mode from `job.completed`.
    pub mode: String,
    /// Output duration (ffprobe of the downloaded output), s.
    pub output_s: Option<f64>,
    /// Sum of the clips' durations (ffprobe), s.
    pub expected_s: f64,
    /// Output size, MB.
    pub output_mb: f64,
    /// Whether the output checked out, or why not.
    pub check: Result<(), String>,
    /// Per stage: (hop into it ms, handler ms).
    pub stages: Vec<(Option<f64>, Option<f64>)>,
    /// Terminal event if not completed.
    pub failure: Option<String>,
}

impl Default for JobRun {
    fn default() -> Self {
        JobRun {
            phase: String::new(),
            workload: String::new(),
            clips: 0,
            clip_mb: 0.0,
            wall_s: 0.0,
            publish_stamp_ms: f64::NAN,
            mode: String::new(),
            output_s: None,
            expected_s: 0.0,
            output_mb: 0.0,
            check: Err("not checked".into()),
            stages: Vec::new(),
            failure: None,
        }
    }
}

/// A burst of small jobs.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    /// Phase name (`burst`, `burst-buffered`).
    pub phase: String,
    /// The programs' `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES`.
    pub max_outstanding: usize,
    /// Submitted.
    pub jobs: usize,
    /// Distinct jobs with `job.completed`.
    pub completed: usize,
    /// `job.failed` / `job.cancelled` (job, what).
    pub failed: Vec<String>,
    /// Not finished at the timeout.
    pub unfinished: usize,
    /// First publish → last `job.completed` on the log, s.
    pub secs: f64,
    /// Outputs present in the bucket (HEAD), and the checked one's ffprobe duration.
    pub outputs_present: usize,
    /// ffprobe of one output (duration, expected).
    pub sample_check: Option<Result<(f64, f64), String>>,
    /// Per job: publish → `job.completed`, s.
    pub latencies_s: Vec<f64>,
    /// reel-stitch processes.
    pub stitch_workers: usize,
    /// Publishing all requests took, s.
    pub publish_s: f64,
    /// Messages found on each stage's dead-letter subscription afterwards.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Delivery attempts of the handler runs, per stage: (runs, largest attempt).
    pub attempts: BTreeMap<String, (usize, u32)>,
    /// Hops of the burst's jobs.
    pub hops: Vec<HopSample>,
}

impl Burst {
    /// Jobs per minute.
    pub fn per_min(&self) -> f64 {
        if self.secs > 0.0 {
            self.completed as f64 / self.secs * 60.0
        } else {
            0.0
        }
    }
}

/// Everything the cluster part measured.
#[derive(Debug, Default)]
pub struct ClusterReport {
    /// The rows (cluster table; some also in the Targets table).
    pub rows: Vec<ClusterRow>,
    /// Configuration lines.
    pub config: Vec<String>,
    /// Stage processes per phase.
    pub rss: Vec<RssPhase>,
    /// Hops of jobs that ran one at a time.
    pub hops_idle: Vec<HopSample>,
    /// Bus alone on the emulator.
    pub bus_hops: Option<Result<HopResult, String>>,
    /// The large and small jobs.
    pub jobs: Vec<JobRun>,
    /// Small jobs one at a time: publish → completed, s.
    pub idle_job_s: Vec<f64>,
    /// The bursts: with the e2e settings, then with messages buffered in each program.
    pub bursts: Vec<Burst>,
    /// Hops that could not be computed (missing event or log line), by reason.
    pub hop_gaps: BTreeMap<String, usize>,
    /// Deliveries with attempt > 1 seen in "stage done" lines.
    pub redeliveries: usize,
    /// WARNING / ERROR lines in the stage logs: (phase, stage, severity, message) → count.
    pub log_issues: BTreeMap<(String, String, String, String), usize>,
    /// Facts worth a line.
    pub notes: Vec<String>,
    /// What stopped the measurements early.
    pub error: Option<String>,
    /// Wall time of the whole cluster part, s.
    pub seconds: f64,
    /// Where the logs were kept.
    pub logs_dir: Option<PathBuf>,
    /// Transfers through `reel_gcp::GcsStore` to/from fake-gcs-server: (what, MB, s).
    pub transfers: Vec<(String, f64, f64)>,
    /// Whether it ran at all.
    pub ran: bool,
}

/// Rows when the cluster part is skipped.
pub fn not_run(why: &str) -> ClusterReport {
    let mut rep = ClusterReport::default();
    for (what, target) in [
        ("per-hop latency on the Pub/Sub emulator (publish → handler start), p50 / p95", "p50 ≤ 50 ms"),
        ("one job end to end on the emulators (copy path)", "—"),
        ("peak RSS of each stage process (cluster mode), two clip sizes", "≤ 50 MiB, flat"),
        ("throughput: small jobs (2 clips × 2 s) submitted at once: jobs/min, all completed", "all completed"),
    ] {
        rep.rows.push(ClusterRow {
            what: what.into(),
            target: target.into(),
            status: Status::NotRun(why.into()),
            in_targets: target != "—",
        });
    }
    rep
}

/// The corpora the cluster part uses.
pub struct Corpora<'a> {
    /// The large copy corpus (one job end to end, RSS).
    pub large: &'a Corpus,
    /// The small copy corpus (RSS at the second size).
    pub small: &'a Corpus,
    /// 2 clips × 2 s (idle jobs, the burst).
    pub tiny: &'a Corpus,
}

/// Runs the whole cluster part. Never fails: what could not be measured is reported.
pub fn run(env: &Env, opts: &Options, corpora: &Corpora, rt: &tokio::runtime::Runtime) -> ClusterReport {
    let started = Instant::now();
    let mut rep = ClusterReport { ran: true, ..Default::default() };
    let result = rt.block_on(measure(env, opts, corpora, &mut rep));
    if let Err(e) = result {
        eprintln!("cluster: stopped early: {e:#}");
        rep.error = Some(format!("{e:#}"));
    }
    rep.seconds = started.elapsed().as_secs_f64();
    build_rows(&mut rep, opts, corpora);
    rep
}

// ---------------------------------------------------------------------------------------
// Processes.

/// One stage program.
struct Proc {
    stage: String,
    instance: usize,
    child: Child,
    log: PathBuf,
    reaped: bool,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// The stage programs of a phase; killed (process group, by PID) if dropped unstopped.
#[derive(Default)]
struct Programs(Vec<Proc>);

impl Drop for Programs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            if !p.reaped {
                let pid = p.pid();
                // SAFETY: kill(2) of our own child's process group (it leads it) and itself.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
                let _ = p.child.wait();
                p.reaped = true;
            }
        }
    }
}

/// An event seen on the event log.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    ty: String,
    job: String,
    /// The emulator's publish time, ns since the epoch.
    publish_ns: i128,
    data: serde_json::Value,
}

/// One phase's topology, programs and event log.
struct Stack {
    name: String,
    names: Names,
    watch: String,
    programs: Programs,
    events: Vec<Seen>,
    ids: HashSet<String>,
}

impl Stack {
    fn terminal(&self, job: &str) -> Option<&Seen> {
        self.events
            .iter()
            .find(|e| e.job == job && matches!(e.ty.as_str(), "job.completed" | "job.failed" | "job.cancelled"))
    }
}

/// A submitted job.
struct Submitted {
    job: String,
    t0_ns: i128,
    output_key: String,
}

struct Ctx<'a> {
    env: &'a Env,
    bus: Arc<PubSubBus>,
    store: GcsStore,
    bucket: String,
    project: String,
    run_id: String,
    dir: PathBuf,
    bin_dir: PathBuf,
    pubsub_host: String,
    storage_url: String,
    /// (name, pid) of the emulators.
    emulator_pids: Vec<(String, i32)>,
    /// Transfers timed by the bench itself.
    transfers: std::sync::Mutex<Vec<(String, f64, f64)>>,
}

fn ns_now() -> i128 {
    proc::unix_ns() as i128
}

fn short(ty: &str) -> String {
    ty.strip_prefix(types::TYPE_PREFIX).unwrap_or(ty).to_string()
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Ctx<'_> {
    /// The environment of a stage program (and `reel setup`) for `prefix`.
    fn program_env(&self, prefix: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PUBSUB_EMULATOR_HOST".into(), self.pubsub_host.clone()),
            ("STORAGE_EMULATOR_HOST".into(), self.storage_url.clone()),
            ("GOOGLE_CLOUD_PROJECT".into(), self.project.clone()),
            ("VIDEO_STORAGE_BUCKET".into(), self.bucket.clone()),
            ("REEL_TOPIC_PREFIX".into(), prefix.into()),
            ("TEMP_DIR".into(), self.dir.join("tmp").display().to_string()),
        ];
        env.extend(PROGRAM_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// A command with nothing of the caller's reel/cloud settings in its environment.
    fn command(&self, program: &Path, prefix: &str, overrides: &[(String, String)]) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("REEL_")
                || k.starts_with("GOOGLE_")
                || matches!(
                    k.as_ref(),
                    "PUBSUB_EMULATOR_HOST"
                        | "STORAGE_EMULATOR_HOST"
                        | "TEMP_DIR"
                        | "LOG_LEVEL"
                        | "XDG_STATE_HOME"
                        | "PORT"
                        | "VIDEO_STORAGE_BUCKET"
                        | "JOB_TIMEOUT_MINUTES"
                        | "MAX_RETRY_ATTEMPTS"
                        | "METRICS_ENABLED"
                )
            {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.envs(self.program_env(prefix));
        cmd.envs(overrides.iter().cloned());
        cmd
    }

    /// `reel setup` for a fresh prefix, the bench's watch subscription on its event log,
    /// and the stage programs (stitch × `stitch_workers`), ready to pull.
    async fn start_stack(&self, name: &str, stitch_workers: usize, overrides: &[(String, String)]) -> Result<Stack> {
        let prefix = format!("b{}-{name}-", self.run_id);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(self.dir.join("tmp"))?;
        let out = self
            .command(&self.env.reel, &prefix, overrides)
            .arg("setup")
            .env("REEL_HOME", dir.join("cli-home"))
            .stdin(Stdio::null())
            .output()
            .context("running reel setup")?;
        std::fs::write(dir.join("setup.log"), [&out.stdout[..], &out.stderr[..]].concat())?;
        if !out.status.success() {
            bail!("reel setup failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let names = Names::new(&prefix);
        let watch = format!("{prefix}bench-watch");
        let topology = Topology {
            prefix: prefix.clone(),
            topics: vec![],
            subscriptions: vec![subscription(&watch, &names.events())],
        };
        self.bus.ensure_topology(&topology).await.context("creating the bench's event-log subscription")?;

        let mut programs = Programs::default();
        for stage in STAGES {
            let n = if stage == "stitch" { stitch_workers.max(1) } else { 1 };
            for instance in 0..n {
                let log = dir.join(format!("{stage}-{instance}.log"));
                let file = std::fs::File::create(&log)?;
                let mut cmd = self.command(&self.bin_dir.join(format!("reel-{stage}")), &prefix, overrides);
                cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).process_group(0);
                let parent = std::process::id() as libc::pid_t;
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        // Die with the bench, however it ends (it spawns from its main thread).
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        if libc::getppid() != parent {
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
                let child =
                    cmd.spawn().with_context(|| format!("starting reel-{stage} (built by scripts/bench.sh)"))?;
                programs.0.push(Proc { stage: stage.into(), instance, child, log, reaped: false });
            }
        }
        let start = Instant::now();
        loop {
            let mut ready = 0;
            for p in &programs.0 {
                if proc::exited(p.pid()) {
                    bail!("reel-{} exited at start; its log:\n{}", p.stage, tail(&p.log, 10));
                }
                if std::fs::read_to_string(&p.log).unwrap_or_default().contains("\"worker started\"") {
                    ready += 1;
                }
            }
            if ready == programs.0.len() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the stage programs did not start within 60 s (logs in {})", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Stack { name: name.into(), names, watch, programs, events: Vec::new(), ids: HashSet::new() })
    }

    /// Everything new on the stack's event log.
    async fn pull(&self, st: &mut Stack) -> Result<()> {
        loop {
            let batch =
                self.bus.receive(&st.watch, 1000, Duration::from_millis(100)).await.context("reading the event log")?;
            if batch.is_empty() {
                return Ok(());
            }
            for d in batch {
                let _ = self.bus.ack(&st.watch, &d.ack_id).await;
                let Ok(event) = binding::decode(&d.message) else { continue };
                if !st.ids.insert(event.id().to_string()) {
                    continue;
                }
                st.events.push(Seen {
                    id: event.id().to_string(),
                    ty: short(event.ty()),
                    job: envelope::job_id_of(&event).unwrap_or_default(),
                    publish_ns: d.publish_time.timestamp_nanos_opt().unwrap_or(0) as i128,
                    data: envelope::data_json(&event).unwrap_or(serde_json::Value::Null),
                });
            }
        }
    }

    /// Publishes a `stitch.requested` as `reel submit` does (to the event log, then to
    /// validate's topic).
    fn request(&self, clips: &[String], project: &str, output_key: &str) -> Result<(String, reel_events::Event)> {
        let job = format!("job_{}", uuid::Uuid::new_v4().simple());
        let request = StitchRequested {
            job_id: Some(job.clone()),
            project_id: project.into(),
            user_id: "bench".into(),
            clip_paths: clips.to_vec(),
            output_path: format!("gs://{}/{output_key}", self.bucket),
            orientation: Orientation::Portrait,
            compression: Compression::Optimized,
            retry_attempt: None,
            force_restart: None,
        };
        let id = format!("stitch.requested-{}", uuid::Uuid::new_v4().simple());
        let mut event = envelope::build(types::STITCH_REQUESTED, "//reel/bench", id, &job, Utc::now(), &request)?;
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
        event.set_extension(envelope::TRACEPARENT, format!("00-{trace}-{span}-01"));
        Ok((job, event))
    }

    async fn submit(&self, st: &Stack, clips: &[String], project: &str, output_key: &str) -> Result<Submitted> {
        let (job, event) = self.request(clips, project, output_key)?;
        let t0_ns = ns_now();
        reel_runtime::worker::publish_event(self.bus.as_ref(), &st.names, &event)
            .await
            .context("publishing stitch.requested")?;
        Ok(Submitted { job, t0_ns, output_key: output_key.into() })
    }

    /// Waits until every job has a terminal event on the log.
    async fn wait_jobs(&self, st: &mut Stack, jobs: &[String], timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        let mut last_print = Instant::now();
        let (mut seen, mut last_news) = (st.events.len(), Instant::now());
        loop {
            self.pull(st).await?;
            let pending = jobs.iter().filter(|j| st.terminal(j).is_none()).count();
            if pending == 0 {
                return Ok(0);
            }
            if st.events.len() != seen {
                (seen, last_news) = (st.events.len(), Instant::now());
            }
            // Nothing at all on the event log (not even progress) for longer than the
            // subscriptions' largest retry backoff (60 s): what is left will not finish.
            if last_news.elapsed() > STALL {
                eprintln!("  nothing new on the event log for {} s; {pending} job(s) unfinished", STALL.as_secs());
                return Ok(pending);
            }
            for p in &st.programs.0 {
                if proc::exited(p.pid()) {
                    bail!("reel-{} exited during phase {}; its log:\n{}", p.stage, st.name, tail(&p.log, 10));
                }
            }
            if start.elapsed() > timeout {
                return Ok(pending);
            }
            if jobs.len() > 1 && last_print.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  {} of {} job(s) finished after {:.0} s",
                    jobs.len() - pending,
                    jobs.len(),
                    start.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads a corpus to `clips/NAME/` (setup, not timed); returns the gs:// paths.
    async fn upload(&self, corpus: &Corpus) -> Result<Vec<String>> {
        let start = Instant::now();
        let mut paths = Vec::new();
        for clip in &corpus.clips {
            let key =
                format!("clips/{}/{}", corpus.name, clip.file_name().and_then(|n| n.to_str()).unwrap_or("clip.mp4"));
            reel_runtime::store::put_file(&self.store, &key, clip, PutMode::Overwrite)
                .await
                .with_context(|| format!("uploading {} to fake-gcs-server", clip.display()))?;
            paths.push(format!("gs://{}/{key}", self.bucket));
        }
        eprintln!(
            "  uploaded {} ({:.0} MB) in {:.1} s",
            corpus.name,
            corpus.total_bytes() as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
        self.transfers.lock().expect("transfers").push((
            format!(
                "PUT of {} clips of {:.1} MB (`{}`), one after another",
                corpus.clips.len(),
                corpus.mean_mb(),
                corpus.name
            ),
            corpus.total_bytes() as f64 / 1e6,
            start.elapsed().as_secs_f64(),
        ));
        Ok(paths)
    }

    /// Downloads an output and checks its duration against the clips'.
    /// With `time_transfers`, the download is timed, and so is a PUT of the same file as
    /// one object (then deleted): what the stitch stage does with the reel.
    async fn check_output(
        &self,
        key: &str,
        expected: f64,
        clips: usize,
        time_transfers: bool,
    ) -> Result<(f64, f64), String> {
        let local = self.dir.join(format!("check-{}.mp4", uuid::Uuid::new_v4().simple()));
        let r = async {
            let start = Instant::now();
            let bytes = reel_runtime::store::get_to_file(&self.store, key, &local)
                .await
                .map_err(|e| format!("download of {key}: {e}"))?;
            if time_transfers {
                let mb = bytes as f64 / 1e6;
                self.transfers.lock().expect("transfers").push((
                    format!("GET of a {mb:.0} MB reel to a local file"),
                    mb,
                    start.elapsed().as_secs_f64(),
                ));
                let test_key = format!("bench/put-test-{}.mp4", uuid::Uuid::new_v4().simple());
                let start = Instant::now();
                if reel_runtime::store::put_file(&self.store, &test_key, &local, PutMode::Overwrite).await.is_ok() {
                    self.transfers.lock().expect("transfers").push((
                        format!("PUT of the same {mb:.0} MB file as one object"),
                        mb,
                        start.elapsed().as_secs_f64(),
                    ));
                }
                let _ = self.store.delete(&test_key).await;
            }
            let info = reel_media::probe(&local).await.map_err(|e| format!("ffprobe of the output: {e}"))?;
            let tolerance = 0.1 + 0.05 * clips as f64;
            if (info.duration_seconds - expected).abs() > tolerance {
                return Err(format!(
                    "output is {:.2} s, the clips {:.2} s (tolerance {:.2} s)",
                    info.duration_seconds, expected, tolerance
                ));
            }
            Ok((info.duration_seconds, bytes as f64 / 1e6))
        }
        .await;
        let _ = std::fs::remove_file(&local);
        r
    }

    /// CPU time of each emulator so far.
    fn emulators_cpu(&self) -> Vec<(String, f64)> {
        self.emulator_pids.iter().map(|(n, pid)| (n.clone(), cpu_s(*pid).unwrap_or(f64::NAN))).collect()
    }

    /// CPU used by each emulator since `before`.
    fn emulators_cpu_since(&self, before: &[(String, f64)]) -> Vec<(String, f64)> {
        self.emulators_cpu().into_iter().zip(before).map(|((n, now), (_, then))| (n, now - then)).collect()
    }

    /// Reads every program's VmHWM now (the phase's measured job is done).
    fn snapshot(st: &Stack) -> Vec<ProcStat> {
        st.programs
            .0
            .iter()
            .map(|p| ProcStat {
                stage: p.stage.clone(),
                instance: p.instance,
                hwm_kib: proc::read_hwm_kib(p.pid()),
                ..Default::default()
            })
            .collect()
    }

    /// Stops the programs (SIGTERM, reaped by `wait4`; SIGKILL to the group after 30 s)
    /// and completes `stats` (same order as the programs) with their rusage.
    async fn stop(st: &mut Stack, stats: &mut [ProcStat]) {
        for p in &st.programs.0 {
            // SAFETY: kill(2) of our own child.
            unsafe {
                libc::kill(p.pid(), libc::SIGTERM);
            }
        }
        for (p, s) in st.programs.0.iter_mut().zip(stats.iter_mut()) {
            let start = Instant::now();
            let mut killed = false;
            loop {
                match proc::try_wait4(p.pid()) {
                    Ok(Some((status, maxrss, cpu))) => {
                        p.reaped = true;
                        s.tree_maxrss_kib = Some(maxrss);
                        s.cpu_s = Some(cpu.as_secs_f64());
                        s.exit = if killed {
                            "killed after 30 s".into()
                        } else if status.success() {
                            "exit 0".into()
                        } else {
                            format!("{status}")
                        };
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // ECHILD: nothing left to reap (and nothing to kill later).
                        p.reaped = true;
                        s.exit = format!("wait4: {e:#}");
                        break;
                    }
                }
                if !killed && start.elapsed() > Duration::from_secs(30) {
                    // SAFETY: kill(2) of our own child's process group.
                    unsafe {
                        libc::kill(-p.pid(), libc::SIGKILL);
                    }
                    killed = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// CPU time (user + system) a live process has used so far, s (`/proc/PID/stat`).
fn cpu_s(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / hz)
}

fn subscription(name: &str, topic: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.into(),
        topic: topic.into(),
        ack_deadline: Duration::from_secs(30),
        dead_letter_topic: None,
        max_delivery_attempts: 5,
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
        message_retention: Duration::from_secs(3600),
        exactly_once: false,
    }
}

/// The emulators, checked to be the processes listening on their ports: a free port
/// can be taken by another program's emulator (other test runs on the machine) between
/// the port search and the bind; the newcomer then exits and the port still answers.
async fn start_emulators() -> Result<Emulators> {
    let mut last = String::new();
    for _ in 0..3 {
        let emulators =
            Emulators::start_with(EmulatorOptions { pubsub: true, gcs: true, gcs_notification_topic: None })
                .await
                .context("starting the emulators (scripts/install-deps.sh --cloud installs them)")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let port = |addr: String| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
        let ports = [port(emulators.pubsub_host()), port(emulators.storage_url())];
        let pids = emulators.pids();
        let owned = pids.len() == 2
            && pids.iter().zip(ports).all(|(pid, port)| !proc::exited(*pid as i32) && listens(*pid as i32, port));
        if owned {
            return Ok(emulators);
        }
        last = format!("pids {pids:?} do not all listen on ports {ports:?}");
        eprintln!("cluster: the emulators lost their ports to another process ({last}); starting them again");
    }
    bail!("could not start the emulators on ports of their own: {last}")
}

/// Whether process `pid` holds the socket listening on TCP `port` (IPv4 or IPv6).
fn listens(pid: i32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let p = local.rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port) && *state == "0A" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).map(|l| inodes.contains(&l.to_string_lossy().to_string())).unwrap_or(false)
    })
}

async fn probe_sum(corpus: &Corpus) -> Result<f64> {
    let mut sum = 0.0;
    for c in &corpus.clips {
        sum += reel_media::probe(c).await.with_context(|| format!("probing {}", c.display()))?.duration_seconds;
    }
    Ok(sum)
}

async fn measure(env: &Env, opts: &Options, corpora: &Corpora<'_>, rep: &mut ClusterReport) -> Result<()> {
    let dir = env.work.join("cluster");
    std::fs::create_dir_all(&dir)?;
    rep.logs_dir = Some(dir.clone());
    let bin_dir = env.reel.parent().context("reel has no directory")?.to_path_buf();
    for stage in STAGES {
        let p = bin_dir.join(format!("reel-{stage}"));
        if !p.is_file() {
            bail!("{} is missing (scripts/bench.sh builds the stage programs)", p.display());
        }
    }
    eprintln!("cluster: starting the Pub/Sub emulator and fake-gcs-server on free ports");
    let emulators = start_emulators().await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    // The bench reads the event log in bulk: no flow-control limit of its own.
    let config = emulators.pubsub_config().set_max_outstanding_messages(100_000);
    let bus = Arc::new(PubSubBus::connect(config).await.context("connecting to the Pub/Sub emulator")?);
    let client = GcsClient::connect(reel_gcp::GcsConfig::new().with_emulator(&emulators.storage_url()))
        .await
        .context("connecting to fake-gcs-server")?;
    let bucket = format!("reel-bench-{run_id}");
    let store = client.store(&bucket);
    store.create_bucket_if_missing(emulators.project()).await.context("creating the bucket")?;
    let ctx = Ctx {
        env,
        bus: bus.clone(),
        store,
        bucket: bucket.clone(),
        project: emulators.project().to_string(),
        run_id: run_id.clone(),
        dir: dir.clone(),
        bin_dir,
        pubsub_host: emulators.pubsub_host(),
        storage_url: emulators.storage_url(),
        transfers: Default::default(),
        emulator_pids: ["Pub/Sub emulator", "fake-gcs-server"]
            .iter()
            .map(|n| n.to_string())
            .zip(emulators.pids().into_iter().map(|p| p as i32))
            .collect(),
    };
    rep.config.push(format!(
        "Pub/Sub emulator (gcloud SDK) and fake-gcs-server (in-memory backend, no storage notifications: requests are published directly, as `reel submit` does) on free ports, started and stopped by PID by the bench; bucket `{bucket}`, a fresh topic prefix `b{run_id}-PHASE-` and fresh programs per phase."
    ));
    rep.config.push(format!(
        "Stage programs: the release binaries `reel-validate`, `reel-download`, `reel-stitch`, `reel-upload`, `reel-finalize`, one process per stage (burst phase: reel-stitch × {}), pull mode, concurrency 1 each, with the e2e harness's emulator settings {}; work files in the bucket (`gs://{bucket}/work`), scratch in `target/bench-run/cluster/tmp`.",
        opts.stitch_workers,
        PROGRAM_SETTINGS.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", ")
    ));

    // Bus alone.
    eprintln!("cluster: bus alone, {} messages one at a time", opts.bus_messages);
    {
        let prefix = format!("b{run_id}-hop-");
        let topic = format!("{prefix}topic");
        let sub = format!("{prefix}sub");
        let topology = Topology {
            prefix,
            topics: vec![TopicSpec { name: topic.clone(), retention: None }],
            subscriptions: vec![subscription(&sub, &topic)],
        };
        let r = async {
            bus.ensure_topology(&topology).await?;
            hopbus::idle_hops_on(
                bus.clone(),
                &topic,
                &sub,
                "PubSubBus on the emulator, idle hop",
                opts.bus_messages,
                20,
            )
            .await
        }
        .await;
        rep.bus_hops = Some(r.map_err(|e| format!("{e:#}")));
    }

    eprintln!("cluster: uploading the clips to fake-gcs-server (setup, not timed)");
    let large_paths = ctx.upload(corpora.large).await?;
    let small_paths = ctx.upload(corpora.small).await?;
    let tiny_paths = ctx.upload(corpora.tiny).await?;
    let tiny_expected = probe_sum(corpora.tiny).await?;

    // Phases large and small: one job each, RSS; small also runs the idle small jobs.
    for (phase, corpus, paths) in [("large", corpora.large, &large_paths), ("small", corpora.small, &small_paths)] {
        eprintln!(
            "cluster: phase {phase}: one job of {} × {:.1} MB on fresh programs",
            corpus.clips.len(),
            corpus.mean_mb()
        );
        let (cpu0, wall0) = (ctx.emulators_cpu(), Instant::now());
        let mut st = ctx.start_stack(phase, 1, &[]).await?;
        let expected = probe_sum(corpus).await?;
        let sub =
            ctx.submit(&st, paths, &format!("bench-{phase}"), &format!("reels/{phase}/{}.mp4", corpus.name)).await?;
        let timeout = Duration::from_secs(60 + (corpus.total_bytes() / 1_000_000).max(60));
        let pending = ctx.wait_jobs(&mut st, std::slice::from_ref(&sub.job), timeout).await?;
        let mut stats = Ctx::snapshot(&st);
        let (emulators_cpu_s, wall_s) = (ctx.emulators_cpu_since(&cpu0), wall0.elapsed().as_secs_f64());
        let mut run = JobRun {
            phase: phase.into(),
            workload: corpus.describe(),
            clips: corpus.clips.len(),
            clip_mb: corpus.mean_mb(),
            expected_s: expected,
            check: Err("not checked".into()),
            ..Default::default()
        };
        if pending > 0 {
            run.failure = Some(format!("no job.completed within {} s", timeout.as_secs()));
        }
        let stamp = st.events.iter().find(|e| e.ty == "stitch.requested" && e.job == sub.job).map(|e| e.publish_ns);
        run.publish_stamp_ms = stamp.map(|s| (s - sub.t0_ns) as f64 / 1e6).unwrap_or(f64::NAN);
        match st.terminal(&sub.job).cloned() {
            Some(done) if done.ty == "job.completed" => {
                run.wall_s = (done.publish_ns - sub.t0_ns) as f64 / 1e9;
                run.mode = done.data.get("mode").and_then(|m| m.as_str()).unwrap_or("?").to_string();
                eprintln!("  job completed in {:.2} s (mode {}); checking the output", run.wall_s, run.mode);
                run.check = ctx
                    .check_output(&sub.output_key, expected, corpus.clips.len(), phase == "large")
                    .await
                    .map(|(d, mb)| {
                        run.output_s = Some(d);
                        run.output_mb = mb;
                    });
            }
            Some(other) => run.failure = Some(format!("{}: {}", other.ty, other.data)),
            None => {}
        }
        let mut idle_jobs = vec![sub.job.clone()];
        if phase == "small" && opts.idle_jobs > 0 {
            eprintln!("cluster: {} small jobs (2 × 2 s) one at a time", opts.idle_jobs);
            for i in 0..opts.idle_jobs {
                let s =
                    ctx.submit(&st, &tiny_paths, &format!("bench-idle-{i}"), &format!("reels/idle/{i}.mp4")).await?;
                let pending = ctx.wait_jobs(&mut st, std::slice::from_ref(&s.job), Duration::from_secs(120)).await?;
                match st.terminal(&s.job) {
                    Some(done) if done.ty == "job.completed" => {
                        rep.idle_job_s.push((done.publish_ns - s.t0_ns) as f64 / 1e9)
                    }
                    Some(other) => bail!("idle job {} ended with {}: {}", s.job, other.ty, other.data),
                    None => bail!("idle job {} not finished within 120 s ({pending} pending)", s.job),
                }
                idle_jobs.push(s.job);
            }
        }
        Ctx::stop(&mut st, &mut stats).await;
        // Hops, handler times, log issues.
        let (done, issues) = parse_logs(&st.programs.0);
        for ((stage, sev, msg), n) in issues {
            *rep.log_issues.entry((phase.to_string(), stage, sev, msg)).or_default() += n;
        }
        let jobs: HashSet<String> = idle_jobs.iter().cloned().collect();
        let (samples, gaps, redeliveries) = hop_samples(&st.events, &done, &jobs);
        for (k, v) in gaps {
            *rep.hop_gaps.entry(k).or_default() += v;
        }
        rep.redeliveries += redeliveries;
        run.stages = STAGES
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let hop = samples.iter().find(|s| s.stage == i && s.job == sub.job).map(|s| s.ms);
                let handler =
                    done.iter().filter(|d| d.stage_index == Some(i) && d.job == sub.job).map(|d| d.elapsed_ms).next();
                (hop, handler)
            })
            .collect();
        rep.hops_idle.extend(samples);
        rep.rss.push(RssPhase {
            phase: phase.into(),
            label: format!("{} × {:.1} MB clips", corpus.clips.len(), corpus.mean_mb()),
            clip_mb: corpus.mean_mb(),
            procs: stats,
            wall_s,
            emulators_cpu_s,
        });
        rep.jobs.push(run);
    }

    // The bursts.
    let mut variants = vec![("burst", 1usize)];
    if opts.buffered_burst {
        variants.push(("burst-buffered", opts.jobs.max(1)));
    }
    for (name, outstanding) in variants {
        let b =
            burst_phase(&ctx, rep, opts, name, outstanding, &tiny_paths, tiny_expected, corpora.tiny.mean_mb()).await?;
        rep.bursts.push(b);
    }
    rep.transfers = ctx.transfers.lock().expect("transfers").clone();
    drop(emulators);
    Ok(())
}

/// N small jobs submitted at once to fresh programs whose
/// `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES` is `outstanding`.
#[allow(clippy::too_many_arguments)]
async fn burst_phase(
    ctx: &Ctx<'_>,
    rep: &mut ClusterReport,
    opts: &Options,
    name: &str,
    outstanding: usize,
    tiny_paths: &[String],
    tiny_expected: f64,
    tiny_mb: f64,
) -> Result<Burst> {
    eprintln!(
        "cluster: phase {name}: {} small jobs (2 × 2 s) submitted at once, reel-stitch × {}, REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES={outstanding}",
        opts.jobs, opts.stitch_workers
    );
    let overrides = vec![("REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES".to_string(), outstanding.to_string())];
    let (cpu0, wall0) = (ctx.emulators_cpu(), Instant::now());
    let mut st = ctx.start_stack(name, opts.stitch_workers, &overrides).await?;
    let mut requests = Vec::new();
    for i in 0..opts.jobs {
        let key = format!("reels/{name}/{i}.mp4");
        let (job, event) = ctx.request(tiny_paths, &format!("bench-{name}-{i}"), &key)?;
        requests.push((job, event, key));
    }
    let t0 = ns_now();
    let mut set = tokio::task::JoinSet::new();
    for (_, event, _) in &requests {
        let (bus, names, event) = (ctx.bus.clone(), st.names.clone(), event.clone());
        set.spawn(async move { reel_runtime::worker::publish_event(bus.as_ref(), &names, &event).await });
    }
    while let Some(r) = set.join_next().await {
        r.context("publish task")?.context("publishing stitch.requested")?;
    }
    let publish_s = (ns_now() - t0) as f64 / 1e9;
    let jobs: Vec<String> = requests.iter().map(|r| r.0.clone()).collect();
    let timeout = Duration::from_secs(120 + 30 * opts.jobs as u64);
    let unfinished = ctx.wait_jobs(&mut st, &jobs, timeout).await?;
    let mut stats = Ctx::snapshot(&st);
    let (emulators_cpu_s, wall_s) = (ctx.emulators_cpu_since(&cpu0), wall0.elapsed().as_secs_f64());
    let mut burst = Burst {
        phase: name.into(),
        max_outstanding: outstanding,
        jobs: opts.jobs,
        unfinished,
        stitch_workers: opts.stitch_workers,
        publish_s,
        ..Default::default()
    };
    let mut last = t0;
    for (job, _, key) in &requests {
        match st.terminal(job) {
            Some(done) if done.ty == "job.completed" => {
                burst.completed += 1;
                last = last.max(done.publish_ns);
                burst.latencies_s.push((done.publish_ns - t0) as f64 / 1e9);
                if matches!(ctx.store.head(key).await, Ok(Some(m)) if m.size > 0) {
                    burst.outputs_present += 1;
                }
            }
            Some(other) => burst.failed.push(format!(
                "{job}: {} ({})",
                other.ty,
                other.data.get("message").and_then(|m| m.as_str()).unwrap_or("").chars().take(160).collect::<String>()
            )),
            None => {}
        }
    }
    burst.secs = (last - t0) as f64 / 1e9;
    if let Some((_, _, key)) = requests.iter().find(|(j, _, _)| st.terminal(j).is_some_and(|e| e.ty == "job.completed"))
    {
        burst.sample_check =
            Some(ctx.check_output(key, tiny_expected, 2, false).await.map(|(d, _)| (d, tiny_expected)));
    }
    // What the emulator dead-lettered (after the subscription's max delivery attempts).
    for stage in reel_events::Stage::ALL {
        let sub = st.names.dead_letter_subscription(stage);
        let mut n = 0;
        while let Ok(batch) = ctx.bus.receive(&sub, 1000, Duration::from_millis(300)).await {
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let _ = ctx.bus.ack(&sub, &d.ack_id).await;
                n += 1;
            }
        }
        if n > 0 {
            burst.dead_lettered.insert(stage.as_str().to_string(), n);
        }
    }
    Ctx::stop(&mut st, &mut stats).await;
    let (done, issues) = parse_logs(&st.programs.0);
    for ((stage, sev, msg), n) in issues {
        *rep.log_issues.entry((name.to_string(), stage, sev, msg)).or_default() += n;
    }
    for d in done.iter().filter(|d| jobs.contains(&d.job)) {
        if let Some(i) = d.stage_index {
            let e = burst.attempts.entry(STAGES[i].to_string()).or_default();
            e.0 += 1;
            e.1 = e.1.max(d.attempt);
        }
    }
    let (samples, gaps, redeliveries) = hop_samples(&st.events, &done, &jobs.iter().cloned().collect());
    for (k, v) in gaps {
        *rep.hop_gaps.entry(format!("{name}: {k}")).or_default() += v;
    }
    rep.redeliveries += redeliveries;
    burst.hops = samples;
    rep.rss.push(RssPhase {
        phase: name.into(),
        label: format!("{} jobs × 2 × {tiny_mb:.1} MB clips", opts.jobs),
        clip_mb: tiny_mb,
        procs: stats,
        wall_s,
        emulators_cpu_s,
    });
    Ok(burst)
}

// ---------------------------------------------------------------------------------------
// Logs and hops.

/// A "stage done" line of a stage program's log.
#[derive(Debug, Clone)]
struct Done {
    stage_index: Option<usize>,
    ce_id: String,
    job: String,
    time_ns: i128,
    elapsed_ms: f64,
    emitted: Vec<String>,
    attempt: u32,
}

type Issues = BTreeMap<(String, String, String), usize>;

/// The "stage done" lines, and WARNING/ERROR lines counted by (stage, severity, message).
fn parse_logs(programs: &[Proc]) -> (Vec<Done>, Issues) {
    let mut done = Vec::new();
    let mut issues = Issues::new();
    for p in programs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                if !line.trim().is_empty() {
                    *issues
                        .entry((p.stage.clone(), "non-JSON".into(), line.chars().take(120).collect()))
                        .or_default() += 1;
                }
                continue;
            };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let severity = s("severity");
            if severity == "WARNING" || severity == "ERROR" {
                let mut msg = s("message");
                if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    msg = format!("{msg}: {}", e.chars().take(120).collect::<String>());
                }
                *issues.entry((p.stage.clone(), severity.clone(), msg)).or_default() += 1;
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
fn hop_samples(
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
// Rows and rendering.

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

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

fn met(ok: bool) -> String {
    if ok { "met" } else { "**missed**" }.to_string()
}

/// Flat: the large clips' peak is within 10 % + 2 MiB of the small clips'.
fn flat(large_kib: u64, small_kib: u64) -> bool {
    mib(large_kib) <= mib(small_kib) * 1.10 + 2.0
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

fn hop_values(samples: &[HopSample]) -> Vec<f64> {
    samples.iter().map(|s| s.ms).collect()
}

fn build_rows(rep: &mut ClusterReport, opts: &Options, corpora: &Corpora) {
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

    // Hops.
    let idle = hop_values(&rep.hops_idle);
    let what =
        "per-hop latency on the Pub/Sub emulator (publish → handler start), p50 / p95, jobs one at a time".to_string();
    let status = if idle.is_empty() {
        fail.clone()
    } else {
        let p50 = pct(&idle, 50.0);
        let worst = (0..5)
            .map(|i| (i, pct(&rep.hops_idle.iter().filter(|s| s.stage == i).map(|s| s.ms).collect::<Vec<_>>(), 50.0)))
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
                met(true)
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
            what: format!(
                "… under load: the {}-job burst, `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES={}` (queueing and redelivery backoff included)",
                b.jobs, b.max_outstanding
            ),
            target: "—".into(),
            status: Status::Measured { figure: format!("p50 {} / p95 {} over {} hops", ms_s(pct(&load, 50.0)), ms_s(pct(&load, 95.0)), load.len()), result: "—".into() },
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
                        met(true)
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
                        met(true)
                    } else {
                        format!("{} ({})", met(false), not_flat.join(", "))
                    },
                }
            }
        }
        _ => fail.clone(),
    };
    rows.push(ClusterRow { what, target: "flat".into(), status, in_targets: true });

    // Bursts: the first (the e2e settings) is the target's; a buffered one is a variant.
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
    for (i, b) in rep.bursts.iter().enumerate() {
        let what = if i == 0 {
            format!(
                "throughput: {} jobs of 2 clips × 2 s submitted at once to the local cluster (e2e settings, `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES={}`): jobs/min, all completed",
                b.jobs, b.max_outstanding
            )
        } else {
            format!(
                "… the same burst with `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES={}` (messages wait leased in each program instead of being released by nack)",
                b.max_outstanding
            )
        };
        let all = b.completed == b.jobs && b.failed.is_empty() && b.unfinished == 0;
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
                "{}/{} completed in {} (first publish → last `job.completed`): **{:.1} jobs/min**; {} outputs in the bucket; {} job.failed{}{dead}{lat}{check}; reel-stitch × {}",
                b.completed,
                b.jobs,
                secs(b.secs),
                b.per_min(),
                b.outputs_present,
                b.failed.len(),
                if b.unfinished > 0 { format!(", {} unfinished", b.unfinished) } else { String::new() },
                b.stitch_workers
            ),
            result: if all { met(true) } else { format!("{} ({} of {} completed)", met(false), b.completed, b.jobs) },
        };
        rows.push(ClusterRow { what, target: format!("all {} completed", b.jobs), status, in_targets: i == 0 });
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
        let by_stage =
            |i: usize| pct(&rep.hops_idle.iter().filter(|s| s.stage == i).map(|s| s.ms).collect::<Vec<_>>(), 50.0);
        let others = pct(&(1..5).map(by_stage).filter(|v| !v.is_nan()).collect::<Vec<_>>(), 50.0);
        let mut text = format!(
            "Every hop includes the emulator's delivery: the bus alone (`PubSubBus` publish → `receive` returned, no worker, no storage) takes p50 {} on the emulator; the hops into download, stitch, upload and finalize have a median p50 of {}.",
            ms_s(pct(&h.latencies_us, 50.0) / 1000.0),
            ms_s(others)
        );
        let validate = by_stage(0);
        if validate > 1.5 * others {
            text.push_str(&format!(
                " The hop into validate is slower (p50 {}): validate pulls two subscriptions (requests and storage notifications) and the worker alternates between them with a 200 ms wait on each (services/runtime/src/worker.rs), so a request that arrives while it waits on the empty notification subscription waits for that receive to time out (up to 200 ms) on top of the delivery.",
                ms_s(validate)
            ));
        }
        rep.notes.push(text);
    }

    // Why a burst with the e2e settings redelivers (and may dead-letter).
    if let Some(b) = rep.bursts.iter().find(|b| b.max_outstanding == 1 && b.attempts.values().any(|a| a.1 > 1)) {
        let worst = b
            .attempts
            .iter()
            .max_by_key(|(_, a)| a.1)
            .map(|(k, a)| format!("{k}: up to attempt {}", a.1))
            .unwrap_or_default();
        rep.notes.push(format!(
            "Why `{}` redelivers ({worst}){}: with `REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES=1` the emulator still pours a stage's whole backlog into its one streaming pull (it ignores flow control); `reel_gcp::PubSubBus` releases every message beyond the limit at once with a nack (services/gcp/src/pubsub/streaming.rs), the emulator redelivers it only after the subscription's retry backoff (1 s, growing to 60 s), and every round counts as a delivery attempt, so a message released {} times goes to the dead-letter topic. Real Pub/Sub honours the flow-control limit and keeps the backlog on the server; the second burst (messages buffered, leased, in each program) shows what the programs themselves sustain.",
            b.phase,
            if b.dead_lettered.is_empty() { String::new() } else { ", and why requests were dead-lettered".to_string() },
            reel_runtime::topology::PUBSUB_MAX_DELIVERY_ATTEMPTS
        ));
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
                writeln!(w, "\nSkipped in this run (`--no-cluster`). `services/bench/src/cluster.rs` measures them.\n");
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
                let _ = write!(head, " {} (outstanding {}): n | p50 | p95 | max |", b.phase, b.max_outstanding);
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

    #[test]
    fn hops_are_output_minus_input_minus_handler() {
        let events = vec![
            seen("r1", "stitch.requested", "j", 1000),
            seen("v1", "job.validated", "j", 1100),
            seen("d1", "job.downloaded", "j", 2100),
        ];
        let done = vec![
            Done {
                stage_index: Some(0),
                ce_id: "r1".into(),
                job: "j".into(),
                time_ns: 1105 * 1_000_000,
                elapsed_ms: 60.0,
                emitted: vec!["job.validated".into()],
                attempt: 1,
            },
            Done {
                stage_index: Some(1),
                ce_id: "v1".into(),
                job: "j".into(),
                time_ns: 2105 * 1_000_000,
                elapsed_ms: 990.0,
                emitted: vec!["job.downloaded".into()],
                attempt: 1,
            },
            // Another job's line is ignored.
            Done {
                stage_index: Some(1),
                ce_id: "x".into(),
                job: "k".into(),
                time_ns: 0,
                elapsed_ms: 1.0,
                emitted: vec![],
                attempt: 2,
            },
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
        let done = vec![Done {
            stage_index: Some(0),
            ce_id: "r1".into(),
            job: "j".into(),
            time_ns: 1105 * 1_000_000,
            elapsed_ms: 60.0,
            emitted: vec!["job.validated".into()],
            attempt: 1,
        }];
        let (samples, gaps, _) = hop_samples(&events, &done, &["j".to_string()].into());
        assert!(samples.is_empty());
        assert_eq!(gaps.values().sum::<usize>(), 1);
    }

    #[test]
    fn flatness() {
        assert!(flat(20 * 1024, 19 * 1024));
        assert!(!flat(40 * 1024, 20 * 1024));
    }
}
