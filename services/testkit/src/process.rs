//! Child processes that are stopped by PID, never by name.
//!
//! Every child runs in its own process group (so a signal to `-PID` reaches it and what
//! it forked, and nothing else) with its output in a log file. A child that must not
//! outlive the test ([`Lifetime::WithThisProcess`]) is started with
//! `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills it when this process ends, however it
//! ends (normal exit, panic, abort, SIGKILL) — also when the value that owns it is a
//! `static` and never dropped. The death signal fires when the *thread* that forked the
//! child exits, so those children are forked by one spawner thread that lives as long as
//! the process. A [`Lifetime::Detached`] child (`reel-cluster start`) outlives us and is
//! stopped later from its recorded PID ([`stop_recorded`]).
//!
//! With `REEL_EMULATOR_PID_LOG=FILE`, every spawned PID is appended to FILE
//! ([`record_pid`]), so a script can check afterwards that none is left running.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a child may outlive the process that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when this process ends (tests, the bench).
    WithThisProcess,
    /// Left running; stopped later by its recorded PID (`reel-cluster`).
    Detached,
}

/// Variables of the caller's environment a child must not inherit: the caller may be
/// configured for another cluster (`eval "$(scripts/cluster.sh env)"`).
pub fn is_cluster_setting(name: &str) -> bool {
    name.starts_with("REEL_")
        || name.starts_with("GOOGLE_")
        || matches!(
            name,
            "PUBSUB_EMULATOR_HOST"
                | "STORAGE_EMULATOR_HOST"
                | "TEMP_DIR"
                | "LOG_LEVEL"
                | "XDG_STATE_HOME"
                | "PORT"
                | "VIDEO_STORAGE_BUCKET"
                | "JOB_TIMEOUT_MINUTES"
                | "MAX_RETRY_ATTEMPTS"
                | "METRICS_ENABLED"
        )
}

/// `program` with none of the caller's cluster settings ([`is_cluster_setting`]) in its
/// environment.
pub fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_cluster_setting(&name) {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// Start `command` in its own process group, stdin from /dev/null, stdout and stderr to
/// `log` (created or truncated).
pub fn spawn(mut command: Command, log: &Path, lifetime: Lifetime) -> io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    match lifetime {
        Lifetime::Detached => command.spawn(),
        Lifetime::WithThisProcess => {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: only async-signal-safe calls between fork and exec.
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
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Fork `command` from the spawner thread, which never exits (see the module docs).
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("reel-testkit-spawner".into())
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
            .expect("spawn the test kit's spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let gone = || io::Error::other("the test kit's spawner thread is gone");
    sender.lock().unwrap_or_else(|e| e.into_inner()).send((command, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

/// Send `signal` to the process group that `pid` leads (and to `pid` itself, in case it
/// left its group).
pub fn signal_group(pid: u32, signal: i32) {
    let pid = pid as libc::pid_t;
    // SAFETY: plain kill(2) of a process group we created, and of its leader.
    unsafe {
        libc::kill(-pid, signal);
        libc::kill(pid, signal);
    }
}

/// Kill a child's process group and reap the child.
pub fn kill_and_reap(child: &mut Child) {
    signal_group(child.id(), libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether `pid` has exited (gone, or a zombie waiting to be reaped). Does not reap it,
/// so a caller can still collect its rusage with `wait4`.
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(true),
        Err(_) => true,
    }
}

/// With `REEL_EMULATOR_PID_LOG` set, append `PID NAME PORT` to that file.
pub fn record_pid(pid: u32, name: &str, port: u16) {
    use std::io::Write;
    if let Some(path) = std::env::var_os("REEL_EMULATOR_PID_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{pid} {name} {port}");
        }
    }
}

/// The last `lines` lines of a log file.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stop the processes recorded in `DIR/*.pid` (each leads its own group): SIGTERM to the
/// group, SIGKILL after `grace`; the pid files are removed. Returns `(name, pid)` of each.
pub fn stop_recorded(dir: &Path, grace: Duration) -> io::Result<Vec<(String, u32)>> {
    let mut stopped = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(stopped);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let pid = std::fs::read_to_string(&path)?.trim().parse::<u32>().ok();
        if let Some(pid) = pid.filter(|p| *p > 1 && !exited(*p)) {
            signal_group(pid, libc::SIGTERM);
            let start = Instant::now();
            while !exited(pid) && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !exited(pid) {
                signal_group(pid, libc::SIGKILL);
            }
            stopped.push((name, pid));
        }
        std::fs::remove_file(&path)?;
    }
    Ok(stopped)
}
