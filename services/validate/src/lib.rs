//! The validate stage: turns a request into an accepted job, or a clear `job.failed`.
//!
//! Consumes `stitch.requested` (from Phoenix, `reel submit`, `reel-api`, or a bare JSON
//! payload) and Cloud Storage object-finalized notifications for manifests
//! (`manifests/{projectId}/….json`). Emits `job.validated` carrying the [`JobSpec`],
//! with the job's deadline, to the download stage.

use async_trait::async_trait;
use chrono::Utc;
use reel_events::binding::STORAGE_OBJECT_FINALIZED;
use reel_events::payload::{JobRef, JobSpec, JobValidated, StitchRequested};
use reel_events::{envelope, types, AttributesReader, ErrorType, Event, Stage};
use reel_runtime::config::{Quotas, Settings, ValidateConfig};
use reel_runtime::location::Location;
use reel_runtime::stage::{valid_id, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::StoreError;
use reel_runtime::{lock, output, tenancy};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub mod admission;
use admission::attribute;

/// Largest manifest object read (a request is a few hundred bytes).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Longest user id accepted (an email is at most 254).
pub const MAX_USER_ID_BYTES: usize = 256;

/// The validate stage.
#[derive(Debug, Clone)]
pub struct Validate {
    config: ValidateConfig,
    /// Per-user quotas.
    quotas: Quotas,
    /// How long an accepted job has (`JOB_TIMEOUT_MINUTES`).
    job_timeout: chrono::Duration,
}

impl Validate {
    /// A validate stage with its settings, the users' quotas and the job timeout.
    /// `config.manifest_buckets` are the buckets whose manifests start jobs (none: no
    /// manifest does).
    pub fn new(config: ValidateConfig, quotas: Quotas, job_timeout: chrono::Duration) -> Validate {
        Validate { config, quotas, job_timeout }
    }
}

impl Default for Validate {
    fn default() -> Validate {
        Validate::from_settings(&Settings::default())
    }
}

impl FromSettings for Validate {
    fn from_settings(settings: &Settings) -> Validate {
        let config = ValidateConfig { manifest_buckets: settings.manifest_buckets(), ..settings.validate.clone() };
        Validate::new(config, settings.quota, settings.job_timeout())
    }
}

#[async_trait]
impl Handler for Validate {
    fn stage(&self) -> Stage {
        Stage::Validate
    }

    /// A request's job id is the caller's claim: validate checks whose it is before
    /// anything happens under it, then checks cancel and completion itself.
    fn job_id_is_a_claim(&self, _ty: &str) -> bool {
        true
    }

    fn accepts(&self) -> Vec<&'static str> {
        vec![
            types::STITCH_REQUESTED,
            STORAGE_OBJECT_FINALIZED,
            "google.cloud.storage.object.v1.deleted",
            "google.cloud.storage.object.v1.archived",
            "google.cloud.storage.object.v1.metadataUpdated",
            "google.cloud.storage.object.v1.unknown",
        ]
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        if event.ty() == types::STITCH_REQUESTED {
            let data = match envelope::data_json(event) {
                Ok(d) => d,
                Err(e) => return reject(ErrorType::InvalidRequest, format!("stitch.requested without JSON data: {e}")),
            };
            let (job_id, derived) = match admission::job_id_of(event, &data) {
                Ok(ids) => ids,
                Err(outcome) => return outcome,
            };
            let job = JobRef { job_id: job_id.clone(), ..JobRef::from_data(&data, None) };
            return attribute(self.validate_request(ctx, event, &job_id, &derived, data, None).await, job);
        }
        if event.ty() != STORAGE_OBJECT_FINALIZED {
            return Outcome::Skip(format!("storage event {} does not start jobs", event.ty()));
        }
        self.manifest(ctx, event).await
    }
}

fn reject(error_type: ErrorType, message: impl Into<String>) -> Outcome {
    Outcome::Reject(Failure::new(error_type, message))
}

/// A job id derived from parts (a request without one, or a manifest object): stable
/// across redeliveries, so a duplicate starts nothing new.
pub fn derived_job_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let hex: String = hasher.finalize().iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("job_{hex}")
}

