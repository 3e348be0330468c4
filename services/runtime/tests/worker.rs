//! The worker loop turns outcomes into bus actions exactly as documented, on the
//! embedded bus and a directory store: retries with backoff, giving up after
//! MAX_RETRY_ATTEMPTS, dead letters with their reasons, timeouts, cancel, shutdown.

use async_trait::async_trait;
use chrono::Utc;
use reel_events::payload::{JobSpec, JobValidated};
use reel_events::{binding, envelope, types, AttributesReader, ErrorType, Event, Stage};
use reel_runtime::bus::{Bus, Message};
use reel_runtime::embedded::{DirStore, EmbeddedBus};
use reel_runtime::eta::Shape;
use reel_runtime::local::LocalResolver;
use reel_runtime::metrics::MessageOutcome;
use reel_runtime::stage::{cancel_marker_key, completed_marker_key, Context, Failure, Handler, Outcome};
use reel_runtime::topology::{Names, SubscriptionSpec};
use reel_runtime::worker::{dead_letter_attrs, Worker, WorkerOptions};
use reel_runtime::{PutMode, Settings, Store};
use reel_testkit::fixtures;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the test handler does on each call.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Fail transiently this many times, then emit.
    FailThenEmit(u32),
    /// Always fail transiently.
    AlwaysRetry,
    /// Fail permanently.
    Reject,
    /// Work for this long (watching the cancel token), then emit.
    Work(Duration),
    /// A bug: the handler panics.
    Panic,
}

struct TestStage {
    behaviour: Behaviour,
    calls: AtomicU32,
    attempts_seen: std::sync::Mutex<Vec<u32>>,
}

