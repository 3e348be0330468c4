//! The generation job (`reel-generate`): clips from prompts, and the reel from them.
//!
//! A `generate.requested` is admitted like a stitch request (the job id's owner, the
//! project's owner, the user's quota, cancel; [`reel_validate::admission`]), checked
//! (1–20 prompts, the clip length, where the clips and the reel may go) and fanned out:
//! one `generate.clip` item per prompt to `reel-generate-clips`, each a delivery of its
//! own on any generate instance, so the prompts are generated at once.
//!
//! An item asks the [`Generator`] for its prompt's clip (Veo on Vertex AI, or the local
//! test pattern), and records the result in the job's workspace, create-only:
//! `gen/NNN.json`, the clip's path and size, or the reason the model refused the prompt.
//! The join has no orchestrator, as stitch's fan-out has none: the item that finds every
//! prompt accounted for claims `gen/join.claim` with a create-only write (its index
//! inside). Exactly one item wins, and a redelivery of the winner finds its own claim.
//! The winner completes the job: `job.completed` (type `video_generation`, `clipPaths`
//! in the order of the prompts, the refused ones in `skippedClips` with the reason) and,
//! with `stitch` set, the `stitch.requested` of the reel, as the job `{jobId}-reel`. A
//! stitch needs two clips: with fewer left the job fails with `insufficient_clips`.
//!
//! Everything else is the worker's, as for the stitching stages: progress (prompts done
//! of all), cancel, the deadline (`[generate] timeout_minutes`, 30 by default), retries
//! with backoff (a quota answer and a transient error are retried; the Veo operation a
//! delivery started is recorded, `gen/NNN.op`, so a redelivery polls it instead of
//! paying for a second), dead letters (`reel dlq list generate`) and cost.

pub mod generator;

use async_trait::async_trait;
use chrono::Utc;
use reel_events::payload::{
    GenerateClip, GenerateRequested, GenerateSpec, JobCompleted, JobRef, SkippedClip, StitchRequested,
};
use reel_events::{envelope, types, AttributesReader, ErrorType, Event, JobType, Stage};
use reel_runtime::config::{GenerateConfig, Quotas, Settings};
use reel_runtime::location::Location;
use reel_runtime::stage::{
    decode_payload, recorded_completion, Context, Failure, FromSettings, Handler, LateDelivery, Outcome,
};
use reel_runtime::store::{self, PutMode, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tracing::info;

pub use generator::{Generated, Generator, TestPattern, Veo};

/// Most characters of one prompt.
pub const MAX_PROMPT_CHARS: usize = 2000;

/// The generate stage.
pub struct Generate {
    generator: Arc<dyn Generator>,
    config: GenerateConfig,
    quotas: Quotas,
}

impl Generate {
    /// A generate stage with its generator, settings and the users' quotas.
    pub fn new(generator: Arc<dyn Generator>, config: GenerateConfig, quotas: Quotas) -> Generate {
        Generate { generator, config, quotas }
    }
}

impl FromSettings for Generate {
    fn from_settings(settings: &Settings) -> Generate {
        Generate::new(generator::from_settings(settings), settings.generate.clone(), settings.quota)
    }
}

/// What one item found for its prompt, in the workspace (`gen/NNN.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemResult {
    /// The clip, when the model made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clip_path: Option<String>,
    /// Its size in bytes.
    #[serde(default)]
    size_bytes: u64,
    /// Its length, s.
    #[serde(default)]
    duration_seconds: f64,
    /// Why there is no clip (the model refused the prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

#[async_trait]
impl Handler for Generate {
    fn stage(&self) -> Stage {
        Stage::Generate
    }

    fn accepts(&self) -> Vec<&'static str> {
        vec![types::GENERATE_REQUESTED, types::GENERATE_CLIP]
    }

    /// A request's job id is the caller's claim until admitted (as validate's).
    fn job_id_is_a_claim(&self, ty: &str) -> bool {
        ty == types::GENERATE_REQUESTED
    }

    /// Each prompt's item is a part of the job: runs killed without an outcome are
    /// counted per prompt.
    fn part_of(&self, event: &Event) -> Option<String> {
        if event.ty() != types::GENERATE_CLIP {
            return None;
        }
        let data = envelope::data_json(event).ok()?;
        let index = data.get("promptIndex")?.as_u64()?;
        Some(format!("prompt-{index:03}"))
    }

    /// A request for a completed job is the handler's to judge (`forceRestart`).
    fn on_completed_job(&self) -> LateDelivery {
        LateDelivery::Handle
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        if event.ty() == types::GENERATE_REQUESTED {
            return self.admit(ctx, event).await;
        }
        let item: GenerateClip = match decode_payload(event) {
            Ok(item) => item,
            Err(outcome) => return outcome,
        };
        // An item of a completed job (a redelivery; the winner's may come after it died
        // between recording the completion and publishing it) re-emits what completed it:
        // the same events, with the same ids.
        if !item.job.force_restart {
            if let Some(completed) = recorded_completion(ctx, &item.job.job_id).await {
                let clips = envelope::decode::<JobCompleted>(&completed).ok().and_then(|c| c.clip_paths);
                let mut events = vec![completed];
                events.extend(clips.and_then(|clips| reel_request(ctx, event, &item.job, clips)));
                return Outcome::Emit(events);
            }
        }
        self.generate_one(ctx, event, &item).await
    }
}

