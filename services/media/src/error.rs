//! The one error type of this crate.

use std::io;

/// What can go wrong when running ffmpeg or ffprobe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// `ffmpeg` or `ffprobe` could not be started because it is not installed
    /// (or not on `PATH`, or not where `REEL_FFMPEG` / `REEL_FFPROBE` point).
    #[error("{0} is not installed or not on PATH")]
    NotInstalled(String),

    /// The input is not a usable video: ffprobe cannot read it, it has no video
    /// stream, no or zero duration, or it is truncated. Permanent.
    #[error("corrupt or unsupported media: {reason}")]
    Corrupt {
        /// Human-readable reason.
        reason: String,
    },

    /// The inputs of [`concat_copy`](crate::concat_copy) cannot be joined by stream
    /// copy (their codec headers differ, so the joined file would mis-decode).
    /// Permanent for these inputs: re-encode them instead.
    #[error("cannot stream-copy these inputs: {reason}")]
    Incompatible {
        /// Which input differs from the first, and how.
        reason: String,
    },

    /// The [`CancelToken`](crate::CancelToken) fired; the child process was stopped.
    #[error("cancelled")]
    Cancelled,

    /// The deadline passed (or ffprobe's own 30 s limit); the child process was stopped.
    #[error("timed out")]
    Timeout,

    /// The disk is full (`ENOSPC`, "No space left on device"). Transient.
    #[error("no space left on device: {0}")]
    DiskFull(String),

    /// ffmpeg exited unsuccessfully for another reason.
    #[error("ffmpeg failed ({status}): {stderr_tail}")]
    Failed {
        /// The exit status as text, e.g. `exit status: 1` or `signal: 9 (SIGKILL)`.
        status: String,
        /// The last few KB of ffmpeg's stderr.
        stderr_tail: String,
    },

    /// Any other I/O error (missing input file, permissions, ...).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl MediaError {
    /// Whether retrying the same operation later may succeed.
    ///
    /// Transient: [`DiskFull`](Self::DiskFull), [`Timeout`](Self::Timeout), a
    /// [`Failed`](Self::Failed) whose process was killed by a signal (OOM killer,
    /// an operator), and I/O errors other than not-found / permission / invalid-input.
    /// Everything else is permanent: retrying the same input gives the same answer.
    /// [`Cancelled`](Self::Cancelled) is not transient: somebody asked for it.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::DiskFull(_) | Self::Timeout => true,
            Self::Failed { status, .. } => status.contains("signal"),
            Self::Io(e) => !matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::Unsupported
            ),
            Self::NotInstalled(_) | Self::Corrupt { .. } | Self::Incompatible { .. } | Self::Cancelled => false,
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        Self::Corrupt { reason: reason.into() }
    }

    /// Maps an I/O error from our own file handling, turning ENOSPC into `DiskFull`.
    pub(crate) fn from_io(e: io::Error, context: &str) -> Self {
        if is_enospc(&e) {
            Self::DiskFull(format!("{context}: {e}"))
        } else {
            Self::Io(e)
        }
    }
}

pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Whether ffmpeg's stderr says the disk is full.
pub(crate) fn stderr_says_disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("ENOSPC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        assert!(MediaError::DiskFull("x".into()).is_transient());
        assert!(MediaError::Timeout.is_transient());
        assert!(!MediaError::Cancelled.is_transient());
        assert!(!MediaError::corrupt("x").is_transient());
        assert!(!MediaError::Incompatible { reason: "x".into() }.is_transient());
        assert!(!MediaError::NotInstalled("ffmpeg".into()).is_transient());
        assert!(!MediaError::Failed { status: "exit status: 1".into(), stderr_tail: String::new() }.is_transient());
        assert!(MediaError::Failed { status: "signal: 9 (SIGKILL)".into(), stderr_tail: String::new() }.is_transient());
        assert!(!MediaError::Io(io::Error::from(io::ErrorKind::NotFound)).is_transient());
        assert!(MediaError::Io(io::Error::from(io::ErrorKind::ConnectionReset)).is_transient());
        let e = MediaError::from_io(io::Error::from_raw_os_error(28), "writing list");
        assert!(matches!(e, MediaError::DiskFull(_)), "{e:?}");
        assert!(stderr_says_disk_full("av_interleaved_write_frame(): No space left on device"));
    }
}
