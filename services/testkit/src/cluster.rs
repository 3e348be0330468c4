//! The local cluster: the emulators, the topology (`reel setup`), and the stage programs
//! (and `reel-api`) as real processes, each with its own log, whose PIDs are kept and
//! signalled — never a process found by name.
//!
//! One [`Cluster`] is one isolated deployment: a topic prefix and a bucket of its own on
//! a pair of emulators, which it starts (the default, with storage notifications to the
//! prefix's `gcs-notifications` topic) or shares with other clusters
//! ([`ClusterOptions::emulators`], as the bench does with a fresh prefix per phase).
//! A subscription of its own on the event log ([`Cluster::watch`]) shows what the
//! pipeline says ([`Cluster::wait_for`]).
//!
//! Layers, bottom up: [`crate::process`] (spawn, signal, stop by PID),
//! [`crate::emulators`], this module. A stage harness *in process* (a `Settings`, a
//! directory store and a `Context`, no bus) belongs beside this one, in its own module,
//! when the runtime's redesign settles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use reel_events::{binding, envelope, AttributesReader, Event};
use reel_gcp::PubSubBus;
use reel_runtime::bus::Bus;
use reel_runtime::topology::{Names, Topology};

use crate::emulators::{EmulatorOptions, Emulators};
use crate::fixtures;
use crate::process::{self, Lifetime};

/// The stages, in pipeline order (program `reel-{stage}`).
pub const STAGES: [&str; 5] = ["validate", "download", "stitch", "upload", "finalize"];

/// The programs a cluster runs.
pub const PROGRAMS: [&str; 8] = [
    "reel",
    "reel-validate",
    "reel-download",
    "reel-stitch",
    "reel-upload",
    "reel-finalize",
    "reel-generate",
    "reel-api",
];

/// Settings every program gets besides the emulators, bucket and prefix. Delivery runs at
/// the defaults (ack deadlines, leases, backoff), as in production. No per-user quotas:
/// tests, the chaos runs and the bench send bursts of one test user's jobs (the quota
/// tests set their own).
pub const PROGRAM_SETTINGS: [(&str, &str); 3] =
    [("LOG_LEVEL", "info"), ("REEL_QUOTA_ACTIVE_JOBS", "0"), ("REEL_QUOTA_JOBS_PER_HOUR", "0")];

/// Each stage's size as terraform deploys it by default (`stage_sizing` in
/// `terraform/run.tf`): (vCPUs, memory). A cluster's programs are told theirs
/// (`REEL_INSTANCE_VCPUS`, `REEL_INSTANCE_MEMORY`), so the cost a job reports is what
/// it would cost on Cloud Run at those sizes.
pub const STAGE_SIZING: [(&str, &str, &str); 6] = [
    ("validate", "1", "512Mi"),
    ("download", "1", "2Gi"),
    ("stitch", "2", "4Gi"),
    ("upload", "1", "512Mi"),
    ("finalize", "1", "512Mi"),
    ("generate", "1", "2Gi"),
];

/// The directory of the workspace's debug (or release) binaries, built once per test
/// binary run: `cargo build` of [`PROGRAMS`], unless `REEL_E2E_PREBUILT` says that
/// `cargo test --workspace` built them already (building them again with another feature
/// set would recompile the dependencies).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/debug/deps/test-xxxx -> target/debug
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
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

/// One program process of a cluster.
#[derive(Debug)]
pub struct Program {
    /// `validate` … `finalize`, or `api`.
    pub name: String,
    /// How many programs of this name the cluster started before this one.
    pub instance: usize,
    /// Its command-line arguments (a restart uses them again).
    pub args: Vec<String>,
    pub child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// Set once the child was reaped by someone else (`wait4` for its rusage).
    reaped: bool,
}

impl Program {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The program's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited (without reaping it).
    pub fn exited(&self) -> bool {
        self.reaped || process::exited(self.pid())
    }

