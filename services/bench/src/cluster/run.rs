//! The cluster measurements: one `reel_testkit::Cluster` per phase on one pair of
//! emulators, jobs published as `reel submit` does, the event log read through the
//! cluster's watch subscription, the programs stopped with SIGTERM and reaped with
//! `wait4` for their CPU time and peak RSS.

use super::fanout;
use super::logs::{hop_samples, job_etas, parse_logs, short, Seen};
use super::{
    Burst, ClusterReport, Corpora, JobRun, Options, ProcStat, Recovery, RssPhase, PROGRAM_SETTINGS, STAGES, STALL,
};
use crate::bus as hopbus;
use crate::corpus::Corpus;
use crate::{proc, Env};
use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use reel_events::payload::StitchRequested;
use reel_events::{binding, envelope, types, AttributesReader, Compression, Orientation};
use reel_gcp::{GcsStore, PubSubBus};
use reel_runtime::bus::Bus;
use reel_runtime::topology::{Names, TopicSpec, Topology};
use reel_runtime::{PutMode, Store};
use reel_testkit::{fixtures, process, Cluster, ClusterOptions, Emulators};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One phase's topology, programs and event log.
pub(super) struct Stack {
    name: String,
    names: Names,
    watch: String,
    pub(super) cluster: Cluster,
    pub(super) events: Vec<Seen>,
    ids: HashSet<String>,
}

impl Stack {
    pub(super) fn terminal(&self, job: &str) -> Option<&Seen> {
        self.events
            .iter()
            .find(|e| e.job == job && matches!(e.ty.as_str(), "job.completed" | "job.failed" | "job.cancelled"))
    }
}

/// A submitted job.
pub(super) struct Submitted {
    pub(super) job: String,
    pub(super) t0_ns: i128,
    pub(super) output_key: String,
}

pub(super) struct Ctx {
    bus: Arc<PubSubBus>,
    store: GcsStore,
    bucket: String,
    run_id: String,
    dir: PathBuf,
    bin_dir: PathBuf,
    emulators: Arc<Emulators>,
    /// Transfers timed by the bench itself.
    transfers: std::sync::Mutex<Vec<(String, f64, f64)>>,
}

fn ns_now() -> i128 {
    proc::unix_ns() as i128
}

