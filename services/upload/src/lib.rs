//! The upload stage: puts the reel at its `outputPath` and verifies it.
//!
//! Right before writing it applies the output rule ([`reel_runtime::output`]): an output
//! that is there already is replaced only if reel wrote it for the job's project and the
//! job has `forceRestart`; anything else fails the job with `permission_denied`. The put
//! carries the rule's precondition (create-only, or the generation it judged) and the
//! output metadata (`reel-project`, `reel-job`), so two deliveries can never both write
//! and a writer that came in between is never overwritten. An output that this job
//! already wrote (its `reel-job`, the reel's size and CRC32C) means an earlier delivery
//! finished the work: the event is re-emitted without a second write.

use async_trait::async_trait;
use reel_events::payload::{ReelStitched, ReelUploaded};
use reel_events::{types, ErrorType, Event, Stage};
use reel_runtime::config::Settings;
use reel_runtime::output;
use reel_runtime::stage::{cancel_marker_key, decode_payload, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::{crc32c_base64, ObjectMeta, PutOptions, StoreError};
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
        // The reel this very job already wrote there (a redelivery, or another delivery
        // that won the race): the work is done, nothing is written again.
        let already_written =
            |meta: &ObjectMeta| output::written_by_job(meta, &job.project_id, &job.job_id) && matches(meta);

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
        // The output rule, checked again right before writing (validate checked it before
        // anything was downloaded; the output may have changed since).
        let existing = match store.head(&key).await {
            Ok(existing) => existing,
            Err(e) => return Outcome::failed("checking the output location", &e),
        };
        if existing.as_ref().is_some_and(already_written) {
            info!(output = %job.output_path, "reel already uploaded; re-emitting");
            return emit();
        }
        let expect = match output::decide(existing.as_ref(), &job.project_id, job.force_restart) {
            Ok(expect) => expect,
            Err(refusal) => return Outcome::Reject(refusal.failure(&job.output_path)),
        };
        // The write expects exactly what was judged: nothing (create-only) or the judged
        // generation of the project's own reel, so a writer that came in between is never
        // overwritten.
        let options =
            PutOptions::new(expect.put_mode()).with_metadata(output::output_metadata(&job.project_id, &job.job_id));
        ctx.progress.report(5.0);
        // A local work file: hard-linked into place where the output is on its filesystem
        // (no copy). An object of the same service: copied by the service (no byte through
        // this program). Anything else: streamed.
        let server_side = match ctx.work.remote_object(&input.work_key) {
            Some(source) => store.put_copy_of(&source, &key, &options).await,
            None => Ok(None),
        };
        let written = match (server_side, ctx.work.local_path(&input.work_key)) {
            (Ok(Some(meta)), _) => Ok(meta),
            (Err(e), _) => Err(e),
            (Ok(None), Some(src)) => store.put_file_with(&key, &src, &options).await,
            (Ok(None), None) => match ctx.work.get(&input.work_key).await {
                Ok(body) => store.put_with(&key, body, &options).await,
                Err(e) => return Outcome::failed("reading the reel from the workspace", &e),
            },
        };
        let meta = match written {
            Ok(meta) => meta,
            Err(StoreError::AlreadyExists(_) | StoreError::PreconditionFailed(_)) => {
                // Someone wrote the output between the check and the write.
                match store.head(&key).await {
                    Ok(Some(meta)) if already_written(&meta) => return emit(),
                    _ => {
                        return Outcome::Reject(Failure::new(
                            ErrorType::PermissionDenied,
                            format!(
                                "{} was written by someone else while this job was writing it; reel did not \
                                 replace it",
                                job.output_path
                            ),
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
