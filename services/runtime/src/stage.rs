//! A stage is one function: `handle(event) -> Outcome`.
//!
//! The handler decides; the worker ([`crate::worker`]) acts. A handler never acks,
//! publishes or sleeps for a retry itself, so it can be called from a test with no bus.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reel_events::envelope;
use reel_events::payload::JobRef;
use reel_events::{AttributesReader, ErrorType, Event, Stage};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::location::StoreResolver;
use crate::store::Store;

/// What went wrong, in the contract's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The contract `errorType`.
    pub error_type: ErrorType,
    /// For a person: what failed and, where possible, what to do.
    pub message: String,
    /// The job to attribute the failure to, when the handler knows better than the
    /// incoming event (validate derives ids for requests and manifests).
    pub job: Option<JobRef>,
}

impl Failure {
    /// A failure of `error_type` with `message`.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Failure {
        Failure { error_type, message: message.into(), job: None }
    }

    /// Attribute the failure to `job`.
    pub fn for_job(mut self, job: JobRef) -> Failure {
        self.job = Some(job);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// What a handler decided. The worker turns it into bus actions:
///
/// | outcome | worker does |
/// | --- | --- |
/// | `Emit(events)` | publish each event to the event log and to its work topic, then ack |
/// | `Skip(why)` | ack |
/// | `Retry(failure)` | nack (redelivery after backoff); after `MAX_RETRY_ATTEMPTS` publish `job.failed` (retryable), dead-letter the message, ack |
/// | `Reject(failure)` | publish `job.failed`, clean the job's workspace, ack |
#[derive(Debug)]
pub enum Outcome {
    /// The work is done; these events follow.
    Emit(Vec<Event>),
    /// Nothing to do (a duplicate, or not for us).
    Skip(String),
    /// A transient failure: try again later.
    Retry(Failure),
    /// A permanent failure: the job fails.
    Reject(Failure),
}

/// One stage's logic.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Which stage this is.
    fn stage(&self) -> Stage;

    /// Event types this stage consumes; anything else is dead-lettered as misrouted.
    fn accepts(&self) -> Vec<&'static str> {
        vec![self.stage().input_type()]
    }

    /// Do the stage's work for one event.
    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome;
}

/// Everything a handler may use while working on one event.
#[derive(Clone)]
pub struct Context {
    /// The stage.
    pub stage: Stage,
    /// Settings.
    pub settings: Arc<Settings>,
    /// The work store, where jobs' intermediate files live under `jobs/{jobId}/`.
    pub work: Arc<dyn Store>,
    /// Resolves clip and output locations to stores.
    pub resolver: Arc<dyn StoreResolver>,
    /// Fires when the work must stop: shutdown, job cancelled, or deadline.
    pub cancel: CancellationToken,
    /// Pub/Sub's delivery attempt of the event (1 first).
    pub delivery_attempt: u32,
    /// The job the event belongs to.
    pub job: JobRef,
    /// A scratch directory for this delivery, removed by the worker afterwards.
    pub scratch: PathBuf,
    /// Reports progress; the worker publishes `job.progress` from it.
    pub progress: ProgressReporter,
}

impl Context {
    /// A context outside the worker (tests, tools): no cancellation, first delivery,
    /// scratch space under the settings' temp dir.
    pub fn standalone(
        stage: Stage,
        settings: Arc<Settings>,
        work: Arc<dyn Store>,
        resolver: Arc<dyn StoreResolver>,
        job: JobRef,
    ) -> Context {
        let scratch = settings.temp_dir.join(format!("{}-{}", stage, uuid::Uuid::new_v4().simple()));
        let _ = std::fs::create_dir_all(&scratch);
        Context {
            stage,
            settings,
            work,
            resolver,
            cancel: CancellationToken::new(),
            delivery_attempt: 1,
            job,
            scratch,
            progress: ProgressReporter::default(),
        }
    }

    /// The CloudEvent source of this stage's events.
    pub fn source(&self) -> String {
        envelope::source_for(self.stage.as_str())
    }

    /// The job's prefix in the work store.
    pub fn work_prefix(&self) -> String {
        work_prefix(&self.job.job_id)
    }

    /// Build an event of `ty` about this job, with a deterministic id (so redoing the
    /// work re-emits the same event) and the trace context of `cause`.
    pub fn event<T: Serialize>(&self, cause: &Event, ty: &str, retry_attempt: u32, data: &T) -> Event {
        let id = envelope::deterministic_id(&self.job.job_id, retry_attempt, ty, self.stage.as_str());
        let mut event = envelope::build(ty, &self.source(), id, &self.job.job_id, Utc::now(), data)
            .expect("reel payloads always build valid events");
        envelope::carry_trace(cause, &mut event);
        event
    }
}

/// The prefix of a job's files in the work store.
pub fn work_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/")
}

/// The key of a job's cancel marker in the work store.
pub fn cancel_marker_key(job_id: &str) -> String {
    format!("control/cancel/{job_id}")
}

/// Shared progress of one delivery. Cheap to clone.
#[derive(Clone, Default)]
pub struct ProgressReporter {
    inner: Arc<Mutex<ProgressState>>,
}

/// What the reporter holds.
#[derive(Debug, Clone, Default)]
pub struct ProgressState {
    /// Progress of the stage, 0–100.
    pub stage_progress: f64,
    /// Bumped on every change, so the publisher knows something is new.
    pub version: u64,
    /// When the job was accepted (for the ETA).
    pub accepted_at: Option<DateTime<Utc>>,
}