impl Ctx {
    /// A fresh cluster on the bench's emulators and bucket for phase `name` (`reel
    /// setup` with a fresh prefix, the bench's watch subscription on its event log), and
    /// the stage programs (stitch × `stitch_workers`), ready to pull.
    pub(super) async fn start_stack(
        &self,
        name: &str,
        stitch_workers: usize,
        overrides: &[(String, String)],
    ) -> Result<Stack> {
        let mut settings: Vec<(String, String)> =
            PROGRAM_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        settings.extend(overrides.iter().cloned());
        let options = ClusterOptions {
            emulators: Some(self.emulators.clone()),
            prefix: format!("b{}-{name}-", self.run_id),
            bucket: self.bucket.clone(),
            dir: Some(self.dir.join(name)),
            bin_dir: Some(self.bin_dir.clone()),
            settings,
            ..ClusterOptions::default()
        };
        let mut cluster = Cluster::start_with(options).await?;
        let programs = cluster.start_stages(stitch_workers)?;
        cluster.wait_started(&programs, Duration::from_secs(60)).await?;
        let watch = cluster.watch().context("the cluster has no watch subscription")?.to_string();
        Ok(Stack { name: name.into(), names: cluster.names(), watch, cluster, events: Vec::new(), ids: HashSet::new() })
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
                let Ok(event) = binding::decode(&d.message) else {
                    continue;
                };
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

    pub(super) async fn submit(
        &self,
        st: &Stack,
        clips: &[String],
        project: &str,
        output_key: &str,
    ) -> Result<Submitted> {
        let (job, event) = self.request(clips, project, output_key)?;
        let t0_ns = ns_now();
        reel_runtime::worker::publish_event(self.bus.as_ref(), &st.names, &event)
            .await
            .context("publishing stitch.requested")?;
        Ok(Submitted { job, t0_ns, output_key: output_key.into() })
    }

    /// Waits until every job has a terminal event on the log.
    pub(super) async fn wait_jobs(&self, st: &mut Stack, jobs: &[String], timeout: Duration) -> Result<usize> {
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
            for p in &st.cluster.programs {
                if p.exited() {
                    bail!("reel-{} exited during phase {}; its log:\n{}", p.name, st.name, process::tail(&p.log, 10));
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
    pub(super) async fn check_output(
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
            let info = reel_media::probe(&crate::recipe::probe_config(), &local)
                .await
                .map_err(|e| format!("ffprobe of the output: {e}"))?;
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
        let name = |n: &str| {
            if n == "pubsub" {
                "Pub/Sub emulator"
            } else {
                "fake-gcs-server"
            }
        };
        self.emulators
            .processes()
            .into_iter()
            .map(|(n, pid)| (name(n).to_string(), cpu_s(pid as i32).unwrap_or(f64::NAN)))
            .collect()
    }

    /// CPU used by each emulator since `before`.
    fn emulators_cpu_since(&self, before: &[(String, f64)]) -> Vec<(String, f64)> {
        self.emulators_cpu().into_iter().zip(before).map(|((n, now), (_, then))| (n, now - then)).collect()
    }

    /// Reads every program's VmHWM now (the phase's measured job is done).
    pub(super) fn snapshot(st: &Stack) -> Vec<ProcStat> {
        st.cluster
            .programs
            .iter()
            .map(|p| ProcStat {
                stage: p.name.clone(),
                instance: p.instance,
                hwm_kib: proc::read_hwm_kib(p.pid() as i32),
                ..Default::default()
            })
            .collect()
    }

    /// Stops the programs (SIGTERM, reaped by `wait4`; SIGKILL to the group after 30 s)
    /// and completes `stats` (same order as the programs) with their rusage.
    pub(super) async fn stop(st: &mut Stack, stats: &mut [ProcStat]) {
        // A program killed and reaped earlier (the recovery phase) has no PID any more.
        for p in st.cluster.programs.iter().filter(|p| !p.exited()) {
            // SAFETY: kill(2) of our own child.
            unsafe {
                libc::kill(p.pid() as i32, libc::SIGTERM);
            }
        }
        for (p, s) in st.cluster.programs.iter_mut().zip(stats.iter_mut()) {
            if p.exited() && s.exit.is_empty() {
                s.exit = "killed by the bench".into();
                continue;
            }
            let start = Instant::now();
            let mut killed = false;
            loop {
                match proc::try_wait4(p.pid() as i32) {
                    Ok(Some((status, maxrss, cpu))) => {
                        p.mark_reaped();
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
                        p.mark_reaped();
                        s.exit = format!("wait4: {e:#}");
                        break;
                    }
                }
                if !killed && start.elapsed() > Duration::from_secs(30) {
                    process::signal_group(p.pid(), libc::SIGKILL);
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

async fn probe_sum(corpus: &Corpus) -> Result<f64> {
    let mut sum = 0.0;
    for c in &corpus.clips {
        sum += reel_media::probe(&crate::recipe::probe_config(), c)
            .await
            .with_context(|| format!("probing {}", c.display()))?
            .duration_seconds;
    }
    Ok(sum)
}

pub(super) async fn measure(env: &Env, opts: &Options, corpora: &Corpora<'_>, rep: &mut ClusterReport) -> Result<()> {
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
    let emulators = Arc::new(
        Emulators::start().await.context("starting the emulators (scripts/install-deps.sh --cloud installs them)")?,
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let config = emulators.pubsub_config();
    let bus = Arc::new(PubSubBus::connect(config).await.context("connecting to the Pub/Sub emulator")?);
    let client = emulators.gcs_client().await;
    let bucket = format!("reel-bench-{run_id}");
    let store = client.store(&bucket);
    store.create_bucket_if_missing(emulators.project()).await.context("creating the bucket")?;
    let ctx = Ctx {
        bus: bus.clone(),
        store,
        bucket: bucket.clone(),
        run_id: run_id.clone(),
        dir: dir.clone(),
        bin_dir,
        emulators,
        transfers: Default::default(),
    };
    rep.config.push(format!(
        "Pub/Sub emulator (gcloud SDK) and fake-gcs-server (in-memory backend, no storage notifications: requests are published directly, as `reel submit` does) on free ports, started and stopped by PID by the bench; bucket `{bucket}`, a fresh topic prefix `b{run_id}-PHASE-` and fresh programs per phase."
    ));
    rep.config.push(format!(
        "Stage programs: the release binaries `reel-validate`, `reel-download`, `reel-stitch`, `reel-upload`, `reel-finalize`, one process per stage (burst phase: reel-stitch × {}), pull mode, concurrency 1 each, with the e2e harness's emulator settings {}; work files in the bucket (`gs://{bucket}/work`), scratch in `target/bench-run/cluster/PHASE/tmp`.",
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
            subscriptions: vec![fixtures::subscription(&sub, &topic)],
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
                run.cost = done.data.get("cost").and_then(|c| serde_json::from_value(c.clone()).ok());
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
                    Some(other) => {
                        bail!("idle job {} ended with {}: {}", s.job, other.ty, other.data)
                    }
                    None => bail!("idle job {} not finished within 120 s ({pending} pending)", s.job),
                }
                idle_jobs.push(s.job);
            }
        }
        Ctx::stop(&mut st, &mut stats).await;
        rep.etas.extend(job_etas(&st.events, phase));
        // Hops, handler times, log issues.
        let (done, issues) = parse_logs(&st.cluster.programs);
        for ((stage, sev, msg), n) in issues {
            *rep.log_issues.entry((phase.to_string(), stage, sev, msg)).or_default() += n;
        }
        fanout::record_deliveries(rep, &done);
        if phase == "large" {
            rep.large_io = fanout::job_io(&done, &sub.job);
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

    // The burst, at the default settings.
    let b = burst_phase(&ctx, rep, opts, "burst", &tiny_paths, tiny_expected, corpora.tiny.mean_mb()).await?;
    rep.bursts.push(b);
    if opts.recovery {
        rep.recovery = Some(recovery_phase(&ctx, &tiny_paths).await.map_err(|e| format!("{e:#}")));
    }
    if opts.fanout {
        let r = async {
            let paths = ctx.upload(corpora.mixed).await?;
            let expected = probe_sum(corpora.mixed).await?;
            // 1 vs 2 programs with one encode thread each (the scale-out), then one
            // program with 2 threads: a 2-vCPU instance's pace, for the model.
            for (workers, threads) in [(1, 1), (2, 1), (1, 2)] {
                let run = fanout::run_phase(&ctx, rep, &paths, expected, workers, threads).await?;
                rep.fanout.push(run);
            }
            anyhow::Ok(())
        }
        .await;
        rep.fanout_error = r.err().map(|e| format!("{e:#}"));
    }
    rep.transfers = ctx.transfers.lock().expect("transfers").clone();
    Ok(())
}

/// N small jobs submitted at once to fresh programs at the default settings.
async fn burst_phase(
    ctx: &Ctx,
    rep: &mut ClusterReport,
    opts: &Options,
    name: &str,
    tiny_paths: &[String],
    tiny_expected: f64,
    tiny_mb: f64,
) -> Result<Burst> {
    eprintln!(
        "cluster: phase {name}: {} small jobs (2 × 2 s) submitted at once, reel-stitch × {}",
        opts.jobs, opts.stitch_workers
    );
    let (cpu0, wall0) = (ctx.emulators_cpu(), Instant::now());
    let mut st = ctx.start_stack(name, opts.stitch_workers, &[]).await?;
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
                if let Some(cost) = done.data.get("cost").and_then(|c| serde_json::from_value(c.clone()).ok()) {
                    burst.costs.push(cost);
                }
                last = last.max(done.publish_ns);
                burst.latencies_s.push((done.publish_ns - t0) as f64 / 1e9);
                if matches!(ctx.store.head(key).await, Ok(Some(m)) if m.size > 0) {
                    burst.outputs_present += 1;
                }
            }
            Some(other) => {
                if other.data.get("errorType").and_then(|t| t.as_str()) == Some("timeout") {
                    burst.timed_out += 1;
                }
                burst.failed.push(format!(
                    "{job}: {} ({})",
                    other.ty,
                    other
                        .data
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or("")
                        .chars()
                        .take(160)
                        .collect::<String>()
                ))
            }
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
    rep.etas.extend(job_etas(&st.events, name));
    let (done, issues) = parse_logs(&st.cluster.programs);
    for ((stage, sev, msg), n) in issues {
        *rep.log_issues.entry((name.to_string(), stage, sev, msg)).or_default() += n;
    }
    fanout::record_deliveries(rep, &done);
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

/// One job whose stitch program is SIGKILLed while it works on it (held there by a
/// `REEL_FAULT_FILE` that says `stall`, given to that program only), then a fresh
/// stitch program as Cloud Run would start: how soon after the kill the job is worked on
/// again, and completed, at the default delivery settings.
async fn recovery_phase(ctx: &Ctx, tiny_paths: &[String]) -> Result<Recovery> {
    const PHASE: &str = "recovery";
    eprintln!("cluster: phase {PHASE}: a stitch program SIGKILLed mid-job, a fresh one started");
    let mut st = ctx.start_stack(PHASE, 0, &[]).await?;
    let stall = st.cluster.dir().join("stall");
    std::fs::write(&stall, "stall").context("writing the stall file")?;
    let stall_env = stall.to_string_lossy().to_string();
    let doomed = st.cluster.start_program_with_env("stitch", &[("REEL_FAULT_FILE", stall_env.as_str())])?;
    st.cluster.wait_started(&[doomed], Duration::from_secs(60)).await?;
    let sub = ctx.submit(&st, tiny_paths, "bench-recovery", "reels/recovery/0.mp4").await?;
    // Stitch at work on the job after `t`: its progress, or its output (a run shorter
    // than the first progress tick publishes only `job.stitched`).
    let stitch_progress_after = |st: &Stack, t: i128| {
        st.events
            .iter()
            .filter(|e| e.job == sub.job && e.publish_ns > t)
            .filter(|e| {
                e.ty == "job.stitched"
                    || (e.ty == "job.progress" && e.data.get("stage").and_then(|v| v.as_str()) == Some("stitch"))
            })
            .map(|e| e.publish_ns)
            .min()
    };
    let start = Instant::now();
    while stitch_progress_after(&st, 0).is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the job never reached stitch");
        }
        ctx.pull(&mut st).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_ns = ns_now();
    st.cluster.kill(doomed);
    let fresh = st.cluster.start_program("stitch", &[]);
    st.cluster.wait_started(&[fresh], Duration::from_secs(60)).await?;
    let (mut resumed, start) = (None, Instant::now());
    loop {
        ctx.pull(&mut st).await?;
        resumed = resumed.or_else(|| stitch_progress_after(&st, killed_ns));
        if let Some(done) = st.terminal(&sub.job) {
            if done.ty != "job.completed" {
                bail!("the job ended {} after the kill: {}", done.ty, done.data);
            }
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("the job did not complete within 180 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completed_ns = st.terminal(&sub.job).map(|e| e.publish_ns).unwrap_or_default();
    let mut stats = Ctx::snapshot(&st);
    Ctx::stop(&mut st, &mut stats).await;
    let (done, _) = parse_logs(&st.cluster.programs);
    let attempt = done.iter().filter(|d| d.job == sub.job && d.stage_index == Some(2)).map(|d| d.attempt).max();
    let secs = |ns: i128| (ns - killed_ns) as f64 / 1e9;
    Ok(Recovery {
        resumed_s: resumed.map(secs).context("no stitch progress or job.stitched after the kill")?,
        completed_s: secs(completed_ns),
        attempt: attempt.unwrap_or_default(),
        lease_s: reel_runtime::config::Settings::default().lease_seconds,
    })
}
