//! Admitting a request, whatever job it asks for: the rules a `stitch.requested` and a
//! `generate.requested` share, in the order they run.
//!
//! 1. [`job_id_of`]: the request's job id, or one derived from the event (stable across
//!    redeliveries); an id that is not one fails under the derived id.
//! 2. [`check_claim`]: an id recorded for another project or user is refused under the
//!    request's own id, before anything else happens under it (even a malformed
//!    request must not fail, clean or say anything under another tenant's job).
//! 3. [`check_ids`]: the project and user ids themselves.
//! 4. [`admit`]: the project is claimed for its first user and refused to anyone else;
//!    the job id is recorded for this request; a cancelled job is not started; the
//!    user's quota holds; a completed job is skipped unless `forceRestart`.
//!
//! The stage then takes the user's quota slot ([`tenancy::take_slot`]) when it accepts.

use reel_events::payload::JobRef;
use reel_events::{envelope, AttributesReader, ErrorType, Event};
use reel_runtime::config::Quotas;
use reel_runtime::stage::{cancel_marker_key, job_completed, valid_id, Context, Failure, Outcome};
use reel_runtime::tenancy;

use crate::{derived_job_id, MAX_USER_ID_BYTES};

/// The request's job id and the id derived from its event (its own, for failures that
/// must not land on another job): `(job_id, own_id)`.
pub fn job_id_of(event: &Event, data: &serde_json::Value) -> Result<(String, String), Outcome> {
    let derived = derived_job_id(&[event.source(), event.id()]);
    match data.get("jobId") {
        None | Some(serde_json::Value::Null) => Ok((derived.clone(), derived)),
        Some(serde_json::Value::String(id)) if valid_id(id) => Ok((id.clone(), derived)),
        // A job id that is not one cannot name the failure (nor go into ce-subject or an
        // ordering key, both limited to 1,024 bytes): fail under the id derived from the
        // event, quoting the bad one shortened.
        Some(other) => {
            let text = match other {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let short: String = text.chars().take(64).collect();
            let more = if text.chars().count() > 64 { "…" } else { "" };
            let shown = if other.is_string() { format!("{short:?}{more}") } else { format!("{short}{more}") };
            let message = format!(
                "jobId {shown} must be a string of 1-128 characters of A-Z a-z 0-9 _ - . (failed as {derived})"
            );
            let job = JobRef { job_id: derived, ..JobRef::from_data(data, None) };
            Err(attribute(reject(ErrorType::InvalidRequest, message), job))
        }
    }
}

/// Attribute a failure without a job to `job` (the worker names the job of the
/// incoming event, which a request only claims).
pub fn attribute(outcome: Outcome, job: JobRef) -> Outcome {
    match outcome {
        Outcome::Reject(f) if f.job.is_none() => Outcome::Reject(f.for_job(job)),
        Outcome::Retry(f) if f.job.is_none() => Outcome::Retry(f.for_job(job)),
        other => other,
    }
}

/// The refusal of a request that names the job id of another job: under `own_id`, an id
/// of the request's own, so the job that has the id sees nothing.
pub fn taken(job_id: &str, own_id: &str, mut request: JobRef) -> Outcome {
    let message = if own_id == job_id {
        format!("jobId {job_id:?} is the id of another job")
    } else {
        format!("jobId {job_id:?} is the id of another job; choose a new id (failed as {own_id})")
    };
    request.job_id = own_id.to_string();
    Outcome::Reject(Failure::new(ErrorType::PermissionDenied, message).for_job(request))
}

/// Whose the id is comes first: an id recorded for another project or user is refused.
pub async fn check_claim(ctx: &Context, job_id: &str, own_id: &str, claimed: &JobRef) -> Result<(), Outcome> {
    match tenancy::job_record(ctx.work.as_ref(), job_id).await {
        Ok(Some(record)) if !record.is_of(&claimed.project_id, &claimed.user_id) => {
            Err(taken(job_id, own_id, claimed.clone()))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Outcome::failed("reading the job id's record", &e)),
    }
}

/// The project and user ids' own rules; `None` when they pass.
pub fn check_ids(project_id: &str, user_id: &str) -> Option<Outcome> {
    if project_id.trim().is_empty() || !valid_id(project_id) {
        return Some(reject(
            ErrorType::InvalidRequest,
            format!("projectId {project_id:?} must be 1-128 characters of A-Z a-z 0-9 _ - ."),
        ));
    }
    if user_id.trim().is_empty() {
        return Some(reject(ErrorType::InvalidRequest, "userId is required"));
    }
    if user_id.len() > MAX_USER_ID_BYTES || user_id.chars().any(char::is_control) {
        return Some(reject(
            ErrorType::InvalidRequest,
            format!("userId must be at most {MAX_USER_ID_BYTES} bytes without control characters"),
        ));
    }
    None
}

/// Who asks for what, for [`admit`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The job id asked for.
    pub job_id: &'a str,
    /// The request's own id (see [`job_id_of`]).
    pub own_id: &'a str,
    /// The project.
    pub project_id: &'a str,
    /// The user.
    pub user_id: &'a str,
    /// Whether a completed job is to be done again.
    pub force_restart: bool,
}