impl Generate {
    /// A `generate.requested`: admitted, checked, fanned out into one item per prompt.
    async fn admit(&self, ctx: &Context, event: &Event) -> Outcome {
        let data = match envelope::data_json(event) {
            Ok(d) => d,
            Err(e) => {
                return Outcome::Reject(Failure::new(
                    ErrorType::InvalidRequest,
                    format!("generate.requested without JSON data: {e}"),
                ))
            }
        };
        let (job_id, own_id) = match reel_validate::admission::job_id_of(event, &data) {
            Ok(ids) => ids,
            Err(outcome) => return outcome,
        };
        let claimed = JobRef { job_id: job_id.clone(), ..JobRef::from_data(&data, None) };
        let attribute = |outcome: Outcome| reel_validate::admission::attribute(outcome, claimed.clone());
        if let Err(outcome) = reel_validate::admission::check_claim(ctx, &job_id, &own_id, &claimed).await {
            return outcome;
        }
        let request: GenerateRequested = match serde_json::from_value(data) {
            Ok(r) => r,
            Err(e) => return attribute(reject(ErrorType::InvalidRequest, format!("invalid generate.requested: {e}"))),
        };
        if let Err(outcome) = self.check_request(ctx, &request) {
            return attribute(outcome);
        }
        let lifetime = chrono::Duration::minutes(self.config.timeout_minutes as i64);
        let admission = reel_validate::admission::Request {
            job_id: &job_id,
            own_id: &own_id,
            project_id: &request.project_id,
            user_id: &request.user_id,
            force_restart: request.force_restart.unwrap_or(false),
        };
        match reel_validate::admission::admit(ctx, &admission, &self.quotas, lifetime).await {
            Ok(None) => {}
            Ok(Some(skip)) => return skip,
            Err(outcome) => return attribute(outcome),
        }
        let accepted_at = Utc::now();
        let spec = GenerateSpec {
            job_id: job_id.clone(),
            project_id: request.project_id.clone(),
            user_id: request.user_id.clone(),
            prompts: request.prompts.clone(),
            clip_seconds: request.clip_seconds,
            orientation: request.orientation,
            output_prefix: request.output_prefix.clone(),
            stitch: request.stitch.clone(),
            retry_attempt: request.retry_attempt.unwrap_or(0),
            force_restart: request.force_restart.unwrap_or(false),
            accepted_at,
            deadline: accepted_at + lifetime,
            timeout_resumes: 0,
        };
        if let Err(e) = reel_runtime::tenancy::take_slot(ctx.work.as_ref(), &spec.user_id, &job_id).await {
            return attribute(Outcome::failed("taking the user's quota slot", &e));
        }
        // The workspace's first file: while it is there the job runs (its end removes it).
        let started = Box::pin(std::io::Cursor::new(job_id.clone().into_bytes()));
        if let Err(e) = ctx.work.put(&started_key(&job_id), started, PutMode::Overwrite).await {
            return attribute(Outcome::failed("opening the job's workspace", &e));
        }
        let mut child = ctx.clone();
        child.job = spec.job_ref();
        let items = (0..spec.prompts.len())
            .map(|index| {
                let item = GenerateClip { job: spec.clone(), prompt_index: index };
                let mut next = child.event_of_part(
                    event,
                    types::GENERATE_CLIP,
                    spec.retry_attempt,
                    &format!("prompt-{index:03}"),
                    &item,
                );
                reel_validate::admission::ensure_trace(&mut next, &job_id, spec.retry_attempt);
                next
            })
            .collect();
        info!(job_id = %job_id, prompts = spec.prompts.len(), "generation job accepted; one item per prompt");
        Outcome::Emit(items)
    }

