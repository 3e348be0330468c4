//! A local cluster for tests: the emulators (started by `reel_gcp::testing`), the
//! topology (`reel setup`), and the five stage programs as real processes whose PIDs
//! are kept and killed on drop — never by name.

use reel_events::{binding, envelope, AttributesReader, Event};
use reel_gcp::testing::{EmulatorOptions, Emulators};
use reel_runtime::bus::Bus;
use reel_runtime::topology::SubscriptionSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The programs the tests run.
pub const PROGRAMS: [&str; 7] =
    ["reel", "reel-validate", "reel-download", "reel-stitch", "reel-upload", "reel-finalize", "reel-api"];

/// The directory holding the workspace's binaries, built once per test run.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/debug/deps/e2e-xxxx -> target/debug
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
        // `cargo test --workspace` has built every program already (each has an
        // integration test); building them again here with another feature set would
        // recompile the dependencies. scripts/test.sh says so with REEL_E2E_PREBUILT.
        if std::env::var_os("REEL_E2E_PREBUILT").is_some() {
            for p in PROGRAMS {
                assert!(dir.join(p).exists(), "{p} was not built by cargo test");
            }
            return dir;
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--quiet", "--manifest-path"]).arg(&manifest);
        for p in PROGRAMS {
            cmd.args(["--bin", p]);
        }
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the programs failed");
        dir
    })
}

/// One stage program process.
pub struct Program {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Program {
    /// The program's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Emulators + topology + programs, isolated by a topic prefix and a bucket.
pub struct Cluster {
    pub emulators: Emulators,
    pub prefix: String,
    pub bucket: String,
    pub dir: tempfile::TempDir,
    pub programs: Vec<Program>,
    pub env: BTreeMap<String, String>,
    pub watch: String,
    bus: reel_gcp::PubSubBus,
    seen: Vec<Event>,
}

impl Cluster {
    /// Start emulators (with storage notifications to this cluster's topic) and run
    /// `reel setup`. No stage programs yet.
    pub async fn start() -> Cluster {
        let prefix = format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let emulators = Emulators::start_with(EmulatorOptions {
            pubsub: true,
            gcs: true,
            gcs_notification_topic: Some(format!("{prefix}gcs-notifications")),
        })
        .await
        .expect("start the emulators");
        let bucket = format!("reel-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = tempfile::tempdir().unwrap();
        let mut env = BTreeMap::new();
        env.insert("PUBSUB_EMULATOR_HOST".into(), emulators.pubsub_host());
        env.insert("STORAGE_EMULATOR_HOST".into(), emulators.storage_url());
        env.insert("GOOGLE_CLOUD_PROJECT".into(), emulators.project().to_string());
        env.insert("VIDEO_STORAGE_BUCKET".into(), bucket.clone());
        env.insert("REEL_TOPIC_PREFIX".into(), prefix.clone());
        env.insert("TEMP_DIR".into(), dir.path().join("tmp").display().to_string());
        env.insert("REEL_ACK_DEADLINE_SECONDS".into(), "10".into());
        env.insert("REEL_MIN_BACKOFF_SECONDS".into(), "1".into());
        env.insert("REEL_PUBSUB_MAX_OUTSTANDING_MESSAGES".into(), "1".into());
        env.insert("LOG_LEVEL".into(), "info".into());
        let cluster = Cluster {
            bus: emulators.bus().await,
            emulators,
            prefix: prefix.clone(),
            bucket,
            dir,
            programs: Vec::new(),
            env,
            watch: format!("{prefix}test-watch"),
            seen: Vec::new(),
        };
        let out = cluster.reel(&["setup"]);
        assert!(out.status.success(), "reel setup failed: {}", String::from_utf8_lossy(&out.stderr));
        // A subscription of our own on the event log, to see what the pipeline says.
        let mut topology =
            reel_runtime::topology::Topology { prefix: prefix.clone(), topics: vec![], subscriptions: vec![] };
        topology.subscriptions.push(SubscriptionSpec {
            name: cluster.watch.clone(),
            topic: format!("{prefix}events"),
            ack_deadline: Duration::from_secs(30),
            dead_letter_topic: None,
            max_delivery_attempts: 5,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            message_retention: Duration::from_secs(3600),
            exactly_once: false,
        });
        cluster.bus.ensure_topology(&topology).await.expect("watch subscription");
        cluster
    }

    /// The Pub/Sub bus of the test itself.
    pub fn bus(&self) -> &reel_gcp::PubSubBus {
        &self.bus
    }

    /// Run the `reel` CLI with the cluster's environment.
    pub fn reel(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_dir().join("reel"))
            .args(args)
            .envs(&self.env)
            .env("REEL_HOME", self.dir.path().join("cli-home"))
            .output()
            .expect("run reel")
    }

