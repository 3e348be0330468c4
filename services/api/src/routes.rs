//! The handlers of CONTRACT §5.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use reel_events::fold::JobStatus;
use reel_events::payload::{CancelRequested, StitchRequested};
use reel_events::{envelope, types, Compression, ErrorType, Orientation};
use reel_runtime::stage::cancel_marker_key;
use reel_runtime::store::PutMode;
use reel_runtime::worker::publish_event;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::admission::{check_records, decide, may_see_project, Decision};
use crate::auth::{User, ACTING_FOR_HEADER};
use crate::book::{fold, status_owned_by};
use crate::error::ApiError;
use crate::AppState;

/// The CloudEvent `source` of the events the API publishes.
pub const SOURCE: &str = "//reel/api";

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<User, ApiError> {
        if !state.book().is_ready() {
            return Err(ApiError::unavailable("starting: the job state is still loading", 2));
        }
        let header = parts.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        let acting_for: Vec<&[u8]> = parts.headers.get_all(ACTING_FOR_HEADER).iter().map(|v| v.as_bytes()).collect();
        let auth = &state.inner.auth;
        match auth.authenticate(header).await.and_then(|caller| auth.identify(caller, &acting_for)) {
            Ok(user) => {
                // Every authenticated route reads or decides on the job state.
                state.catch_up().await;
                Ok(user)
            }
            Err(e) => {
                // The reason only: never the header or the token.
                info!(reason = %e, path = %parts.uri.path(), "request refused");
                Err(e.into())
            }
        }
    }
}

/// `GET /api/jobs/{jobId}/status`.
pub async fn job_status(
    State(state): State<AppState>,
    user: User,
    Path(job_id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    lookup(&state, &job_id)
        .await?
        .filter(|s| status_owned_by(s, &user.id))
        .map(Json)
        .ok_or_else(|| ApiError::job_not_found(&job_id))
}

/// A job's status from memory or its record (a store error: 503).
async fn lookup(state: &AppState, job_id: &str) -> Result<Option<JobStatus>, ApiError> {
    state.book().lookup(job_id).await.map_err(|e| ApiError::unavailable(format!("could not read the job: {e}"), 2))
}

/// Most jobs `GET /api/projects/{projectId}/jobs` answers.
pub const PROJECT_JOBS_LIMIT: usize = 100;

/// The answer of `GET /api/projects/{projectId}/jobs`.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobList {
    /// The caller's jobs in the project, newest first, at most [`PROJECT_JOBS_LIMIT`].
    pub jobs: Vec<JobStatus>,
}

/// `GET /api/projects/{projectId}/jobs`: the caller's jobs of the project, newest first,
/// at most [`PROJECT_JOBS_LIMIT`]; none when the project belongs to another user (the
/// same answer as a project the caller has no jobs in, so it tells nothing about another
/// user's project).
pub async fn project_jobs(
    State(state): State<AppState>,
    user: User,
    Path(project_id): Path<String>,
) -> Result<Json<JobList>, ApiError> {
    let mut jobs = state
        .book()
        .project_jobs(&project_id, &user.id, PROJECT_JOBS_LIMIT)
        .await
        .map_err(|e| ApiError::unavailable(format!("could not read the project's jobs: {e}"), 2))?;
    // The caller's own jobs in another user's project are requests validate refused.
    if !jobs.is_empty() && !may_see_project(state.inner.work.as_ref(), &project_id, &user.id).await? {
        jobs.clear();
    }
    Ok(Json(JobList { jobs }))
}

/// The answer of `POST /api/jobs/{jobId}/cancel`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CancelAnswer {
    /// Whether a cancellation was requested.
    pub success: bool,
    /// What happens now, for a person.
    pub message: String,
}

/// The cancel marker's content (stages only test that it exists).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CancelMarker<'a> {
    job_id: &'a str,
    user_id: &'a str,
    requested_at: chrono::DateTime<Utc>,
}

