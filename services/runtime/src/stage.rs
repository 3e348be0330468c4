//! A stage is one function: `handle(event) -> Outcome`.
//!
//! The handler decides; the worker ([`crate::worker`]) acts. A handler never acks,
//! publishes or sleeps for a retry itself, so it can be called from a test with no bus.

use async_trait::async_trait;
use chrono::Utc;
use reel_events::envelope;
use reel_events::payload::JobRef;
use reel_events::{AttributesReader, Classify, ErrorType, Event, Stage};
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

/// What a handler decided. Admission checks (deadline, cancel, completion, size, type)
/// and stop reasons (shutdown, deadline, cancel) are outcomes too, so one function, the
/// worker's `settle`, turns every one of them into bus actions:
///
/// | outcome | settle does |
/// | --- | --- |
/// | `Emit(events)` | publish each event to the event log and to its work topic, then ack |
/// | `Skip(why)` | ack |
/// | `Requeue(why)` | nack without counting a failure (shutdown: another worker resumes) |
/// | `Retry(failure)` | nack (redelivery after backoff); after `MAX_RETRY_ATTEMPTS` publish `job.failed` (retryable), dead-letter the message, ack |
/// | `Reject(failure)` | publish `job.failed`, clean the job's workspace, ack |
/// | `Cancel` | publish `job.cancelled`, clean the job's workspace, ack |
/// | `Resume(why)` | the job passed its deadline with resumes left: send the message back as a new attempt with a fresh deadline and the warning `why` (its workspace is its checkpoint), ack |
/// | `Unprocessable(failure)` | dead-letter the message with the reason, ack (there is no job to fail) |
///
/// A job that completed meanwhile is never reported failed or cancelled: settle acks.
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
    /// The job was cancelled.
    Cancel,
    /// The job passed its deadline and is resumed from its checkpoint (worker only).
    Resume(String),
    /// Work was stopped from outside (shutdown): hand the message back, no failure.
    Requeue(String),
    /// The message can never be processed (too large, not an event, misrouted).
    Unprocessable(Failure),
}

impl Outcome {
    /// The outcome for an error that knows its [`Verdict`]: `Retry` for a transient
    /// one, `Reject` for a permanent one, with `what` saying what was being done.
    pub fn failed<E: Classify + std::fmt::Display>(what: &str, err: &E) -> Outcome {
        let verdict = err.verdict();
        let failure = Failure::new(verdict.error_type, format!("{what}: {err}"));
        if verdict.retryable {
            Outcome::Retry(failure)
        } else {
            Outcome::Reject(failure)
        }
    }
}

/// What the worker does with an event of a job that already completed (a lost ack, a
/// program killed between publish and ack, a request sent twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateDelivery {
    /// Ack without work, unless the job asks for `forceRestart`: the workspace is gone,
    /// and redoing the work would fail on it and tell Phoenix a finished job failed.
    Skip,
    /// Hand it to the handler, which knows better (validate derives job ids and honours
    /// `forceRestart` itself; finalize re-emits the recorded `job.completed`).
    Handle,
}

/// A handler built at program start from the settings: each stage takes its own typed
/// part (`settings.validate`, `settings.download`, …), never the whole.
pub trait FromSettings: Handler + Sized {
    /// Build the handler.
    fn from_settings(settings: &Settings) -> Self;
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

    /// The part of its job an event is, when several parts of one job run at once
    /// (stitch's per-clip encodes, `encode-003`): runs killed without an outcome are
    /// counted per part ([`crate::unfinished`]). `None`: one run of the stage at a time.
    fn part_of(&self, _event: &Event) -> Option<String> {
        None
    }

    /// What to do with an event of a job that already completed.
    fn on_completed_job(&self) -> LateDelivery {
        LateDelivery::Skip
    }

    /// Whether the job id an event names is only a claim until the handler has checked
    /// it (validate: a request names any id it likes, and an id already taken by another
    /// tenant's job is refused under an id of its own). The worker then does nothing
    /// under that id before the handler has decided: no cancel or completion check and
    /// no progress events; the handler checks cancel and completion itself. `ty`: the
    /// event's type (generate: a request's id is a claim, its items' is the job's).
    fn job_id_is_a_claim(&self, _ty: &str) -> bool {
        false
    }

    /// The job of `event` was cancelled: take back what the job already put where its
    /// user sees it (finalize: the reel upload wrote), before `job.cancelled` says so.
    /// The worker cleans the workspace; an error here hands the message back.
    async fn withdraw(&self, _resolver: &dyn StoreResolver, _event: &Event) -> Result<(), crate::store::StoreError> {
        Ok(())
    }

    /// Do the stage's work for one event.
    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome;
}

