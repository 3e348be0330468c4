//! The stitch stage: joins the job's clips into one MP4 with ffmpeg.
//!
//! Stream copy (concat demuxer) when every clip matches exactly; otherwise each clip is
//! normalised to the orientation's frame, frame rate and audio layout, and the segments
//! are joined. Normalised segments are kept in the workspace (`norm/NNN.mp4`) so a
//! redelivery after a crash re-encodes only what is missing. The reel lands in the
//! workspace as `reel.mp4` with its facts in `reel.json`; a redelivery that finds both
//! re-emits the same event without touching ffmpeg.
//!
//! When the workspace is a bucket and the clips can be joined as they are, no clip is
//! downloaded: their headers are read with ranged reads, and the reel is composed in the
//! store from a small header object and the clip objects themselves
//! ([`compose_in_store`]); no media byte passes through this program.

use async_trait::async_trait;
use reel_events::payload::{ClipsDownloaded, ReelFacts, ReelStitched, SkippedClip};
use reel_events::{types, ErrorType, Event, Mode, Stage};
use reel_media::{Assembled, CancelToken, Classify, MediaConfig, MediaError, RunOptions};
use reel_runtime::config::Settings;
use reel_runtime::stage::{decode_payload, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::{self, ObjectMeta, PutMode, PutOptions, RangedReader};
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
        let emit = |record: StitchRecord| {
            let mut skipped_clips = input.skipped_clips.clone();
            skipped_clips.extend(record.skipped);
            let mut warnings = input.warnings.clone();
            warnings.extend(record.warnings);
            let data = ReelStitched {
                job: job.clone(),
                work_key: reel_key.clone(),
                reel: record.facts,
                skipped_clips,
                warnings: dedup(warnings),
            };
            Outcome::Emit(vec![ctx.event(event, types::REEL_STITCHED, job.retry_attempt, &data)])
        };

        // Idempotency: a finished reel from an earlier delivery is reused.
        if let (Ok(Some(_)), Some(record)) =
            (ctx.work.head(&reel_key).await, read_json::<StitchRecord>(ctx, &facts_key).await)
        {
            info!("reel already stitched; re-emitting");
            return emit(record);
        }

        let infos: Vec<_> = input.clips.iter().map(|c| c.info.clone()).collect();
        let plan = reel_media::plan(&infos, job.orientation, job.compression);
        info!(mode = %plan.mode, reason = %plan.reason, clips = input.clips.len(), "stitch plan");

        // Only this job's own files: a forged work message cannot point stitch elsewhere.
        if let Some(f) = input.clips.iter().find_map(|clip| ctx.check_work_key(&clip.work_key).err()) {
            return Outcome::Reject(f);
        }
        // A bucket for a workspace, and clips that join as they are: compose the reel there.
        if plan.mode == Mode::Copy && ctx.work.local_path(&reel_key).is_none() {
            match compose_in_store(ctx, &input, &reel_key).await {
                Ok(Some((meta, info))) => {
                    ctx.progress.report(100.0);
                    let facts = ReelFacts {
                        size_bytes: meta.size,
                        duration_seconds: info.duration_seconds,
                        crc32c: store::crc32c_base64(meta.crc32c),
                        mode: Mode::Copy,
                    };
                    info!(size = meta.size, duration = info.duration_seconds, "reel composed in the store");
                    let record = StitchRecord { facts, skipped: Vec::new(), warnings: Vec::new() };
                    return save_and_emit(ctx, &facts_key, record, emit).await;
                }
                // Declined: joined below, by ffmpeg (which says why in the warnings).
                Ok(None) => {}
                Err(outcome) => return outcome,
            }
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
        let mut warnings = Vec::new();
        let result = match (plan.mode, &plan.target) {
            (Mode::Copy, _) => {
                let progress = ctx.progress.clone();
                let mut on_progress = move |secs: f64| progress.report(secs * 100.0 / total_seconds);
                match join(&run, &inputs, &target_path, &mut warnings, &mut on_progress).await {
                    Ok(()) => Ok(Vec::new()),
                    Err(e @ (MediaError::Cancelled | MediaError::Timeout | MediaError::DiskFull { .. })) => {
                        Err(Outcome::failed("stitching", &e))
                    }
                    Err(e) => {
                        // A stream copy that ffmpeg refuses is not the end: re-encode instead.
                        warn!(error = %e, "stream copy failed; falling back to re-encode");
                        mode = Mode::Reencode;
                        let target = reel_media::EncodeTarget::new(job.orientation, job.compression);
                        reencode(&run, &input, &inputs, &target, &target_path, &mut warnings).await
                    }
                }
            }
            (Mode::Reencode, Some(target)) => {
                reencode(&run, &input, &inputs, target, &target_path, &mut warnings).await
            }
            (Mode::Reencode, None) => {
                Err(Outcome::Reject(Failure::new(ErrorType::Internal, "the plan says re-encode but names no target")))
            }
        };
        let skipped = match result {
            Ok(skipped) => skipped,
            Err(outcome) => return outcome,
        };
        warnings.extend(skipped.iter().map(|s| format!("skipped {}: {}", s.path, s.reason)));
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
        let record = StitchRecord { facts, skipped, warnings };
        info!(size, duration = info.duration_seconds, %mode, "reel stitched");
        save_and_emit(ctx, &facts_key, record, emit).await
    }
}

