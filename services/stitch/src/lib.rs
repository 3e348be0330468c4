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
use reel_media::{CancelToken, MediaConfig, MediaError, RunOptions};
use reel_runtime::config::Settings;
use reel_runtime::stage::{decode_payload, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::{self, PutMode};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The stitch stage.
#[derive(Debug, Clone, Default)]
pub struct Stitch {
    /// How ffmpeg runs.
    media: MediaConfig,
}

impl Stitch {
    /// A stitch stage that runs ffmpeg as `media` says.
    pub fn new(media: MediaConfig) -> Stitch {
        Stitch { media }
    }
}

impl FromSettings for Stitch {
    fn from_settings(settings: &Settings) -> Stitch {
        Stitch::new(settings.media.clone())
    }
}

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

        // Only this job's own files: a forged work message cannot point stitch elsewhere.
        if let Some(f) = input.clips.iter().find_map(|clip| ctx.check_work_key(&clip.work_key).err()) {
            return Outcome::Reject(f);
        }
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
        let run = Run { ctx, media: &self.media, opts: &opts, total_seconds };
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
                match reel_media::concat_copy(&self.media, &inputs, &target_path, &opts, &mut on_progress).await {
                    Ok(()) => Ok(()),
                    Err(e @ (MediaError::Cancelled | MediaError::Timeout | MediaError::DiskFull { .. })) => Err(e),
                    Err(e) => {
                        // A stream copy that ffmpeg refuses is not the end: re-encode instead.
                        warn!(error = %e, "stream copy failed; falling back to re-encode");
                        mode = Mode::Reencode;
                        let target = reel_media::EncodeTarget::new(job.orientation, job.compression);
                        reencode(&run, &input, &inputs, &target, &target_path).await
                    }
                }
            }
            (Mode::Reencode, Some(target)) => reencode(&run, &input, &inputs, target, &target_path).await,
            (Mode::Reencode, None) => Err(MediaError::Io(std::io::Error::other("re-encode plan without a target"))),
        };
        if let Err(e) = result {
            return Outcome::failed("stitching", &e);
        }
        if mode == Mode::Reencode && plan.mode == Mode::Copy {
            warnings.push("stream copy failed; the reel was re-encoded".to_string());
        }

        // Check what ffmpeg wrote before anyone downstream sees it.
        // The reel is as long as all its clips together: only the per-clip duration bound is lifted.
        let reel_config = self.media.clone().set_limits(self.media.limits.set_max_duration_seconds(f64::INFINITY));
        let info = match reel_media::probe(&reel_config, &target_path).await {
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
                Err(e) => return Outcome::failed("reading the reel", &e),
            }
        } else {
            match store::put_file(ctx.work.as_ref(), &reel_key, &target_path, PutMode::Overwrite).await {
                Ok(meta) => meta,
                Err(e) => return Outcome::failed("saving the reel to the workspace", &e),
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
            return Outcome::failed("saving the reel's facts", &e);
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
    run: &Run<'_>,
    input: &ClipsDownloaded,
    inputs: &[PathBuf],
    target: &reel_media::EncodeTarget,
    output: &std::path::Path,
) -> Result<(), MediaError> {
    let Run { ctx, media, opts, total_seconds } = *run;
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
            reel_media::normalize_clip(media, path, &clip.info, target, &seg_path, opts, &mut on_progress).await?;
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
    reel_media::concat_copy(media, &segments, output, opts, &mut on_progress).await
}

/// What every ffmpeg run of one delivery shares.
#[derive(Clone, Copy)]
struct Run<'a> {
    ctx: &'a Context,
    media: &'a MediaConfig,
    opts: &'a RunOptions,
    /// Seconds of video in all clips, for progress.
    total_seconds: f64,
}

async fn local_copy(ctx: &Context, key: &str) -> Result<PathBuf, Outcome> {
    if let Some(path) = ctx.work.local_path(key) {
        return Ok(path);
    }
    let name = key.rsplit('/').next().unwrap_or("clip");
    let dest = ctx.scratch.join(name);
    store::get_to_file(ctx.work.as_ref(), key, &dest)
        .await
        .map_err(|e| Outcome::failed(&format!("fetching {key} from the workspace"), &e))?;
    Ok(dest)
}

async fn read_json<T: serde::de::DeserializeOwned>(ctx: &Context, key: &str) -> Option<T> {
    use tokio::io::AsyncReadExt;
    let mut reader = ctx.work.get(key).await.ok()?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}