/// A W3C `traceparent` derived from the job, so every stage logs the same trace id.
pub fn traceparent_for(job_id: &str, retry_attempt: u32) -> String {
    let digest = Sha256::digest(format!("{job_id}/{retry_attempt}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("00-{}-{}-01", &hex[..32], &hex[32..48])
}

/// The worker attributes failures to the job of the incoming event; a manifest event's
/// job id is derived here, so carry it in the failure message's context.
fn with_job(outcome: Outcome, job_id: &str, project: &str) -> Outcome {
    attribute(outcome, JobRef { job_id: job_id.to_string(), project_id: project.to_string(), user_id: String::new() })
}

impl Validate {
    /// Handle a manifest upload: `manifests/{projectId}/*.json` in the bucket.
    async fn manifest(&self, ctx: &Context, event: &Event) -> Outcome {
        let data = envelope::data_json(event).unwrap_or_default();
        let bucket = data.get("bucket").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let name = data.get("name").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let generation = match data.get("generation") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let Some(rest) = name.strip_prefix("manifests/") else {
            return Outcome::Skip(format!("object {name} is not a manifest"));
        };
        let Some((project_from_path, file)) = rest.split_once('/') else {
            return Outcome::Skip(format!("object {name} is not under manifests/{{projectId}}/"));
        };
        if !file.ends_with(".json") || file.contains('/') || project_from_path.is_empty() {
            return Outcome::Skip(format!("object {name} is not a manifests/{{projectId}}/*.json manifest"));
        }
        if !self.config.manifest_buckets.contains(&bucket) {
            return Outcome::Unprocessable(Failure::new(
                ErrorType::PermissionDenied,
                format!(
                    "a notification from bucket {bucket:?} cannot start jobs; manifests are read only from {}",
                    if self.config.manifest_buckets.is_empty() {
                        "no bucket (none configured)".to_string()
                    } else {
                        self.config.manifest_buckets.join(", ")
                    }
                ),
            ));
        }
        let job_id = derived_job_id(&[&bucket, &name, &generation]);
        let location = Location::Gcs { bucket: bucket.clone(), key: name.clone() };
        let (store, key) = match ctx.resolver.resolve(&location) {
            Ok(x) => x,
            Err(e) => return Outcome::failed(&format!("cannot open gs://{bucket}"), &e),
        };
        let mut body = Vec::new();
        match store.get(&key).await {
            Ok(reader) => {
                let mut limited = reader.take(MAX_MANIFEST_BYTES + 1);
                if let Err(e) = limited.read_to_end(&mut body).await {
                    return Outcome::failed(
                        &format!("cannot read manifest gs://{bucket}/{name}"),
                        &StoreError::Transient(e.to_string()),
                    );
                }
            }
            Err(StoreError::NotFound(_)) => return Outcome::Skip(format!("manifest gs://{bucket}/{name} is gone")),
            Err(e) => return Outcome::failed(&format!("cannot read manifest gs://{bucket}/{name}"), &e),
        }
        let failed = |message: String| {
            // The failure must be attributable: fold it under the derived job id.
            Outcome::Reject(Failure::new(ErrorType::InvalidRequest, message))
        };
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return with_job(
                failed(format!("manifest gs://{bucket}/{name} is larger than {MAX_MANIFEST_BYTES} bytes")),
                &job_id,
                project_from_path,
            );
        }
        let value: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return with_job(
                    failed(format!("manifest gs://{bucket}/{name} is not valid JSON: {e}")),
                    &job_id,
                    project_from_path,
                )
            }
        };
        if let Some(project) = value.get("projectId").and_then(|v| v.as_str()) {
            if project != project_from_path {
                return with_job(
                    Outcome::Reject(Failure::new(
                        ErrorType::PermissionDenied,
                        format!("manifest under manifests/{project_from_path}/ asks for project {project:?}; a manifest may only request jobs for its own project"),
                    )),
                    &job_id,
                    project_from_path,
                );
            }
        }
        let mut job = JobRef::from_data(&value, None);
        job.job_id = job_id.clone();
        job.project_id = project_from_path.to_string();
        let outcome =
            self.validate_request(ctx, event, &job_id, &job_id, value, Some(project_from_path.to_string())).await;
        attribute(outcome, job)
    }

    async fn validate_request(
        &self,
        ctx: &Context,
        event: &Event,
        job_id: &str,
        own_id: &str,
        mut data: serde_json::Value,
        project_from_manifest: Option<String>,
    ) -> Outcome {
        if !valid_id(job_id) {
            return reject(
                ErrorType::InvalidRequest,
                format!("jobId {job_id:?} must be 1-128 characters of A-Z a-z 0-9 _ - ."),
            );
        }
        if let (Some(project), Some(map)) = (&project_from_manifest, data.as_object_mut()) {
            map.entry("projectId").or_insert_with(|| project.clone().into());
        }
        // Whose the id is comes first: even a malformed request must not fail, clean or
        // say anything under the id of another tenant's job.
        let claimed = JobRef::from_data(&data, None);
        if let Err(outcome) = admission::check_claim(ctx, job_id, own_id, &claimed).await {
            return outcome;
        }
        let request: StitchRequested = match serde_json::from_value(data.clone()) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("invalid stitch.requested: {e}");
                // Fewer than two clips is its own error type even when the rest is fine.
                let clips = data.get("clipPaths").and_then(|v| v.as_array()).map(|a| a.len());
                if clips.is_some_and(|n| n < 2) && e.to_string().contains("clipPaths") {
                    return reject(ErrorType::InsufficientClips, message);
                }
                return reject(ErrorType::InvalidRequest, message);
            }
        };
        if let Some(outcome) = self.check_request(ctx, &request) {
            return outcome;
        }
        let admission = admission::Request {
            job_id,
            own_id,
            project_id: &request.project_id,
            user_id: &request.user_id,
            force_restart: request.force_restart.unwrap_or(false),
        };
        match admission::admit(ctx, &admission, &self.quotas, self.job_timeout).await {
            Ok(None) => {}
            Ok(Some(skip)) => return skip,
            Err(outcome) => return outcome,
        }
        // Whether the reel may go where it is asked to, decided before any download or
        // encode is paid for (upload decides again, atomically, when it writes).
        if let Err(outcome) = self.check_output(ctx, &request).await {
            return outcome;
        }
        let accepted_at = Utc::now();
        let spec = JobSpec {
            job_id: job_id.to_string(),
            project_id: request.project_id.clone(),
            user_id: request.user_id.clone(),
            clip_paths: request.clip_paths.clone(),
            output_path: request.output_path.clone(),
            orientation: request.orientation,
            compression: request.compression,
            retry_attempt: request.retry_attempt.unwrap_or(0),
            force_restart: request.force_restart.unwrap_or(false),
            accepted_at,
            deadline: accepted_at + self.job_timeout,
            timeout_resumes: 0,
        };
        if self.config.project_lock {
            // One active job per project, atomically; the lock outlives the job's deadline a
            // little so a crashed job cannot hold the project forever.
            let expires = spec.deadline + chrono::Duration::minutes(5);
            match lock::acquire(ctx.work.as_ref(), &spec.project_id, job_id, expires, spec.force_restart).await {
                Ok(lock::Acquire::Acquired) => {}
                Ok(lock::Acquire::Held(other)) => {
                    return reject(
                        ErrorType::JobAlreadyRunning,
                        format!(
                            "project {} already has job {} running (until {} at the latest); wait, cancel it, or send forceRestart",
                            spec.project_id, other.job_id, other.expires_at
                        ),
                    )
                }
                Err(e) => return Outcome::failed("taking the project lock", &e),
            }
        }
        if let Err(e) = tenancy::take_slot(ctx.work.as_ref(), &spec.user_id, job_id).await {
            return Outcome::failed("taking the user's quota slot", &e);
        }
        let retry_attempt = spec.retry_attempt;
        let mut child = ctx.clone();
        child.job.job_id = job_id.to_string();
        let mut next = child.event(event, types::JOB_VALIDATED, retry_attempt, &JobValidated { job: spec });
        // A job without a caller's trace starts its own: one job, one trace.
        admission::ensure_trace(&mut next, job_id, retry_attempt);
        Outcome::Emit(vec![next])
    }

    /// The output rule (`reel_runtime::output`): an existing object at the output is
    /// replaced only if reel wrote it for this project and the request says
    /// `forceRestart` (its owner's request: [`Validate::check_tenancy`] ran first).
    async fn check_output(&self, ctx: &Context, request: &StitchRequested) -> Result<(), Outcome> {
        let location = Location::parse(&request.output_path, None)
            .map_err(|e| reject(ErrorType::InvalidRequest, format!("outputPath: {e}")))?;
        let (store, key) =
            ctx.resolver.resolve(&location).map_err(|e| Outcome::failed("opening the output's store", &e))?;
        let force = request.force_restart.unwrap_or(false);
        output::check(store.as_ref(), &key, &request.output_path, &request.project_id, force).await.map(|_| ())
    }

    /// Every rule a request must pass; `None` when it passes.
    fn check_request(&self, ctx: &Context, request: &StitchRequested) -> Option<Outcome> {
        if let Some(outcome) = admission::check_ids(&request.project_id, &request.user_id) {
            return Some(outcome);
        }
        if request.clip_paths.len() < 2 {
            return Some(reject(
                ErrorType::InsufficientClips,
                format!("a reel needs at least 2 clips; the request has {}", request.clip_paths.len()),
            ));
        }
        let max = self.config.max_clips;
        if request.clip_paths.len() > max {
            return Some(reject(
                ErrorType::InvalidRequest,
                format!("{} clips requested; the limit is {max}", request.clip_paths.len()),
            ));
        }
        let check = |what: &str, raw: &str| -> Result<Location, Outcome> {
            ctx.boundary.check(what, raw, &request.project_id).map_err(Outcome::Reject)
        };
        for (i, raw) in request.clip_paths.iter().enumerate() {
            if let Err(outcome) = check(&format!("clip {}", i + 1), raw) {
                return Some(outcome);
            }
        }
        match check("outputPath", &request.output_path) {
            Err(outcome) => return Some(outcome),
            Ok(output) => {
                let ext = output.extension().unwrap_or_default();
                if !matches!(ext.as_str(), "mp4" | "m4v" | "mov") {
                    return Some(reject(
                        ErrorType::InvalidRequest,
                        format!("outputPath {:?} must end in .mp4 (reels are MP4)", request.output_path),
                    ));
                }
                if request.clip_paths.iter().any(|c| Location::parse(c, None).ok().as_ref() == Some(&output)) {
                    return Some(reject(ErrorType::InvalidRequest, "outputPath must not be one of the clips"));
                }
            }
        }
        None
    }
}