/// Whose the request's project, job id and quota are (the caller already refused a job
/// id recorded for another project or user, [`check_claim`]): the project is claimed
/// for its first user and refused to anyone else; the job id is recorded for this
/// request (one taken meanwhile is refused under `own_id`); a cancelled job is not
/// started; the user's quota holds (`lifetime`: how long a job of this kind may hold a
/// slot). `Ok(Some(skip))` for a job that already completed.
pub async fn admit(
    ctx: &Context,
    request: &Request<'_>,
    quotas: &Quotas,
    lifetime: chrono::Duration,
) -> Result<Option<Outcome>, Outcome> {
    let work = ctx.work.as_ref();
    let Request { job_id, own_id, project_id: project, user_id: user, force_restart } = *request;
    match tenancy::claim_project(work, project, user, job_id).await {
        Ok(record) if record.owner != user => {
            return Err(reject(
                ErrorType::PermissionDenied,
                format!("project {project:?} belongs to another user; only its owner may start jobs in it"),
            ))
        }
        Ok(_) => {}
        Err(e) => return Err(Outcome::failed("reading the project's owner", &e)),
    }
    match tenancy::claim_job(work, job_id, project, user).await {
        Ok(record) if !record.is_of(project, user) => {
            // Another request took the id between our read and our claim.
            let mine = JobRef { job_id: job_id.into(), project_id: project.into(), user_id: user.into() };
            return Err(taken(job_id, own_id, mine));
        }
        Ok(_) => {}
        Err(e) => return Err(Outcome::failed("recording the job id", &e)),
    }
    // The id is this request's now: the worker's usual checks, done here.
    match work.head(&cancel_marker_key(job_id)).await {
        Ok(Some(_)) => return Err(Outcome::Cancel),
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed("checking for a cancel request", &e)),
    }
    if !force_restart {
        match job_completed(work, job_id).await {
            Ok(true) => {
                return Ok(Some(Outcome::Skip(format!("job {job_id} already completed; send forceRestart to redo it"))))
            }
            Ok(false) => {}
            Err(e) => return Err(Outcome::failed("cannot check for an earlier completion", &e)),
        }
    }
    let now = chrono::Utc::now();
    let lifetime = lifetime + chrono::Duration::minutes(tenancy::SLOT_GRACE_MINUTES);
    let usage = match tenancy::usage(work, user, job_id, lifetime, now).await {
        Ok(usage) => usage,
        Err(e) => return Err(Outcome::failed("counting the user's jobs", &e)),
    };
    if let Err(over) = tenancy::check_quota(&usage, quotas, now) {
        return Err(reject(
            ErrorType::QuotaExceeded,
            format!("{}; retry in {} s or when a job ends", over.message, over.retry_after),
        ));
    }
    Ok(None)
}

/// A job with a caller's trace keeps it; one without starts its own.
pub fn ensure_trace(event: &mut Event, job_id: &str, retry_attempt: u32) {
    if envelope::extension_str(event, envelope::TRACEPARENT).is_none() {
        event.set_extension(envelope::TRACEPARENT, crate::traceparent_for(job_id, retry_attempt));
    }
}

fn reject(error_type: ErrorType, message: impl Into<String>) -> Outcome {
    Outcome::Reject(Failure::new(error_type, message))
}
