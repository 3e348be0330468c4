//! The stitch stage: joins the job's clips into one MP4.
//!
//! **Clips that join as they are** (one stitch delivery): by zero-copy assembly, a new
//! movie header followed by the clips' media bytes as they are ([`join`]), with
//! ffmpeg's concat where the assembler declines. When the workspace is a bucket no clip
//! is downloaded: their headers are read with ranged reads and the reel is composed in
//! the store from a small header object and the clip objects ([`compose_in_store`]).
//!
//! **Clips that must be re-encoded** (a fan-out, no orchestrator): the stitch delivery
//! publishes one `job.encode` item per clip to `reel-encode` and is done. Each item is
//! a delivery of its own, on whichever stitch instance pulls it, bounded by one clip: it
//! normalises its clip into `norm/NNN-WxH-CRF.mp4` (create-only), or records that the
//! clip broke off mid-stream ("corrupt file → skip, continue"). The item that then finds
//! every clip accounted for claims the join with a create-only marker (exactly one
//! wins; a redelivery of the winner finds its own claim) and joins the segments by
//! zero-copy assembly, composed in the bucket when the workspace is one.
//!
//! The reel lands in the workspace as `reel.mp4` with its facts in `reel.json`; a
//! redelivery that finds both re-emits the same event without doing the work again.