    /// Start a stage program (`validate`, `download`, …) with extra args.
    pub fn start_program(&mut self, stage: &str, args: &[&str]) -> usize {
        let n = self.programs.len();
        let log = self.dir.path().join(format!("{stage}-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin_dir().join(format!("reel-{stage}")))
            .args(args)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start reel-{stage}: {e}"));
        self.programs.push(Program { name: stage.to_string(), child, log });
        n
    }

    /// Start `reel-api` on `port` with local tokens (`tok-alice=alice,tok-bob=bob`).
    pub fn start_api(&mut self, port: u16) -> usize {
        let n = self.programs.len();
        let log = self.dir.path().join(format!("api-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin_dir().join("reel-api"))
            .envs(&self.env)
            .env("PORT", port.to_string())
            .env("REEL_API_TOKENS", "tok-alice=alice,tok-bob=bob")
            .env("REEL_API_SNAPSHOT_SECONDS", "2")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start reel-api");
        self.programs.push(Program { name: "api".into(), child, log });
        n
    }

    /// Start all five stages, one process each.
    pub fn start_all(&mut self) {
        for stage in ["validate", "download", "stitch", "upload", "finalize"] {
            self.start_program(stage, &[]);
        }
    }

    /// Send `signal` to program `n` (by its PID).
    pub fn signal(&mut self, n: usize, signal: i32) {
        let pid = self.programs[n].child.id() as i32;
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Upload a local file into the cluster's bucket.
    pub async fn upload(&self, local: &Path, key: &str) {
        let store = self.emulators.store(&self.bucket).await;
        reel_runtime::store::put_file(&store, key, local, reel_runtime::PutMode::Overwrite).await.expect("upload");
    }

    /// Download an object of the bucket to a local file.
    pub async fn download(&self, key: &str, local: &Path) -> bool {
        let store = self.emulators.store(&self.bucket).await;
        reel_runtime::store::get_to_file(&store, key, local).await.is_ok()
    }

    /// Every event seen on the log so far for `job` (pulling what is new).
    pub async fn events_of(&mut self, job: &str) -> Vec<Event> {
        self.pull().await;
        self.seen.iter().filter(|e| envelope::job_id_of(e).as_deref() == Some(job)).cloned().collect()
    }

    /// Every event of type `ty` seen so far, any job.
    pub async fn events_of_any(&mut self, ty: &str) -> Vec<Event> {
        self.pull().await;
        self.seen.iter().filter(|e| e.ty() == ty).cloned().collect()
    }

    async fn pull(&mut self) {
        loop {
            let batch = self.bus.receive(&self.watch, 100, Duration::from_millis(300)).await.expect("receive");
            if batch.is_empty() {
                return;
            }
            for d in batch {
                let _ = self.bus.ack(&self.watch, &d.ack_id).await;
                if let Ok(e) = binding::decode(&d.message) {
                    self.seen.push(e);
                }
            }
        }
    }

    /// Wait until an event of type `ty` for `job` shows up (or `job` is None: any job).
    pub async fn wait_for(&mut self, job: Option<&str>, ty: &str, timeout: Duration) -> Event {
        let start = Instant::now();
        loop {
            self.pull().await;
            if let Some(e) = self
                .seen
                .iter()
                .find(|e| e.ty() == ty && job.is_none_or(|j| envelope::job_id_of(e).as_deref() == Some(j)))
            {
                return e.clone();
            }
            if start.elapsed() > timeout {
                let types: Vec<String> = self
                    .seen
                    .iter()
                    .map(|e| format!("{} {}", envelope::job_id_of(e).unwrap_or_default(), e.ty()))
                    .collect();
                let logs: String = self
                    .programs
                    .iter()
                    .map(|p| format!("\n--- {} ---\n{}", p.name, tail(&p.log_text(), 3000)))
                    .collect();
                panic!("no {ty} for {job:?} within {timeout:?}; seen: {types:#?}{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn tail(text: &str, n: usize) -> &str {
    let start = text.len().saturating_sub(n);
    let mut start = start;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.programs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Make a small h264/aac clip with ffmpeg.
pub fn make_clip(path: &Path, w: u32, h: u32, seconds: f64) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &format!("testsrc2=size={w}x{h}:rate=30:duration={seconds}")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency=440:sample_rate=48000:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// ffprobe: (duration, video streams, audio streams); and `ffmpeg -v error … -f null -` is silent.
pub fn check_playable(path: &Path) -> (f64, usize, usize) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-show_format", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"].as_array().unwrap();
    let count = |t: &str| streams.iter().filter(|s| s["codec_type"] == t).count();
    let decode =
        Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]).output().unwrap();
    assert!(decode.stderr.is_empty(), "decode errors: {}", String::from_utf8_lossy(&decode.stderr));
    (v["format"]["duration"].as_str().unwrap().parse().unwrap(), count("video"), count("audio"))
}
