//! A short chaos run (issue 8; `scripts/chaos.sh` is the long one): the cluster on the
//! emulators, a few small jobs, and a killer that SIGKILLs a random stage program every
//! few seconds (by its PID) and starts it again. Every job must complete exactly once:
//! one playable output of the expected duration each, no `job.failed`, no dead letters,
//! no duplicate `job.completed` ids, no temp files left.

use reel_events::{types, AttributesReader};
use reel_testkit::fixtures::{check_playable, make_clip};
use reel_testkit::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const JOBS: usize = 12;
const IN_FLIGHT: usize = 3;
const KILL_EVERY: Duration = Duration::from_millis(700);
/// Kills in one run (the test is the short version of scripts/chaos.sh).
const MAX_KILLS: usize = 30;
const CLIP_SECONDS: f64 = 1.5;

/// A small PRNG, so a failing run can be repeated with `CHAOS_SEED`.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn submit(cluster: &Cluster, n: usize, clips: &[String]) -> String {
    let job = format!("chaos_job_{n}");
    let project = format!("chaos-p{n}");
    let output = format!("gs://{}/reels/job-{n}.mp4", cluster.bucket);
    // Every other job re-encodes, so that stitch has work in flight long enough to be
    // killed in the middle of it.
    let compression = if n % 2 == 1 { "small" } else { "optimized" };
    let mut args = vec![
        "submit",
        "--project",
        &project,
        "--user",
        "chaos",
        "--job-id",
        &job,
        "-o",
        &output,
        "--orientation",
        "landscape",
        "--compression",
        compression,
    ];
    args.extend(clips.iter().map(String::as_str));
    let out = cluster.reel(&args);
    assert!(out.status.success(), "reel submit: {}", String::from_utf8_lossy(&out.stderr));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_exactly_once_while_stage_programs_are_killed() {
    let mut cluster = Cluster::start().await;
    // Default delivery settings, as in production: a killed program's message comes
    // back after its short lease. The dead-letter limit stays Pub/Sub's 10.
    // One program per stage, two for stitch; `slots` maps each to its current process.
    let mut slots: Vec<(String, usize)> = Vec::new();
    for stage in ["validate", "download", "stitch", "stitch", "upload", "finalize"] {
        let n = cluster.start_program(stage, &[]);
        slots.push((stage.to_string(), n));
    }
    let mut clips = Vec::new();
    for i in 0..2 {
        let local = cluster.dir().join(format!("c{i}.mp4"));
        make_clip(&local, 320, 240, CLIP_SECONDS);
        cluster.upload(&local, &format!("clips/c{i}.mp4")).await;
        clips.push(format!("gs://{}/clips/c{i}.mp4", cluster.bucket));
    }

    let started = Instant::now();
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let mut rng = XorShift(seed.max(1));
    let mut jobs: Vec<String> = Vec::new();
    let mut kills: Vec<String> = Vec::new();
    let mut last_kill = Instant::now();
    let deadline = started + Duration::from_secs(300);
    loop {
        let mut done = BTreeSet::new();
        for e in cluster.events_of_any(types::JOB_COMPLETED).await {
            done.insert(e.subject().unwrap_or_default().to_string());
        }
        let failed = cluster.events_of_any(types::JOB_FAILED).await;
        assert!(
            failed.is_empty(),
            "a job failed under chaos (seed {seed}): {:?}",
            failed.iter().map(reel_events::envelope::data_json).collect::<Vec<_>>()
        );
        if done.len() >= JOBS {
            break;
        }
        while jobs.len() < JOBS && jobs.len() - done.len() < IN_FLIGHT {
            jobs.push(submit(&cluster, jobs.len() + 1, &clips));
        }
        if last_kill.elapsed() >= KILL_EVERY && kills.len() < MAX_KILLS {
            let slot = rng.below(slots.len());
            let (stage, n) = slots[slot].clone();
            cluster.kill(n);
            slots[slot].1 = cluster.restart(n);
            kills.push(stage);
            last_kill = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {JOBS} jobs completed in time (seed {seed}, kills {kills:?})",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    // Late redeliveries of what was killed get the time to show up as duplicates.
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Exactly once: one distinct job.completed per job, one output each, playable.
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in cluster.events_of_any(types::JOB_COMPLETED).await {
        ids.entry(e.subject().unwrap_or_default().to_string()).or_default().insert(e.id().to_string());
    }
    for job in &jobs {
        assert_eq!(ids.get(job).map(BTreeSet::len), Some(1), "{job}: job.completed ids {:?}", ids.get(job));
    }
    assert!(cluster.events_of_any(types::JOB_FAILED).await.is_empty(), "a job failed late");
    use reel_runtime::Store;
    let store = cluster.emulators.store(&cluster.bucket).await;
    let outputs = store.list("reels/").await.unwrap();
    assert_eq!(outputs.len(), JOBS, "outputs: {outputs:?}");
    for n in 1..=JOBS {
        let local = cluster.dir().join(format!("out-{n}.mp4"));
        assert!(cluster.download(&format!("reels/job-{n}.mp4"), &local).await, "no output for job {n}");
        let (duration, video, audio) = check_playable(&local);
        assert_eq!((video, audio), (1, 1), "job {n}");
        assert!((duration - 2.0 * CLIP_SECONDS).abs() <= 0.25, "job {n}: duration {duration}");
    }
    assert!(store.list("work/jobs/").await.unwrap().is_empty(), "work files left in the bucket");

    // No dead letters anywhere; no temp files left.
    for stage in ["validate", "download", "stitch", "upload", "finalize"] {
        let out = cluster.reel(&["dlq", "list", stage, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let letters: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(letters.is_empty(), "{stage} dead letters: {letters:#?}");
    }
    // Nothing left in TEMP_DIR: programs stopped cleanly removed their scratch, and each
    // restarted program removed what its killed predecessor left.
    let tmp = cluster.dir().join("tmp");
    let left: Vec<std::path::PathBuf> =
        std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");

    // Redeliveries, from the programs' JSON logs: one per (stage, event id, attempt > 1).
    let mut redeliveries = BTreeSet::new();
    for p in &cluster.programs {
        for line in p.log_text().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(attempt) = v["delivery_attempt"].as_u64().filter(|a| *a > 1) {
                redeliveries.insert((p.name.clone(), v["ce_id"].as_str().unwrap_or("").to_string(), attempt));
            }
        }
    }
    let highest = redeliveries.iter().map(|(_, _, a)| *a).max().unwrap_or(1);
    println!(
        "chaos: jobs={JOBS} kills={} redeliveries={} highest_delivery_attempt={highest} time={:.0}s seed={seed} killed={kills:?}",
        kills.len(),
        redeliveries.len(),
        elapsed.as_secs_f64()
    );
    assert!(!kills.is_empty());
}
