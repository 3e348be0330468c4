//! The measurements of issue 7 on the local cluster: the five stage programs (each its
//! own process) on the Pub/Sub emulator and fake-gcs-server.
//!
//! In one run, after the embedded measurements:
//!
//! 1. the emulators are started on free ports by `reel_testkit::Emulators` (each in
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
//! programs' own log lines; see [`logs::hop_samples`] and the method lines of the report.
//!
//! Layers: this module holds the figures (the types the report reads); `run` drives the
//! cluster (through `reel_testkit::Cluster`, one per phase) and fills them; `logs` reads
//! the event log and the programs' logs into hops; `rows` turns the figures into the
//! report's rows and lines.

mod fanout;
mod logs;
mod rows;
mod run;

use crate::bus::HopResult;
use crate::corpus::Corpus;
use crate::Env;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use rows::row_cells;
// The stages in pipeline order, and the settings every stage program gets besides the
// emulators, bucket and prefix: the test kit's (the e2e tests'), for the emulator's sake.
use reel_testkit::cluster::{PROGRAM_SETTINGS, STAGES};

/// The event each stage consumes (short type), in the same order.
const INPUTS: [&str; 5] = ["stitch.requested", "job.validated", "job.downloaded", "job.stitched", "job.uploaded"];

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
    /// Kill a stitch program mid-job and time the job's recovery.
    pub recovery: bool,
    /// Re-encode the mixed clips with 1 and 2 stitch programs (the fan-out).
    pub fanout: bool,
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
    /// What `job.completed` says the job cost.
    pub cost: Option<reel_events::payload::JobCost>,
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
            cost: None,
        }
    }
}

/// A job whose stitch program was SIGKILLed while it worked, picked up by a fresh one.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// SIGKILL → the first `job.progress` of stitch's next run, s.
    pub resumed_s: f64,
    /// SIGKILL → `job.completed`, s.
    pub completed_s: f64,
    /// The delivery attempt of the run that completed stitch.
    pub attempt: u32,
    /// The programs' lease (`REEL_LEASE_SECONDS`, the default unless set).
    pub lease_s: u64,
}

/// A burst of small jobs.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    /// Phase name (`burst`).
    pub phase: String,
    /// Submitted.
    pub jobs: usize,
    /// Distinct jobs with `job.completed`.
    pub completed: usize,
    /// `job.failed` / `job.cancelled` (job, what).
    pub failed: Vec<String>,
    /// Jobs that failed with `timeout`.
    pub timed_out: usize,
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
    /// What each completed job's `job.completed` says it cost.
    pub costs: Vec<reel_events::payload::JobCost>,
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
    /// The burst of small jobs at the default settings.
    pub bursts: Vec<Burst>,
    /// A stitch program SIGKILLed mid-job, and how soon the job went on.
    pub recovery: Option<Result<Recovery, String>>,
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
    /// The re-encode fan-out runs.
    pub fanout: Vec<fanout::FanOutRun>,
    /// What the fan-out phases could not measure.
    pub fanout_error: Option<String>,
    /// Longest delivery and peak scratch by kind of delivery, over every phase.
    pub deliveries: BTreeMap<String, fanout::DeliveryStat>,
    /// The large copy job: stage → (bytes read, bytes written, storage operations).
    pub large_io: BTreeMap<String, (u64, u64, u64)>,
    /// Transfers through `reel_gcp::GcsStore` to/from fake-gcs-server: (what, MB, s).
    pub transfers: Vec<(String, f64, f64)>,
    /// Every completed job's estimates against its completion, phase by phase.
    pub etas: Vec<logs::JobEta>,
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
    /// The mixed re-encode corpus (the fan-out phases).
    pub mixed: &'a Corpus,
}

/// Runs the whole cluster part. Never fails: what could not be measured is reported.
pub fn run(env: &Env, opts: &Options, corpora: &Corpora, rt: &tokio::runtime::Runtime) -> ClusterReport {
    let started = Instant::now();
    let mut rep = ClusterReport { ran: true, ..Default::default() };
    let result = rt.block_on(run::measure(env, opts, corpora, &mut rep));
    if let Err(e) = result {
        eprintln!("cluster: stopped early: {e:#}");
        rep.error = Some(format!("{e:#}"));
    }
    rep.seconds = started.elapsed().as_secs_f64();
    rows::build_rows(&mut rep, opts, corpora);
    rep
}
