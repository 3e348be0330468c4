//! The stitch stage: joins the job's clips into one MP4 with ffmpeg.
//!
//! Stream copy (concat demuxer) when every clip matches exactly; otherwise each clip is
//! normalised to the orientation's frame, frame rate and audio layout, and the segments
//! are joined. Normalised segments are kept in the workspace (`norm/NNN.mp4`) so a
//! redelivery after a crash re-encodes only what is missing. The reel lands in the
//! workspace as `reel.mp4` with its facts in `reel.json`; a redelivery that finds both
//! re-emits the same event without touching ffmpeg.

use async_trait::async_trait;
use reel_events::payload::{ClipsDownloaded, ReelFacts, ReelStitched};
use reel_events::{types, ErrorType, Event, Mode, Stage};
use reel_media::{CancelToken, MediaError, RunOptions};
use reel_runtime::stage::{decode_payload, store_failure, Context, Failure, Handler, Outcome};
use reel_runtime::store::{self, PutMode};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The stitch stage.
#[derive(Debug, Default)]
pub struct Stitch;

#[async_trait]
impl Handler for Stitch {
    fn stage(&self) -> Stage {
        Stage::Stitch
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        let input: ClipsDownloaded = match decode_payload(event) {
            Ok(v) => v,
            Err(outcome) => return outcome,
        };
        let job = &input.job;
        let prefix = ctx.work_prefix();
        let reel_key = format!("{prefix}reel.mp4");
        let facts_key = format!("{prefix}reel.json");
        let emit = |facts: ReelFacts, warnings: Vec<String>| {
            let data = ReelStitched {
                job: job.clone(),
                work_key: reel_key.clone(),
                reel: facts,
                skipped_clips: input.skipped_clips.clone(),
                warnings,
            };
            Outcome::Emit(vec![ctx.event(event, types::REEL_STITCHED, job.retry_attempt, &data)])
        };

        // Idempotency: a finished reel from an earlier delivery is reused.
        if let (Ok(Some(_)), Some(facts)) =
            (ctx.work.head(&reel_key).await, read_json::<ReelFacts>(ctx, &facts_key).await)
        {
            info!("reel already stitched; re-emitting");
            return emit(facts, input.warnings.clone());
        }

        let infos: Vec<_> = input.clips.iter().map(|c| c.info.clone()).collect();
        let plan = reel_media::plan(&infos, job.orientation, job.compression);
        info!(mode = %plan.mode, reason = %plan.reason, clips = input.clips.len(), "stitch plan");

        // Local paths of the clips (the workspace may be a bucket: then download them).
        let mut inputs = Vec::new();
        for clip in &input.clips {
            match local_copy(ctx, &clip.work_key).await {
                Ok(path) => inputs.push(path),
                Err(outcome) => return outcome,
            }
        }
        let total_seconds: f64 = input.clips.iter().map(|c| c.info.duration_seconds.max(0.0)).sum::<f64>().max(0.001);
        let opts = RunOptions { cancel: CancelToken::from(ctx.cancel.clone()), deadline: None };
        let out_path = ctx.scratch.join("reel.mp4");
        let local_reel = ctx.work.local_path(&reel_key);
        let target_path = local_reel.clone().unwrap_or_else(|| out_path.clone());
        if let Some(parent) = target_path.parent() {
            if let Err(e) = tokio::fs::create_dir_all(parent).await {
                return Outcome::Retry(Failure::new(
                    ErrorType::ResourceExhausted,
                    format!("cannot create {}: {e}", parent.display()),
                ));
            }
        }

        let mut mode = plan.mode;
        let mut warnings = input.warnings.clone();
        let result = match (plan.mode, &plan.target) {
            (Mode::Copy, _) => {
                let progress = ctx.progress.clone();
                let mut on_progress = move |secs: f64| progress.report(secs * 100.0 / total_seconds);
                match reel_media::concat_copy(&inputs, &target_path, &opts, &mut on_progress).await {
                    Ok(()) => Ok(()),
                    Err(e @ (MediaError::Cancelled | MediaError::Timeout | MediaError::DiskFull(_))) => Err(e),
                    Err(e) => {
                        // A stream copy that ffmpeg refuses is not the end: re-encode instead.
                        warn!(error = %e, "stream copy failed; falling back to re-encode");
                        mode = Mode::Reencode;
                        let target = reel_media::EncodeTarget::new(job.orientation, job.compression);
                        reencode(ctx, &input, &inputs, &target, &target_path, &opts, total_seconds).await
                    }
                }
            }
            (Mode::Reencode, Some(target)) => {
                reencode(ctx, &input, &inputs, target, &target_path, &opts, total_seconds).await
            }
            (Mode::Reencode, None) => {
                Err(MediaError::Failed { status: "plan".into(), stderr_tail: "re-encode plan without a target".into() })
            }
        };
        if let Err(e) = result {
            return media_failure("stitching", e);
        }
        if mode == Mode::Reencode && plan.mode == Mode::Copy {
            warnings.push("stream copy failed; the reel was re-encoded".to_string());
        }

        // Check what ffmpeg wrote before anyone downstream sees it.
        let info = match reel_media::probe(&target_path).await {
            Ok(info) => info,
            Err(e) => {
                return Outcome::Retry(Failure::new(
                    ErrorType::Internal,
                    format!("the stitched reel does not probe: {e}"),
                ))
            }
        };
        // The checksum comes from the store, once: a local work store checksums the file
        // it already holds (and remembers it, so upload's check of the linked output
        // costs nothing); a remote one checksums what it uploads.
        let meta = if local_reel.is_some() {
            match ctx.work.head(&reel_key).await {
                Ok(Some(meta)) => meta,
                Ok(None) => {
                    return Outcome::Retry(Failure::new(
                        ErrorType::Internal,
                        "the stitched reel vanished from the workspace",
                    ))
                }
                Err(e) => return store_failure("reading the reel", &e),
            }
        } else {
            match store::put_file(ctx.work.as_ref(), &reel_key, &target_path, PutMode::Overwrite).await {
                Ok(meta) => meta,
                Err(e) => return store_failure("saving the reel to the workspace", &e),
            }
        };
        let (crc, size) = if meta.crc32c == 0 && local_reel.is_none() {
            // A store that reported no checksum: compute it here.
            match store::crc32c_of_file(&target_path).await {
                Ok(x) => x,
                Err(e) => {
                    return Outcome::Retry(Failure::new(ErrorType::Internal, format!("cannot read the reel: {e}")))
                }
            }
        } else {
            (meta.crc32c, meta.size)
        };
        let facts = ReelFacts {
            size_bytes: size,
            duration_seconds: info.duration_seconds,
            crc32c: store::crc32c_base64(crc),
            mode,
        };
        let json = serde_json::to_vec(&facts).expect("facts serialize");
        if let Err(e) = ctx.work.put(&facts_key, Box::pin(std::io::Cursor::new(json)), PutMode::Overwrite).await {
            return store_failure("saving the reel's facts", &e);
        }
        info!(size, duration = info.duration_seconds, %mode, "reel stitched");
        emit(facts, dedup(warnings))
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|w| seen.insert(w.clone()));
    v
}