/// Save the reel's facts beside it (a redelivery re-emits them), then emit.
async fn save_and_emit(
    ctx: &Context,
    facts_key: &str,
    record: StitchRecord,
    emit: impl FnOnce(StitchRecord) -> Outcome,
) -> Outcome {
    let json = serde_json::to_vec(&record).expect("facts serialize");
    if let Err(e) = ctx.work.put(facts_key, Box::pin(std::io::Cursor::new(json)), PutMode::Overwrite).await {
        return Outcome::failed("saving the reel's facts", &e);
    }
    emit(record)
}

/// The copy path on a workspace in a bucket: the clips' headers are read with ranged
/// reads ([`RangedReader`]), the zero-copy assembler plans the reel as a new header
/// followed by the clip files as they are ([`reel_media::whole_file_assembly_header`]),
/// and the store composes it from a header object and the clip objects (Cloud Storage
/// compose). The reel is then checked by reading its headers back. `Ok(None)` when the
/// assembler declines (the caller joins the clips with ffmpeg instead).
async fn compose_in_store(
    ctx: &Context,
    input: &ClipsDownloaded,
    reel_key: &str,
) -> Result<Option<(ObjectMeta, reel_events::ClipInfo)>, Outcome> {
    let mut sources = Vec::with_capacity(input.clips.len());
    for clip in &input.clips {
        let key = &clip.work_key;
        match ctx.work.head(key).await {
            Ok(Some(meta)) => sources.push((key.clone(), meta.size)),
            Ok(None) => {
                let missing = store::StoreError::NotFound(key.clone());
                return Err(Outcome::failed(&format!("reading {key} in the workspace"), &missing));
            }
            Err(e) => return Err(Outcome::failed(&format!("reading {key} in the workspace"), &e)),
        }
    }
    let handle = tokio::runtime::Handle::current();
    let (work, clips) = (ctx.work.clone(), sources.clone());
    let planned = tokio::task::spawn_blocking(move || {
        let readers = clips
            .iter()
            .map(|(key, size)| (RangedReader::new(work.clone(), key, *size, handle.clone()), *size))
            .collect();
        reel_media::whole_file_assembly_header(readers)
    })
    .await
    .map_err(|e| Outcome::Retry(Failure::new(ErrorType::Internal, format!("the assembly task failed: {e}"))))?;
    let header = match planned {
        Ok(header) => header,
        Err(why) => {
            info!(reason = %why, "the clips cannot be composed as they are; joining them here");
            return Ok(None);
        }
    };
    let head_key = format!("{reel_key}.head");
    let body = Box::pin(std::io::Cursor::new(header));
    if let Err(e) = ctx.work.put(&head_key, body, PutMode::Overwrite).await {
        return Err(Outcome::failed("saving the reel's header", &e));
    }
    let mut parts = vec![head_key.clone()];
    parts.extend(sources.into_iter().map(|(key, _)| key));
    let composed = ctx.work.compose(&parts, reel_key, &PutOptions::new(PutMode::Overwrite)).await;
    if let Err(e) = ctx.work.delete(&head_key).await {
        warn!(key = %head_key, error = %e, "could not delete the reel's header object");
    }
    let meta = composed.map_err(|e| Outcome::failed("composing the reel in the workspace", &e))?;
    let (work, key, size, handle) =
        (ctx.work.clone(), reel_key.to_string(), meta.size, tokio::runtime::Handle::current());
    let read_back = tokio::task::spawn_blocking(move || {
        reel_media::read_headers(RangedReader::new(work, &key, size, handle), size)
    })
    .await
    .map_err(|e| Outcome::Retry(Failure::new(ErrorType::Internal, format!("the check task failed: {e}"))))?;
    match read_back {
        Ok(info) => Ok(Some((meta, info))),
        Err(why) => Err(Outcome::Retry(Failure::new(
            ErrorType::Internal,
            format!("the reel composed in the workspace does not read back: {why}"),
        ))),
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|w| seen.insert(w.clone()));
    v
}