#[async_trait]
impl Handler for TestStage {
    fn stage(&self) -> Stage {
        Stage::Download
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.attempts_seen.lock().unwrap().push(ctx.delivery_attempt);
        let input: JobValidated = envelope::decode(event).unwrap();
        let emit = || {
            Outcome::Emit(vec![ctx.event(
                event,
                types::CLIPS_DOWNLOADED,
                0,
                &serde_json::json!({"job": input.job, "clips": [], "skippedClips": [], "warnings": []}),
            )])
        };
        match self.behaviour {
            Behaviour::FailThenEmit(k) if n < k => Outcome::Retry(Failure::new(ErrorType::Internal, "network timeout")),
            Behaviour::FailThenEmit(_) => emit(),
            Behaviour::AlwaysRetry => Outcome::Retry(Failure::new(ErrorType::Internal, "connection reset by peer")),
            Behaviour::Reject => Outcome::Reject(Failure::new(ErrorType::CorruptInput, "bad clip")),
            Behaviour::Panic => panic!("index out of bounds: the len is 0 but the index is 0"),
            Behaviour::Work(d) => {
                ctx.progress.report(10.0);
                tokio::select! {
                    _ = tokio::time::sleep(d) => emit(),
                    _ = ctx.cancel.cancelled() => Outcome::Retry(Failure::new(ErrorType::Internal, "stopped")),
                }
            }
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    bus: Arc<EmbeddedBus>,
    work: Arc<DirStore>,
    names: Names,
    stage: Arc<TestStage>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

const WATCH: &str = "test-watch";
const DLQ_WATCH: &str = "reel-download-dead-letter";

async fn rig(behaviour: Behaviour, max_retry_attempts: u32) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings { max_retry_attempts, temp_dir: dir.path().join("tmp"), ..Settings::default() };
    let mut topology = settings.topology();
    for sub in &mut topology.subscriptions {
        sub.min_backoff = Duration::from_millis(20);
        sub.max_backoff = Duration::from_millis(200);
    }
    let names = topology.names();
    topology.subscriptions.push(SubscriptionSpec {
        ack_deadline: Duration::from_secs(10),
        min_backoff: Duration::ZERO,
        max_backoff: Duration::from_secs(1),
        message_retention: Duration::from_secs(600),
        ..fixtures::subscription(WATCH, &names.events())
    });
    let bus = Arc::new(EmbeddedBus::new());
    bus.ensure_topology(&topology).await.unwrap();
    let work = Arc::new(DirStore::new(dir.path().join("work")).unwrap());
    let stage = Arc::new(TestStage { behaviour, calls: AtomicU32::new(0), attempts_seen: Default::default() });
    let mut options = WorkerOptions::for_stage(Stage::Download, &settings);
    options.heartbeat = Duration::from_millis(300);
    options.cancel_poll = Duration::from_millis(100);
    options.shutdown_grace = Duration::from_millis(200);
    let worker = Arc::new(Worker::new(
        bus.clone(),
        stage.clone(),
        &settings,
        work.clone(),
        Arc::new(LocalResolver::new()),
        options,
    ));
    let shutdown = CancellationToken::new();
    let task = {
        let (w, s) = (worker.clone(), shutdown.clone());
        tokio::spawn(async move {
            w.run(s).await.unwrap();
        })
    };
    Rig { _dir: dir, bus, work, names, stage, worker, shutdown, task: Some(task) }
}

fn job_event(job_id: &str, deadline_in: chrono::Duration) -> Event {
    resumed_job_event(job_id, deadline_in, 0)
}

/// [`job_event`] of a job already resumed `resumes` times after passing a deadline.
fn resumed_job_event(job_id: &str, deadline_in: chrono::Duration, resumes: u32) -> Event {
    let sample = fixtures::job_spec(job_id);
    fixtures::job_validated(&JobSpec { deadline: sample.accepted_at + deadline_in, timeout_resumes: resumes, ..sample })
}

impl Rig {
    async fn send(&self, event: &Event) {
        self.bus.publish(&self.names.work_topic(Stage::Download), binding::encode_binary(event)).await.unwrap();
    }

    async fn send_raw(&self, message: Message) {
        self.bus.publish(&self.names.work_topic(Stage::Download), message).await.unwrap();
    }

    /// Events on the log until one of type `ty` for `job` arrives.
    async fn wait_log(&self, job: &str, ty: &str) -> Event {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no {ty} for {job}");
            for d in self.bus.receive(WATCH, 10, Duration::from_millis(200)).await.unwrap() {
                self.bus.ack(WATCH, &d.ack_id).await.unwrap();
                let e = binding::decode(&d.message).unwrap();
                if e.ty() == ty && envelope::job_id_of(&e).as_deref() == Some(job) {
                    return e;
                }
            }
        }
    }

    async fn dead_letter(&self) -> Message {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "nothing dead-lettered");
            if let Some(d) =
                self.bus.receive(DLQ_WATCH, 1, Duration::from_millis(200)).await.unwrap().into_iter().next()
            {
                self.bus.ack(DLQ_WATCH, &d.ack_id).await.unwrap();
                return d.message;
            }
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.task.take().unwrap().await.unwrap();
    }
}

