//! The upload stage: puts the reel at its `outputPath`, create-only, and verifies it.
//!
//! The put is create-only (Cloud Storage `ifGenerationMatch=0`; a local file appears by
//! `link(2)`), so two deliveries can never both write. If the output already exists with
//! the reel's size and CRC32C, the earlier delivery finished the work and the event is
//! re-emitted; a different object there fails the job unless `forceRestart` is set.

use async_trait::async_trait;
use reel_events::payload::{ReelStitched, ReelUploaded};
use reel_events::{types, ErrorType, Event, Stage};
use reel_runtime::config::Settings;
use reel_runtime::stage::{cancel_marker_key, decode_payload, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::{crc32c_base64, ObjectMeta, PutMode, StoreError};
use tracing::info;

/// The upload stage.
#[derive(Debug, Default)]
pub struct Upload;

impl FromSettings for Upload {
    fn from_settings(_: &Settings) -> Upload {
        Upload
    }
}

#[async_trait]
impl Handler for Upload {
    fn stage(&self) -> Stage {
        Stage::Upload
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        let input: ReelStitched = match decode_payload(event) {
            Ok(v) => v,
            Err(outcome) => return outcome,
        };
        let job = &input.job;
        let emit = || {
            let data = ReelUploaded {
                job: job.clone(),
                output_path: job.output_path.clone(),
                reel: input.reel.clone(),
                skipped_clips: input.skipped_clips.clone(),
                warnings: input.warnings.clone(),
            };
            Outcome::Emit(vec![ctx.event(event, types::REEL_UPLOADED, job.retry_attempt, &data)])
        };
        let matches =
            |meta: &ObjectMeta| meta.size == input.reel.size_bytes && crc32c_base64(meta.crc32c) == input.reel.crc32c;

        // Only this job's own reel: a forged work message cannot publish another file.
        if let Err(f) = ctx.check_work_key(&input.work_key) {
            return Outcome::Reject(f);
        }
        let location = match ctx.boundary.check("outputPath", &job.output_path, &job.project_id) {
            Ok(l) => l,
            Err(f) => return Outcome::Reject(f),
        };
        let (store, key) = match ctx.resolver.resolve(&location) {
            Ok(x) => x,
            Err(e) => return Outcome::failed("opening the output location", &e),
        };
        match store.head(&key).await {
            Ok(Some(meta)) if matches(&meta) => {
                info!(output = %job.output_path, "reel already uploaded; re-emitting");
                return emit();
            }
            Ok(Some(_)) if !job.force_restart => {
                return Outcome::Reject(Failure::new(
                    ErrorType::InvalidRequest,
                    format!(
                        "{} already exists and is a different file; choose another outputPath or send forceRestart",
                        job.output_path
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) => return Outcome::failed("checking the output location", &e),
        }
        let mode = if job.force_restart { PutMode::Overwrite } else { PutMode::CreateOnly };
        ctx.progress.report(5.0);
        let written = match (ctx.work.local_path(&input.work_key), store.local_path(&key)) {
            // Both local: link (no copy) when on one filesystem.
            (Some(src), Some(dest)) if mode == PutMode::CreateOnly && link(&src, &dest).await => store.head(&key).await,
            _ => match ctx.work.get(&input.work_key).await {
                Ok(body) => store.put(&key, body, mode).await.map(Some),
                Err(e) => return Outcome::failed("reading the reel from the workspace", &e),
            },
        };
        let meta = match written {
            Ok(Some(meta)) => meta,
            Ok(None) => return Outcome::Retry(Failure::new(ErrorType::Internal, "the output vanished after writing")),
            Err(StoreError::AlreadyExists(_)) => {
                // Another delivery won the race; verify what it wrote.
                match store.head(&key).await {
                    Ok(Some(meta)) if matches(&meta) => return emit(),
                    _ => {
                        return Outcome::Reject(Failure::new(
                            ErrorType::InvalidRequest,
                            format!("{} was written by someone else meanwhile", job.output_path),
                        ))
                    }
                }
            }
            Err(e) => return Outcome::failed(&format!("writing {}", job.output_path), &e),
        };
        if !matches(&meta) {
            let _ = store.delete(&key).await;
            return Outcome::Retry(Failure::new(
                ErrorType::Internal,
                format!(
                    "verification failed: wrote {} bytes crc32c {}, expected {} bytes crc32c {}",
                    meta.size,
                    crc32c_base64(meta.crc32c),
                    input.reel.size_bytes,
                    input.reel.crc32c
                ),
            ));
        }
        // A cancel that arrived while the reel was being written wins: the reel it wrote
        // goes again, so a cancelled job leaves no output.
        if ctx.cancel.is_cancelled() || matches!(ctx.work.head(&cancel_marker_key(&job.job_id)).await, Ok(Some(_))) {
            info!(output = %job.output_path, "cancelled while uploading; removing the reel");
            if let Err(e) = store.delete(&key).await {
                return Outcome::failed("removing the reel of a cancelled job", &e);
            }
            return Outcome::Cancel;
        }
        ctx.progress.report(100.0);
        info!(output = %job.output_path, size = meta.size, "reel uploaded");
        emit()
    }
}

/// `link(2)`: atomic and create-only.
async fn link(src: &std::path::Path, dest: &std::path::Path) -> bool {
    if let Some(parent) = dest.parent() {
        if tokio::fs::create_dir_all(parent).await.is_err() {
            return false;
        }
    }
    tokio::fs::hard_link(src, dest).await.is_ok()
}
