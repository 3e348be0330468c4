//! Replay from every stage, on the emulators: a job whose retries ran out at a stage is
//! dead-lettered there with its workspace kept; once the cause is fixed, `reel dlq
//! replay STAGE` runs it again as a new attempt with a fresh deadline — also after the
//! original deadline has passed — and it completes with a playable reel.

use reel_events::fold::{JobState, Overdue, Status};
use reel_events::payload::StitchRequested;
use reel_events::{envelope, types, AttributesReader, Compression, ErrorType, Orientation, Stage};
use reel_testkit::cluster::{ClusterOptions, PROGRAM_SETTINGS};
use reel_testkit::fixtures::{check_playable, make_clip};
use reel_testkit::Cluster;
use std::time::Duration;

/// One cluster, one job per stage, each made to fail at its stage by `REEL_FAULT_FILE`
/// (`{dir}/{stage}-{jobId}`: while the file exists, that stage fails that job
/// transiently, as an outage of a dependency would).
async fn cluster_with_faults(extra: &[(&str, &str)]) -> (Cluster, std::path::PathBuf) {
    let mut settings: Vec<(String, String)> =
        PROGRAM_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in [("MAX_RETRY_ATTEMPTS", "1"), ("JOB_TIMEOUT_MINUTES", "1")].iter().chain(extra) {
        settings.push((k.to_string(), v.to_string()));
    }
    let mut cluster = Cluster::start_with(ClusterOptions { settings, ..ClusterOptions::default() }).await.unwrap();
    let faults = cluster.dir().join("faults");
    std::fs::create_dir_all(&faults).unwrap();
    cluster.env.insert("REEL_FAULT_FILE".into(), faults.join("{stage}-{jobId}").display().to_string());
    (cluster, faults)
}

async fn submit(cluster: &Cluster, job: &str) {
    submit_with(cluster, job, Compression::Optimized).await
}

/// A job of two 1 s clips (120 KB each) with `compression`.
async fn submit_with(cluster: &Cluster, job: &str, compression: Compression) {
    let mut clip_paths = Vec::new();
    for i in 0..2 {
        let local = cluster.dir().join(format!("{job}-{i}.mp4"));
        make_clip(&local, 320, 240, 1.0);
        cluster.upload(&local, &format!("clips/{job}-{i}.mp4")).await;
        clip_paths.push(format!("gs://{}/clips/{job}-{i}.mp4", cluster.bucket));
    }
    let request = StitchRequested {
        job_id: Some(job.into()),
        project_id: format!("proj-{job}"),
        user_id: "user-1".into(),
        clip_paths,
        output_path: format!("gs://{}/reels/{job}.mp4", cluster.bucket),
        orientation: Orientation::Landscape,
        compression,
        retry_attempt: None,
        force_restart: None,
    };
    let event =
        envelope::build(types::STITCH_REQUESTED, "//test", format!("req-{job}"), job, chrono::Utc::now(), &request)
            .unwrap();
    reel_runtime::worker::publish_event(cluster.bus(), &cluster.names(), &event).await.unwrap();
}