/// Everything a handler may use while working on one event.
#[derive(Clone)]
pub struct Context {
    /// The stage.
    pub stage: Stage,
    /// Where clips and outputs may be (allowed roots, and never the work area).
    pub boundary: Arc<Boundary>,
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
    /// scratch space in the system's temp dir.
    pub fn standalone(
        stage: Stage,
        boundary: Boundary,
        work: Arc<dyn Store>,
        resolver: Arc<dyn StoreResolver>,
        job: JobRef,
    ) -> Context {
        let scratch = std::env::temp_dir().join(format!("reel-{}-{}", stage, uuid::Uuid::new_v4().simple()));
        let _ = std::fs::create_dir_all(&scratch);
        Context {
            stage,
            boundary: Arc::new(boundary),
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

    /// Check a work key an event names (a clip download left, the reel stitch left): it
    /// must lie in this job's own workspace, so a forged work message cannot make a stage
    /// read another job's files or the control area (locks, the API snapshot).
    pub fn check_work_key(&self, key: &str) -> Result<(), Failure> {
        // A job without an id has no workspace of its own: nothing is inside it.
        let inside = valid_id(&self.job.job_id)
            && key.strip_prefix(&self.work_prefix()).is_some_and(|rest| !rest.is_empty())
            && crate::store::check_key(key).is_ok();
        if inside {
            return Ok(());
        }
        Err(Failure::new(ErrorType::PermissionDenied, format!("work key {key:?} is outside the job's workspace")))
    }

    /// Build an event of `ty` about this job, with a deterministic id (so redoing the
    /// work re-emits the same event) and the trace context of `cause`.
    pub fn event<T: Serialize>(&self, cause: &Event, ty: &str, retry_attempt: u32, data: &T) -> Event {
        self.event_of_part(cause, ty, retry_attempt, "", data)
    }

    /// [`Context::event`] for one of several events of one type a stage emits for a job
    /// (stitch's per-clip encode items): `part` tells their ids apart.
    pub fn event_of_part<T: Serialize>(
        &self,
        cause: &Event,
        ty: &str,
        retry_attempt: u32,
        part: &str,
        data: &T,
    ) -> Event {
        let discriminator =
            if part.is_empty() { self.stage.as_str().to_string() } else { format!("{}/{part}", self.stage) };
        let id = envelope::deterministic_id(&self.job.job_id, retry_attempt, ty, &discriminator);
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
}

/// Decode an event's payload, or the `Reject(invalid_request)` outcome that explains why
/// it cannot be.
pub fn decode_payload<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, Outcome> {
    envelope::decode(event).map_err(|e| {
        Outcome::Reject(Failure::new(ErrorType::InvalidRequest, format!("malformed {} payload: {e}", event.ty())))
    })
}

/// Whether `id` is a valid job or project id: 1–128 characters of `A-Z a-z 0-9 _ - .`,
/// and not `.` or `..` (safe in object names, attributes, ordering keys and logs).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The trust boundary: clip and output paths must lie inside one of the allowed roots
/// (where `{projectId}` in a root stands for the job's project, so
/// `gs://uploads/projects/{projectId}` confines each project to its own prefix), and
/// never inside the work area (locks, completion records, the API snapshot and other
/// jobs' workspaces live there). validate checks every request; download and upload
/// check again before they read or write, so an event put on a work topic past validate
/// cannot reach further.
#[derive(Debug, Clone)]
pub struct Boundary {
    allowed_roots: Vec<String>,
    work_root: String,
}

impl Boundary {
    /// A boundary of `allowed_roots` around the work area at `work_root`.
    pub fn new(allowed_roots: Vec<String>, work_root: String) -> Boundary {
        Boundary { allowed_roots, work_root }
    }

    /// Check `raw` (a clip or the output, named `what` in messages) of a job of
    /// `project_id`: `invalid_request` when it does not parse ([`Location::parse`]: no
    /// `..`, no ffmpeg protocol, no other scheme), `permission_denied` when it is outside
    /// the allowed roots or inside the work area.
    ///
    /// [`Location::parse`]: crate::location::Location::parse
    pub fn check(&self, what: &str, raw: &str, project_id: &str) -> Result<crate::location::Location, Failure> {
        use crate::location::{parse_root, Location};
        let location =
            Location::parse(raw, None).map_err(|e| Failure::new(ErrorType::InvalidRequest, format!("{what}: {e}")))?;
        let roots: Vec<Location> = self
            .allowed_roots
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
        if let Ok(work) = parse_root(&self.work_root) {
            if location.is_within(&work) || location == work {
                return Err(denied(format!("is inside the work area ({work}), which only the stages may use")));
            }
        }
        Ok(location)
    }
}

/// The key under which finalize records a completed job (holding its `job.completed`
/// event), so a redelivered or repeated request does no work twice.
pub fn completed_marker_key(job_id: &str) -> String {
    format!("control/completed/{job_id}")
}

/// Whether `job_id` completed (its completion record exists): the one check the worker,
/// validate and finalize share.
pub async fn job_completed(work: &dyn Store, job_id: &str) -> Result<bool, crate::store::StoreError> {
    Ok(!job_id.is_empty() && work.head(&completed_marker_key(job_id)).await?.is_some())
}

/// Record a job's completion: its `job.completed` under [`completed_marker_key`] (so a
/// redelivery re-emits the very same event, and a repeated request is skipped).
pub async fn record_completion(ctx: &Context, completed: &Event) -> Result<(), crate::store::StoreError> {
    let job_id = reel_events::envelope::job_id_of(completed).unwrap_or_default();
    let record = reel_events::binding::encode_structured(completed).data;
    let key = completed_marker_key(&job_id);
    ctx.work.put(&key, Box::pin(std::io::Cursor::new(record)), crate::store::PutMode::Overwrite).await.map(|_| ())
}

/// The `job.completed` recorded for `job_id`, if any (and readable).
pub async fn recorded_completion(ctx: &Context, job_id: &str) -> Option<Event> {
    let bytes = match crate::store::read_all(ctx.work.as_ref(), &completed_marker_key(job_id)).await {
        Ok(bytes) => bytes?,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the completion record");
            return None;
        }
    };
    let message = reel_events::message::PubsubMessage {
        data: bytes,
        attributes: [(
            reel_events::binding::CONTENT_TYPE.to_string(),
            reel_events::binding::STRUCTURED_CONTENT_TYPE.to_string(),
        )]
        .into(),
        ordering_key: String::new(),
    };
    reel_events::binding::decode(&message).ok()
}

/// What a completed job leaves behind goes: its workspace, its quota slot and project
/// lock, and any cancel marker. Idempotent, so every delivery of a completion runs it.
pub async fn clean_up_job(ctx: &Context, job: &JobRef) {
    match crate::store::delete_prefix(ctx.work.as_ref(), &work_prefix(&job.job_id)).await {
        Ok(n) => tracing::info!(files = n, "workspace cleaned"),
        Err(e) => {
            tracing::warn!(error = %e, "could not clean the workspace; the work bucket's lifecycle rule will")
        }
    }
    crate::tenancy::release(ctx.work.as_ref(), job).await;
    if let Err(e) = ctx.work.delete(&cancel_marker_key(&job.job_id)).await {
        tracing::warn!(error = %e, "could not remove the cancel marker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_keys_stay_in_the_jobs_own_workspace() {
        let work: Arc<dyn Store> =
            Arc::new(crate::embedded::DirStore::new(std::env::temp_dir().join("reel-wk")).unwrap());
        let job = JobRef { job_id: "job_a".into(), project_id: "p".into(), user_id: "u".into() };
        let ctx = Context::standalone(
            Stage::Stitch,
            Boundary::new(vec![], "/w".into()),
            work,
            Arc::new(crate::local::LocalResolver::new()),
            job,
        );
        assert!(ctx.check_work_key("jobs/job_a/clips/000.mp4").is_ok());
        let mut anonymous = ctx.clone();
        anonymous.job.job_id = String::new();
        assert!(anonymous.check_work_key("jobs//reel.mp4").is_err(), "a job without an id owns no files");
        for bad in [
            "jobs/job_b/reel.mp4",
            "control/api-snapshot.json",
            "jobs/job_a/../job_b/reel.mp4",
            "jobs/job_a/",
            "jobs/job_ab/x",
        ] {
            assert_eq!(ctx.check_work_key(bad).unwrap_err().error_type, ErrorType::PermissionDenied, "{bad}");
        }
    }

    #[test]
    fn ids_are_safe_names() {
        for ok in ["job_1", "a.b-c", "X"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_boundary_confines_projects_and_guards_the_work_area() {
        let b = Boundary::new(
            vec!["gs://uploads/projects/{projectId}".into(), "/srv/clips".into()],
            "gs://uploads/work".into(),
        );
        assert!(b.check("clip", "gs://uploads/projects/p1/a.mp4", "p1").is_ok());
        assert_eq!(
            b.check("clip", "gs://uploads/projects/p2/a.mp4", "p1").unwrap_err().error_type,
            ErrorType::PermissionDenied
        );
        assert!(b.check("clip", "/srv/clips/a.mp4", "p1").is_ok());
        assert_eq!(
            b.check("clip", "/srv/clips/../etc/passwd", "p1").unwrap_err().error_type,
            ErrorType::InvalidRequest
        );
        let inside_work = Boundary::new(vec!["gs://uploads".into()], "gs://uploads/work".into());
        assert_eq!(
            inside_work.check("output", "gs://uploads/work/control/x.mp4", "p").unwrap_err().error_type,
            ErrorType::PermissionDenied
        );
    }

    #[test]
    fn classified_errors_become_outcomes() {
        use crate::store::StoreError;
        assert!(
            matches!(Outcome::failed("x", &StoreError::Transient("503".into())), Outcome::Retry(f) if f.error_type == ErrorType::Internal)
        );
        assert!(
            matches!(Outcome::failed("x", &StoreError::NotFound("k".into())), Outcome::Reject(f) if f.error_type == ErrorType::NotFound && f.message.starts_with("x: "))
        );
    }
}
