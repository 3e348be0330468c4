//! A stage program that is killed every time it works on a job (SIGKILL, as the OOM
//! killer does) produces no outcome. The next delivery after `MAX_RETRY_ATTEMPTS + 1`
//! such deaths fails the job with `resource_exhausted` and dead-letters its message,
//! instead of letting Pub/Sub's own dead-lettering swallow it without a word.
//!
//! The killed runs are real processes: this test binary runs itself again as a child
//! whose handler sends SIGKILL to its own process; the runs share only the work store
//! on disk, as separate instances of a stage share the work bucket.

use async_trait::async_trait;
use reel_events::{binding, envelope, types, AttributesReader, Event, Stage};
use reel_runtime::bus::Bus;
use reel_runtime::embedded::{DirStore, EmbeddedBus};
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, Handler, Outcome};
use reel_runtime::worker::{dead_letter_attrs, Disposition, Worker, WorkerOptions};
use reel_runtime::{Settings, Store};
use reel_testkit::fixtures;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Set in the child: the directory of the shared work store.
const CHILD_WORK_DIR: &str = "REEL_TEST_KILLED_CHILD_WORK";
const WATCH: &str = "test-watch";
const MAX_RETRY_ATTEMPTS: u32 = 1;

/// Kills its own process with SIGKILL (in the child), or counts calls (in the parent).
struct Download {
    kill_self: bool,
    calls: AtomicU32,
}

#[async_trait]
impl Handler for Download {
    fn stage(&self) -> Stage {
        Stage::Download
    }

    async fn handle(&self, _ctx: &Context, _event: &Event) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.kill_self {
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
            std::thread::sleep(Duration::from_secs(30));
        }
        Outcome::Skip("not killed".into())
    }
}

fn job() -> Event {
    fixtures::job_validated(&fixtures::job_spec("job_oom"))
}

async fn worker(work_dir: &Path, kill_self: bool) -> (Arc<Worker>, Arc<EmbeddedBus>, Arc<Download>, Settings) {
    let settings =
        Settings { max_retry_attempts: MAX_RETRY_ATTEMPTS, temp_dir: work_dir.join("tmp"), ..Settings::default() };
    let mut topology = settings.topology();
    topology.subscriptions.push(fixtures::subscription(WATCH, &topology.names().events()));
    let bus = Arc::new(EmbeddedBus::new());
    bus.ensure_topology(&topology).await.unwrap();
    let work = Arc::new(DirStore::new(work_dir.join("work")).unwrap());
    let handler = Arc::new(Download { kill_self, calls: AtomicU32::new(0) });
    let options = WorkerOptions::for_stage(Stage::Download, &settings);
    let worker =
        Arc::new(Worker::new(bus.clone(), handler.clone(), &settings, work, Arc::new(LocalResolver::new()), options));
    (worker, bus, handler, settings)
}

/// The child: one delivery of the job, whose handler kills the process.
#[tokio::test]
async fn child_run_that_kills_its_own_process() {
    let Some(dir) = std::env::var_os(CHILD_WORK_DIR) else {
        return; // Only meaningful as the child of the test below.
    };
    let attempt: u32 = std::env::var("REEL_TEST_KILLED_ATTEMPT").unwrap().parse().unwrap();
    let (worker, _bus, _, settings) = worker(Path::new(&dir), true).await;
    let sub = settings.topology().names().subscription(Stage::Download);
    let message = binding::encode_binary(&job());
    worker.process(&sub, &message, "m-1", attempt, CancellationToken::new()).await;
    panic!("the handler should have killed this process");
}

#[tokio::test]
async fn a_job_whose_runs_keep_getting_killed_fails_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    // MAX_RETRY_ATTEMPTS + 1 deliveries, each killed by a real SIGKILL mid-work.
    for attempt in 1..=MAX_RETRY_ATTEMPTS + 1 {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_run_that_kills_its_own_process", "--nocapture", "--test-threads=1"])
            .env(CHILD_WORK_DIR, dir.path())
            .env("REEL_TEST_KILLED_ATTEMPT", attempt.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(9), "run {attempt} was not killed by SIGKILL: {status:?}");
    }

    // The next delivery does not run the handler again: the job fails and its message
    // is dead-lettered for a replay (on a larger machine).
    let (worker, bus, handler, settings) = worker(dir.path(), false).await;
    let names = settings.topology().names();
    let message = binding::encode_binary(&job());
    let disposition = worker
        .process(
            &names.subscription(Stage::Download),
            &message,
            "m-1",
            MAX_RETRY_ATTEMPTS + 2,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(disposition, Disposition::Ack);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0, "the handler ran a fourth time");

    let failed = bus
        .receive(WATCH, 10, Duration::from_secs(2))
        .await
        .unwrap()
        .into_iter()
        .map(|d| binding::decode(&d.message).unwrap())
        .find(|e| e.ty() == types::JOB_FAILED)
        .expect("no job.failed on the log");
    let data = envelope::data_json(&failed).unwrap();
    assert_eq!(data["errorType"], "resource_exhausted");
    assert_eq!(data["stage"], "download");
    let message_text = data["message"].as_str().unwrap();
    assert!(message_text.contains("died 2 times"), "{message_text}");

    let dead = bus.receive(&names.dead_letter_subscription(Stage::Download), 1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(dead.len(), 1, "the message was not dead-lettered");
    assert_eq!(dead[0].message.attributes[dead_letter_attrs::ERROR_TYPE], "resource_exhausted");

    // The count starts afresh for a replay.
    let work = DirStore::new(dir.path().join("work")).unwrap();
    let record = reel_runtime::unfinished::record_key("job_oom", Stage::Download.as_str());
    assert!(work.head(&record).await.unwrap().is_none(), "the run record was left behind");
}
