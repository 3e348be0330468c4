//! The download stage: brings every clip into the job's workspace and probes it.
//!
//! Clips are streamed (never held in memory); on a local disk they are hard-linked when
//! possible, so the embedded pipeline copies nothing. A clip that is missing, unreadable,
//! too large, too long or not a video is skipped with a reason; fewer than two usable
//! clips fail the job with `insufficient_clips`. A redelivered event reuses clips already
//! in the workspace (each has a `.probe.json` beside it once complete).

use async_trait::async_trait;
use reel_events::payload::{ClipsDownloaded, JobValidated, SkippedClip, WorkClip};
use reel_events::{types, ClipInfo, ErrorType, Event, Stage};
use reel_media::{Classify, MediaConfig, MediaError};
use reel_runtime::config::{DownloadConfig, Settings};
use reel_runtime::location::Location;
use reel_runtime::stage::{decode_payload, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::{self, PutMode, PutOptions, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// The download stage.
#[derive(Debug, Clone, Default)]
pub struct Download {
    config: DownloadConfig,
    /// How clips are probed, with this stage's per-clip duration bound.
    media: MediaConfig,
}

impl Download {
    /// A download stage with its settings and how it runs ffprobe.
    pub fn new(config: DownloadConfig, media: MediaConfig) -> Download {
        let limits = media.limits.set_max_duration_seconds(config.max_clip_seconds);
        Download { config, media: media.set_limits(limits) }
    }
}

impl FromSettings for Download {
    fn from_settings(settings: &Settings) -> Download {
        Download::new(settings.download.clone(), settings.media.clone())
    }
}

/// Why one clip could not be used, or that the whole job must stop.
enum ClipError {
    Skip(String),
    Stop(Outcome),
}

#[async_trait]
impl Handler for Download {
    fn stage(&self) -> Stage {
        Stage::Download
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        let input: JobValidated = match decode_payload(event) {
            Ok(v) => v,
            Err(outcome) => return outcome,
        };
        let job = &input.job;
        // validate refuses a path outside the job's roots; one that got here was put on
        // the work topic past it: fail the job before reading anything.
        for (i, raw) in job.clip_paths.iter().enumerate() {
            if let Err(f) = ctx.boundary.check(&format!("clip {}", i + 1), raw, &job.project_id) {
                if f.error_type == ErrorType::PermissionDenied {
                    return Outcome::Reject(f);
                }
            }
        }
        // The job's bytes are bounded before any is moved or decoded.
        let sizes = clip_sizes(ctx, &job.clip_paths).await;
        let planned: u64 = sizes.iter().flatten().filter(|size| **size <= self.config.max_clip_bytes).sum();
        if planned > self.config.max_job_bytes {
            return Outcome::Reject(Failure::new(
                ErrorType::InvalidRequest,
                format!(
                    "the clips add up to {planned} bytes; a job may have at most {} (REEL_MAX_JOB_BYTES)",
                    self.config.max_job_bytes
                ),
            ));
        }
        let total = job.clip_paths.len().max(1);
        let mut clips = Vec::new();
        let mut skipped = Vec::new();
        // Clips are fetched and probed a few at a time (probing is mostly ffprobe's
        // start-up), and kept in request order.
        let width = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
        let indexed: Vec<(usize, &String)> = job.clip_paths.iter().enumerate().collect();
        let mut done = 0usize;
        for chunk in indexed.chunks(width) {
            if ctx.cancel.is_cancelled() {
                return Outcome::Retry(Failure::new(ErrorType::Internal, "stopped"));
            }
            let results = futures::future::join_all(
                chunk.iter().map(|(index, raw)| fetch_clip(ctx, &self.config, &self.media, *index, raw, sizes[*index])),
            )
            .await;
            for ((_, raw), result) in chunk.iter().zip(results) {
                match result {
                    Ok(clip) => clips.push(clip),
                    Err(ClipError::Skip(reason)) => {
                        warn!(clip = %raw, %reason, "skipping clip");
                        skipped.push(SkippedClip { path: (*raw).clone(), reason });
                    }
                    Err(ClipError::Stop(outcome)) => return outcome,
                }
                done += 1;
                ctx.progress.report(done as f64 * 100.0 / total as f64);
            }
        }
        if clips.len() < 2 {
            let reasons: Vec<String> = skipped.iter().map(|s| format!("{}: {}", s.path, s.reason)).collect();
            return Outcome::Reject(Failure::new(
                ErrorType::InsufficientClips,
                format!(
                    "{} usable clip(s) of {}; a reel needs at least 2{}{}",
                    clips.len(),
                    job.clip_paths.len(),
                    if reasons.is_empty() { "" } else { ". Skipped: " },
                    reasons.join("; ")
                ),
            ));
        }
        let warnings = skipped.iter().map(|s| format!("skipped {}: {}", s.path, s.reason)).collect();
        info!(usable = clips.len(), skipped = skipped.len(), "clips ready");
        let data = ClipsDownloaded { job: job.clone(), clips, skipped_clips: skipped, warnings };
        Outcome::Emit(vec![ctx.event(event, types::CLIPS_DOWNLOADED, job.retry_attempt, &data)])
    }
}

/// The store, key and size of a clip, without reading it.
async fn clip_size(ctx: &Context, location: &Location, raw: &str) -> Result<(Arc<dyn Store>, String, u64), ClipError> {
    let (source, source_key) = ctx.resolver.resolve(location).map_err(|e| stop_or_skip("open", raw, e))?;
    // Only the size is needed here. For a local file, read it from the file system: a
    // store's `head` also checksums the file, a read of every byte for nothing.
    let size = match source.local_path(&source_key) {
        Some(path) => match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(ClipError::Skip("not found".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ClipError::Skip("not found".into())),
            Err(e) => return Err(stop_or_skip("read", raw, StoreError::from_io(raw, e))),
        },
        None => match source.head(&source_key).await {
            Ok(Some(m)) => m.size,
            Ok(None) => return Err(ClipError::Skip("not found".into())),
            Err(e) => return Err(stop_or_skip("read", raw, e)),
        },
    };
    Ok((source, source_key, size))
}

/// Every clip's size, read once and concurrently before anything moves (`None` where it
/// cannot be: the fetch then finds out why, and skips or stops).
async fn clip_sizes(ctx: &Context, clip_paths: &[String]) -> Vec<Option<u64>> {
    futures::future::join_all(clip_paths.iter().enumerate().map(|(i, raw)| async move {
        let location = ctx.boundary.check(&format!("clip {}", i + 1), raw, &ctx.job.project_id).ok()?;
        let (_, _, size) = clip_size(ctx, &location, raw).await.ok()?;
        Some(size)
    }))
    .await
}

async fn fetch_clip(
    ctx: &Context,
    config: &DownloadConfig,
    media: &MediaConfig,
    index: usize,
    raw: &str,
    known_size: Option<u64>,
) -> Result<WorkClip, ClipError> {
    let location = ctx
        .boundary
        .check(&format!("clip {}", index + 1), raw, &ctx.job.project_id)
        .map_err(|f| ClipError::Skip(f.message))?;
    let ext = location.extension().unwrap_or_else(|| "bin".into());
    let work_key = format!("{}clips/{index:03}.{ext}", ctx.work_prefix());
    let probe_key = format!("{work_key}.probe.json");

    // Resume: a clip fetched and probed by an earlier delivery is reused.
    if let (Ok(Some(meta)), Some(info)) =
        (ctx.work.head(&work_key).await, read_probe(ctx.work.as_ref(), &probe_key).await)
    {
        info!(clip = index, work_key = %work_key, "clip already in the workspace; reusing it");
        return Ok(WorkClip { index, source_path: raw.to_string(), work_key, size_bytes: meta.size, info });
    }

    let (source, source_key, size) = match known_size {
        Some(size) => {
            let (source, key) = ctx.resolver.resolve(&location).map_err(|e| stop_or_skip("open", raw, e))?;
            (source, key, size)
        }
        None => clip_size(ctx, &location, raw).await?,
    };
    if size == 0 {
        return Err(ClipError::Skip("empty file".into()));
    }
    if size > config.max_clip_bytes {
        return Err(ClipError::Skip(format!("{size} bytes is over the {} byte limit", config.max_clip_bytes)));
    }

    // A bucket workspace on the clip's own storage service: the service copies the clip
    // in and its headers are probed by ranged reads; no media byte passes through here.
    if ctx.work.local_path(&work_key).is_none() {
        if let Some(info) =
            copy_and_probe_in_store(ctx, media, source.as_ref(), &source_key, &work_key, size, raw).await?
        {
            return finish(ctx, config, index, raw, work_key, &probe_key, size, info).await;
        }
    }
    // Bring the bytes into the workspace, then probe a local file.
    let local_work = ctx.work.local_path(&work_key);
    let probe_path: PathBuf = match (&local_work, source.local_path(&source_key)) {
        (Some(dest), Some(src)) => {
            link_or_copy(ctx.work.as_ref(), &work_key, source.as_ref(), &source_key, &src, dest)
                .await
                .map_err(|e| stop_or_skip("copy", raw, e))?;
            dest.clone()
        }
        (Some(dest), None) => {
            let body = source.get(&source_key).await.map_err(|e| stop_or_skip("download", raw, e))?;
            ctx.work.put(&work_key, body, PutMode::Overwrite).await.map_err(|e| stop_or_skip("download", raw, e))?;
            dest.clone()
        }
        (None, _) => {
            let scratch = ctx.scratch.join(format!("clip-{index:03}.{ext}"));
            let body_store: Arc<dyn Store> = source.clone();
            store::get_to_file(body_store.as_ref(), &source_key, &scratch)
                .await
                .map_err(|e| stop_or_skip("download", raw, e))?;
            store::put_file(ctx.work.as_ref(), &work_key, &scratch, PutMode::Overwrite)
                .await
                .map_err(|e| stop_or_skip("stage", raw, e))?;
            scratch
        }
    };
    // The probe refuses a clip beyond the bounds (frame size, frame rate, this stage's
    // clip length) before anything decodes it; such a clip is skipped like a corrupt one.
    let info = match reel_media::probe(media, &probe_path).await {
        Ok(info) => info,
        Err(MediaError::Corrupt { reason }) => {
            let _ = ctx.work.delete(&work_key).await;
            return Err(ClipError::Skip(format!("not a readable video ({reason})")));
        }
        Err(e) if e.verdict().retryable => return Err(ClipError::Stop(Outcome::failed(&format!("probing {raw}"), &e))),
        Err(e) => {
            let _ = ctx.work.delete(&work_key).await;
            return Err(ClipError::Skip(format!("cannot probe: {e}")));
        }
    };
    finish(ctx, config, index, raw, work_key, &probe_key, size, info).await
}

/// A clip in the workspace and probed: check this stage's length bound, keep the probe
/// beside the clip (a redelivery reuses both), and say so.
#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &Context,
    config: &DownloadConfig,
    index: usize,
    raw: &str,
    work_key: String,
    probe_key: &str,
    size: u64,
    info: ClipInfo,
) -> Result<WorkClip, ClipError> {
    if info.duration_seconds > config.max_clip_seconds {
        let _ = ctx.work.delete(&work_key).await;
        return Err(ClipError::Skip(format!(
            "{:.1} s is over the {:.0} s clip limit",
            info.duration_seconds, config.max_clip_seconds
        )));
    }
    let json = serde_json::to_vec(&info).expect("ClipInfo serializes");
    if let Err(e) = ctx.work.put(probe_key, Box::pin(std::io::Cursor::new(json)), PutMode::Overwrite).await {
        return Err(ClipError::Stop(Outcome::failed("saving probe result", &e)));
    }
    info!(clip = index, work_key = %work_key, bytes = size, "clip fetched");
    Ok(WorkClip { index, source_path: raw.to_string(), work_key, size_bytes: size, info })
}

/// Have the storage service copy the clip into the workspace (Cloud Storage: a rewrite
/// into the work bucket) and probe its headers there by ranged reads. `Ok(None)` when
/// the service cannot copy it (another service) or the native reader declines the
/// headers: the caller fetches the clip and probes a local file instead.
async fn copy_and_probe_in_store(
    ctx: &Context,
    media: &MediaConfig,
    source: &dyn Store,
    source_key: &str,
    work_key: &str,
    size: u64,
    raw: &str,
) -> Result<Option<ClipInfo>, ClipError> {
    let Some(remote) = source.remote_object(source_key) else { return Ok(None) };
    let copied = ctx.work.put_copy_of(&remote, work_key, &PutOptions::new(PutMode::Overwrite)).await;
    match copied {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(None),
        Err(e) => return Err(stop_or_skip("copy", raw, e)),
    }
    let (work, key, handle, media) =
        (ctx.work.clone(), work_key.to_string(), tokio::runtime::Handle::current(), media.clone());
    let probed = tokio::task::spawn_blocking(move || {
        reel_media::probe_headers(&media, store::RangedReader::new(work, &key, size, handle), size)
    })
    .await
    .map_err(|e| {
        ClipError::Stop(Outcome::Retry(Failure::new(ErrorType::Internal, format!("the probe task failed: {e}"))))
    })?;
    match probed {
        Ok(found) => Ok(found),
        Err(MediaError::Corrupt { reason }) => {
            let _ = ctx.work.delete(work_key).await;
            Err(ClipError::Skip(format!("not a readable video ({reason})")))
        }
        Err(e) if e.verdict().retryable => Err(ClipError::Stop(Outcome::failed(&format!("probing {raw}"), &e))),
        Err(e) => {
            let _ = ctx.work.delete(work_key).await;
            Err(ClipError::Skip(format!("cannot probe: {e}")))
        }
    }
}

/// Hard-link a local clip into a local workspace (no copy), or stream-copy it when the
/// two are on different filesystems.
async fn link_or_copy(
    work: &dyn Store,
    work_key: &str,
    source: &dyn Store,
    source_key: &str,
    src: &Path,
    dest: &Path,
) -> Result<(), StoreError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| StoreError::from_io(&parent.display().to_string(), e))?;
    }
    let _ = tokio::fs::remove_file(dest).await;
    if tokio::fs::hard_link(src, dest).await.is_ok() {
        return Ok(());
    }
    let body = source.get(source_key).await?;
    work.put(work_key, body, PutMode::Overwrite).await.map(|_| ())
}

async fn read_probe(work: &dyn Store, key: &str) -> Option<ClipInfo> {
    use tokio::io::AsyncReadExt;
    let mut reader = work.get(key).await.ok()?;
    let mut text = Vec::new();
    reader.read_to_end(&mut text).await.ok()?;
    serde_json::from_slice(&text).ok()
}

/// "Corrupt file → skip, continue": an error about one clip skips that clip. What the
/// storage sorter calls transient retries the job, and a permission error fails it
/// fast (the matrix's rows for storage); only the clip's own permanent faults skip.
fn stop_or_skip(what: &str, raw: &str, err: StoreError) -> ClipError {
    let verdict = err.verdict();
    if verdict.retryable || verdict.error_type == ErrorType::PermissionDenied {
        return ClipError::Stop(Outcome::failed(&format!("cannot {what} {raw}"), &err));
    }
    match err {
        StoreError::NotFound(_) => ClipError::Skip("not found".into()),
        other => ClipError::Skip(format!("cannot {what}: {other}")),
    }
}