    /// The caller reaped the process itself (e.g. with `wait4`): it is not to be killed
    /// or waited for any more.
    pub fn mark_reaped(&mut self) {
        self.reaped = true;
    }
}

/// How to set up a [`Cluster`]. `Default` is what an end-to-end test wants.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Emulators to share; `None`: start a pair of its own (on free ports, with storage
    /// notifications to `{prefix}gcs-notifications`).
    pub emulators: Option<Arc<Emulators>>,
    /// Topic and subscription prefix (`REEL_TOPIC_PREFIX`).
    pub prefix: String,
    /// The work bucket (`VIDEO_STORAGE_BUCKET`).
    pub bucket: String,
    /// Logs, `TEMP_DIR` (`tmp/`) and the CLI's home (`cli-home/`); `None`: a temporary
    /// directory removed on drop.
    pub dir: Option<PathBuf>,
    /// Where the programs are; `None`: [`bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// Environment of every program besides the emulators, project, bucket, prefix and
    /// `TEMP_DIR` ([`PROGRAM_SETTINGS`] by default).
    pub settings: Vec<(String, String)>,
    /// Create [`Cluster::watch`], the test's own subscription on the event log.
    pub watch: bool,
    /// Whether the programs die with this process.
    pub lifetime: Lifetime,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        ClusterOptions {
            emulators: None,
            prefix: format!("t{}-", &id[..8]),
            bucket: format!("reel-{}", &id[8..18]),
            dir: None,
            bin_dir: None,
            settings: PROGRAM_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            watch: true,
            lifetime: Lifetime::WithThisProcess,
        }
    }
}

/// The cluster's directory: temporary (removed on drop) or given.
#[derive(Debug)]
enum Dir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

/// Emulators + topology + programs, isolated by a topic prefix and a bucket.
pub struct Cluster {
    pub emulators: Arc<Emulators>,
    pub prefix: String,
    pub bucket: String,
    /// The environment every program is started with (tests may change it before
    /// starting programs).
    pub env: BTreeMap<String, String>,
    pub programs: Vec<Program>,
    dir: Dir,
    bin_dir: PathBuf,
    lifetime: Lifetime,
    watch: Option<String>,
    bus: PubSubBus,
    seen: Vec<Event>,
}

impl Cluster {
    /// Start emulators (with storage notifications to this cluster's topic) and run
    /// `reel setup`. No programs yet. Panics when that fails (for tests).
    pub async fn start() -> Cluster {
        Self::start_with(ClusterOptions::default()).await.expect("start the cluster")
    }