/// What stitch keeps beside the reel in the workspace (`reel.json`), so a redelivery
/// re-emits exactly what the first delivery would have.
#[derive(serde::Serialize, serde::Deserialize)]
struct StitchRecord {
    #[serde(flatten)]
    facts: ReelFacts,
    /// Clips that broke off mid-stream and were left out.
    #[serde(default)]
    skipped: Vec<SkippedClip>,
    /// What stitch has to say (a refused stream copy, the skipped clips).
    #[serde(default)]
    warnings: Vec<String>,
}

/// Normalise each clip into `norm/NNN.mp4` in the workspace (reusing any already
/// there), then join the segments by stream copy. A clip that turns out broken
/// mid-stream ("corrupt file → skip, continue") is left out while two or more remain;
/// the clips left out are returned.
async fn reencode(
    run: &Run<'_>,
    input: &ClipsDownloaded,
    inputs: &[PathBuf],
    target: &reel_media::EncodeTarget,
    output: &std::path::Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<SkippedClip>, Outcome> {
    let mut skipped = Vec::new();
    let segments = normalize_all(run, input, inputs, target, &mut skipped).await.map_err(|e| {
        if clip_at_fault(&e) {
            // Only clips broken mid-stream get here: every other one was normalised.
            let reasons: Vec<String> = skipped.iter().map(|s| format!("{}: {}", s.path, s.reason)).collect();
            Outcome::Reject(Failure::new(
                ErrorType::InsufficientClips,
                format!(
                    "fewer than 2 clips could be decoded to the end; a reel needs at least 2. Skipped: {}",
                    reasons.join("; ")
                ),
            ))
        } else {
            Outcome::failed("stitching", &e)
        }
    })?;
    let Run { ctx, total_seconds, .. } = *run;
    let progress = ctx.progress.clone();
    let mut on_progress = move |secs: f64| progress.report(95.0 + secs * 5.0 / total_seconds);
    join(run, &segments, output, warnings, &mut on_progress)
        .await
        .map_err(|e| Outcome::failed("joining the segments", &e))?;
    Ok(skipped)
}

/// Joins clips (or segments) without re-encoding: by zero-copy assembly (a new header
/// and the inputs' media bytes as they are), or, where it declines, by ffmpeg's concat
/// demuxer; the decline goes into `warnings`, so the job's result says why.
async fn join(
    run: &Run<'_>,
    inputs: &[PathBuf],
    output: &std::path::Path,
    warnings: &mut Vec<String>,
    on_progress: &mut (dyn FnMut(f64) + Send),
) -> Result<(), MediaError> {
    match reel_media::assemble_copy(inputs, output, run.opts).await? {
        Assembled::Written { size_bytes } => {
            info!(size_bytes, inputs = inputs.len(), "joined by zero-copy assembly");
            on_progress(run.total_seconds);
            Ok(())
        }
        Assembled::Declined { reason } => {
            info!(%reason, "zero-copy assembly declined; joining with ffmpeg");
            let joined = reel_media::concat_copy(run.media, inputs, output, run.opts, on_progress).await;
            warnings.push(match &joined {
                Ok(()) => format!("zero-copy assembly declined ({reason}); joined with ffmpeg's concat"),
                Err(e) => format!("zero-copy assembly declined ({reason}); ffmpeg's concat failed too: {e}"),
            });
            joined
        }
    }
}

/// Whether an encode failed because of its clip (broken mid-stream, or ffmpeg refusing
/// it): the matrix's "corrupt file", which skips the clip.
fn clip_at_fault(e: &MediaError) -> bool {
    let verdict = e.verdict();
    verdict.error_type == ErrorType::CorruptInput && !verdict.retryable
}

/// The normalised segments of the clips that decode to the end, in order; the others
/// go to `skipped`. Fails with the last such clip's error when fewer than two are left,
/// and with any other error at once.
async fn normalize_all(
    run: &Run<'_>,
    input: &ClipsDownloaded,
    inputs: &[PathBuf],
    target: &reel_media::EncodeTarget,
    skipped: &mut Vec<SkippedClip>,
) -> Result<Vec<PathBuf>, MediaError> {
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
            match reel_media::normalize_clip(media, path, &clip.info, target, &seg_path, opts, &mut on_progress).await {
                Ok(()) => {}
                Err(e) if clip_at_fault(&e) => {
                    warn!(clip = clip.index, error = %e, "clip broken mid-stream; leaving it out");
                    skipped.push(SkippedClip { path: clip.source_path.clone(), reason: e.to_string() });
                    *done_seconds.lock().expect("lock") += clip.info.duration_seconds.max(0.0);
                    if input.clips.len() - skipped.len() < 2 {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
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
    Ok(segments)
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