/// `POST /api/jobs/{jobId}/cancel`: write the cancel marker the stages watch, and put a
/// `job.cancel_requested` on the log. A finished job answers `success: false`.
pub async fn cancel_job(
    State(state): State<AppState>,
    user: User,
    Path(job_id): Path<String>,
) -> Result<Json<CancelAnswer>, ApiError> {
    let status = lookup(&state, &job_id)
        .await?
        .filter(|s| status_owned_by(s, &user.id))
        .ok_or_else(|| ApiError::job_not_found(&job_id))?;
    let attempt = status.retry_count;
    if status.status.is_terminal() {
        return Ok(Json(CancelAnswer {
            success: false,
            message: format!("job {job_id} has already {}; there is nothing to cancel", past_tense(status.status)),
        }));
    }
    let now = Utc::now();
    let marker = serde_json::to_vec(&CancelMarker { job_id: &job_id, user_id: &user.id, requested_at: now })
        .expect("marker serializes");
    let key = cancel_marker_key(&job_id);
    if let Err(e) = state.inner.work.put(&key, Box::pin(std::io::Cursor::new(marker)), PutMode::Overwrite).await {
        warn!(job_id = %job_id, error = %e, "could not write the cancel marker");
        return Err(ApiError::unavailable(format!("could not record the cancellation: {e}; try again"), 2));
    }
    let payload =
        CancelRequested { job_id: job_id.clone(), project_id: status.project_id.clone(), user_id: user.id.clone() };
    let mut data = serde_json::to_value(&payload).expect("payload serializes");
    // So the fold files the request under the attempt being cancelled (an addition).
    data["retryAttempt"] = attempt.into();
    let id = envelope::deterministic_id(&job_id, attempt, types::CANCEL_REQUESTED, "api");
    let event =
        envelope::build(types::CANCEL_REQUESTED, SOURCE, id, &job_id, now, &data).expect("cancel_requested builds");
    if let Err(e) = publish_event(state.inner.bus.as_ref(), &state.inner.names, &event).await {
        // The marker is what stops the stages; the event only tells the log.
        warn!(job_id = %job_id, error = %e, "could not publish job.cancel_requested; the marker is written");
    }
    state.book().apply(&event);
    info!(job_id = %job_id, project_id = %status.project_id, "cancel requested");
    Ok(Json(CancelAnswer {
        success: true,
        message: format!("cancellation of job {job_id} requested; it stops within a few seconds"),
    }))
}

fn past_tense(status: reel_events::fold::Status) -> &'static str {
    use reel_events::fold::Status::*;
    match status {
        Completed => "completed",
        Failed => "failed",
        Cancelled => "been cancelled",
        Queued | Running => "started",
    }
}

/// The body of `POST /api/projects/{projectId}/stitch`: `stitch.requested` less the ids.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StitchBody {
    clip_paths: Vec<String>,
    output_path: String,
    orientation: Orientation,
    compression: Compression,
    #[serde(default)]
    retry_attempt: Option<u32>,
    #[serde(default)]
    force_restart: Option<bool>,
    /// Tolerated when equal to the path's.
    #[serde(default)]
    project_id: Option<String>,
    /// Tolerated when equal to the caller.
    #[serde(default)]
    user_id: Option<String>,
}

/// The 202 answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The new job.
    pub job_id: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// `POST /api/projects/{projectId}/stitch`: validate, admit (403, 429, 409), publish
