//! reel-api's memory and start time with many finished jobs (issue 12 item 7), measured
//! on its state core — the same `JobBook`, `Follower` and snapshot code `reel-api` runs,
//! over a `DirStore` and the embedded bus — in a process of its own (`reel-bench
//! __api-state DIR PROGRESS`), so `/proc/self/status` shows nothing but that state:
//!
//! * **floor**: an empty store;
//! * **records**: `--api-jobs` (100,000) finished jobs in the layout reel-api writes now
//!   (a job record and a project index entry each, a snapshot of the running jobs only);
//! * **whole snapshot**: the same jobs in one snapshot holding every job in full, as
//!   reel-api wrote before (it still reads such a snapshot, once, and then moves its
//!   finished jobs to records).
//!
//! Each process restores (timed: snapshot, records of recently finished jobs, journal),
//! then — except the whole-snapshot row — one job reports progress: `--api-progress`
//! (720: one every 5 s for an hour) `job.progress` events, fed one at a time as fast as
//! the follower takes them, journalled and folded, with a snapshot every 6 events (30 s
//! of that hour). RSS is read before (after a 20-event warm-up) and after, and the event
//! ids the book keeps are counted.
//!
//! The stores are written directly through the `Store` trait, in the layout
//! `reel_api::snapshot` defines, from one folded job cloned under new ids.

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Duration as Span, Utc};
use reel_api::book::{Archive, JobBook};
use reel_api::config::{ApiConfig, LocalTokens};
use reel_api::follower::{Follower, FollowerOptions};
use reel_api::snapshot;
use reel_events::fold::{fold_all, JobState};
use reel_events::{binding, envelope, types};
use reel_runtime::bus::Bus;
use reel_runtime::embedded::{DirStore, EmbeddedBus};
use reel_runtime::store::{PutMode, Store};
use reel_runtime::Settings;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proc::read_status_kib;
use crate::stats;

/// Progress events before the "before" RSS reading (allocator and bus warm-up).
const WARMUP: usize = 20;
/// Progress events between snapshots: 30 s at one event every 5 s.
const EVENTS_PER_SNAPSHOT: usize = 6;
/// Projects the generated jobs are spread over.
const PROJECTS: usize = 1000;
/// Store writes in flight while generating.
const GENERATE_CONCURRENCY: usize = 128;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Finished jobs in the store.
    pub jobs: usize,
    /// Progress events fed.
    pub progress: usize,
    /// Processes per row (the start time is their median).
    pub runs: usize,
}

/// One process's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Restore until ready, milliseconds.
    pub start_ms: f64,
    /// Jobs the snapshot held in full.
    pub snapshot_jobs: usize,
    /// Job records read at start.
    pub records_read: usize,
    /// Jobs in memory after the start.
    pub jobs_in_memory: usize,
    /// RSS right after the start, KiB.
    pub rss_start_kib: u64,
    /// Progress events fed.
    pub progress_events: usize,
    /// RSS after the warm-up events, KiB.
    pub rss_before_kib: Option<u64>,
    /// RSS after the last event, KiB.
    pub rss_after_kib: Option<u64>,
    /// Event ids the book holds at the end.
    pub seen_ids: usize,
    /// Jobs in memory at the end.
    pub jobs_at_end: usize,
    /// Snapshot size at the end, bytes.
    pub snapshot_bytes: u64,
    /// Peak RSS (`VmHWM`), KiB.
    pub hwm_kib: u64,
}

/// One row: a store layout, several processes.
#[derive(Debug, Clone)]
pub struct Row {
    /// What the store holds.
    pub label: String,
    /// Objects in the store.
    pub objects: usize,
    /// The processes' figures.
    pub samples: Vec<Sample>,
}

/// Everything the section shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// The options.
    pub options: Options,
    /// Seconds spent writing the stores.
    pub generate_seconds: f64,
    /// Floor, records, whole snapshot.
    pub rows: Vec<Row>,
}

