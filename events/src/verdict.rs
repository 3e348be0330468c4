//! How a failure is sorted: retry later, or give up at once, and under which
//! `errorType`.
//!
//! Each dependency's error type (media's `MediaError`, the store's `StoreError`, the
//! bus's `BusError`) implements [`Classify`] once, in the crate that owns the error,
//! table-tested against the error matrix (docs/FAILURES.md). Stages never sort errors
//! themselves: they turn any classified error into an outcome with one call.
//!
//! ```
//! use reel_events::{Classify, ErrorType, Verdict};
//! struct Flaky;
//! impl Classify for Flaky {
//!     fn verdict(&self) -> Verdict { Verdict::retry(ErrorType::Internal) }
//! }
//! assert!(Flaky.verdict().retryable);
//! ```

use crate::ErrorType;

/// What to do about a failure: its contract `errorType`, and whether trying the same
/// work again later may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The contract `errorType` the job fails with if it does fail.
    pub error_type: ErrorType,
    /// `true`: transient, retry with backoff (then dead-letter). `false`: permanent,
    /// fail the job now.
    pub retryable: bool,
}

impl Verdict {
    /// A transient failure: retry with backoff.
    pub const fn retry(error_type: ErrorType) -> Verdict {
        Verdict { error_type, retryable: true }
    }

    /// A permanent failure: retrying the same input gives the same answer.
    pub const fn reject(error_type: ErrorType) -> Verdict {
        Verdict { error_type, retryable: false }
    }
}

/// An error that knows its own [`Verdict`]. Implemented once per dependency, in the crate
/// that owns the error.
pub trait Classify {
    /// The verdict for this error under the error matrix.
    fn verdict(&self) -> Verdict;
}
