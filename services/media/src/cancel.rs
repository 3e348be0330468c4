//! Cancellation and deadlines for long ffmpeg runs.

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A cheap-to-clone cancellation flag. Cancelling any clone cancels them all;
/// a running ffmpeg watching it is stopped and the call returns
/// [`MediaError::Cancelled`](crate::MediaError::Cancelled).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(CancellationToken);

impl CancelToken {
    /// A fresh, not-yet-cancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels this token and every clone of it (and every child token).
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether [`cancel`](Self::cancel) has been called.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once the token is cancelled (immediately if it already is).
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }

    /// A token cancelled when this one is, but which can also be cancelled on its own.
    pub fn child_token(&self) -> Self {
        Self(self.0.child_token())
    }

    /// The underlying tokio-util token, for `select!` with other tokio-util users.
    pub fn as_cancellation_token(&self) -> &CancellationToken {
        &self.0
    }
}

impl From<CancellationToken> for CancelToken {
    fn from(t: CancellationToken) -> Self {
        Self(t)
    }
}

/// How to run one ffmpeg invocation: when to give up.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop ffmpeg and return `Cancelled` when this fires.
    pub cancel: CancelToken,
    /// Stop ffmpeg and return `Timeout` when this instant passes.
    pub deadline: Option<Instant>,
}

impl RunOptions {
    /// No cancellation, no deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline to `timeout` from now.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// Sets the cancel token.
    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.cancel = cancel;
        self
    }
}