/// Write the stores under `work`, then measure each in `runs` fresh processes of
/// `bench_exe`.
pub fn run(bench_exe: &Path, work: &Path, options: Options, rt: &tokio::runtime::Runtime) -> Result<Report> {
    let generated = Instant::now();
    let floor = fresh(&work.join("api-floor"))?;
    let records = fresh(&work.join("api-records"))?;
    let whole = fresh(&work.join("api-whole"))?;
    let jobs = finished_jobs(options.jobs);
    let counts = rt.block_on(async {
        let floor_objects = write_store(&floor, &[], false).await?;
        let record_objects = write_store(&records, &jobs, false).await?;
        let whole_objects = write_store(&whole, &jobs, true).await?;
        anyhow::Ok([floor_objects, record_objects, whole_objects])
    })?;
    drop(jobs);
    let generate_seconds = generated.elapsed().as_secs_f64();
    eprintln!("  stores written in {generate_seconds:.1} s (every put is fsynced)");
    let n = options.jobs;
    let layouts = [
        ("empty store (floor)".to_string(), floor, counts[0], options.progress),
        (
            format!("{n} finished jobs: job records + project index + snapshot of running jobs"),
            records,
            counts[1],
            options.progress,
        ),
        (
            format!("{n} finished jobs in one whole snapshot (the layout before; read once, then moved to records)"),
            whole,
            counts[2],
            0,
        ),
    ];
    let mut rows = Vec::new();
    for (label, dir, objects, progress) in layouts {
        let mut samples = Vec::new();
        for _ in 0..options.runs.max(1) {
            eprintln!("  {label}");
            samples.push(measure(bench_exe, &dir, progress)?);
        }
        rows.push(Row { label, objects, samples });
    }
    Ok(Report { options, generate_seconds, rows })
}