use async_trait::async_trait;
use reel_events::payload::{ClipEncode, ClipsDownloaded, ReelFacts, ReelStitched, SkippedClip};
use reel_events::{envelope, types, AttributesReader, ErrorType, Event, Mode, Stage};
use reel_media::{Assembled, CancelToken, Classify, MediaConfig, MediaError, RunOptions};
use reel_runtime::config::Settings;
use reel_runtime::stage::{decode_payload, Context, Failure, FromSettings, Handler, Outcome};
use reel_runtime::store::{self, ObjectMeta, PutMode, PutOptions, RangedReader};
use std::collections::BTreeMap;
use std::path::PathBuf;
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

    fn accepts(&self) -> Vec<&'static str> {
        vec![types::CLIPS_DOWNLOADED, types::CLIP_ENCODE]
    }

    fn part_of(&self, event: &Event) -> Option<String> {
        if event.ty() != types::CLIP_ENCODE {
            return None;
        }
        let data = envelope::data_json(event).ok()?;
        Some(format!("encode-{:03}", data.get("clipIndex")?.as_u64()?))
    }

    async fn handle(&self, ctx: &Context, event: &Event) -> Outcome {
        let (input, item) = if event.ty() == types::CLIP_ENCODE {
            match decode_payload::<ClipEncode>(event) {
                Ok(v) => (v.downloaded, Some(v.clip_index)),
                Err(outcome) => return outcome,
            }
        } else {
            match decode_payload::<ClipsDownloaded>(event) {
                Ok(v) => (v, None),
                Err(outcome) => return outcome,
            }
        };
        let job = Job::new(ctx, event, &input);
        // Only this job's own files: a forged work message cannot point stitch elsewhere.
        if let Some(f) = input.clips.iter().find_map(|clip| ctx.check_work_key(&clip.work_key).err()) {
            return Outcome::Reject(f);
        }
        if let Some(index) = item {
            return self.encode_one(&job, index).await;
        }
        // Idempotency: a finished reel from an earlier delivery is reused.
        if let Some(record) = job.finished().await {
            info!("reel already stitched; re-emitting");
            return job.emit(record);
        }

        let infos: Vec<_> = input.clips.iter().map(|c| c.info.clone()).collect();
        let plan = reel_media::plan(&infos, input.job.orientation, input.job.compression);
        info!(mode = %plan.mode, reason = %plan.reason, clips = input.clips.len(), "stitch plan");
        if plan.mode == Mode::Reencode {
            return job.fan_out(Vec::new());
        }
        // A bucket for a workspace, and clips that join as they are: compose the reel there.
        if ctx.work.local_path(&job.reel_key).is_none() {
            let keys: Vec<String> = input.clips.iter().map(|c| c.work_key.clone()).collect();
            match compose_in_store(ctx, &keys, &job.reel_key).await {
                Ok(Some(composed)) => return job.keep_composed(composed, Mode::Copy, Vec::new(), Vec::new()).await,
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
        let run = self.run(ctx, &input);
        let target_path = match job.reel_target().await {
            Ok(path) => path,
            Err(outcome) => return outcome,
        };
        let mut warnings = Vec::new();
        let progress = ctx.progress.clone();
        let total_seconds = run.total_seconds;
        let mut on_progress = move |secs: f64| progress.report(secs * 100.0 / total_seconds);
        match join(&run, &inputs, &target_path, &mut warnings, &mut on_progress).await {
            Ok(()) => job.keep_local(&self.media, &target_path, Mode::Copy, Vec::new(), warnings).await,
            Err(e @ (MediaError::Cancelled | MediaError::Timeout | MediaError::DiskFull { .. })) => {
                Outcome::failed("stitching", &e)
            }
            Err(e) => {
                // A stream copy that ffmpeg refuses is not the end: re-encode instead.
                warn!(error = %e, "stream copy failed; falling back to re-encode");
                warnings.push("stream copy failed; the reel was re-encoded".to_string());
                job.fan_out(warnings)
            }
        }
    }
}

impl Stitch {
    /// What every ffmpeg run of one delivery on `input` shares.
    fn run<'a>(&'a self, ctx: &'a Context, input: &ClipsDownloaded) -> Run<'a> {
        let total_seconds: f64 = input.clips.iter().map(|c| c.info.duration_seconds.max(0.0)).sum::<f64>().max(0.001);
        let opts = RunOptions { cancel: CancelToken::from(ctx.cancel.clone()), deadline: None };
        Run { media: &self.media, opts, total_seconds }
    }

    /// One encode item of the fan-out: normalise clip `index` into its segment (unless a
    /// delivery before did), or note that it is broken mid-stream; then, if every clip
    /// of the job is accounted for, claim the join (create-only marker: exactly one
    /// item wins it, and a redelivery of the winner finds its own claim) and join.
    async fn encode_one(&self, job: &Job<'_>, index: usize) -> Outcome {
        let (ctx, input) = (job.ctx, job.input);
        let Some(clip) = input.clips.iter().find(|c| c.index == index) else {
            return Outcome::Unprocessable(Failure::new(
                ErrorType::InvalidRequest,
                format!("the encode item names clip {index}, which its job does not have"),
            ));
        };
        let segments = Segments::new(ctx, input);
        let accounted = match segments.accounted().await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        if !accounted.contains_key(&index) {
            // The job ended (cancelled, or failed by another item) while this item
            // waited: its workspace is gone, and nothing is left to do.
            if let Some(outcome) = workspace_gone(ctx, &clip.work_key).await {
                return outcome;
            }
            let run = self.run(ctx, input);
            let base: f64 = input
                .clips
                .iter()
                .filter(|c| accounted.contains_key(&c.index))
                .map(|c| c.info.duration_seconds.max(0.0))
                .sum();
            let progress = ctx.progress.clone();
            let total_seconds = run.total_seconds;
            let mut on_progress = move |secs: f64| progress.report((base + secs) * 95.0 / total_seconds);
            let path = match local_copy(ctx, &clip.work_key).await {
                Ok(path) => path,
                Err(outcome) => return outcome,
            };
            let out = ctx.scratch.join(format!("segment-{index:03}.mp4"));
            let started = std::time::Instant::now();
            let encoded = reel_media::normalize_clip(
                &self.media,
                &path,
                &clip.info,
                &segments.target,
                &out,
                &run.opts,
                &mut on_progress,
            )
            .await;
            let saved = match encoded {
                Ok(()) => {
                    let (encode_ms, video_seconds) = (started.elapsed().as_millis() as u64, clip.info.duration_seconds);
                    info!(clip = index, encode_ms, video_seconds, "clip encoded");
                    store::put_file(ctx.work.as_ref(), &segments.key(index), &out, PutMode::CreateOnly)
                        .await
                        .map(|_| ())
                }
                Err(e) if clip_at_fault(&e) => {
                    warn!(clip = index, error = %e, "clip broken mid-stream; leaving it out");
                    let skipped = SkippedClip { path: clip.source_path.clone(), reason: e.to_string() };
                    let json = serde_json::to_vec(&skipped).expect("a skipped clip serializes");
                    let body = Box::pin(std::io::Cursor::new(json));
                    ctx.work.put(&segments.skipped_key(index), body, PutMode::CreateOnly).await.map(|_| ())
                }
                Err(e) => return Outcome::failed(&format!("encoding clip {index}"), &e),
            };
            match saved {
                // A duplicate delivery finished the same segment first: it is as good.
                Ok(()) | Err(store::StoreError::AlreadyExists(_)) => {}
                Err(e) => return Outcome::failed(&format!("saving clip {index}'s segment"), &e),
            }
            // The job ended while this item encoded: take back what it just wrote.
            if let Some(outcome) = workspace_gone(ctx, &clip.work_key).await {
                for key in [segments.key(index), segments.skipped_key(index)] {
                    let _ = ctx.work.delete(&key).await;
                }
                return outcome;
            }
        }
        let accounted = match segments.accounted().await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let missing = input.clips.iter().filter(|c| !accounted.contains_key(&c.index)).count();
        if missing > 0 {
            info!(clip = index, missing, "segment ready; others still to come");
            return Outcome::Emit(Vec::new());
        }
        match segments.claim_join(index).await {
            Ok(true) => {}
            Ok(false) => {
                info!(clip = index, "every segment is ready; another item joins them");
                return Outcome::Emit(Vec::new());
            }
            Err(outcome) => return outcome,
        }
        if let Some(record) = job.finished().await {
            info!("reel already joined; re-emitting");
            return job.emit(record);
        }
        self.join_segments(job, &segments, accounted).await
    }

    /// The join of a fan-out: the segments, in clip order, by zero-copy assembly (in the
    /// bucket when the workspace is one); the clips broken mid-stream are left out while
    /// two or more remain.
    async fn join_segments(&self, job: &Job<'_>, segments: &Segments<'_>, accounted: BTreeMap<usize, Part>) -> Outcome {
        let ctx = job.ctx;
        let mut skipped = Vec::new();
        let mut keys = Vec::new();
        for (index, part) in accounted {
            match part {
                Part::Segment => keys.push(segments.key(index)),
                Part::Skipped => match read_json::<SkippedClip>(ctx, &segments.skipped_key(index)).await {
                    Some(clip) => skipped.push(clip),
                    None => {
                        return Outcome::Retry(Failure::new(
                            ErrorType::Internal,
                            format!("clip {index}'s skip record does not read"),
                        ))
                    }
                },
            }
        }
        if keys.len() < 2 {
            let reasons: Vec<String> = skipped.iter().map(|s| format!("{}: {}", s.path, s.reason)).collect();
            return Outcome::Reject(Failure::new(
                ErrorType::InsufficientClips,
                format!(
                    "fewer than 2 clips could be decoded to the end; a reel needs at least 2. Skipped: {}",
                    reasons.join("; ")
                ),
            ));
        }
        let mut warnings: Vec<String> = skipped.iter().map(|s| format!("skipped {}: {}", s.path, s.reason)).collect();
        if ctx.work.local_path(&job.reel_key).is_none() {
            match compose_in_store(ctx, &keys, &job.reel_key).await {
                Ok(Some(composed)) => return job.keep_composed(composed, Mode::Reencode, skipped, warnings).await,
                Ok(None) => {}
                Err(outcome) => return outcome,
            }
        }
        let mut paths = Vec::new();
        for key in &keys {
            match local_copy(ctx, key).await {
                Ok(path) => paths.push(path),
                Err(outcome) => return outcome,
            }
        }
        let target_path = match job.reel_target().await {
            Ok(path) => path,
            Err(outcome) => return outcome,
        };
        let run = self.run(ctx, job.input);
        let progress = ctx.progress.clone();
        let total_seconds = run.total_seconds;
        let mut on_progress = move |secs: f64| progress.report(95.0 + secs * 5.0 / total_seconds);
        if let Err(e) = join(&run, &paths, &target_path, &mut warnings, &mut on_progress).await {
            return Outcome::failed("joining the segments", &e);
        }
        job.keep_local(&self.media, &target_path, Mode::Reencode, skipped, warnings).await
    }
}

/// One delivery's job: its input, where its reel goes, and how to say it is done.
struct Job<'a> {
    ctx: &'a Context,
    event: &'a Event,
    input: &'a ClipsDownloaded,
    reel_key: String,
    facts_key: String,
}

