//! The one error type of this crate, and the one place it is sorted into retry or reject.

use crate::config::LimitExceeded;
use reel_events::{Classify, ErrorType, Verdict};
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// What can go wrong when reading a clip or running ffmpeg or ffprobe.
///
/// Each variant says what [`Classify::verdict`] makes of it: *retry* (the stage nacks
/// and the message is redelivered after a backoff, then dead-lettered) or *reject* (the
/// job fails at once), and under which `errorType`. The table is in docs/MEDIA.md.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// `ffmpeg` or `ffprobe` could not be started: not installed, not on `PATH`, or not
    /// where [`MediaConfig`](crate::MediaConfig) points. Retried as `internal`: an
    /// operator fixes the image, then replays the dead letter.
    #[error("{} is not installed or not on PATH", program.display())]
    NotInstalled {
        /// The program that could not be started, as configured.
        program: PathBuf,
        /// What starting it said (usually "No such file or directory").
        #[source]
        source: io::Error,
    },

    /// The input is not a usable video: ffprobe cannot read it, it has no video
    /// stream, no or zero duration, or it is truncated. Rejected as `corrupt_input`.
    #[error("corrupt or unsupported media: {reason}")]
    Corrupt {
        /// Human-readable reason.
        reason: String,
    },

    /// The clip is beyond the configured [`ProbeLimits`](crate::ProbeLimits): frames too
    /// large, a frame rate too high, or too long. Refused by the probe, before anything
    /// decodes it. Rejected as `invalid_request`: the same clip is refused every time.
    #[error("clip out of bounds: {0}")]
    OutOfBounds(#[from] LimitExceeded),

    /// The inputs of [`concat_copy`](crate::concat_copy) cannot be joined by stream
    /// copy (their codec headers differ, so the joined file would mis-decode).
    /// Callers re-encode instead; one that reaches the sorter is rejected as
    /// `internal` (retrying the same copy gives the same answer).
    #[error("cannot stream-copy these inputs: {reason}")]
    Incompatible {
        /// Which input differs from the first, and how.
        reason: String,
    },

    /// The [`CancelToken`](crate::CancelToken) fired; the child process was stopped.
    /// Retried as `internal`: the runtime's stop reason (cancel, shutdown, deadline)
    /// decides what really happens to the message.
    #[error("cancelled")]
    Cancelled,

    /// The deadline passed (or ffprobe's own 30 s limit): ffmpeg stalled or took too
    /// long, and was stopped. Retried as `timeout`.
    #[error("timed out")]
    Timeout,

    /// The disk is full (`ENOSPC`, "No space left on device"). Retried as
    /// `resource_exhausted` (the stage's scratch space is freed before the retry).
    #[error("no space left on device: {detail}")]
    DiskFull {
        /// Where it happened: ffmpeg's stderr, or what we were writing.
        detail: String,
        /// The I/O error, when our own write hit `ENOSPC` (none when ffmpeg said so).
        #[source]
        source: Option<io::Error>,
    },

    /// ffmpeg (or ffprobe) exited unsuccessfully, was killed, or exited 0 but left a
    /// broken output. Killed by SIGKILL (what the OOM killer sends): retried as
    /// `resource_exhausted`; by another signal: retried as `internal`; a non-zero exit
    /// (deterministic for the same input): rejected as `corrupt_input`; exit 0 with a
    /// broken output (the output could not be written out): retried as `internal`.
    #[error("ffmpeg failed ({status}): {stderr_tail}")]
    Failed {
        /// How the process ended.
        status: ExitStatus,
        /// The last few KB of ffmpeg's stderr.
        stderr_tail: String,
    },

    /// Any other I/O error. Not found: rejected as `not_found`; permission denied:
    /// rejected as `permission_denied`; invalid input or data, unsupported: rejected as
    /// `corrupt_input`; anything else: retried as `internal`.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Classify for MediaError {
    /// The media row of the error matrix (docs/MEDIA.md, "Sorting errors").
    fn verdict(&self) -> Verdict {
        match self {
            Self::Corrupt { .. } => Verdict::reject(ErrorType::CorruptInput),
            Self::OutOfBounds(_) => Verdict::reject(ErrorType::InvalidRequest),
            // Callers fall back to re-encode; reaching here is reel's own doing.
            Self::Incompatible { .. } => Verdict::reject(ErrorType::Internal),
            Self::Timeout => Verdict::retry(ErrorType::Timeout),
            Self::DiskFull { .. } => Verdict::retry(ErrorType::ResourceExhausted),
            Self::Failed { status, .. } => failed_verdict(status),
            Self::Cancelled | Self::NotInstalled { .. } => Verdict::retry(ErrorType::Internal),
            Self::Io(e) => match e.kind() {
                io::ErrorKind::NotFound => Verdict::reject(ErrorType::NotFound),
                io::ErrorKind::PermissionDenied => Verdict::reject(ErrorType::PermissionDenied),
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::Unsupported => {
                    Verdict::reject(ErrorType::CorruptInput)
                }
                _ => Verdict::retry(ErrorType::Internal),
            },
        }
    }
}

/// A process that ended badly: a signal says something happened *to* it (the OOM
/// killer sends SIGKILL), so trying again may work; an exit code is ffmpeg's own
/// verdict on the same input, which will not change.
fn failed_verdict(status: &ExitStatus) -> Verdict {
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(status) {
        return if signal == libc::SIGKILL {
            Verdict::retry(ErrorType::ResourceExhausted)
        } else {
            Verdict::retry(ErrorType::Internal)
        };
    }
    if status.success() {
        // ffmpeg said it succeeded but the output is broken: it could not write it out.
        Verdict::retry(ErrorType::Internal)
    } else {
        Verdict::reject(ErrorType::CorruptInput)
    }
}