/// The job as a user sees it: the fold of its events, as of now.
async fn status(cluster: &mut Cluster, job: &str) -> reel_events::fold::JobStatus {
    let mut state = JobState::new(job);
    for event in cluster.events_of(job).await {
        state.apply(&event);
    }
    state.to_status_at(chrono::Utc::now(), &Overdue::minutes(1, 5))
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "reel failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn assert_completed_with_a_playable_reel(cluster: &mut Cluster, job: &str) {
    cluster.wait_for(Some(job), types::JOB_COMPLETED, Duration::from_secs(120)).await;
    let shown = status(cluster, job).await;
    assert_eq!(shown.status, Status::Completed, "{job}: {shown:?}");
    assert_eq!(shown.retry_count, 1, "{job}: the replay is the job's second attempt");
    let local = cluster.dir().join(format!("{job}-reel.mp4"));
    assert!(cluster.download(&format!("reels/{job}.mp4"), &local).await, "{job}: no reel at the output path");
    let (duration, video, audio) = check_playable(&local);
    assert!((duration - 2.0).abs() < 0.5 && video == 1 && audio == 1, "{job}: {duration} s, {video}v {audio}a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_replays_after_the_deadline_and_the_job_completes() {
    let (mut cluster, faults) = cluster_with_faults(&[]).await;
    let jobs: Vec<(Stage, String)> = Stage::ALL.iter().map(|s| (*s, format!("job_replay_{s}"))).collect();
    for (stage, job) in &jobs {
        std::fs::write(faults.join(format!("{stage}-{job}")), b"outage").unwrap();
    }
    for stage in Stage::ALL {
        cluster.start_program(stage.as_str(), &[]);
    }
    for (_, job) in &jobs {
        submit(&cluster, job).await;
    }

    // Each job fails at its stage once retries ran out, and is dead-lettered there.
    for (stage, job) in &jobs {
        let failed = cluster.wait_for(Some(job), types::JOB_FAILED, Duration::from_secs(90)).await;
        let data = envelope::data_json(&failed).unwrap();
        assert_eq!(data["stage"], stage.as_str(), "{job}: {data}");
        assert_eq!(data["retryable"], true);
        let shown = status(&mut cluster, job).await;
        assert_eq!((shown.status, shown.error_type), (Status::Failed, Some(ErrorType::Internal)), "{job}");
        let listed: Vec<serde_json::Value> =
            serde_json::from_str(&stdout(&cluster.reel(&["dlq", "list", stage.as_str(), "--json"]))).unwrap();
        assert!(listed.iter().any(|l| l["jobId"] == job.as_str()), "{job} is not in the {stage} dead letters");
    }

    // Replay after the original deadlines (JOB_TIMEOUT_MINUTES=1) have passed.
    let mut latest = chrono::Utc::now();
    for (_, job) in &jobs {
        for event in cluster.events_of(job).await.iter().filter(|e| e.ty() == types::JOB_VALIDATED) {
            let deadline = envelope::data_json(event).unwrap()["job"]["deadline"].as_str().unwrap().to_string();
            latest = latest.max(deadline.parse().unwrap());
        }
    }
    let wait = (latest - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(wait).await;

    // The cause is fixed; every stage's dead letter goes back.
    for (stage, job) in &jobs {
        std::fs::remove_file(faults.join(format!("{stage}-{job}"))).unwrap();
        let out = stdout(&cluster.reel(&["dlq", "replay", stage.as_str(), "--job", job]));
        assert!(out.contains(&format!("replayed {job}")), "{out}");
    }
    for (_, job) in &jobs {
        assert_completed_with_a_playable_reel(&mut cluster, job).await;
    }
    for stage in Stage::ALL {
        let listed: Vec<serde_json::Value> =
            serde_json::from_str(&stdout(&cluster.reel(&["dlq", "list", stage.as_str(), "--json"]))).unwrap();
        let logs: String = cluster.programs.iter().filter(|p| p.name == stage.as_str()).map(|p| p.log_text()).collect();
        assert!(listed.is_empty(), "{stage}: left in the dead letters: {listed:?}\n{logs}");
    }
}

/// The runbook's "the disk filled up: give it room and replay". A real full disk needs a
/// small filesystem, and mounting one needs root; so stitch runs under `RLIMIT_FSIZE`
/// (64 KiB, less than one clip): the kernel lets it write no file past that, and kills it
/// with SIGXFSZ when it tries — no outcome, like an OOM kill. A re-encode fans out one
/// encode item per clip; each item's killed runs are counted, and the delivery of an
/// item after `MAX_RETRY_ATTEMPTS + 1` dead runs fails the job with `resource_exhausted`
/// and dead-letters the item to the encode queue. Given room (no limit), `reel dlq
/// replay encode` completes the job from the segments already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_filled_up_give_it_room_and_replay() {
    use std::os::unix::process::ExitStatusExt;
    let (mut cluster, _) = cluster_with_faults(&[("JOB_TIMEOUT_MINUTES", "5")]).await;
    for stage in ["validate", "download", "upload", "finalize"] {
        cluster.start_program(stage, &[]);
    }
    let job = "job_disk_full";
    // A re-encode: each encode item fetches its clip into its scratch (on a bucket
    // workspace the copy path writes nothing locally: it composes the reel in the
    // bucket), and a clip, 120 KB, is past the 64 KiB limit.
    submit_with(&cluster, job, Compression::Small).await;
    let mut killed = 0;
    let failed = loop {
        let stitch = cluster.start_program_with_file_size_limit("stitch", 64 * 1024);
        let outcome = loop {
            if let Ok(Some(status)) = cluster.programs[stitch].child.try_wait() {
                cluster.programs[stitch].mark_reaped();
                break Err(status);
            }
            let ended = cluster.events_of(job).await.into_iter().find(|e| e.ty() == types::JOB_FAILED);
            if let Some(event) = ended {
                break Ok(event);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match outcome {
            Ok(event) => break event,
            Err(status) => {
                assert_eq!(status.signal(), Some(libc::SIGXFSZ), "stitch ended otherwise: {status:?}");
                killed += 1;
                assert!(killed <= 5, "stitch was killed {killed} times and the job did not fail");
            }
        }
    };
    // MAX_RETRY_ATTEMPTS=1: two dead runs of one item, then the job fails (the other
    // clip's item may have died once or twice meanwhile).
    assert!((2..=4).contains(&killed), "stitch was killed {killed} times before the job failed");
    let data = envelope::data_json(&failed).unwrap();
    assert_eq!((data["stage"].as_str(), data["errorType"].as_str()), (Some("stitch"), Some("resource_exhausted")));
    let listed = stdout(&cluster.reel(&["dlq", "list", "encode", "--json"]));
    assert!(listed.contains(job) && listed.contains("resource_exhausted"), "{listed}");
    let letters: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(letters.iter().all(|l| l["eventType"] == types::CLIP_ENCODE), "{listed}");

    // Give it room, and replay.
    let last = cluster.programs.iter().rposition(|p| p.name == "stitch").unwrap();
    cluster.kill(last);
    cluster.start_program("stitch", &[]);
    let out = stdout(&cluster.reel(&["dlq", "replay", "encode", "--error-type", "resource_exhausted"]));
    assert!(out.contains(&format!("replayed {job}")), "{out}");
    assert_completed_with_a_playable_reel(&mut cluster, job).await;
}

/// The matrix's "job timeout → save progress, schedule retry": download hangs on the job
/// (a fault file saying `stall`) past its 1-minute deadline; the stage stops the work at
/// the deadline and sends the job back as a new attempt with a new deadline, its
/// workspace kept; once the hang is over it completes, its status saying it was resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_passes_its_deadline_resumes_with_a_new_one_and_completes() {
    let (mut cluster, faults) = cluster_with_faults(&[]).await;
    let job = "job_resumed";
    let stall = faults.join(format!("download-{job}"));
    std::fs::write(&stall, b"stall").unwrap();
    cluster.start_all();
    submit(&cluster, job).await;
    let start = std::time::Instant::now();
    let resumed = loop {
        let events = cluster.events_of(job).await;
        let again = events
            .iter()
            .find(|e| e.ty() == types::JOB_VALIDATED && envelope::data_json(e).unwrap()["job"]["timeoutResumes"] == 1);
        if let Some(event) = again {
            break envelope::data_json(event).unwrap();
        }
        assert!(!events.iter().any(|e| e.ty() == types::JOB_FAILED), "the job failed instead of resuming");
        assert!(start.elapsed() < Duration::from_secs(150), "the job was not resumed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(resumed["job"]["retryAttempt"], 1, "{resumed}");
    std::fs::remove_file(&stall).unwrap();
    assert_completed_with_a_playable_reel(&mut cluster, job).await;
    let shown = status(&mut cluster, job).await;
    assert!(shown.warnings.iter().any(|w| w.contains("resumed")), "{shown:?}");
}
