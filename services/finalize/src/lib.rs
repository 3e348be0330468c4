//! The finalize stage: announces the finished reel with `job.completed` and cleans the
//! job's workspace.
//!
//! It records the completion under `control/completed/{jobId}` (holding the event), so a
//! redelivery re-emits the very same event (same id; the fold ignores the duplicate) and
//! a repeated request for the job is skipped by validate.

use async_trait::async_trait;
use reel_events::payload::{JobCompleted, ReelUploaded};
use reel_events::{types, Event, Stage};
use reel_runtime::config::Settings;
use reel_runtime::location::{Location, StoreResolver};
use reel_runtime::output;
use reel_runtime::stage::{
    clean_up_job, decode_payload, record_completion, recorded_completion, Context, FromSettings, Handler, LateDelivery,
    Outcome,
};
use reel_runtime::store::StoreError;
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
        if let Some(previous) = recorded_completion(ctx, &job.job_id).await {
            if !job.force_restart || previous_attempt_matches(&previous, job.retry_attempt) {
                info!("job already completed; re-emitting its job.completed");
                // The first delivery may have died between recording and cleaning up.
                clean_up_job(ctx, &job.job_ref()).await;
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
            mode: Some(input.reel.mode),
            clip_paths: None,
            job_type: reel_events::JobType::VideoStitching,
            retry_attempt: Some(job.retry_attempt),
            cost,
        };
        let completed = ctx.event(event, types::JOB_COMPLETED, job.retry_attempt, &data);
        if let Err(e) = record_completion(ctx, &completed).await {
            return Outcome::failed("recording the completion", &e);
        }
        clean_up_job(ctx, &job.job_ref()).await;
        ctx.progress.report(100.0);
        Outcome::Emit(vec![completed])
    }
}

fn previous_attempt_matches(previous: &Event, attempt: u32) -> bool {
    reel_events::envelope::data_json(previous)
        .ok()
        .and_then(|d| d.get("retryAttempt").and_then(|v| v.as_u64()))
        .unwrap_or(0) as u32
        == attempt
}