impl ProgressReporter {
    /// Record that the stage is `percent` done (0–100). Never goes backwards.
    pub fn report(&self, percent: f64) {
        let mut state = self.inner.lock().expect("progress lock");
        let percent = percent.clamp(0.0, 100.0);
        if percent > state.stage_progress {
            state.stage_progress = percent;
            state.version += 1;
        }
    }

    /// A snapshot.
    pub fn snapshot(&self) -> ProgressState {
        self.inner.lock().expect("progress lock").clone()
    }

    pub(crate) fn set_accepted_at(&self, at: Option<DateTime<Utc>>) {
        self.inner.lock().expect("progress lock").accepted_at = at;
    }
}

/// Decode an event's payload, or the `Reject(invalid_request)` outcome that explains why
/// it cannot be.
pub fn decode_payload<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, Outcome> {
    envelope::decode(event).map_err(|e| {
        Outcome::Reject(Failure::new(ErrorType::InvalidRequest, format!("malformed {} payload: {e}", event.ty())))
    })
}

/// Map a store error to the outcome the error matrix asks for: transient → retry,
/// permission → fail fast, not found → fail, disk full → retry as resource_exhausted.
pub fn store_failure(what: &str, err: &crate::store::StoreError) -> Outcome {
    use crate::store::StoreError as E;
    let message = format!("{what}: {err}");
    match err {
        E::Transient(_) => Outcome::Retry(Failure::new(ErrorType::Internal, message)),
        E::DiskFull(_) => Outcome::Retry(Failure::new(ErrorType::ResourceExhausted, message)),
        E::PermissionDenied(_) => Outcome::Reject(Failure::new(ErrorType::PermissionDenied, message)),
        E::NotFound(_) => Outcome::Reject(Failure::new(ErrorType::NotFound, message)),
        E::InvalidKey(..) => Outcome::Reject(Failure::new(ErrorType::InvalidRequest, message)),
        _ => Outcome::Retry(Failure::new(ErrorType::Internal, message)),
    }
}

/// Whether `id` is a valid job or project id: 1–128 characters of `A-Z a-z 0-9 _ - .`
/// (safe in object names, attributes, ordering keys and logs).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Check a clip or output path of a job of `project_id` against the trust boundary:
/// it must parse ([`Location::parse`]: no `..`, no ffmpeg protocol, no other scheme),
/// lie inside one of the allowed roots (where `{projectId}` in a root stands for the
/// job's project, so `gs://uploads/projects/{projectId}` confines each project to its
/// own prefix), and not inside the work root (locks, completion records, the API
/// snapshot and other jobs' workspaces live there). validate checks every request;
/// download and upload check again before they read or write, so an event put on a
/// work topic past validate cannot reach further.
pub fn check_job_location(
    settings: &Settings,
    what: &str,
    raw: &str,
    project_id: &str,
) -> Result<crate::location::Location, Failure> {
    use crate::location::{parse_root, Location};
    let location =
        Location::parse(raw, None).map_err(|e| Failure::new(ErrorType::InvalidRequest, format!("{what}: {e}")))?;
    let roots: Vec<Location> = settings
        .effective_allowed_roots()
        .iter()
        .filter(|r| !r.contains("{projectId}") || valid_id(project_id))
        .filter_map(|r| parse_root(&r.replace("{projectId}", project_id)).ok())
        .collect();
    let denied = |why: String| Failure::new(ErrorType::PermissionDenied, format!("{what} {raw:?} {why}"));
    if !roots.iter().any(|root| location.is_within(root)) {
        let allowed: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        return Err(denied(format!(
            "is outside the allowed locations ({})",
            if allowed.is_empty() { "none configured".into() } else { allowed.join(", ") }
        )));
    }
    if let Ok(work) = parse_root(&settings.effective_work_root()) {
        if location.is_within(&work) || location == work {
            return Err(denied(format!("is inside the work area ({work}), which only the stages may use")));
        }
    }
    Ok(location)
}

/// The key under which finalize records a completed job (holding its `job.completed`
/// event), so a redelivered or repeated request does no work twice.
pub fn completed_marker_key(job_id: &str) -> String {
    format!("control/completed/{job_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn kind(outcome: Outcome) -> (&'static str, ErrorType) {
        match outcome {
            Outcome::Retry(f) => ("retry", f.error_type),
            Outcome::Reject(f) => ("reject", f.error_type),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The error matrix for storage, decided in one place.
    #[test]
    fn storage_errors_follow_the_matrix() {
        assert_eq!(kind(store_failure("x", &StoreError::Transient("timeout".into()))), ("retry", ErrorType::Internal));
        assert_eq!(
            kind(store_failure("x", &StoreError::PermissionDenied("403".into()))),
            ("reject", ErrorType::PermissionDenied)
        );
        assert_eq!(
            kind(store_failure("x", &StoreError::DiskFull("ENOSPC".into()))),
            ("retry", ErrorType::ResourceExhausted)
        );
        assert_eq!(kind(store_failure("x", &StoreError::NotFound("k".into()))), ("reject", ErrorType::NotFound));
        assert_eq!(
            kind(store_failure("x", &StoreError::InvalidKey("k".into(), "..".into()))),
            ("reject", ErrorType::InvalidRequest)
        );
    }

    /// Local disk errors are classified once, where they happen.
    #[test]
    fn local_disk_errors_are_classified() {
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(matches!(StoreError::from_io("write", enospc), StoreError::DiskFull(_)));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(StoreError::from_io("open", denied), StoreError::PermissionDenied(_)));
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(StoreError::from_io("read", timeout).is_transient());
    }
}