    /// Set up a cluster as `options` say: emulators, `reel setup`, the watch
    /// subscription. No programs yet.
    pub async fn start_with(options: ClusterOptions) -> Result<Cluster> {
        let emulators = match options.emulators {
            Some(emulators) => emulators,
            None => {
                let emulator_options = EmulatorOptions {
                    gcs_notification_topic: Some(format!("{}gcs-notifications", options.prefix)),
                    lifetime: options.lifetime,
                    ..EmulatorOptions::default()
                };
                Arc::new(
                    Emulators::start_with(emulator_options)
                        .await
                        .context("starting the emulators (scripts/install-deps.sh --cloud installs them)")?,
                )
            }
        };
        let dir = match options.dir {
            Some(path) => {
                std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
                Dir::Given(path)
            }
            None => Dir::Temporary(tempfile::tempdir()?),
        };
        let mut env = BTreeMap::new();
        env.insert("PUBSUB_EMULATOR_HOST".into(), emulators.pubsub_host());
        env.insert("STORAGE_EMULATOR_HOST".into(), emulators.storage_url());
        env.insert("GOOGLE_CLOUD_PROJECT".into(), emulators.project().to_string());
        env.insert("VIDEO_STORAGE_BUCKET".into(), options.bucket.clone());
        env.insert("REEL_TOPIC_PREFIX".into(), options.prefix.clone());
        let mut cluster = Cluster {
            bus: PubSubBus::connect(emulators.pubsub_config()).await.context("connecting to the Pub/Sub emulator")?,
            emulators,
            prefix: options.prefix,
            bucket: options.bucket,
            env,
            programs: Vec::new(),
            dir,
            bin_dir: options.bin_dir.unwrap_or_else(|| bin_dir().to_path_buf()),
            lifetime: options.lifetime,
            watch: None,
            seen: Vec::new(),
        };
        let temp_dir = cluster.dir().join("tmp");
        std::fs::create_dir_all(&temp_dir)?;
        cluster.env.insert("TEMP_DIR".into(), temp_dir.display().to_string());
        cluster.env.extend(options.settings);
        let out = cluster.reel(&["setup"]);
        std::fs::write(cluster.dir().join("setup.log"), [&out.stdout[..], &out.stderr[..]].concat())?;
        if !out.status.success() {
            bail!("reel setup failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        if options.watch {
            let watch = format!("{}watch", cluster.prefix);
            let topology = Topology {
                prefix: cluster.prefix.clone(),
                topics: vec![],
                subscriptions: vec![fixtures::subscription(&watch, &cluster.names().events())],
            };
            cluster.bus.ensure_topology(&topology).await.context("creating the watch subscription on the event log")?;
            cluster.watch = Some(watch);
        }
        Ok(cluster)
    }

    /// The cluster's directory: logs, `tmp/` (the programs' `TEMP_DIR`), `cli-home/`.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Dir::Temporary(dir) => dir.path(),
            Dir::Given(path) => path,
        }
    }

    /// Topic and subscription names of this cluster.
    pub fn names(&self) -> Names {
        Names::new(&self.prefix)
    }

    /// The Pub/Sub bus of the test itself.
    pub fn bus(&self) -> &PubSubBus {
        &self.bus
    }

    /// The subscription on the event log that [`Cluster::wait_for`] reads (when
    /// [`ClusterOptions::watch`]).
    pub fn watch(&self) -> Option<&str> {
        self.watch.as_deref()
    }

    /// A command for program `name` (`reel`, `reel-stitch`, …) with the cluster's
    /// environment and nothing of the caller's cluster settings.
    pub fn command(&self, name: &str) -> Command {
        let mut command = process::clean_command(&self.bin_dir.join(name));
        command.envs(&self.env);
        command
    }

    /// Run the `reel` CLI with the cluster's environment.
    pub fn reel(&self, args: &[&str]) -> Output {
        self.command("reel").args(args).env("REEL_HOME", self.dir().join("cli-home")).output().expect("run reel")
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Result<usize> {
        let mut command = self.command(program);
        if let Some((_, vcpus, memory)) = STAGE_SIZING.iter().find(|(stage, _, _)| *stage == name) {
            command.env("REEL_INSTANCE_VCPUS", vcpus).env("REEL_INSTANCE_MEMORY", memory);
        }
        command.args(args).envs(extra_env.iter().copied());
        self.spawn_command(name, program, args, command)
    }

    fn spawn_command(&mut self, name: &str, program: &str, args: &[&str], command: Command) -> Result<usize> {
        let instance = self.programs.iter().filter(|p| p.name == name).count();
        let log = if instance == 0 {
            self.dir().join(format!("{name}.log"))
        } else {
            self.dir().join(format!("{name}-{instance}.log"))
        };
        let child = process::spawn(command, &log, self.lifetime).with_context(|| format!("starting {program}"))?;
        let args = args.iter().map(|a| a.to_string()).collect();
        self.programs.push(Program { name: name.to_string(), instance, args, child, log, reaped: false });
        Ok(self.programs.len() - 1)
    }

    /// `reel submit` of a job of user `u1` in `project` (the clips, `-o output`, and
    /// `extra` options); the job id it prints.
    pub fn submit(&self, project: &str, clips: &[String], output: &str, extra: &[&str]) -> String {
        let mut args = vec!["submit", "--project", project, "--user", "u1", "-o", output];
        args.extend(extra);
        args.extend(clips.iter().map(String::as_str));
        let out = self.reel(&args);
        assert!(out.status.success(), "reel submit: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("job id").trim().to_string()
    }

    /// Start a stage program (`validate`, `download`, …) with extra args; its index in
    /// [`Cluster::programs`].
    pub fn start_program(&mut self, stage: &str, args: &[&str]) -> usize {
        self.spawn(stage, &format!("reel-{stage}"), args, &[]).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start a stage program with extra environment (one program's own settings, such
    /// as a `REEL_FAULT_FILE` the others do not have); its index.
    pub fn start_program_with_env(&mut self, stage: &str, env: &[(&str, &str)]) -> Result<usize> {
        self.spawn(stage, &format!("reel-{stage}"), &[], env)
    }

    /// Start a stage program that may not write any file beyond `max_file_bytes`
    /// (`RLIMIT_FSIZE`, the kernel's per-process file-size limit, settable without root):
    /// the closest thing to a full disk a test can make without mounting a filesystem.
    /// Like any process that hits the limit, it is killed by SIGXFSZ when it writes past
    /// it. Its log file counts too, so keep the limit above a few dozen log lines.
    pub fn start_program_with_file_size_limit(&mut self, stage: &str, max_file_bytes: u64) -> usize {
        use std::os::unix::process::CommandExt as _;
        let program = format!("reel-{stage}");
        let mut command = self.command(&program);
        // SAFETY: setrlimit(2) is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: max_file_bytes, rlim_max: max_file_bytes };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.spawn_command(stage, &program, &[], command).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start `reel-api` on `port` with local tokens (`tok-alice=alice,tok-bob=bob`, and
    /// `tok-phoenix=phoenix`, a trusted caller that acts for the user it names).
    pub fn start_api(&mut self, port: u16) -> usize {
        let port = port.to_string();
        let env = [
            ("PORT", port.as_str()),
            ("REEL_API_TOKENS", "tok-alice=alice,tok-bob=bob,tok-phoenix=phoenix"),
            ("REEL_API_TRUSTED_CALLERS", "phoenix"),
            ("REEL_API_SNAPSHOT_SECONDS", "2"),
        ];
        self.spawn("api", "reel-api", &[], &env).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start all five stages, one process each.
    pub fn start_all(&mut self) {
        self.start_stages(1).expect("start the stage programs");
    }

    /// Start the five stages, `stitch_workers` processes of reel-stitch (0: start it
    /// yourself); their indices.
    pub fn start_stages(&mut self, stitch_workers: usize) -> Result<Vec<usize>> {
        let mut started = Vec::new();
        for stage in STAGES {
            let n = if stage == "stitch" { stitch_workers } else { 1 };
            for _ in 0..n {
                started.push(self.spawn(stage, &format!("reel-{stage}"), &[], &[])?);
            }
        }
        Ok(started)
    }

    /// Wait until each of `programs` logged `worker started` (pulls from its
    /// subscription); fails when one exits first or `timeout` passes.
    pub async fn wait_started(&self, programs: &[usize], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut ready = 0;
            for p in programs.iter().map(|&n| &self.programs[n]) {
                if p.exited() {
                    bail!("reel-{} exited at start; its log:\n{}", p.name, process::tail(&p.log, 10));
                }
                if p.log_text().contains("\"worker started\"") {
                    ready += 1;
                }
            }
            if ready == programs.len() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the programs did not start within {timeout:?} (logs in {})", self.dir().display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send `signal` to program `n` (by its PID).
    pub fn signal(&mut self, n: usize, signal: i32) {
        let pid = self.programs[n].pid() as libc::pid_t;
        // SAFETY: plain kill(2) of our own child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGKILL program `n` (and its process group) and reap it.
    pub fn kill(&mut self, n: usize) {
        let p = &mut self.programs[n];
        if !p.reaped {
            process::kill_and_reap(&mut p.child);
            p.reaped = true;
        }
    }

    /// SIGTERM program `n`, wait up to `grace` for it to end, then SIGKILL its group;
    /// its exit status.
    pub async fn stop(&mut self, n: usize, grace: Duration) -> Option<ExitStatus> {
        self.signal(n, libc::SIGTERM);
        let start = Instant::now();
        let p = &mut self.programs[n];
        while start.elapsed() < grace {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.reaped = true;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process::kill_and_reap(&mut p.child);
        p.reaped = true;
        None
    }

    /// Start program `n` again (same name and arguments) as a new program; its index.
    /// The old one should have ended ([`Cluster::kill`], [`Cluster::stop`]).
    pub fn restart(&mut self, n: usize) -> usize {
        let (name, args) = (self.programs[n].name.clone(), self.programs[n].args.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match name.as_str() {
            "api" => panic!("restart reel-api with start_api (it needs its port)"),
            stage => self.start_program(stage, &args),
        }
    }

    /// Upload a local file into the cluster's bucket.
    pub async fn upload(&self, local: &Path, key: &str) {
        let store = self.emulators.store(&self.bucket).await;
        reel_runtime::store::put_file(&store, key, local, reel_runtime::PutMode::Overwrite).await.expect("upload");
    }

    /// Download an object of the bucket to a local file; whether it was there.
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
        let watch = self.watch.clone().expect("the cluster has no watch subscription (ClusterOptions::watch)");
        loop {
            let batch = self.bus.receive(&watch, 100, Duration::from_millis(300)).await.expect("receive");
            if batch.is_empty() {
                return;
            }
            for d in batch {
                let _ = self.bus.ack(&watch, &d.ack_id).await;
                if let Ok(e) = binding::decode(&d.message) {
                    self.seen.push(e);
                }
            }
        }
    }

    /// Wait until an event of type `ty` for `job` shows up (or `job` is None: any job);
    /// panics with the events seen and the programs' logs after `timeout`.
    pub async fn wait_for(&mut self, job: Option<&str>, ty: &str, timeout: Duration) -> Event {
        let start = Instant::now();
        loop {
            self.pull().await;
            let wanted = |e: &&Event| e.ty() == ty && job.is_none_or(|j| envelope::job_id_of(e).as_deref() == Some(j));
            if let Some(e) = self.seen.iter().find(wanted) {
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
                    .map(|p| format!("\n--- {} ---\n{}", p.name, tail_chars(&p.log_text(), 3000)))
                    .collect();
                panic!("no {ty} for {job:?} within {timeout:?}; seen: {types:#?}{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Leave the programs running (a cluster started with [`Lifetime::Detached`] in a
    /// given directory): each one's PID goes to `DIR/NAME.pid`, for
    /// [`crate::process::stop_recorded`]. The emulators are the caller's to detach
    /// ([`Emulators::detach`]). Returns `(name, pid)` of each.
    pub fn detach(mut self) -> Result<Vec<(String, u32)>> {
        if matches!(self.dir, Dir::Temporary(_)) || self.lifetime != Lifetime::Detached {
            bail!("only a detached cluster in a given directory can be left running");
        }
        let mut recorded = Vec::new();
        for p in std::mem::take(&mut self.programs) {
            let name = if p.instance == 0 { p.name.clone() } else { format!("{}-{}", p.name, p.instance) };
            std::fs::write(self.dir().join(format!("{name}.pid")), format!("{}\n", p.pid()))?;
            recorded.push((name, p.pid()));
            // Dropping a `Child` neither kills nor waits for it.
            drop(p);
        }
        Ok(recorded)
    }
}

/// The last `n` bytes of `text` (at a character boundary).
fn tail_chars(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.programs {
            if !p.reaped {
                process::kill_and_reap(&mut p.child);
                p.reaped = true;
            }
        }
    }
}