impl<'a> Job<'a> {
    fn new(ctx: &'a Context, event: &'a Event, input: &'a ClipsDownloaded) -> Job<'a> {
        let prefix = ctx.work_prefix();
        Job { ctx, event, input, reel_key: format!("{prefix}reel.mp4"), facts_key: format!("{prefix}reel.json") }
    }

    /// The record of a reel an earlier delivery finished, if there is one.
    async fn finished(&self) -> Option<StitchRecord> {
        match self.ctx.work.head(&self.reel_key).await {
            Ok(Some(_)) => read_json(self.ctx, &self.facts_key).await,
            _ => None,
        }
    }

    /// `job.stitched`, with what download and stitch have to say together.
    fn emit(&self, record: StitchRecord) -> Outcome {
        let input = self.input;
        let mut skipped_clips = input.skipped_clips.clone();
        skipped_clips.extend(record.skipped);
        let mut warnings = input.warnings.clone();
        warnings.extend(record.warnings);
        let data = ReelStitched {
            job: input.job.clone(),
            work_key: self.reel_key.clone(),
            reel: record.facts,
            skipped_clips,
            warnings: dedup(warnings),
        };
        Outcome::Emit(vec![self.ctx.event(self.event, types::REEL_STITCHED, input.job.retry_attempt, &data)])
    }

    /// One encode item per clip, to `reel-encode`: each is a delivery of its own, on
    /// whichever stitch instance pulls it. `warnings` ride along to the reel.
    fn fan_out(&self, warnings: Vec<String>) -> Outcome {
        let mut carried = self.input.clone();
        carried.warnings.extend(warnings);
        info!(clips = carried.clips.len(), "re-encoding: one encode item per clip");
        let items = carried
            .clips
            .iter()
            .map(|clip| {
                let item = ClipEncode { downloaded: carried.clone(), clip_index: clip.index };
                let part = format!("{:03}", clip.index);
                self.ctx.event_of_part(self.event, types::CLIP_ENCODE, carried.job.retry_attempt, &part, &item)
            })
            .collect();
        Outcome::Emit(items)
    }

    /// Where ffmpeg writes the reel: in the workspace when it is a directory, in the
    /// delivery's scratch otherwise.
    async fn reel_target(&self) -> Result<PathBuf, Outcome> {
        let path = self.ctx.work.local_path(&self.reel_key).unwrap_or_else(|| self.ctx.scratch.join("reel.mp4"));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                Outcome::Retry(Failure::new(
                    ErrorType::ResourceExhausted,
                    format!("cannot create {}: {e}", parent.display()),
                ))
            })?;
        }
        Ok(path)
    }

    /// A reel composed in the store: keep its facts, and emit.
    async fn keep_composed(
        &self,
        (meta, info): (ObjectMeta, reel_events::ClipInfo),
        mode: Mode,
        skipped: Vec<SkippedClip>,
        warnings: Vec<String>,
    ) -> Outcome {
        self.ctx.progress.report(100.0);
        let facts = ReelFacts {
            size_bytes: meta.size,
            duration_seconds: info.duration_seconds,
            crc32c: store::crc32c_base64(meta.crc32c),
            mode,
        };
        info!(size = meta.size, duration = info.duration_seconds, %mode, "reel composed in the store");
        self.save_and_emit(StitchRecord { facts, skipped, warnings }).await
    }

    /// A reel ffmpeg or the assembler wrote at `path`: check it, put it in the workspace
    /// (where it already is when the workspace is a directory), keep its facts, and emit.
    async fn keep_local(
        &self,
        media: &MediaConfig,
        path: &std::path::Path,
        mode: Mode,
        skipped: Vec<SkippedClip>,
        warnings: Vec<String>,
    ) -> Outcome {
        let ctx = self.ctx;
        // Check what was written before anyone downstream sees it. The reel is as long
        // as all its clips together: only the per-clip duration bound is lifted.
        let reel_config = media.clone().set_limits(media.limits.set_max_duration_seconds(f64::INFINITY));
        let info = match reel_media::probe(&reel_config, path).await {
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
        let local = ctx.work.local_path(&self.reel_key).is_some();
        let meta = if local {
            match ctx.work.head(&self.reel_key).await {
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
            match store::put_file(ctx.work.as_ref(), &self.reel_key, path, PutMode::Overwrite).await {
                Ok(meta) => meta,
                Err(e) => return Outcome::failed("saving the reel to the workspace", &e),
            }
        };
        let (crc, size) = if meta.crc32c == 0 && !local {
            // A store that reported no checksum: compute it here.
            match store::crc32c_of_file(path).await {
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
        info!(size, duration = info.duration_seconds, %mode, "reel stitched");
        self.save_and_emit(StitchRecord { facts, skipped, warnings }).await
    }

    /// Save the reel's facts beside it (a redelivery re-emits them), then emit.
    async fn save_and_emit(&self, record: StitchRecord) -> Outcome {
        let json = serde_json::to_vec(&record).expect("facts serialize");
        if let Err(e) =
            self.ctx.work.put(&self.facts_key, Box::pin(std::io::Cursor::new(json)), PutMode::Overwrite).await
        {
            return Outcome::failed("saving the reel's facts", &e);
        }
        self.emit(record)
    }
}

/// `Some(Skip)` when the job's clip `key` is no longer in its workspace: the job ended
/// (cancelled, or failed by another delivery), and its workspace was cleaned.
async fn workspace_gone(ctx: &Context, key: &str) -> Option<Outcome> {
    match ctx.work.head(key).await {
        Ok(None) => Some(Outcome::Skip(format!("{key} is gone: the job ended while this encode item waited"))),
        _ => None,
    }
}

/// What a clip of a fan-out has in the workspace once its item is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Its normalised segment.
    Segment,
    /// A record that it broke off mid-stream and is left out.
    Skipped,
}

/// The segments of a fan-out, in the job's workspace: `norm/NNN-WxH-CRF.mp4` per clip
/// (or `.skipped.json`), and the join's claim `norm/join.claim`. The target is in the
/// names, so segments of another target are never mixed in.
struct Segments<'a> {
    ctx: &'a Context,
    target: reel_media::EncodeTarget,
    prefix: String,
}

impl<'a> Segments<'a> {
    fn new(ctx: &'a Context, input: &ClipsDownloaded) -> Segments<'a> {
        let infos: Vec<_> = input.clips.iter().map(|c| c.info.clone()).collect();
        let (orientation, compression) = (input.job.orientation, input.job.compression);
        // The plan's target, or (a stream copy that ffmpeg refused) the request's.
        let target = reel_media::plan(&infos, orientation, compression)
            .target
            .unwrap_or_else(|| reel_media::EncodeTarget::new(orientation, compression));
        Segments { ctx, target, prefix: format!("{}norm/", ctx.work_prefix()) }
    }

    fn stem(&self, index: usize) -> String {
        let t = &self.target;
        format!("{}{index:03}-{}x{}-{}", self.prefix, t.width, t.height, t.crf)
    }

    fn key(&self, index: usize) -> String {
        format!("{}.mp4", self.stem(index))
    }

    fn skipped_key(&self, index: usize) -> String {
        format!("{}.skipped.json", self.stem(index))
    }

    /// Which clips have their segment or skip record, by index.
    async fn accounted(&self) -> Result<BTreeMap<usize, Part>, Outcome> {
        let keys =
            self.ctx.work.list_keys(&self.prefix).await.map_err(|e| Outcome::failed("listing the segments", &e))?;
        let mut found = BTreeMap::new();
        for key in keys {
            let Some((index, _)) = key.strip_prefix(&self.prefix).and_then(|name| name.split_once('-')) else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else { continue };
            if key == self.key(index) {
                found.insert(index, Part::Segment);
            } else if key == self.skipped_key(index) {
                found.insert(index, Part::Skipped);
            }
        }
        Ok(found)
    }

    /// Claim the join for the item of clip `index`: `true` when it is this item's (it
    /// created the claim, or an earlier delivery of it did).
    async fn claim_join(&self, index: usize) -> Result<bool, Outcome> {
        let key = format!("{}join.claim", self.prefix);
        let body = Box::pin(std::io::Cursor::new(index.to_string().into_bytes()));
        match self.ctx.work.put(&key, body, PutMode::CreateOnly).await {
            Ok(_) => Ok(true),
            Err(store::StoreError::AlreadyExists(_)) => {
                let holder = read_text(self.ctx, &key).await;
                Ok(holder.as_deref().map(str::trim) == Some(index.to_string().as_str()))
            }
            Err(e) => Err(Outcome::failed("claiming the join", &e)),
        }
    }
}

/// The copy path on a workspace in a bucket: the clips' headers are read with ranged
/// reads ([`RangedReader`]), the zero-copy assembler plans the reel as a new header
/// followed by the clip files as they are ([`reel_media::whole_file_assembly_header`]),
/// and the store composes it from a header object and the clip objects (Cloud Storage
/// compose). The reel is then checked by reading its headers back. `Ok(None)` when the
/// assembler declines (the caller joins the clips with ffmpeg instead).
async fn compose_in_store(
    ctx: &Context,
    keys: &[String],
    reel_key: &str,
) -> Result<Option<(ObjectMeta, reel_events::ClipInfo)>, Outcome> {
    let mut sources = Vec::with_capacity(keys.len());
    for key in keys {
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
    match reel_media::assemble_copy(inputs, output, &run.opts).await? {
        Assembled::Written { size_bytes } => {
            info!(size_bytes, inputs = inputs.len(), "joined by zero-copy assembly");
            on_progress(run.total_seconds);
            Ok(())
        }
        Assembled::Declined { reason } => {
            info!(%reason, "zero-copy assembly declined; joining with ffmpeg");
            let joined = reel_media::concat_copy(run.media, inputs, output, &run.opts, on_progress).await;
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

/// What every ffmpeg run of one delivery shares.
struct Run<'a> {
    media: &'a MediaConfig,
    opts: RunOptions,
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

async fn read_bytes(ctx: &Context, key: &str) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut reader = ctx.work.get(key).await.ok()?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.ok()?;
    Some(bytes)
}

async fn read_json<T: serde::de::DeserializeOwned>(ctx: &Context, key: &str) -> Option<T> {
    serde_json::from_slice(&read_bytes(ctx, key).await?).ok()
}

async fn read_text(ctx: &Context, key: &str) -> Option<String> {
    String::from_utf8(read_bytes(ctx, key).await?).ok()
}
