//! Running a contender and measuring it: wall time, peak RSS.
//!
//! * `wait4(2)` gives the wall clock end and `ru_maxrss`. On Linux a reaped child's
//!   `ru_maxrss` is the largest of the child and every descendant it reaped, so for
//!   `reel` it is "reel or its largest ffmpeg", not reel alone.
//! * reel's own peak is therefore read from `/proc/PID/status` (`VmHWM`, the high-water
//!   mark of its resident set, which only grows) by a thread that polls it every 10 ms
//!   while the main thread blocks in `wait4`; the last value read is the peak (at most
//!   the last 10 ms before exit are missed).
//! * ffmpeg/ffprobe started by reel are measured by pointing `REEL_FFMPEG` /
//!   `REEL_FFPROBE` at a wrapper script that runs `reel-bench __wrap`, which runs the
//!   real tool, `wait4`s it and appends one JSON line per run (tool, arguments, start,
//!   wall, peak RSS) to a log. That adds ~1–2 ms per spawn, so wrapped runs are only
//!   used for RSS and the profile, never for the timed medians.

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One measured process (or sequence of processes).
#[derive(Debug, Clone)]
pub struct Measured {
    /// Spawn to reap (first spawn to last reap for a sequence).
    pub wall: Duration,
    /// `ru_maxrss` from `wait4`, KiB: the process or its largest reaped descendant
    /// (the largest over a sequence).
    pub tree_maxrss_kib: u64,
    /// The process's own `VmHWM`, KiB, when it was sampled (largest over a sequence).
    pub own_hwm_kib: Option<u64>,
    /// Wall-clock time of the (first) spawn, nanoseconds since the Unix epoch.
    pub started_unix_ns: u128,
    /// CPU time (user + system) of the process and every descendant it reaped (the sum
    /// over a sequence). Less sensitive than wall time to other work on the machine.
    pub cpu: Duration,
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// `VmHWM` of a live process, KiB (`None` once it is gone or a zombie).
pub fn read_hwm_kib(pid: i32) -> Option<u64> {
    read_status_kib(pid, "VmHWM")
}

/// A `kB` field of a live process's `/proc/PID/status` (`VmHWM`, `VmRSS`), KiB (`None`
/// once it is gone or a zombie).
pub fn read_status_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut value = None;
    for line in text.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            // A zombie has released its memory and no longer reports its sizes.
            if state.trim_start().starts_with('Z') {
                return None;
            }
        }
        if let Some(v) = line.strip_prefix(field).and_then(|v| v.strip_prefix(':')) {
            value = v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    value
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// Reaps `pid`, returning its exit status, `ru_maxrss` (KiB) and CPU time (user + system).
fn wait4(pid: i32) -> Result<(ExitStatus, u64, Duration)> {
    let mut status: libc::c_int = 0;
    // SAFETY: plain syscall with valid out-pointers; rusage is plain old data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above; `pid` is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(err).context("wait4");
    }
    Ok((ExitStatus::from_raw(status), usage.ru_maxrss.max(0) as u64, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// Reaps `pid` if it has exited (`wait4` with `WNOHANG`): its exit status, `ru_maxrss`
/// (KiB: it or its largest reaped descendant) and CPU time (user + system, reaped
/// descendants included); `None` while it runs.
pub fn try_wait4(pid: i32) -> Result<Option<(ExitStatus, u64, Duration)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: plain syscall with valid out-pointers; rusage is plain old data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above; `pid` is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == 0 {
            return Ok(None);
        }
        if r == pid {
            return Ok(Some((
                ExitStatus::from_raw(status),
                usage.ru_maxrss.max(0) as u64,
                tv(usage.ru_utime) + tv(usage.ru_stime),
            )));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(err).context("wait4");
    }
}

/// Runs `cmd` to its end (stdin null, stdout to null unless set, stderr to `stderr_log`)
/// and measures it. Fails when it exits unsuccessfully (with the tail of its stderr).
pub fn run(cmd: &mut Command, sample_own: bool, stderr_log: &Path) -> Result<Measured> {
    let err_file = std::fs::File::create(stderr_log).with_context(|| format!("creating {}", stderr_log.display()))?;
    cmd.stdin(Stdio::null()).stderr(Stdio::from(err_file));
    let started_unix_ns = unix_ns();
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as i32;
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_own.then(|| {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match read_hwm_kib(pid) {
                    Some(kib) => {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    });
    let waited = wait4(pid);
    let wall = start.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    drop(child);
    let (status, tree_maxrss_kib, cpu) = waited?;
    if !status.success() {
        let text = std::fs::read(stderr_log).unwrap_or_default();
        let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(2000)..]).to_string();
        bail!("{:?} failed ({status}): {tail}", cmd.get_program());
    }
    let own = peak.load(Ordering::Relaxed);
    Ok(Measured { wall, tree_maxrss_kib, own_hwm_kib: (sample_own && own > 0).then_some(own), started_unix_ns, cpu })
}

/// Runs `cmds` one after another as one contender: wall from the first spawn to the
/// last reap, peak RSS the largest of them.
pub fn run_sequence(cmds: &mut [Command], sample_own: bool, stderr_log: &Path) -> Result<Measured> {
    let start = Instant::now();
    let started_unix_ns = unix_ns();
    let (mut tree, mut own, mut cpu) = (0, None::<u64>, Duration::ZERO);
    for cmd in cmds.iter_mut() {
        let m = run(cmd, sample_own, stderr_log)?;
        tree = tree.max(m.tree_maxrss_kib);
        cpu += m.cpu;
        own = match (own, m.own_hwm_kib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(Measured { wall: start.elapsed(), tree_maxrss_kib: tree, own_hwm_kib: own, started_unix_ns, cpu })
}

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// One run of a wrapped tool, as `__wrap` logs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolRun {
    /// `ffmpeg` or `ffprobe`.
    pub tool: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Spawn time, ns since the Unix epoch.
    pub start_unix_ns: u128,
    /// Spawn to reap, ns.
    pub wall_ns: u128,
    /// `ru_maxrss`, KiB.
    pub maxrss_kib: u64,
    /// Exit code, or -signal.
    pub code: i32,
}

/// `reel-bench __wrap TOOL LOG ARGS...`: run TOOL with ARGS (stdio inherited), log
/// a [`ToolRun`] line to LOG, exit with its code. Returns the exit code to use.
pub fn wrap_main(args: &[OsString]) -> i32 {
    let (Some(tool), Some(log)) = (args.first(), args.get(1)) else {
        eprintln!("usage: reel-bench __wrap TOOL LOG [ARGS...]");
        return 2;
    };
    let rest = &args[2..];
    let start_unix_ns = unix_ns();
    let start = Instant::now();
    let child = match Command::new(tool).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reel-bench wrap: cannot start {}: {e}", Path::new(tool).display());
            return 127;
        }
    };
    let (status, maxrss_kib, _) = match wait4(child.id() as i32) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("reel-bench wrap: {e:#}");
            return 125;
        }
    };
    let wall_ns = start.elapsed().as_nanos();
    let code = status.code().unwrap_or_else(|| -status.signal().unwrap_or(0));
    let record = ToolRun {
        tool: Path::new(tool).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        args: rest.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        start_unix_ns,
        wall_ns,
        maxrss_kib,
        code,
    };
    if let Ok(mut line) = serde_json::to_vec(&record) {
        line.push(b'\n');
        // One write on an O_APPEND file: lines from concurrent runs do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(&line);
        }
    }
    if code >= 0 {
        code
    } else {
        128 - code
    }
}

/// Writes `dir/NAME-wrap` scripts for ffmpeg and ffprobe that log to `log`; returns
/// (ffmpeg wrapper, ffprobe wrapper).
pub fn write_wrappers(
    dir: &Path,
    bench_exe: &Path,
    ffmpeg: &Path,
    ffprobe: &Path,
    log: &Path,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let quote = |p: &Path| -> Result<String> {
        let b = p.as_os_str().as_bytes();
        if b.contains(&b'\'') || b.contains(&b'\n') {
            bail!("path {} cannot be quoted for sh", p.display());
        }
        Ok(format!("'{}'", p.display()))
    };
    let mut out = Vec::new();
    for (name, tool) in [("ffmpeg", ffmpeg), ("ffprobe", ffprobe)] {
        let path = dir.join(format!("{name}-wrap"));
        let script = format!("#!/bin/sh\nexec {} __wrap {} {} \"$@\"\n", quote(bench_exe)?, quote(tool)?, quote(log)?);
        std::fs::write(&path, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        out.push(path);
    }
    Ok((out[0].clone(), out[1].clone()))
}

/// Reads a `__wrap` log (missing file: empty).
pub fn read_tool_log(log: &Path) -> Vec<ToolRun> {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}