/// `stitch.requested` to the requests topic and the log, fold it, answer 202.
pub async fn stitch(
    State(state): State<AppState>,
    user: User,
    Path(project_id): Path<String>,
    trace: Option<axum::Extension<crate::CallerTrace>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !valid_id(&project_id) {
        return Err(ApiError::bad_request(format!(
            "projectId {project_id:?} must be 1-128 characters of A-Z a-z 0-9 _ - ."
        )));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if value.get("jobId").is_some() {
        return Err(ApiError::bad_request("jobId is assigned by the API; leave it out"));
    }
    // Fewer than two clips is its own error type, as in the validate stage.
    if let Some(clips) = value.get("clipPaths").and_then(|v| v.as_array()) {
        if clips.len() < 2 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("a reel needs at least 2 clips; the request has {}", clips.len()),
            )
            .typed(ErrorType::InsufficientClips));
        }
    }
    let body: StitchBody =
        serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid stitch request: {e}")))?;
    if body.project_id.as_ref().is_some_and(|p| *p != project_id) {
        return Err(ApiError::bad_request("projectId in the body differs from the one in the path"));
    }
    if body.user_id.as_ref().is_some_and(|u| *u != user.id) {
        return Err(ApiError::bad_request(
            "userId in the body differs from the user the request acts for; leave it out",
        ));
    }
    let max = state.inner.settings.validate.max_clips;
    if body.clip_paths.len() > max {
        return Err(ApiError::bad_request(format!("{} clips requested; the limit is {max}", body.clip_paths.len())));
    }
    if let Some(i) = body.clip_paths.iter().position(|c| c.trim().is_empty()) {
        return Err(ApiError::bad_request(format!("clip {} has an empty path", i + 1)));
    }
    if body.output_path.trim().is_empty() {
        return Err(ApiError::bad_request("outputPath is empty"));
    }

    let job_id = format!("job_{}", uuid::Uuid::new_v4().simple());
    let force_restart = body.force_restart.unwrap_or(false);
    let request = StitchRequested {
        job_id: Some(job_id.clone()),
        project_id: project_id.clone(),
        user_id: user.id.clone(),
        clip_paths: body.clip_paths,
        output_path: body.output_path,
        orientation: body.orientation,
        compression: body.compression,
        retry_attempt: body.retry_attempt,
        force_restart: body.force_restart,
    };
    let now = Utc::now();
    let event_id = format!("stitch.requested-{}", uuid::Uuid::new_v4().simple());
    let mut event = envelope::build(types::STITCH_REQUESTED, SOURCE, event_id, &job_id, now, &request)
        .expect("stitch.requested builds");
    if let Some(axum::Extension(crate::CallerTrace(tp))) = trace {
        event.set_extension(envelope::TRACEPARENT, tp);
    }

    let settings = &state.inner.settings;
    let work = state.inner.work.as_ref();
    check_records(work, &project_id, &user.id, &job_id, &settings.quota, settings.job_timeout(), now).await?;
    // Decide and fold under one lock, so two requests for one project cannot both pass.
    let stale_after = state.stale_after();
    let decision = state.book().write(|jobs| {
        let decision = decide(jobs, &project_id, &user.id, force_restart, stale_after, now);
        if decision == Decision::Accept {
            fold(jobs, &job_id, &event);
        }
        decision
    });
    match decision {
        Decision::Accept => {}
        Decision::AlreadyRunning { job_id: running, mine } => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                format!("project {project_id} already has a job queued or running; wait for it, cancel it, or send forceRestart"),
            )
            .typed(ErrorType::JobAlreadyRunning);
            if mine {
                e = e.with("runningJobId", running);
            }
            return Err(e);
        }
    }

    if let Err(e) = publish_event(state.inner.bus.as_ref(), &state.inner.names, &event).await {
        warn!(job_id = %job_id, error = %e, "could not publish stitch.requested");
        // Forget the job unless the log already brought more of it (the publish may
        // have gone through despite the error; then the log folds it back in).
        state.book().forget_if_only(&job_id, &event);
        return Err(ApiError::unavailable(format!("could not queue the job: {e}; try again"), 2));
    }
    let on_behalf = user.caller != user.id;
    info!(job_id = %job_id, project_id = %project_id, force_restart, on_behalf, "stitch requested");
    let mut response = (StatusCode::ACCEPTED, Json(Accepted { job_id: job_id.clone() })).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/jobs/{job_id}/status")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /healthz`: 200 once the snapshot is loaded, 503 before.
pub async fn healthz(State(state): State<AppState>) -> Response {
    if state.book().is_ready() {
        (StatusCode::OK, Json(json!({ "status": "ok", "jobs": state.book().len() }))).into_response()
    } else {
        ApiError::unavailable("starting: the job state is still loading", 2).into_response()
    }
}

/// `GET /metrics`: OpenMetrics text (404 when `METRICS_ENABLED=false`).
pub async fn metrics(State(state): State<AppState>) -> Response {
    if !state.inner.settings.metrics_enabled {
        return ApiError::new(StatusCode::NOT_FOUND, "metrics are disabled (METRICS_ENABLED=false)").into_response();
    }
    let text = crate::metrics::render(state.book());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// `GET /api/openapi.json`: the checked-in OpenAPI document (no token needed).
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI_JSON).into_response()
}

/// Anything else: 404 in the API's error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; see /api/openapi.json")
}