/// Normalise each clip into `norm/NNN.mp4` in the workspace (reusing any already
/// there), then join the segments by stream copy.
async fn reencode(
    ctx: &Context,
    input: &ClipsDownloaded,
    inputs: &[PathBuf],
    target: &reel_media::EncodeTarget,
    output: &std::path::Path,
    opts: &RunOptions,
    total_seconds: f64,
) -> Result<(), MediaError> {
    let prefix = ctx.work_prefix();
    let done_seconds = Arc::new(Mutex::new(0.0f64));
    let mut segments = Vec::new();
    // 95 % of the stage is encoding, the join is the rest.
    for (clip, path) in input.clips.iter().zip(inputs) {
        let key = format!("{prefix}norm/{:03}-{}x{}-{}.mp4", clip.index, target.width, target.height, target.crf);
        let local = ctx.work.local_path(&key);
        let exists = matches!(ctx.work.head(&key).await, Ok(Some(_)));
        let seg_path = local.clone().unwrap_or_else(|| ctx.scratch.join(format!("norm-{:03}.mp4", clip.index)));
        if exists {
            if local.is_none() {
                store::get_to_file(ctx.work.as_ref(), &key, &seg_path)
                    .await
                    .map_err(|e| MediaError::Io(std::io::Error::other(e.to_string())))?;
            }
            info!(clip = clip.index, "reusing normalised segment");
        } else {
            if let Some(parent) = seg_path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let base = *done_seconds.lock().expect("lock");
            let progress = ctx.progress.clone();
            let mut on_progress = move |secs: f64| progress.report((base + secs) * 95.0 / total_seconds);
            reel_media::normalize_clip(path, &clip.info, target, &seg_path, opts, &mut on_progress).await?;
            if local.is_none() {
                store::put_file(ctx.work.as_ref(), &key, &seg_path, PutMode::Overwrite)
                    .await
                    .map_err(|e| MediaError::Io(std::io::Error::other(e.to_string())))?;
            }
        }
        *done_seconds.lock().expect("lock") += clip.info.duration_seconds.max(0.0);
        ctx.progress.report(*done_seconds.lock().expect("lock") * 95.0 / total_seconds);
        segments.push(seg_path);
    }
    let progress = ctx.progress.clone();
    let mut on_progress = move |secs: f64| progress.report(95.0 + secs * 5.0 / total_seconds);
    reel_media::concat_copy(&segments, output, opts, &mut on_progress).await
}