    /// The request's own rules: ids, prompts, clip length, where clips and reel go.
    fn check_request(&self, ctx: &Context, request: &GenerateRequested) -> Result<(), Outcome> {
        if let Some(outcome) = reel_validate::admission::check_ids(&request.project_id, &request.user_id) {
            return Err(outcome);
        }
        let max = self.config.max_prompts;
        if request.prompts.is_empty() || request.prompts.len() > max {
            return Err(reject(
                ErrorType::InvalidRequest,
                format!("prompts: 1 to {max} prompts, one clip each; the request has {}", request.prompts.len()),
            ));
        }
        for (i, prompt) in request.prompts.iter().enumerate() {
            if prompt.trim().is_empty() || prompt.chars().count() > MAX_PROMPT_CHARS {
                return Err(reject(
                    ErrorType::InvalidRequest,
                    format!("prompt {}: 1 to {MAX_PROMPT_CHARS} characters, not blank", i + 1),
                ));
            }
        }
        if !(1..=60).contains(&request.clip_seconds) {
            return Err(reject(
                ErrorType::InvalidRequest,
                format!("clipSeconds {} must be 1 to 60 (Veo 3 makes 4, 6 or 8)", request.clip_seconds),
            ));
        }
        if !request.output_prefix.ends_with('/') {
            return Err(reject(
                ErrorType::InvalidRequest,
                format!("outputPrefix {:?} must end in / (the clips go under it)", request.output_prefix),
            ));
        }
        // The prefix is checked as the first clip it would hold.
        let first = clip_path(&request.output_prefix, 0);
        ctx.boundary.check("outputPrefix", &first, &request.project_id).map_err(Outcome::Reject)?;
        if let Some(stitch) = &request.stitch {
            let output = ctx
                .boundary
                .check("stitch.outputPath", &stitch.output_path, &request.project_id)
                .map_err(Outcome::Reject)?;
            if !matches!(output.extension().unwrap_or_default().as_str(), "mp4" | "m4v" | "mov") {
                return Err(reject(
                    ErrorType::InvalidRequest,
                    format!("stitch.outputPath {:?} must end in .mp4 (reels are MP4)", stitch.output_path),
                ));
            }
        }
        Ok(())
    }

