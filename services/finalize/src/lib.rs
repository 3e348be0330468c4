//! The finalize stage: announces the finished reel with `job.completed` and cleans the
//! job's workspace.
//!
//! It records the completion under `control/completed/{jobId}` (holding the event), so a
//! redelivery re-emits the very same event (same id; the fold ignores the duplicate) and
//! a repeated request for the job is skipped by validate.

use async_trait::async_trait;
use reel_events::payload::{JobCompleted, JobSpec, ReelUploaded};
use reel_events::{binding, types, Event, Stage};
use reel_runtime::config::Settings;
use reel_runtime::location::{Location, StoreResolver};
use reel_runtime::output;
use reel_runtime::stage::{
    cancel_marker_key, completed_marker_key, decode_payload, Context, FromSettings, Handler, LateDelivery, Outcome,
};
use reel_runtime::store::{delete_prefix, PutMode, StoreError};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// The finalize stage.
#[derive(Debug, Default)]
pub struct Finalize;

impl FromSettings for Finalize {
    fn from_settings(_: &Settings) -> Finalize {
        Finalize
    }
}

#[async_trait]
impl Handler for Finalize {
    fn stage(&self) -> Stage {
        Stage::Finalize
    }

    /// A redelivery of a completed job re-emits its recorded `job.completed`.
    fn on_completed_job(&self) -> LateDelivery {
        LateDelivery::Handle
    }

    /// A job cancelled between upload and finalize leaves no reel: the one upload wrote
    /// for it (and only that one, by its metadata) goes.
    async fn withdraw(&self, resolver: &dyn StoreResolver, event: &Event) -> Result<(), StoreError> {
        let Ok(input) = reel_events::envelope::decode::<ReelUploaded>(event) else { return Ok(()) };
        let Ok(location) = Location::parse(&input.output_path, None) else { return Ok(()) };
        let (store, key) = resolver.resolve(&location)?;
        if output::withdraw(store.as_ref(), &key, &input.job.project_id, &input.job.job_id).await? {
            info!(output = %input.output_path, "cancelled after upload; the reel was removed");
        }
        Ok(())
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        let input: ReelUploaded = match decode_payload(event) {
            Ok(v) => v,
            Err(outcome) => return outcome,
        };
        let job = &input.job;
        let marker = completed_marker_key(&job.job_id);
        if let Some(previous) = read_marker(ctx, &marker).await {
            if !job.force_restart || previous_attempt_matches(&previous, job.retry_attempt) {
                info!("job already completed; re-emitting its job.completed");
                // The first delivery may have died between recording and cleaning up.
                clean_up(ctx, job).await;
                return Outcome::Emit(vec![previous]);
            }
        }
        // Every delivery before this one recorded its cost; this one's is small.
        let cost = match reel_runtime::cost::job_cost(ctx.work.as_ref(), &job.job_id).await {
            Ok(cost) => Some(cost),
            Err(e) => {
                warn!(error = %e, "could not add up the job's cost; job.completed goes without");
                None
            }
        };
        let data = JobCompleted {
            job_id: job.job_id.clone(),
            project_id: job.project_id.clone(),
            user_id: job.user_id.clone(),
            output_path: input.output_path.clone(),
            size_bytes: input.reel.size_bytes,
            duration_seconds: input.reel.duration_seconds,
            crc32c: input.reel.crc32c.clone(),
            skipped_clips: input.skipped_clips.clone(),
            warnings: input.warnings.clone(),
            mode: input.reel.mode,
            job_type: reel_events::JobType::VideoStitching,
            retry_attempt: Some(job.retry_attempt),
            cost,
        };
        let completed = ctx.event(event, types::JOB_COMPLETED, job.retry_attempt, &data);
        let record = binding::encode_structured(&completed).data;
        if let Err(e) = ctx.work.put(&marker, Box::pin(std::io::Cursor::new(record)), PutMode::Overwrite).await {
            return Outcome::failed("recording the completion", &e);
        }
        clean_up(ctx, job).await;
        ctx.progress.report(100.0);
        Outcome::Emit(vec![completed])
    }
}

/// What a completed job leaves behind goes: its workspace, its project lock and any
/// cancel marker. Idempotent, so every delivery of a completion runs it.
async fn clean_up(ctx: &Context, job: &JobSpec) {
    match delete_prefix(ctx.work.as_ref(), &ctx.work_prefix()).await {
        Ok(n) => info!(files = n, "workspace cleaned"),
        Err(e) => {
            warn!(error = %e, "could not clean the workspace; the work bucket's lifecycle rule will")
        }
    }
    reel_runtime::tenancy::release(ctx.work.as_ref(), &job.job_ref()).await;
    if let Err(e) = ctx.work.delete(&cancel_marker_key(&job.job_id)).await {
        warn!(error = %e, "could not remove the cancel marker");
    }
}

fn previous_attempt_matches(previous: &Event, attempt: u32) -> bool {
    reel_events::envelope::data_json(previous)
        .ok()
        .and_then(|d| d.get("retryAttempt").and_then(|v| v.as_u64()))
        .unwrap_or(0) as u32
        == attempt
}

async fn read_marker(ctx: &Context, key: &str) -> Option<Event> {
    let mut reader = match ctx.work.get(key).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return None,
        Err(e) => {
            warn!(error = %e, "cannot read the completion record");
            return None;
        }
    };
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.ok()?;
    let message = reel_events::message::PubsubMessage {
        data: bytes,
        attributes: [(binding::CONTENT_TYPE.to_string(), binding::STRUCTURED_CONTENT_TYPE.to_string())].into(),
        ordering_key: String::new(),
    };
    binding::decode(&message).ok()
}