impl MediaError {
    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        Self::Corrupt { reason: reason.into() }
    }

    /// Maps an I/O error from our own file handling, turning ENOSPC into `DiskFull`.
    pub(crate) fn from_io(e: io::Error, context: &str) -> Self {
        if is_enospc(&e) {
            Self::DiskFull { detail: context.to_string(), source: Some(e) }
        } else {
            Self::Io(e)
        }
    }

    /// `DiskFull` as ffmpeg reports it on stderr.
    pub(crate) fn disk_full_said(stderr: &str) -> Self {
        Self::DiskFull { detail: stderr.trim().to_string(), source: None }
    }
}

pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Whether ffmpeg's stderr says the disk is full.
pub(crate) fn stderr_says_disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("ENOSPC")
}

/// The stderr line that says an input broke off or could not be decoded part-way, if any.
/// ffmpeg goes on past such an input and exits 0 with less than it should have written
/// (a truncated clip, a damaged stretch of media data), which the normaliser would then
/// pad to the clip's length with its last good frame: a reel with a frozen stretch,
/// reported as fine.
pub(crate) fn stderr_says_input_broken(stderr: &str) -> Option<&str> {
    const MARKERS: [&str; 4] = [
        "partial file",
        "Error while decoding stream",
        "Invalid data found when processing input",
        "error reading header",
    ];
    stderr.lines().map(str::trim).find(|line| MARKERS.iter().any(|m| line.contains(m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::os::unix::process::ExitStatusExt;

    fn failed(raw_wait_status: i32) -> MediaError {
        MediaError::Failed { status: ExitStatus::from_raw(raw_wait_status), stderr_tail: String::new() }
    }

    fn io(kind: io::ErrorKind) -> MediaError {
        MediaError::Io(io::Error::from(kind))
    }

    /// Every row of the media error matrix (docs/MEDIA.md), as the stage will act on it.
    #[test]
    fn every_error_sorts_as_the_matrix_says() {
        use ErrorType::*;
        let retry = |t| (true, t);
        let reject = |t| (false, t);
        let rows: Vec<(&str, MediaError, (bool, ErrorType))> = vec![
            ("corrupt", MediaError::corrupt("moov atom not found"), reject(CorruptInput)),
            (
                "out of bounds",
                MediaError::OutOfBounds(LimitExceeded::FrameRate { fps: 1000.0, max: 240.0 }),
                reject(InvalidRequest),
            ),
            ("incompatible", MediaError::Incompatible { reason: "sps".into() }, reject(Internal)),
            ("timeout", MediaError::Timeout, retry(Timeout)),
            ("disk full (ffmpeg)", MediaError::disk_full_said("No space left on device"), retry(ResourceExhausted)),
            (
                "disk full (ours)",
                MediaError::from_io(io::Error::from_raw_os_error(28), "writing the list"),
                retry(ResourceExhausted),
            ),
            // The raw wait status of a process killed by signal N is N.
            ("SIGKILL (OOM killer)", failed(libc::SIGKILL), retry(ResourceExhausted)),
            ("SIGTERM", failed(libc::SIGTERM), retry(Internal)),
            ("SIGSEGV", failed(libc::SIGSEGV), retry(Internal)),
            // ... and of one that exited with code N is N << 8.
            ("exit 1", failed(1 << 8), reject(CorruptInput)),
            ("exit 0, broken output", failed(0), retry(Internal)),
            ("cancelled", MediaError::Cancelled, retry(Internal)),
            (
                "not installed",
                MediaError::NotInstalled { program: "ffmpeg".into(), source: io::Error::from(io::ErrorKind::NotFound) },
                retry(Internal),
            ),
            ("io not found", io(io::ErrorKind::NotFound), reject(NotFound)),
            ("io permission", io(io::ErrorKind::PermissionDenied), reject(PermissionDenied)),
            ("io invalid input", io(io::ErrorKind::InvalidInput), reject(CorruptInput)),
            ("io invalid data", io(io::ErrorKind::InvalidData), reject(CorruptInput)),
            ("io unsupported", io(io::ErrorKind::Unsupported), reject(CorruptInput)),
            ("io reset", io(io::ErrorKind::ConnectionReset), retry(Internal)),
            ("io interrupted", io(io::ErrorKind::Interrupted), retry(Internal)),
            ("io other", MediaError::Io(io::Error::other("EIO")), retry(Internal)),
        ];
        for (name, error, (retryable, error_type)) in rows {
            assert_eq!(error.verdict(), Verdict { error_type, retryable }, "{name}: {error}");
        }
    }

    #[test]
    fn errors_keep_their_source() {
        let e = MediaError::from_io(io::Error::from_raw_os_error(28), "writing the list");
        assert!(matches!(e, MediaError::DiskFull { .. }), "{e:?}");
        assert!(e.to_string().contains("writing the list"), "{e}");
        assert_eq!(e.source().and_then(|s| s.downcast_ref::<io::Error>()).and_then(io::Error::raw_os_error), Some(28));
        let e = MediaError::NotInstalled {
            program: "/opt/ffmpeg".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(e.to_string().contains("/opt/ffmpeg"), "{e}");
        assert!(e.source().is_some());
        assert!(stderr_says_disk_full("av_interleaved_write_frame(): No space left on device"));
    }
}