    /// One prompt's item: its clip (or the reason there is none), then the join.
    async fn generate_one(&self, ctx: &Context, event: &Event, item: &GenerateClip) -> Outcome {
        let job = &item.job;
        let index = item.prompt_index;
        if index >= job.prompts.len() {
            return reject(ErrorType::InvalidRequest, format!("promptIndex {index} is not one of the job's prompts"));
        }
        let key = result_key(ctx, index);
        let found = match read_result(ctx, &key).await {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if found.is_none() {
            // The job ended (cancelled, or failed by another item) while this item
            // waited: its workspace is gone, and nothing is left to do.
            if let Some(outcome) = job_gone(ctx, &job.job_id).await {
                return outcome;
            }
            let result = match self.generator.generate(ctx, job, index).await {
                Ok(Generated::Clip { path, size_bytes, duration_seconds }) => {
                    ItemResult { clip_path: Some(path), size_bytes, duration_seconds, refused: None }
                }
                Ok(Generated::Refused { reason }) => {
                    info!(prompt = index, reason = %reason, "the model refused the prompt; it is skipped");
                    ItemResult { clip_path: None, size_bytes: 0, duration_seconds: 0.0, refused: Some(reason) }
                }
                Err(outcome) => return outcome,
            };
            let body = serde_json::to_vec(&result).expect("a result serializes");
            match ctx.work.put(&key, Box::pin(std::io::Cursor::new(body)), PutMode::CreateOnly).await {
                // A concurrent duplicate of this item recorded its own: the first stands.
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Outcome::failed("recording the prompt's clip", &e),
            }
            // The job ended while this item generated: take back what it just wrote.
            if let Some(outcome) = job_gone(ctx, &job.job_id).await {
                let _ = ctx.work.delete(&key).await;
                return outcome;
            }
        }
        let results = match all_results(ctx, job.prompts.len()).await {
            Ok(results) => results,
            Err(outcome) => return outcome,
        };
        let done = results.iter().filter(|r| r.is_some()).count();
        ctx.progress.report(done as f64 * 100.0 / job.prompts.len() as f64);
        if done < job.prompts.len() {
            info!(prompt = index, done, "prompt done; others still to come");
            return Outcome::Emit(Vec::new());
        }
        match claim_join(ctx, index).await {
            Ok(true) => {}
            Ok(false) => {
                info!(prompt = index, "every prompt is done; another item completes the job");
                return Outcome::Emit(Vec::new());
            }
            Err(outcome) => return outcome,
        }
        let results: Vec<ItemResult> = results.into_iter().flatten().collect();
        self.complete(ctx, event, job, &results).await
    }

    /// The join's winner: `job.completed`, and the stitch request if asked for.
    async fn complete(&self, ctx: &Context, event: &Event, job: &GenerateSpec, results: &[ItemResult]) -> Outcome {
        let clips: Vec<&ItemResult> = results.iter().filter(|r| r.clip_path.is_some()).collect();
        let skipped: Vec<SkippedClip> = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.refused.as_ref().map(|reason| SkippedClip {
                    path: format!("prompt {}: {}", i + 1, short(&job.prompts[i])),
                    reason: reason.clone(),
                })
            })
            .collect();
        let needed = if job.stitch.is_some() { 2 } else { 1 };
        if clips.len() < needed {
            let why = skipped.iter().map(|s| format!("{} ({})", s.path, s.reason)).collect::<Vec<_>>().join("; ");
            return reject(
                ErrorType::InsufficientClips,
                format!(
                    "{} of {} prompts gave a clip; {} needs at least {needed}. Refused: {why}",
                    clips.len(),
                    job.prompts.len(),
                    if job.stitch.is_some() { "a reel" } else { "the job" }
                ),
            );
        }
        let cost = reel_runtime::cost::job_cost(ctx.work.as_ref(), &job.job_id).await.ok();
        let clip_paths: Vec<String> = clips.iter().filter_map(|r| r.clip_path.clone()).collect();
        let data = JobCompleted {
            job_id: job.job_id.clone(),
            project_id: job.project_id.clone(),
            user_id: job.user_id.clone(),
            output_path: job.output_prefix.clone(),
            size_bytes: clips.iter().map(|r| r.size_bytes).sum(),
            duration_seconds: clips.iter().map(|r| r.duration_seconds).sum(),
            crc32c: String::new(),
            skipped_clips: skipped,
            warnings: Vec::new(),
            mode: None,
            job_type: JobType::VideoGeneration,
            clip_paths: Some(clip_paths.clone()),
            retry_attempt: Some(job.retry_attempt),
            cost,
        };
        let completed = ctx.event(event, types::JOB_COMPLETED, job.retry_attempt, &data);
        if let Err(e) = reel_runtime::stage::record_completion(ctx, &completed).await {
            return Outcome::failed("recording the completion", &e);
        }
        reel_runtime::stage::clean_up_job(ctx, &job.job_ref()).await;
        let mut events = vec![completed];
        events.extend(reel_request(ctx, event, job, clip_paths));
        info!(clips = data.clip_paths.as_ref().map_or(0, Vec::len), "generation job completed");
        Outcome::Emit(events)
    }
}