async fn local_copy(ctx: &Context, key: &str) -> Result<PathBuf, Outcome> {
    if let Some(path) = ctx.work.local_path(key) {
        return Ok(path);
    }
    let name = key.rsplit('/').next().unwrap_or("clip");
    let dest = ctx.scratch.join(name);
    store::get_to_file(ctx.work.as_ref(), key, &dest)
        .await
        .map_err(|e| store_failure(&format!("fetching {key} from the workspace"), &e))?;
    Ok(dest)
}

async fn read_json<T: serde::de::DeserializeOwned>(ctx: &Context, key: &str) -> Option<T> {
    use tokio::io::AsyncReadExt;
    let mut reader = ctx.work.get(key).await.ok()?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The error matrix for ffmpeg.
fn media_failure(what: &str, err: MediaError) -> Outcome {
    let message = format!("{what}: {err}");
    match err {
        MediaError::Corrupt { .. } => Outcome::Reject(Failure::new(ErrorType::CorruptInput, message)),
        MediaError::DiskFull(_) => Outcome::Retry(Failure::new(ErrorType::ResourceExhausted, message)),
        MediaError::Timeout => Outcome::Reject(Failure::new(ErrorType::Timeout, message)),
        MediaError::Cancelled => Outcome::Retry(Failure::new(ErrorType::Internal, message)),
        MediaError::NotInstalled(_) => Outcome::Retry(Failure::new(ErrorType::Internal, message)),
        // SIGKILL from outside is what the kernel's OOM killer sends: retry, recorded as
        // resource_exhausted (on Cloud Run, replay to a larger-memory tier).
        MediaError::Failed { ref status, .. } if status.contains("SIGKILL") || status.contains("signal: 9") => {
            Outcome::Retry(Failure::new(ErrorType::ResourceExhausted, message))
        }
        _ => Outcome::Retry(Failure::new(ErrorType::Internal, message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error matrix for ffmpeg: corrupt → fail with corrupt_input; disk full or out of
    /// memory (ffmpeg killed) → retry as resource_exhausted or internal; timeout → timeout.
    #[test]
    fn ffmpeg_errors_follow_the_matrix() {
        let kind = |e| match media_failure("stitching", e) {
            Outcome::Retry(f) => ("retry", f.error_type),
            Outcome::Reject(f) => ("reject", f.error_type),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(MediaError::Corrupt { reason: "moov atom not found".into() }),
            ("reject", ErrorType::CorruptInput)
        );
        assert_eq!(
            kind(MediaError::DiskFull("No space left on device".into())),
            ("retry", ErrorType::ResourceExhausted)
        );
        assert_eq!(kind(MediaError::Timeout), ("reject", ErrorType::Timeout));
        assert_eq!(
            kind(MediaError::Failed { status: "signal: 9 (SIGKILL)".into(), stderr_tail: String::new() }),
            ("retry", ErrorType::ResourceExhausted)
        );
        assert_eq!(
            kind(MediaError::Failed { status: "exit status: 1".into(), stderr_tail: "Invalid data".into() }),
            ("retry", ErrorType::Internal)
        );
    }
}
