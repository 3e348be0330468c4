//! Running ffmpeg / ffprobe: no shell, stdin closed, stderr tail kept, progress parsed,
//! and stopped (SIGTERM, then SIGKILL) on cancel or deadline.

use crate::error::{stderr_says_disk_full, stderr_says_input_broken, MediaError};
use crate::{MediaConfig, RunOptions};
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// How much of stderr to keep for error messages.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;
/// Upper bound on collected stdout (ffprobe JSON); more than this is an error.
const MAX_STDOUT_BYTES: usize = 16 * 1024 * 1024;
/// After SIGTERM, how long ffmpeg gets to exit before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Which tool to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    Ffmpeg,
    Ffprobe,
}

impl Tool {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Ffmpeg => "ffmpeg",
            Tool::Ffprobe => "ffprobe",
        }
    }

    /// The program to execute, as `config` names it.
    pub(crate) fn program(self, config: &MediaConfig) -> &Path {
        match self {
            Tool::Ffmpeg => config.ffmpeg(),
            Tool::Ffprobe => config.ffprobe(),
        }
    }
}

/// What to do with the child's stdout.
pub(crate) enum Stdout<'a> {
    /// Collect it (ffprobe JSON).
    Collect,
    /// Parse `-progress pipe:1` lines and report `out_time` seconds.
    Progress(&'a mut (dyn FnMut(f64) + Send)),
}

/// A finished run.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr_tail: String,
}

impl Finished {
    /// `Ok(self)` on exit status 0, otherwise the error the stderr suggests.
    ///
    /// ffmpeg 5.1 exits 0 when writing the trailer or closing the output fails
    /// (e.g. the disk filled up at the very end), so those stderr lines count as
    /// failure too.
    pub(crate) fn into_success(self) -> Result<Finished, MediaError> {
        if stderr_says_disk_full(&self.stderr_tail) {
            return Err(MediaError::disk_full_said(&self.stderr_tail));
        }
        let output_broken =
            ["Error writing trailer", "Error closing file"].iter().any(|m| self.stderr_tail.contains(m));
        if self.status.success() && !output_broken {
            return Ok(self);
        }
        Err(MediaError::Failed { status: self.status, stderr_tail: self.stderr_tail.trim().to_string() })
    }

    /// Refuse a run that read a broken input to the end without failing (see
    /// [`stderr_says_input_broken`]): `Corrupt`, naming ffmpeg's line.
    pub(crate) fn input_intact(self) -> Result<Finished, MediaError> {
        match stderr_says_input_broken(&self.stderr_tail) {
            Some(line) => Err(MediaError::corrupt(format!("the clip breaks off or is damaged mid-stream ({line})"))),
            None => Ok(self),
        }
    }
}

/// The error of a program that would not start: `NotInstalled` when it is not there.
pub(crate) fn spawn_error(program: &Path, e: std::io::Error) -> MediaError {
    if e.kind() == std::io::ErrorKind::NotFound {
        MediaError::NotInstalled { program: program.to_path_buf(), source: e }
    } else {
        MediaError::Io(e)
    }
}

/// Runs `tool` with `args` until it exits, the token is cancelled or the deadline passes.
///
/// Make the child die when this process does, however it does (SIGKILL, the OOM killer):
/// `kill_on_drop` covers every way a stage lets go of a child, but not the stage's own
/// sudden death, after which an orphaned ffmpeg would go on burning the instance's CPU
/// and memory for a job that is already redelivered elsewhere. Linux's parent-death
/// signal fires when the spawning thread exits; tokio's worker threads live as long as
/// the runtime, so for a stage program that is the process.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid,
        // _exit) are made, and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the signal was armed.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// `grace` is whether to send SIGTERM first (ffmpeg) or kill at once (ffprobe).