fn fresh(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

/// One job that ran and completed, folded from realistic events.
fn template() -> Result<JobState> {
    let t0 = Utc::now() - Span::days(3);
    let job = "job_template";
    let spec = json!({
        "jobId": job, "projectId": "proj", "userId": "user",
        "clipPaths": (1..=6).map(|i| format!("gs://reel-clips/user/clip{i}.mp4")).collect::<Vec<_>>(),
        "outputPath": "gs://reel-out/user/stitched/reel_final.mp4",
        "orientation": "portrait", "compression": "optimized", "retryAttempt": 0
    });
    let mut events = vec![envelope::build(types::STITCH_REQUESTED, "//reel/api", "req", job, t0, &spec)?];
    for (i, (stage, p)) in
        [("validate", 2.0), ("download", 10.0), ("stitch", 50.0), ("upload", 90.0)].iter().enumerate()
    {
        let data = json!({"jobId": job, "projectId": "proj", "stage": stage, "progress": p,
                          "estimatedCompletion": t0 + Span::seconds(120), "retryAttempt": 0});
        events.push(envelope::build(
            types::JOB_PROGRESS,
            "//reel/stage",
            format!("p{i}"),
            job,
            t0 + Span::seconds(10 * i as i64 + 1),
            &data,
        )?);
    }
    let done = json!({"jobId": job, "projectId": "proj", "userId": "user",
                      "outputPath": "gs://reel-out/user/stitched/reel_final.mp4", "sizeBytes": 48_000_000u64,
                      "durationSeconds": 90.0, "crc32c": "AAAAAA==", "mode": "copy",
                      "warnings": ["clip 6 has no audio; silence added"], "retryAttempt": 0});
    events.push(envelope::build(types::JOB_COMPLETED, "//reel/finalize", "done", job, t0 + Span::seconds(60), &done)?);
    fold_all(events.iter()).remove(job).context("the template job folds")
}

/// `n` finished jobs, a second apart, over [`PROJECTS`] projects (one user each).
fn finished_jobs(n: usize) -> Vec<JobState> {
    let template = template().expect("the template job builds");
    let requested = |attempt: &reel_events::fold::AttemptState| attempt.requested_at.unwrap_or(DateTime::UNIX_EPOCH);
    (0..n)
        .map(|i| {
            let mut job = template.clone();
            job.job_id = format!("job_{i:032x}");
            job.project_id = format!("proj_{:04}", i % PROJECTS);
            job.user_id = format!("user_{:04}", i % PROJECTS);
            job.seen.clear();
            for attempt in job.attempts.values_mut() {
                attempt.requested_at = Some(requested(attempt) - Span::seconds((n - i) as i64));
            }
            job
        })
        .collect()
}

/// Write `jobs` to a store at `dir`: in records (and an empty snapshot), or `whole` in
/// one snapshot. Returns the objects written.
async fn write_store(dir: &Path, jobs: &[JobState], whole: bool) -> Result<usize> {
    let store: Arc<dyn Store> = Arc::new(DirStore::new(dir)?);
    let put = |key: String, body: Vec<u8>| {
        let store = store.clone();
        async move { store.put(&key, Box::pin(std::io::Cursor::new(body)), PutMode::Overwrite).await }
    };
    let mut objects = 1;
    if whole {
        put(reel_api::config::DEFAULT_SNAPSHOT_KEY.into(), snapshot::encode(jobs, Vec::new(), Utc::now())).await?;
        return Ok(objects);
    }
    let archive = Archive::new(store.clone());
    for chunk in jobs.chunks(GENERATE_CONCURRENCY) {
        let saves = chunk.iter().map(|job| archive.save(job, snapshot::encode_job(job)));
        for saved in futures::future::join_all(saves).await {
            saved?;
            objects += 2;
        }
    }
    put(reel_api::config::DEFAULT_SNAPSHOT_KEY.into(), snapshot::encode([], Vec::new(), Utc::now())).await?;
    Ok(objects)
}

fn measure(bench_exe: &Path, dir: &Path, progress: usize) -> Result<Sample> {
    let out = Command::new(bench_exe)
        .arg("__api-state")
        .arg(dir)
        .arg(progress.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running reel-bench __api-state")?;
    if !out.status.success() {
        bail!("reel-bench __api-state {} failed: {}", dir.display(), out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the state process's figures")
}

/// `reel-bench __api-state DIR PROGRESS`: restore reel-api's state from the store at
/// DIR, feed PROGRESS progress events, print the [`Sample`] as JSON. Returns the exit
/// code.
pub fn child_main(args: &[OsString]) -> i32 {
    let (Some(dir), Some(Ok(progress))) = (args.first(), args.get(1).map(|p| p.to_string_lossy().parse::<usize>()))
    else {
        eprintln!("usage: reel-bench __api-state DIR PROGRESS");
        return 2;
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(state_process(Path::new(dir), progress)));
    match result {
        Ok(sample) => {
            println!("{}", serde_json::to_string(&sample).expect("a sample serializes"));
            0
        }
        Err(e) => {
            eprintln!("reel-bench __api-state: {e:#}");
            1
        }
    }
}

fn own_kib(field: &str) -> Option<u64> {
    read_status_kib(std::process::id() as i32, field)
}

async fn state_process(dir: &Path, progress: usize) -> Result<Sample> {
    let store: Arc<dyn Store> = Arc::new(DirStore::new(dir)?);
    let settings = Settings::default();
    let bus = Arc::new(EmbeddedBus::new());
    bus.ensure_topology(&settings.topology()).await?;
    let names = settings.topology().names();
    let config = ApiConfig::local(LocalTokens::new([("bench-token", "bench")]));
    let mut options = FollowerOptions::new(&config, names.api_subscription());
    options.batch_window = Duration::ZERO;
    // The hour is compressed: journal objects a snapshot covers go at once, as they
    // would after REEL_API_JOURNAL_RETENTION_SECONDS (300) of real time, so the follower
    // holds the few it would hold in steady state rather than the whole hour's.
    options.journal_retention = Duration::ZERO;
    let book = Arc::new(JobBook::with_archive(store.clone()));
    let follower = Follower::new(book.clone(), bus.clone(), store.clone(), options);

    let started = Instant::now();
    let restored = follower.restore().await?;
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_start_kib = own_kib("VmRSS").unwrap_or(0);
    let jobs_in_memory = book.len();

    let (job, project) = ("job_bench_progress", "proj_bench");
    let t0 = Utc::now();
    let request = json!({"jobId": job, "projectId": project, "userId": "bench", "clipPaths": ["gs://b/1.mp4", "gs://b/2.mp4"],
                         "outputPath": "gs://b/out.mp4", "orientation": "portrait", "compression": "optimized"});
    // Built one at a time, so the feed itself takes no memory between the readings.
    let event_at = |i: usize| match i {
        0 => envelope::build(types::STITCH_REQUESTED, "//reel/api", "bench-request", job, t0, &request),
        _ => {
            let data = json!({"jobId": job, "projectId": project, "stage": "stitch", "progress": (i as f64) * 100.0 / progress as f64,
                              "estimatedCompletion": t0 + Span::hours(1), "retryAttempt": 0});
            envelope::build(
                types::JOB_PROGRESS,
                "//reel/stitch",
                format!("bench-progress-{i}"),
                job,
                t0 + Span::seconds(5 * i as i64),
                &data,
            )
        }
    };
    let (mut rss_before_kib, mut rss_after_kib) = (None, None);
    if progress > 0 {
        for i in 0..=progress {
            bus.publish(&names.events(), binding::encode_binary(&event_at(i)?)).await?;
            let mut folded = 0;
            while folded == 0 {
                folded = follower.pull_once().await?.folded;
            }
            if i.is_multiple_of(EVENTS_PER_SNAPSHOT) {
                follower.snapshot().await?;
            }
            if i == WARMUP {
                rss_before_kib = own_kib("VmRSS");
            }
        }
        follower.snapshot().await?;
        rss_after_kib = own_kib("VmRSS");
    }
    let snapshot_bytes =
        std::fs::metadata(dir.join(reel_api::config::DEFAULT_SNAPSHOT_KEY)).map(|m| m.len()).unwrap_or(0);
    Ok(Sample {
        start_ms,
        snapshot_jobs: restored.snapshot_jobs,
        records_read: restored.records,
        jobs_in_memory,
        rss_start_kib,
        progress_events: progress,
        rss_before_kib,
        rss_after_kib,
        seen_ids: book.read(|jobs| jobs.values().map(|j| j.seen.len()).sum()),
        jobs_at_end: book.len(),
        snapshot_bytes,
        hwm_kib: own_kib("VmHWM").unwrap_or(0),
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Row {
    fn median_start_ms(&self) -> f64 {
        stats::median(&self.samples.iter().map(|s| s.start_ms).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    }

    fn max_of(&self, f: impl Fn(&Sample) -> u64) -> u64 {
        self.samples.iter().map(f).max().unwrap_or(0)
    }

    /// (before, after, bytes per event) of the progress feed, from the run that grew most.
    fn growth(&self) -> Option<(u64, u64, f64)> {
        self.samples
            .iter()
            .filter_map(|s| {
                let (before, after) = (s.rss_before_kib?, s.rss_after_kib?);
                let events = s.progress_events.saturating_sub(WARMUP).max(1) as f64;
                Some((before, after, (after as f64 - before as f64) * 1024.0 / events))
            })
            .max_by(|a, b| a.2.total_cmp(&b.2))
    }
}

/// The report's section.
pub fn markdown(report: &Report) -> String {
    let mut w = String::new();
    let o = report.options;
    let _ = writeln!(w, "## reel-api: memory and start time with many finished jobs (issue 12 item 7)\n");
    let _ = writeln!(
        w,
        "reel-api's state core (`JobBook`, `Follower`, snapshot; the code `reel-api` runs) over a `DirStore` and the embedded bus, in a fresh process per run ({} runs per row; start time: median; RSS: the largest). Start = restore until ready (snapshot, records of the jobs finished within the retention, journal). Progress: one job's {} `job.progress` events (one every 5 s for an hour, fed as fast as the follower takes them; journalled, folded, a snapshot every {} events); RSS before = after {} events. Stores written through the `Store` trait in {:.1} s.\n",
        o.runs, o.progress, EVENTS_PER_SNAPSHOT, WARMUP, report.generate_seconds
    );
    let floor = report.rows.first();
    let _ = writeln!(w, "| store | objects | start | × floor | jobs in memory after start | RSS after start | × floor | progress: RSS before → after | growth per event | event ids kept | snapshot | peak RSS |");
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &report.rows {
        let start = row.median_start_ms();
        let rss = row.max_of(|s| s.rss_start_kib);
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { "—".into() };
        let (start_x, rss_x) = match floor {
            Some(f) => (ratio(start, f.median_start_ms()), ratio(rss as f64, f.max_of(|s| s.rss_start_kib) as f64)),
            None => ("—".into(), "—".into()),
        };
        let (progress, growth) = match row.growth() {
            Some((before, after, per)) => (format!("{} → {}", mib(before), mib(after)), format!("{per:.0} B")),
            None => ("not fed".into(), "—".into()),
        };
        let last = row.samples.last();
        let _ = writeln!(
            w,
            "| {} | {} | {:.0} ms | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            row.objects,
            start,
            start_x,
            last.map(|s| s.jobs_in_memory).unwrap_or(0),
            mib(rss),
            rss_x,
            progress,
            growth,
            last.map(|s| s.seen_ids.to_string()).unwrap_or_default(),
            last.map(|s| format!("{} B", s.snapshot_bytes)).unwrap_or_default(),
            mib(row.max_of(|s| s.hwm_kib)),
        );
    }
    let _ = writeln!(w);
    w
}

/// One line per row for the console.
pub fn summary_lines(report: &Report) -> String {
    let mut s = String::new();
    for row in &report.rows {
        let growth = row.growth().map(|(_, _, per)| format!(", {per:.0} B/progress event")).unwrap_or_default();
        let _ = writeln!(
            s,
            "reel-api {}: start {:.0} ms, RSS {}{growth}, peak {}",
            row.label,
            row.median_start_ms(),
            mib(row.max_of(|x| x.rss_start_kib)),
            mib(row.max_of(|x| x.hwm_kib))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_jobs_are_finished_distinct_and_spread_over_projects() {
        let jobs = finished_jobs(2 * PROJECTS);
        assert!(jobs.iter().all(|j| j.status().is_terminal() && j.seen.is_empty()));
        let ids: std::collections::BTreeSet<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids.len(), jobs.len());
        assert_eq!(jobs.iter().filter(|j| j.project_id == "proj_0000").count(), 2);
        assert!(reel_api::book::submitted_at(&jobs[0]) < reel_api::book::submitted_at(&jobs[1]));
    }
}