/// The `stitch.requested` of the job's reel (`{jobId}-reel`, same project and user), when
/// the request asked for one. Its id depends on the job alone: sent again, it is the same.
fn reel_request(ctx: &Context, cause: &Event, job: &GenerateSpec, clip_paths: Vec<String>) -> Option<Event> {
    let stitch = job.stitch.as_ref()?;
    let reel_job = format!("{}-reel", job.job_id);
    let request = StitchRequested {
        job_id: Some(reel_job.clone()),
        project_id: job.project_id.clone(),
        user_id: job.user_id.clone(),
        clip_paths,
        output_path: stitch.output_path.clone(),
        orientation: job.orientation,
        compression: stitch.compression,
        retry_attempt: Some(job.retry_attempt),
        force_restart: job.force_restart.then_some(true),
    };
    let mut reel_ctx = ctx.clone();
    reel_ctx.job.job_id = reel_job;
    Some(reel_ctx.event(cause, types::STITCH_REQUESTED, job.retry_attempt, &request))
}

/// Where prompt `index`'s clip goes under `prefix` (the test pattern's; Veo picks a
/// subfolder of its own under `{prefix}NNN/`).
pub fn clip_path(prefix: &str, index: usize) -> String {
    format!("{prefix}clip-{:03}.mp4", index + 1)
}

/// The file that says the job's workspace is open (written when the job is accepted).
fn started_key(job_id: &str) -> String {
    format!("{}gen/started", reel_runtime::stage::work_prefix(job_id))
}

/// `Some(skip)` when the job's workspace is gone: it ended while an item worked.
async fn job_gone(ctx: &Context, job_id: &str) -> Option<Outcome> {
    match ctx.work.head(&started_key(job_id)).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(Outcome::Skip("the job ended; its workspace is gone".into())),
        Err(e) => Some(Outcome::failed("checking the job's workspace", &e)),
    }
}

fn result_key(ctx: &Context, index: usize) -> String {
    format!("{}gen/{index:03}.json", ctx.work_prefix())
}

async fn read_result(ctx: &Context, key: &str) -> Result<Option<ItemResult>, Outcome> {
    match store::read_all(ctx.work.as_ref(), key).await {
        Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
        Ok(None) => Ok(None),
        Err(e) => Err(Outcome::failed("reading a prompt's result", &e)),
    }
}

/// Every prompt's result so far, in order (`None`: not done yet).
async fn all_results(ctx: &Context, prompts: usize) -> Result<Vec<Option<ItemResult>>, Outcome> {
    let prefix = format!("{}gen/", ctx.work_prefix());
    let keys = ctx.work.list_keys(&prefix).await.map_err(|e| Outcome::failed("listing the prompts' results", &e))?;
    let mut results = vec![None; prompts];
    for (index, slot) in results.iter_mut().enumerate() {
        let key = result_key(ctx, index);
        if keys.contains(&key) {
            *slot = read_result(ctx, &key).await?;
        }
    }
    Ok(results)
}

/// Claim the join for the item of prompt `index`: `true` when it is this item's.
async fn claim_join(ctx: &Context, index: usize) -> Result<bool, Outcome> {
    let key = format!("{}gen/join.claim", ctx.work_prefix());
    let body = Box::pin(std::io::Cursor::new(index.to_string().into_bytes()));
    match ctx.work.put(&key, body, PutMode::CreateOnly).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists(_)) => match store::read_all(ctx.work.as_ref(), &key).await {
            Ok(holder) => {
                Ok(holder.as_deref().map(|b| String::from_utf8_lossy(b).trim().to_string()) == Some(index.to_string()))
            }
            Err(e) => Err(Outcome::failed("reading the join's claim", &e)),
        },
        Err(e) => Err(Outcome::failed("claiming the join", &e)),
    }
}

fn reject(error_type: ErrorType, message: impl Into<String>) -> Outcome {
    Outcome::Reject(Failure::new(error_type, message))
}

/// A prompt as a skipped clip's name: its first 60 characters.
fn short(prompt: &str) -> String {
    let cut: String = prompt.chars().take(60).collect();
    if cut.len() < prompt.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Whether `raw` names a location (for the generators).
pub(crate) fn parse_location(raw: &str) -> Result<Location, Outcome> {
    Location::parse(raw, None).map_err(|e| reject(ErrorType::InvalidRequest, format!("{raw}: {e}")))
}