pub(crate) async fn run(
    config: &MediaConfig,
    tool: Tool,
    args: &[OsString],
    opts: &RunOptions,
    mut stdout_mode: Stdout<'_>,
) -> Result<Finished, MediaError> {
    if opts.cancel.is_cancelled() {
        return Err(MediaError::Cancelled);
    }
    if let Some(d) = opts.deadline {
        if std::time::Instant::now() >= d {
            return Err(MediaError::Timeout);
        }
    }
    tracing::debug!(tool = tool.name(), args = ?args, "running");
    let program = tool.program(config);
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
    let pid = child.id();
    let out = child.stdout.take().expect("stdout piped");
    let err = child.stderr.take().expect("stderr piped");

    let deadline = opts.deadline.map(tokio::time::Instant::from_std);
    let stopped: Result<Finished, MediaError> = {
        let work = async {
            let (out_res, err_tail, status) =
                tokio::join!(read_stdout(out, &mut stdout_mode), read_stderr_tail(err), child.wait());
            (out_res, err_tail, status)
        };
        tokio::pin!(work);
        tokio::select! {
            (out_res, stderr_tail, status) = &mut work => {
                let status = status?;
                let stdout = out_res?;
                return Ok(Finished { status, stdout, stderr_tail });
            }
            _ = opts.cancel.cancelled() => Err(MediaError::Cancelled),
            _ = sleep_until_opt(deadline) => Err(MediaError::Timeout),
        }
    };
    // Cancelled or timed out: stop the child before reporting.
    stop_child(&mut child, pid, tool == Tool::Ffmpeg).await;
    tracing::debug!(tool = tool.name(), ?pid, "stopped early");
    stopped
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM (when `graceful`), wait up to [`TERM_GRACE`], then SIGKILL; always reaps.
async fn stop_child(child: &mut Child, pid: Option<u32>, graceful: bool) {
    #[cfg(unix)]
    if graceful {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // Safety: plain syscall on a pid we spawned and have not yet reaped
            // (tokio reaps only in `wait`, which has not returned), so it cannot be reused.
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            if rc == 0 {
                if let Ok(Ok(_)) = tokio::time::timeout(TERM_GRACE, child.wait()).await {
                    return;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, graceful);
    let _ = child.kill().await;
}

async fn read_stdout(out: impl AsyncRead + Unpin, mode: &mut Stdout<'_>) -> Result<Vec<u8>, MediaError> {
    match mode {
        Stdout::Collect => {
            let mut buf = Vec::new();
            let mut limited = out.take(MAX_STDOUT_BYTES as u64 + 1);
            limited.read_to_end(&mut buf).await?;
            if buf.len() > MAX_STDOUT_BYTES {
                return Err(MediaError::corrupt("ffprobe output is unreasonably large"));
            }
            Ok(buf)
        }
        Stdout::Progress(cb) => {
            let mut lines = BufReader::new(out);
            let mut line = Vec::new();
            loop {
                line.clear();
                // Progress lines are short; cap them so a misbehaving child cannot grow memory.
                let n = (&mut lines).take(4096).read_until(b'\n', &mut line).await?;
                if n == 0 {
                    break;
                }
                if let Some(secs) = parse_progress_line(&String::from_utf8_lossy(&line)) {
                    cb(secs);
                }
            }
            Ok(Vec::new())
        }
    }
}

/// `out_time_us=` and `out_time_ms=` (both microseconds in ffmpeg 5) -> seconds.
pub(crate) fn parse_progress_line(line: &str) -> Option<f64> {
    let line = line.trim();
    let value = line.strip_prefix("out_time_us=").or_else(|| line.strip_prefix("out_time_ms="))?;
    let us: i64 = value.trim().parse().ok()?;
    Some((us.max(0) as f64) / 1_000_000.0)
}

/// Reads all of stderr, keeping only the last [`STDERR_TAIL_BYTES`].
async fn read_stderr_tail(mut err: impl AsyncRead + Unpin) -> String {
    let mut tail: Vec<u8> = Vec::with_capacity(STDERR_TAIL_BYTES * 2);
    let mut chunk = [0u8; 4096];
    loop {
        match err.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    let cut = tail.len() - STDERR_TAIL_BYTES;
                    tail.drain(..cut);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress_line("out_time_us=2026000\n"), Some(2.026));
        assert_eq!(parse_progress_line("out_time_ms=1500000"), Some(1.5));
        assert_eq!(parse_progress_line("out_time_us=-23000"), Some(0.0));
        assert_eq!(parse_progress_line("out_time_us=N/A"), None);
        assert_eq!(parse_progress_line("out_time=00:00:02.026000"), None);
        assert_eq!(parse_progress_line("frame=60"), None);
    }

    #[tokio::test]
    async fn stderr_tail_is_bounded() {
        let data = vec![b'x'; 10_000];
        let tail = read_stderr_tail(&data[..]).await;
        assert_eq!(tail.len(), STDERR_TAIL_BYTES);
    }
}