#[tokio::test]
async fn emit_publishes_to_the_log_and_the_next_stage() {
    let rig = rig(Behaviour::FailThenEmit(0), 3).await;
    // The next stage's subscription receives it too.
    rig.send(&job_event("job_ok", chrono::Duration::minutes(5))).await;
    let e = rig.wait_log("job_ok", types::CLIPS_DOWNLOADED).await;
    let next = rig.bus.receive(&rig.names.subscription(Stage::Stitch), 1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(binding::decode(&next[0].message).unwrap().id(), e.id());
    rig.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_they_pass() {
    let rig = rig(Behaviour::FailThenEmit(2), 3).await;
    rig.send(&job_event("job_flaky", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_flaky", types::CLIPS_DOWNLOADED).await;
    assert_eq!(*rig.stage.attempts_seen.lock().unwrap(), vec![1, 2, 3]);
    assert_eq!(rig.worker.metrics.counted(MessageOutcome::Retried), 2);
    rig.stop().await;
}

#[tokio::test]
async fn after_max_retry_attempts_the_job_fails_retryable_and_the_message_is_dead_lettered() {
    let rig = rig(Behaviour::AlwaysRetry, 2).await;
    rig.send(&job_event("job_down", chrono::Duration::minutes(5))).await;
    let failed = rig.wait_log("job_down", types::JOB_FAILED).await;
    let data = envelope::data_json(&failed).unwrap();
    assert_eq!(data["retryable"], true);
    assert_eq!(data["attempts"], 3);
    assert_eq!(data["stage"], "download");
    assert!(data["message"].as_str().unwrap().contains("connection reset"));
    // A failed job has a cost too: each of its three deliveries was recorded.
    let cost: reel_events::payload::JobCost = serde_json::from_value(data["cost"].clone()).unwrap();
    assert!(cost.memory_gib_seconds > 0.0 && cost.estimated_usd > 0.0, "{cost:?}");
    let ledger = rig.work.list_keys("control/cost/job_down/").await.unwrap();
    assert_eq!(ledger.len(), 3, "one ledger entry per delivery: {ledger:?}");
    let dead = rig.dead_letter().await;
    assert_eq!(dead.attributes[dead_letter_attrs::STAGE], "download");
    assert_eq!(dead.attributes[dead_letter_attrs::ATTEMPTS], "3");
    assert_eq!(dead.attributes[dead_letter_attrs::ERROR_TYPE], "internal");
    assert!(dead.attributes[dead_letter_attrs::REASON].contains("connection reset"));
    // The original event is intact inside the dead letter, ready for replay.
    assert_eq!(binding::decode(&dead).unwrap().id(), "v-job_down");
    assert_eq!(rig.stage.calls.load(Ordering::SeqCst), 3);
    rig.stop().await;
}

#[tokio::test]
async fn a_dead_lettered_job_keeps_its_workspace_for_a_replay_and_frees_its_project() {
    let rig = rig(Behaviour::AlwaysRetry, 1).await;
    let clip = "jobs/job_kept/clips/000.mp4";
    rig.work.put(clip, Box::pin(std::io::Cursor::new(b"x".to_vec())), PutMode::Overwrite).await.unwrap();
    let lock = reel_runtime::lock::lock_key("p1");
    let expires = Utc::now() + chrono::Duration::minutes(10);
    reel_runtime::lock::acquire(rig.work.as_ref(), "p1", "job_kept", expires, false).await.unwrap();
    rig.send(&job_event("job_kept", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_kept", types::JOB_FAILED).await;
    rig.dead_letter().await;
    assert!(rig.work.head(clip).await.unwrap().is_some(), "the workspace a replay needs is gone");
    assert!(rig.work.head(&lock).await.unwrap().is_none(), "the failed job still blocks its project");
    rig.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_fails_the_job_and_cleans_its_workspace() {
    let rig = rig(Behaviour::Reject, 3).await;
    let key = "jobs/job_bad/clips/000.mp4";
    rig.work.put(key, Box::pin(std::io::Cursor::new(b"x".to_vec())), PutMode::Overwrite).await.unwrap();
    rig.send(&job_event("job_bad", chrono::Duration::minutes(5))).await;
    let failed = rig.wait_log("job_bad", types::JOB_FAILED).await;
    let data = envelope::data_json(&failed).unwrap();
    assert_eq!(data["errorType"], "corrupt_input");
    assert_eq!(data["retryable"], false);
    assert!(rig.work.head(key).await.unwrap().is_none(), "workspace not cleaned");
    assert_eq!(rig.stage.calls.load(Ordering::SeqCst), 1, "a permanent failure was retried");
    rig.stop().await;
}

/// A handler that panics fails its job as `internal` and frees the message: no
/// redelivery loop, no message left leased, and the worker keeps working.
#[tokio::test]
async fn a_panicking_handler_fails_its_job_and_frees_the_message() {
    let rig = rig(Behaviour::Panic, 3).await;
    rig.send(&job_event("job_panic", chrono::Duration::minutes(5))).await;
    let failed = rig.wait_log("job_panic", types::JOB_FAILED).await;
    let data = envelope::data_json(&failed).unwrap();
    assert_eq!(data["errorType"], "internal");
    assert_eq!(data["retryable"], false);
    assert!(data["message"].as_str().unwrap().contains("index out of bounds"), "{data}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.stage.calls.load(Ordering::SeqCst), 1, "the message was redelivered");
    rig.send(&job_event("job_after", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_after", types::JOB_FAILED).await;
    rig.stop().await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_with_a_reason_and_work_goes_on() {
    let rig = rig(Behaviour::FailThenEmit(0), 3).await;
    let attrs = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let poison = vec![
        Message { data: b"not json at all".to_vec(), attributes: Default::default(), ordering_key: String::new() },
        Message {
            data: vec![0xff, 0xfe, 0x00],
            attributes: attrs(&[("ce-specversion", "1.0")]),
            ordering_key: String::new(),
        },
        Message {
            data: b"{}".to_vec(),
            attributes: attrs(&[("ce-specversion", "0.3"), ("ce-id", "1"), ("ce-source", "s"), ("ce-type", "t")]),
            ordering_key: String::new(),
        },
        Message {
            data: b"{}".to_vec(),
            attributes: attrs(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "s"),
                ("ce-type", "phoenix.reel.v1.unknown"),
            ]),
            ordering_key: String::new(),
        },
    ];
    for m in poison {
        rig.send_raw(m).await;
        let dead = rig.dead_letter().await;
        assert!(!dead.attributes[dead_letter_attrs::REASON].is_empty());
        assert_eq!(dead.attributes[dead_letter_attrs::ERROR_TYPE], "invalid_request");
    }
    // And a valid job right after all that still completes.
    rig.send(&job_event("job_after", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_after", types::CLIPS_DOWNLOADED).await;
    assert_eq!(rig.worker.metrics.counted(MessageOutcome::DeadLettered), 4);
    rig.stop().await;
}

#[tokio::test]
async fn a_job_past_its_deadline_and_out_of_resumes_fails_with_timeout() {
    let rig = rig(Behaviour::FailThenEmit(0), 3).await;
    rig.send(&resumed_job_event("job_late", chrono::Duration::seconds(-1), 1)).await;
    let failed = rig.wait_log("job_late", types::JOB_FAILED).await;
    let data = envelope::data_json(&failed).unwrap();
    assert_eq!(data["errorType"], "timeout");
    assert!(data["message"].as_str().unwrap().contains("after 1 resume"), "{data}");
    assert_eq!(rig.stage.calls.load(Ordering::SeqCst), 0, "the handler ran for an expired job");
    rig.stop().await;
}

/// "Job timeout → save progress, schedule retry": a job past its deadline with resumes
/// left comes back as a new attempt with a fresh deadline and a warning saying why, its
/// workspace (the checkpoint) kept, and goes on.
#[tokio::test]
async fn a_job_past_its_deadline_resumes_from_its_checkpoint_with_a_new_deadline() {
    let rig = rig(Behaviour::FailThenEmit(0), 3).await;
    let clip = "jobs/job_resume/clips/000.mp4";
    rig.work.put(clip, Box::pin(std::io::Cursor::new(b"x".to_vec())), PutMode::Overwrite).await.unwrap();
    rig.send(&job_event("job_resume", chrono::Duration::seconds(-1))).await;
    let resumed = rig.wait_log("job_resume", types::JOB_VALIDATED).await;
    let data = envelope::data_json(&resumed).unwrap();
    assert_eq!(data["job"]["retryAttempt"], 1, "{data}");
    assert_eq!(data["job"]["timeoutResumes"], 1, "{data}");
    let deadline: chrono::DateTime<Utc> = data["job"]["deadline"].as_str().unwrap().parse().unwrap();
    assert!(deadline > Utc::now() + chrono::Duration::minutes(10), "a fresh deadline: {deadline}");
    assert!(data["warnings"][0].as_str().unwrap().contains("resumed"), "{data}");
    let done = rig.wait_log("job_resume", types::CLIPS_DOWNLOADED).await;
    assert_eq!(envelope::data_json(&done).unwrap()["job"]["retryAttempt"], 1);
    assert!(rig.work.head(clip).await.unwrap().is_some(), "the checkpoint is gone");
    rig.stop().await;
}

#[tokio::test]
async fn the_deadline_stops_work_in_progress() {
    let rig = rig(Behaviour::Work(Duration::from_secs(30)), 3).await;
    let started = std::time::Instant::now();
    rig.send(&resumed_job_event("job_slow", chrono::Duration::milliseconds(800), 1)).await;
    let failed = rig.wait_log("job_slow", types::JOB_FAILED).await;
    assert_eq!(envelope::data_json(&failed).unwrap()["errorType"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    rig.stop().await;
}

#[tokio::test]
async fn a_cancel_marker_stops_work_and_emits_job_cancelled() {
    let rig = rig(Behaviour::Work(Duration::from_secs(30)), 3).await;
    rig.send(&job_event("job_cxl", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_cxl", types::JOB_PROGRESS).await;
    let started = std::time::Instant::now();
    rig.work
        .put(&cancel_marker_key("job_cxl"), Box::pin(std::io::Cursor::new(b"{}".to_vec())), PutMode::Overwrite)
        .await
        .unwrap();
    let cancelled = rig.wait_log("job_cxl", types::JOB_CANCELLED).await;
    assert_eq!(envelope::data_json(&cancelled).unwrap()["stage"], "download");
    assert!(started.elapsed() < Duration::from_secs(3), "cancel took {:?}", started.elapsed());
    // The job has ended: its marker goes, so the id can never be cancelled "again".
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while rig.work.head(&cancel_marker_key("job_cxl")).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the cancel marker was left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.stop().await;
}

#[tokio::test]
async fn progress_is_published_while_a_stage_works() {
    let rig = rig(Behaviour::Work(Duration::from_millis(1200)), 3).await;
    rig.send(&job_event("job_prog", chrono::Duration::minutes(5))).await;
    let p = rig.wait_log("job_prog", types::JOB_PROGRESS).await;
    let data = envelope::data_json(&p).unwrap();
    assert_eq!(data["stage"], "download");
    assert!(data["progress"].as_f64().unwrap() > 0.0);
    rig.wait_log("job_prog", types::CLIPS_DOWNLOADED).await;
    rig.stop().await;
}

/// The estimate is on the stage's first progress event, and comes from what the jobs
/// before took (`reel_runtime::eta`), not from a fixed share per stage.
#[tokio::test]
async fn progress_estimates_completion_from_what_earlier_jobs_took() {
    let rig = rig(Behaviour::Work(Duration::from_millis(600)), 3).await;
    let clips = fixtures::job_spec("job_any").clip_paths.len() as u32;
    let shape = Shape { clips: Some(clips), input_bytes: Some(u64::from(clips) * 10_000_000), ..Shape::default() };
    let legs = BTreeMap::from([
        (Stage::Validate, 1.0),
        (Stage::Download, 100.0),
        (Stage::Stitch, 20.0),
        (Stage::Upload, 5.0),
        (Stage::Finalize, 1.0),
    ]);
    reel_runtime::eta::learn(rig.work.as_ref(), &shape, &legs).await.unwrap();
    rig.send(&job_event("job_eta", chrono::Duration::minutes(5))).await;
    let first = rig.wait_log("job_eta", types::JOB_PROGRESS).await;
    let data = envelope::data_json(&first).unwrap();
    let eta = chrono::DateTime::parse_from_rfc3339(data["estimatedCompletion"].as_str().expect("an estimate")).unwrap();
    let ahead = (eta.with_timezone(&Utc) - *first.time().unwrap()).num_milliseconds() as f64 / 1000.0;
    // Download (100 s, 90 s once it says 10 %), then stitch, upload and finalize.
    assert!((110.0..=130.0).contains(&ahead), "estimated {ahead} s ahead: {data}");
    rig.wait_log("job_eta", types::CLIPS_DOWNLOADED).await;
    rig.stop().await;
}

#[tokio::test]
async fn shutdown_mid_work_nacks_so_the_message_is_redelivered() {
    let rig = rig(Behaviour::Work(Duration::from_secs(30)), 3).await;
    rig.send(&job_event("job_term", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_term", types::JOB_PROGRESS).await;
    let started = std::time::Instant::now();
    let bus = rig.bus.clone();
    let sub = rig.names.subscription(Stage::Download);
    rig.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    // The message is back on the subscription for the next worker.
    let again = bus.receive(&sub, 1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(binding::decode(&again[0].message).unwrap().id(), "v-job_term");
    assert_eq!(again[0].delivery_attempt, 2);
}

/// A late redelivery of a finished job's event (its workspace already removed by
/// finalize) is skipped: the handler never runs, nothing is emitted, no `job.failed`.
/// A forced restart of a completed job does run.
#[tokio::test]
async fn a_late_redelivery_of_a_completed_job_is_skipped_not_failed() {
    let rig = rig(Behaviour::Reject, 3).await;
    rig.work
        .put(&completed_marker_key("job_done"), Box::pin(std::io::Cursor::new(b"{}".to_vec())), PutMode::Overwrite)
        .await
        .unwrap();
    rig.send(&job_event("job_done", chrono::Duration::minutes(5))).await;
    // A job sent after it is processed after it (one message at a time), so once its
    // failure is on the log the late redelivery has been handled.
    rig.send(&job_event("job_after", chrono::Duration::minutes(5))).await;
    rig.wait_log("job_after", types::JOB_FAILED).await;
    assert_eq!(rig.stage.calls.load(Ordering::SeqCst), 1, "the handler ran for a completed job");
    assert_eq!(rig.worker.metrics.counted(MessageOutcome::Skipped), 1);

    let mut forced = job_event("job_done", chrono::Duration::minutes(5));
    let mut data = envelope::data_json(&forced).unwrap();
    data["job"]["forceRestart"] = serde_json::Value::Bool(true);
    forced =
        envelope::build(types::JOB_VALIDATED, "//test", "v-job_done-forced", "job_done", Utc::now(), &data).unwrap();
    rig.send(&forced).await;
    let failed = rig.wait_log("job_done", types::JOB_FAILED).await;
    assert_eq!(envelope::data_json(&failed).unwrap()["errorType"], "corrupt_input");
    assert_eq!(rig.stage.calls.load(Ordering::SeqCst), 2, "a forced restart did not run");
    rig.stop().await;
}

/// A program SIGKILLed mid-work leaves its delivery's scratch directory; the next worker
/// to start removes it, and leaves alone what belongs to live processes or is not a
/// scratch directory at all.
#[test]
fn scratch_of_dead_processes_is_swept_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // A zombie (killed, not yet reaped by its parent) is gone too.
    let mut zombie_child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let zombie = zombie_child.id();
    kill_by_pid(zombie);
    while !std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default().contains(") Z") {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let hex = "0123456789abcdef0123456789abcdef";
    let orphan = dir.path().join(format!("stitch-{dead}-{hex}"));
    let zombie_scratch = dir.path().join(format!("upload-{zombie}-{hex}"));
    std::fs::create_dir_all(&zombie_scratch).unwrap();
    let mine = dir.path().join(format!("stitch-{}-{hex}", std::process::id()));
    let parent = dir.path().join(format!("download-{}-{hex}", std::os::unix::process::parent_id()));
    let foreign = dir.path().join(format!("notes-{dead}-{hex}"));
    for d in [&orphan, &mine, &parent, &foreign] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("part.mp4"), b"x").unwrap();
    }
    std::fs::write(dir.path().join(format!("upload-{dead}-{hex}")), b"a file, not a dir").unwrap();
    assert_eq!(reel_runtime::worker::sweep_orphaned_scratch(dir.path()), 2);
    assert!(!orphan.exists(), "the dead process's scratch is still there");
    assert!(!zombie_scratch.exists(), "the zombie's scratch is still there");
    zombie_child.wait().unwrap();
    for kept in [&mine, &parent, &foreign] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
}

fn kill_by_pid(pid: u32) {
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}
