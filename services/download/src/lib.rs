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
use reel_media::MediaError;
use reel_runtime::stage::{check_job_location, decode_payload, store_failure, Context, Failure, Handler, Outcome};
use reel_runtime::store::{self, PutMode, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// The download stage.
#[derive(Debug, Default)]
pub struct Download;

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
            if let Err(f) = check_job_location(&ctx.settings, &format!("clip {}", i + 1), raw, &job.project_id) {
                if f.error_type == ErrorType::PermissionDenied {
                    return Outcome::Reject(f);
                }
            }
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
            let results =
                futures::future::join_all(chunk.iter().map(|(index, raw)| fetch_clip(ctx, *index, raw))).await;
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

async fn fetch_clip(ctx: &Context, index: usize, raw: &str) -> Result<WorkClip, ClipError> {
    let location = check_job_location(&ctx.settings, &format!("clip {}", index + 1), raw, &ctx.job.project_id)
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

    let (source, source_key) = ctx.resolver.resolve(&location).map_err(|e| stop_or_skip("open", raw, e))?;
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
    if size == 0 {
        return Err(ClipError::Skip("empty file".into()));
    }
    if size > ctx.settings.max_clip_bytes {
        return Err(ClipError::Skip(format!("{size} bytes is over the {} byte limit", ctx.settings.max_clip_bytes)));
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
    let info = match reel_media::probe(&probe_path).await {
        Ok(info) => info,
        Err(MediaError::Corrupt { reason }) => {
            let _ = ctx.work.delete(&work_key).await;
            return Err(ClipError::Skip(format!("not a readable video ({reason})")));
        }
        Err(e) if e.is_transient() => {
            return Err(ClipError::Stop(Outcome::Retry(Failure::new(
                ErrorType::ResourceExhausted,
                format!("probing {raw}: {e}"),
            ))))
        }
        Err(MediaError::NotInstalled(what)) => {
            return Err(ClipError::Stop(Outcome::Retry(Failure::new(
                ErrorType::Internal,
                format!("{what} is not installed"),
            ))))
        }
        Err(e) => {
            let _ = ctx.work.delete(&work_key).await;
            return Err(ClipError::Skip(format!("cannot probe: {e}")));
        }
    };
    if info.duration_seconds > ctx.settings.max_clip_seconds {
        let _ = ctx.work.delete(&work_key).await;
        return Err(ClipError::Skip(format!(
            "{:.1} s is over the {:.0} s clip limit",
            info.duration_seconds, ctx.settings.max_clip_seconds
        )));
    }
    let json = serde_json::to_vec(&info).expect("ClipInfo serializes");
    if let Err(e) = ctx.work.put(&probe_key, Box::pin(std::io::Cursor::new(json)), PutMode::Overwrite).await {
        return Err(ClipError::Stop(store_failure("saving probe result", &e)));
    }
    info!(clip = index, work_key = %work_key, bytes = size, "clip fetched");
    Ok(WorkClip { index, source_path: raw.to_string(), work_key, size_bytes: size, info })
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

/// Permission problems stop the job (fail fast); transient ones retry it; anything
/// else about one clip skips that clip.
fn stop_or_skip(what: &str, raw: &str, err: StoreError) -> ClipError {
    match err {
        StoreError::PermissionDenied(_) | StoreError::Transient(_) | StoreError::DiskFull(_) => {
            ClipError::Stop(store_failure(&format!("cannot {what} {raw}"), &err))
        }
        StoreError::NotFound(_) => ClipError::Skip("not found".into()),
        other => ClipError::Skip(format!("cannot {what}: {other}")),
    }
}
