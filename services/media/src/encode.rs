//! The ffmpeg runs: joining, normalising, sample clips.

use crate::error::MediaError;
use crate::probe::{check_iso_boxes, fingerprint, Fingerprint, INPUT_FORMATS};
use crate::process::{self, Stdout, Tool};
use crate::{file_url, EncodeTarget, MediaConfig, RunOptions};
use reel_events::ClipInfo;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Arguments every ffmpeg run starts with: quiet, machine-readable progress on stdout.
const COMMON: &[&str] = &["-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1", "-y"];

fn args_of(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// A file next to the final output that is deleted on drop unless persisted.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// `.<output name>.<pid>.<n>.<suffix>` in `output`'s directory.
    fn beside(output: &Path, suffix: &str) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = output
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name"))?;
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{}.{}.{suffix}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        Ok(Self { path: dir.join(tmp), keep: false })
    }

    /// Checks that the finished MP4 is structurally whole (every top-level box
    /// fits in the file), then [`persist`](Self::persist)s it.
    async fn verify_and_persist(self, dest: &Path) -> Result<(), MediaError> {
        let len = tokio::fs::metadata(&self.path).await?.len();
        let check =
            if len == 0 { Err(MediaError::corrupt("empty output")) } else { check_iso_boxes(&self.path, len).await };
        if let Err(e) = check {
            return Err(MediaError::Failed {
                // Only ever called after ffmpeg exited 0.
                status: std::process::ExitStatus::default(),
                stderr_tail: format!("ffmpeg reported success but wrote a broken file: {e}"),
            });
        }
        self.persist(dest).await
    }

    /// Renames onto `dest` (atomic on one filesystem) and stops tracking.
    async fn persist(mut self, dest: &Path) -> Result<(), MediaError> {
        tokio::fs::rename(&self.path, dest)
            .await
            .map_err(|e| MediaError::from_io(e, "renaming the finished output"))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn invalid_input(msg: impl Into<String>) -> MediaError {
    MediaError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.into()))
}

/// Escapes a path for a concat-demuxer `file` line: wrapped in single quotes,
/// each `'` written as `'\''` (close quote, escaped quote, reopen).
pub(crate) fn concat_quote(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 8);
    out.push(b'\'');
    for &b in path {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(unix)]
fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

/// The concat list: `ffconcat version 1.0` then `file 'file:/abs/path'` per input.
fn concat_list(inputs: &[PathBuf]) -> Result<Vec<u8>, MediaError> {
    let mut list = b"ffconcat version 1.0\n".to_vec();
    for input in inputs {
        let abs = std::path::absolute(input)?;
        let url = os_bytes(file_url(&abs).as_os_str());
        if url.iter().any(|&b| b == b'\n' || b == b'\r' || b == 0) {
            return Err(invalid_input(format!(
                "{} contains a line break, which the concat list cannot express",
                input.display()
            )));
        }
        list.extend_from_slice(b"file ");
        list.extend_from_slice(&concat_quote(&url));
        list.push(b'\n');
    }
    Ok(list)
}

/// Fails with [`MediaError::Incompatible`] when `inputs` cannot be joined by
/// stream copy because their codec headers differ: the h264/hevc parameter sets
/// (SPS/PPS) or the audio decoder config of an input are not byte-identical to
/// the first input's. An MP4 has one set of headers per track, so a later clip
/// with other headers would mis-decode. [`plan`](crate::plan) cannot see this
/// (it is not in `ClipInfo`); [`concat_copy`] checks it itself before joining,
/// so call this only to decide early. MP4/MOV headers are read natively (well under
/// a millisecond each); only files the native reader declines cost an ffprobe run.
pub async fn check_copy_compatible(
    config: &MediaConfig,
    inputs: &[PathBuf],
    opts: &RunOptions,
) -> Result<(), MediaError> {
    // A few at a time: native reads are quick; an ffprobe fallback is mostly process start-up.
    let width = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
    let mut fingerprints = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(width) {
        let results = futures::future::join_all(chunk.iter().map(|input| fingerprint(config, input, opts))).await;
        for result in results {
            fingerprints.push(result?);
        }
    }
    let mut first: Option<Fingerprint> = None;
    for (i, fp) in fingerprints.into_iter().enumerate() {
        let Some(f1) = &first else {
            first = Some(fp);
            continue;
        };
        let n = i + 1;
        for (what, mine, theirs) in [("video", &fp.video, &f1.video), ("audio", &fp.audio, &f1.audio)] {
            match (mine, theirs) {
                (Some((c, h)), Some((c1, h1))) if c == c1 && h == h1 => {}
                (Some((c, _)), Some((c1, _))) if c != c1 => {
                    return Err(MediaError::Incompatible {
                        reason: format!("input {n} has {c} {what}, input 1 has {c1}"),
                    })
                }
                (Some((c, _)), Some(_)) => {
                    return Err(MediaError::Incompatible {
                        reason: format!("input {n} has different {c} {what} codec headers (extradata) than input 1"),
                    })
                }
                (None, None) => {}
                (None, Some(_)) => {
                    return Err(MediaError::Incompatible { reason: format!("input {n} has no {what}, input 1 has") })
                }
                (Some(_), None) => {
                    return Err(MediaError::Incompatible { reason: format!("input {n} has {what}, input 1 has none") })
                }
            }
        }
    }
    Ok(())
}

/// Joins `inputs` in order into `output` without re-encoding (concat demuxer,
/// `-c copy -movflags +faststart`). The inputs must share codecs and parameters:
/// either clips that [`plan`](crate::plan) chose to copy, or segments made by
/// [`normalize_clip`] with one [`EncodeTarget`].
///
/// The list file and the output are written under temporary names next to
/// `output`; `output` appears (by rename) only when ffmpeg succeeded. Global
/// metadata (e.g. GPS location) is dropped; the display rotation is kept.
/// First runs [`check_copy_compatible`], so inputs whose codec headers differ
/// fail with [`MediaError::Incompatible`] instead of producing a broken file.
/// `on_progress` receives seconds of output written so far.
pub async fn concat_copy(
    config: &MediaConfig,
    inputs: &[PathBuf],
    output: &Path,
    opts: &RunOptions,
    on_progress: &mut (dyn FnMut(f64) + Send),
) -> Result<(), MediaError> {
    if inputs.is_empty() {
        return Err(invalid_input("concat_copy needs at least one input"));
    }
    for input in inputs {
        let meta = tokio::fs::metadata(input)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", input.display())))?;
        if !meta.is_file() {
            return Err(invalid_input(format!("{} is not a regular file", input.display())));
        }
    }
    check_copy_compatible(config, inputs, opts).await?;
    let list_bytes = concat_list(inputs)?;
    let list = TempFile::beside(output, "concat.txt")?;
    tokio::fs::write(&list.path, &list_bytes).await.map_err(|e| MediaError::from_io(e, "writing the concat list"))?;
    let tmp = TempFile::beside(output, "part.mp4")?;

    let formats = format!("concat,{INPUT_FORMATS}");
    let mut args = args_of(COMMON);
    args.extend(args_of(&[
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        &formats,
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
    ]));
    args.push(file_url(&list.path));
    args.extend(args_of(&[
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-c",
        "copy",
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
    ]));
    args.push(file_url(&tmp.path));

    process::run(config, Tool::Ffmpeg, &args, opts, Stdout::Progress(on_progress))
        .await?
        .into_success()?
        .input_intact()?;
    tmp.verify_and_persist(output).await?;
    drop(list);
    Ok(())
}

/// What [`assemble_copy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Assembled {
    /// The reel was written: a new header, then the clips' media bytes unchanged.
    Written {
        /// The reel's size.
        size_bytes: u64,
    },
    /// The clips cannot be joined this way (why, in words); nothing was written.
    /// Join them with [`concat_copy`] instead.
    Declined {
        /// For the job's warnings, e.g. `clip 2's video sample description (codec
        /// headers) differs from clip 1's`.
        reason: String,
    },
}

/// Joins MP4/MOV `inputs` in order into `output` without ffmpeg and without touching
/// their media: a new `ftyp` + `moov` (fast-start) whose sample tables point into one
/// `mdat` holding each input's media data unchanged, copied by the kernel
/// (`copy_file_range` through `std::io::copy`). Only the headers are parsed.
///
/// Returns [`Assembled::Declined`] for inputs it cannot join exactly (fragmented files,
/// differing sample descriptions, edit lists it cannot repeat, audio and video out of
/// step; docs/MEDIA.md lists them); the caller then uses [`concat_copy`]. Like the
/// ffmpeg joins, it writes to a temporary name next to `output` and renames at the end;
/// cancel and deadline stop it between copies of at most 64 MiB.
pub async fn assemble_copy(inputs: &[PathBuf], output: &Path, opts: &RunOptions) -> Result<Assembled, MediaError> {
    if inputs.is_empty() {
        return Err(invalid_input("assemble_copy needs at least one input"));
    }
    let tmp = TempFile::beside(output, "part.mp4")?;
    let (inputs, part, cancel, deadline) = (inputs.to_vec(), tmp.path.clone(), opts.cancel.clone(), opts.deadline);
    let assembled = tokio::task::spawn_blocking(move || write_assembly(&inputs, &part, &cancel, deadline))
        .await
        .map_err(|e| MediaError::Io(io::Error::other(format!("the assembly task failed: {e}"))))??;
    if let Assembled::Written { size_bytes } = &assembled {
        check_iso_boxes(&tmp.path, *size_bytes).await?;
        tmp.persist(output).await?;
    }
    Ok(assembled)
}

/// The blocking part of [`assemble_copy`]: plan from the open files, then write the
/// header and copy the ranges from the very files that were read.
fn write_assembly(
    inputs: &[PathBuf],
    part: &Path,
    cancel: &crate::CancelToken,
    deadline: Option<std::time::Instant>,
) -> Result<Assembled, MediaError> {
    use std::io::{Read, Seek, Write};
    let mut files = Vec::with_capacity(inputs.len());
    for input in inputs {
        let file =
            std::fs::File::open(input).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", input.display())))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(invalid_input(format!("{} is not a regular file", input.display())));
        }
        files.push((file, meta.len()));
    }
    let assembly = match crate::mp4::plan_assembly(&files) {
        Ok(a) => a,
        Err(declined) => return Ok(Assembled::Declined { reason: declined.0 }),
    };
    let write_err = |e: io::Error| MediaError::from_io(e, "writing the assembled reel");
    let mut out = std::fs::File::create(part).map_err(write_err)?;
    out.write_all(&assembly.header).map_err(write_err)?;
    const PIECE: u64 = 64 << 20;
    for range in &assembly.ranges {
        let mut file = &files[range.clip].0;
        file.seek(io::SeekFrom::Start(range.offset))?;
        let mut left = range.len;
        while left > 0 {
            if cancel.is_cancelled() {
                return Err(MediaError::Cancelled);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(MediaError::Timeout);
            }
            let piece = left.min(PIECE);
            // std::io::copy between files is copy_file_range on Linux (in-kernel, reflink
            // where the filesystem can), read/write elsewhere.
            let copied = io::copy(&mut file.take(piece), &mut out).map_err(write_err)?;
            if copied != piece {
                return Err(MediaError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} changed while it was joined", inputs[range.clip].display()),
                )));
            }
            left -= piece;
        }
    }
    out.flush().map_err(write_err)?;
    let size_bytes = out.metadata()?.len();
    if size_bytes != assembly.total_len() {
        return Err(MediaError::Io(io::Error::other("the assembled reel has the wrong size")));
    }
    Ok(Assembled::Written { size_bytes })
}

/// Re-encodes one clip into an MP4 segment of exactly `target`:
///
/// * video: autorotated (ffmpeg's default), `fps`, scaled to fit
///   (`force_original_aspect_ratio=decrease`) and padded centred with black,
///   `setsar=1`, `yuv420p`, limited range labelled BT.709, libx264 `-preset`/`-crf`,
///   `-profile:v high`, `stitchable=1`, so all segments share one set of stream headers
///   whatever the clips' colour tags;
/// * audio: resampled to `sample_rate` stereo AAC at `audio_bitrate_k`; a clip
///   without audio gets silence (`anullsrc`);
/// * both streams last exactly `round(duration × fps)` frames (video's last frame
///   is held if it ends early, audio is padded with silence or cut), so segments
///   join without drift.
///
/// Written to a temporary name next to `output` and renamed at the end.
/// `on_progress` receives seconds of output written so far.
pub async fn normalize_clip(
    config: &MediaConfig,
    input: &Path,
    info: &ClipInfo,
    target: &EncodeTarget,
    output: &Path,
    opts: &RunOptions,
    on_progress: &mut (dyn FnMut(f64) + Send),
) -> Result<(), MediaError> {
    check_target(target)?;
    if !(info.duration_seconds.is_finite() && info.duration_seconds > 0.0) {
        return Err(MediaError::corrupt("clip has no positive duration"));
    }
    let graph = normalize_filtergraph(info, target);
    let tmp = TempFile::beside(output, "part.mp4")?;

    let mut args = args_of(COMMON);
    args.extend(args_of(&["-protocol_whitelist", "file", "-format_whitelist", INPUT_FORMATS, "-i"]));
    args.push(file_url(input));
    args.extend(args_of(&["-filter_complex", &graph, "-map", "[v]", "-map", "[a]"]));
    args.extend(target.encoder_args().into_iter().map(OsString::from));
    if config.encode_threads > 0 {
        let threads = config.encode_threads.to_string();
        args.extend(args_of(&["-threads", &threads, "-filter_complex_threads", &threads]));
    }
    args.push(file_url(&tmp.path));

    process::run(config, Tool::Ffmpeg, &args, opts, Stdout::Progress(on_progress))
        .await?
        .into_success()?
        .input_intact()?;
    tmp.verify_and_persist(output).await
}

fn check_target(t: &EncodeTarget) -> Result<(), MediaError> {
    if t.width == 0 || t.height == 0 || t.width % 2 == 1 || t.height % 2 == 1 {
        return Err(invalid_input(format!("target {}x{} must be positive and even", t.width, t.height)));
    }
    if t.fps == 0 || t.sample_rate == 0 {
        return Err(invalid_input("target fps and sample rate must be positive"));
    }
    Ok(())
}

/// Frames and audio samples of a normalised segment of `seconds`.
pub(crate) fn segment_length(seconds: f64, fps: u32, sample_rate: u32) -> (u64, u64) {
    let frames = ((seconds * fps as f64).round() as u64).max(1);
    let samples = (frames as u128 * sample_rate as u128 / fps as u128) as u64;
    (frames, samples)
}

/// The `-filter_complex` graph of [`normalize_clip`], outputs `[v]` and `[a]`.
pub(crate) fn normalize_filtergraph(info: &ClipInfo, t: &EncodeTarget) -> String {
    let (video, audio) = t.filter_chains(info, 0, "v", "a");
    format!("{video};{audio}")
}

/// reel's recipe for a normalised segment, in one place: [`normalize_clip`] runs it,
/// and the benchmark's bare-ffmpeg contenders (services/bench/src/recipe.rs) rebuild
/// their commands from it, so the two cannot drift apart.
impl EncodeTarget {
    /// The encoder and muxer arguments of every normalised segment, from `-c:v` to
    /// `-f mp4` (the output follows): libx264 with this target's `-preset` and `-crf`,
    /// High profile, `yuv420p`, a keyframe every 2 s, `stitchable=1` (so segments of one
    /// target share their stream headers and join by stream copy); AAC stereo at this
    /// target's bitrate and sample rate; metadata and chapters dropped; `+faststart`.
    ///
    /// ```
    /// use reel_events::{Compression, Orientation};
    /// let args = reel_media::EncodeTarget::new(Orientation::Portrait, Compression::Small).encoder_args();
    /// assert_eq!(args[..6], ["-c:v", "libx264", "-preset", "veryfast", "-crf", "28"]);
    /// ```
    pub fn encoder_args(&self) -> Vec<String> {
        let (gop, crf) = ((self.fps * 2).to_string(), self.crf.to_string());
        let (abr, rate) = (format!("{}k", self.audio_bitrate_k), self.sample_rate.to_string());
        [
            "-c:v",
            "libx264",
            "-preset",
            self.preset,
            "-crf",
            &crf,
            "-profile:v",
            "high",
            "-pix_fmt",
            "yuv420p",
            "-g",
            &gop,
            "-x264-params",
            "stitchable=1",
            "-c:a",
            "aac",
            "-b:a",
            &abr,
            "-ar",
            &rate,
            "-ac",
            "2",
            "-map_metadata",
            "-1",
            "-map_chapters",
            "-1",
            "-max_muxing_queue_size",
            "4096",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    /// The video and audio filter chains that make `info`'s clip (ffmpeg input number
    /// `input`) into this target, writing the pads `[video_out]` and `[audio_out]`:
    /// fitted and padded to the frame, this frame rate, exactly `round(duration × fps)`
    /// frames and as many samples (silence when the clip has no audio).
    pub fn filter_chains(&self, info: &ClipInfo, input: usize, video_out: &str, audio_out: &str) -> (String, String) {
        let (frames, samples) = segment_length(info.duration_seconds, self.fps, self.sample_rate);
        let (w, h, fps, sr) = (self.width, self.height, self.fps, self.sample_rate);
        // `V:0`: the first real video stream (not cover art), autorotated by ffmpeg.
        // One colour description for every segment (limited range, BT.709 labels):
        // x264 writes the frames' colour tags into the SPS, so segments of clips tagged
        // differently would not share stream headers and could not be joined.
        let video = format!(
            "[{input}:V:0]fps={fps},\
             scale=w={w}:h={h}:force_original_aspect_ratio=decrease:force_divisible_by=2:out_range=tv,\
             pad=w={w}:h={h}:x=(ow-iw)/2:y=(oh-ih)/2:color=black,\
             setsar=1,format=yuv420p,\
             setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709,\
             tpad=stop_mode=clone:stop=-1,trim=end_frame={frames}[{video_out}]"
        );
        let audio = if info.audio.is_some() {
            format!(
                "[{input}:a:0]aresample={sr}:async=1:first_pts=0,\
                 aformat=sample_fmts=fltp:sample_rates={sr}:channel_layouts=stereo,\
                 apad,atrim=end_sample={samples}[{audio_out}]"
            )
        } else {
            format!("anullsrc=channel_layout=stereo:sample_rate={sr},atrim=end_sample={samples}[{audio_out}]")
        };
        (video, audio)
    }
}

/// What [`make_sample_clip`] makes.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    /// Frame width (even).
    pub width: u32,
    /// Frame height (even).
    pub height: u32,
    /// Length in seconds.
    pub seconds: f64,
    /// Frames per second.
    pub fps: u32,
    /// Whether to include a 440 Hz tone as stereo AAC at 48 kHz.
    pub audio: bool,
    /// Text drawn in the middle of the frame when ffmpeg has `drawtext` and a font;
    /// otherwise ignored. Characters other than letters, digits, space and `_.-#+`
    /// are drawn as `_`.
    pub label: String,
}

/// 0 = unknown, 1 = drawtext works, 2 = it does not (no filter or no font).
static DRAWTEXT: AtomicU8 = AtomicU8::new(0);

/// Makes a test clip: lavfi `testsrc2` (+ `sine`), h264 yuv420p (+ AAC) in MP4,
/// written to a temporary name and renamed onto `output`.
pub async fn make_sample_clip(config: &MediaConfig, output: &Path, spec: &SampleSpec) -> Result<(), MediaError> {
    if spec.width == 0 || spec.height == 0 || spec.width % 2 == 1 || spec.height % 2 == 1 {
        return Err(invalid_input(format!("sample size {}x{} must be positive and even", spec.width, spec.height)));
    }
    if !(spec.seconds.is_finite() && spec.seconds > 0.0) || spec.fps == 0 {
        return Err(invalid_input("sample seconds and fps must be positive"));
    }
    let label = sanitize_label(&spec.label);
    let want_text = !label.trim().is_empty() && DRAWTEXT.load(Ordering::Relaxed) != 2;
    if want_text {
        match sample_run(config, output, spec, Some(&label)).await {
            Ok(()) => {
                DRAWTEXT.store(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(MediaError::Failed { stderr_tail, .. }) if DRAWTEXT.load(Ordering::Relaxed) == 0 => {
                tracing::info!(%stderr_tail, "drawtext unusable; sample clips will have no label");
                DRAWTEXT.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    sample_run(config, output, spec, None).await
}

fn sanitize_label(label: &str) -> String {
    label.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || " _.-#+".contains(c) { c } else { '_' }).collect()
}

async fn sample_run(
    config: &MediaConfig,
    output: &Path,
    spec: &SampleSpec,
    label: Option<&str>,
) -> Result<(), MediaError> {
    let secs = format!("{:.3}", spec.seconds);
    let tmp = TempFile::beside(output, "part.mp4")?;
    let mut args = args_of(COMMON);
    args.extend(args_of(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={}x{}:rate={}:duration={secs}", spec.width, spec.height, spec.fps),
    ]));
    if spec.audio {
        args.extend(args_of(&["-f", "lavfi", "-i", &format!("sine=frequency=440:sample_rate=48000:duration={secs}")]));
    }
    if let Some(text) = label {
        let size = (spec.height / 8).max(8);
        args.extend(args_of(&[
            "-vf",
            &format!(
                "drawtext=text='{text}':expansion=none:fontcolor=white:fontsize={size}:\
                 box=1:boxcolor=black@0.6:x=(w-text_w)/2:y=(h-text_h)/2"
            ),
        ]));
    }
    let gop = spec.fps.to_string();
    args.extend(args_of(&[
        "-map", "0:v:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-g", &gop,
    ]));
    if spec.audio {
        args.extend(args_of(&["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k", "-ac", "2"]));
    }
    args.extend(args_of(&["-t", &secs, "-movflags", "+faststart", "-f", "mp4"]));
    args.push(file_url(&tmp.path));
    let mut ignore = |_: f64| {};
    process::run(config, Tool::Ffmpeg, &args, &RunOptions::new(), Stdout::Progress(&mut ignore))
        .await?
        .into_success()?;
    tmp.verify_and_persist(output).await
}

/// The first line of `ffmpeg -version`, e.g. `ffmpeg version 5.1.6-0+deb12u1 Copyright ...`.
pub fn ffmpeg_version(config: &MediaConfig) -> Result<String, MediaError> {
    let program = Tool::Ffmpeg.program(config);
    let out = std::process::Command::new(program)
        .arg("-version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| process::spawn_error(program, e))?;
    if !out.status.success() {
        return Err(MediaError::Failed {
            status: out.status,
            stderr_tail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::{AudioInfo, VideoInfo};

    #[test]
    fn quoting() {
        assert_eq!(concat_quote(b"/a/b c.mp4"), b"'/a/b c.mp4'".to_vec());
        assert_eq!(concat_quote(b"/a/it's.mp4"), b"'/a/it'\\''s.mp4'".to_vec());
        assert_eq!(concat_quote(b"''"), b"''\\'''\\'''".to_vec());
    }

    #[test]
    fn list_rejects_newlines() {
        assert!(concat_list(&[PathBuf::from("/tmp/a\nb.mp4")]).is_err());
        let l = concat_list(&[PathBuf::from("/tmp/x y.mp4")]).unwrap();
        assert_eq!(l, b"ffconcat version 1.0\nfile 'file:/tmp/x y.mp4'\n".to_vec());
    }

    #[test]
    fn lengths() {
        assert_eq!(segment_length(1.0, 30, 48000), (30, 48000));
        assert_eq!(segment_length(2.02, 30, 48000), (61, 97600));
        assert_eq!(segment_length(0.001, 30, 48000), (1, 1600));
    }

    #[test]
    fn graph_with_and_without_audio() {
        let mut info = ClipInfo {
            duration_seconds: 2.0,
            container: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            video: VideoInfo {
                codec: "h264".into(),
                width: 320,
                height: 240,
                pix_fmt: "yuv420p".into(),
                frame_rate: "25/1".into(),
                time_base: "1/12800".into(),
                rotation: 0,
            },
            audio: Some(AudioInfo {
                codec: "aac".into(),
                sample_rate: 44100,
                channels: 1,
                channel_layout: "mono".into(),
                time_base: "1/44100".into(),
            }),
        };
        let t = EncodeTarget::new(reel_events::Orientation::Portrait, reel_events::Compression::Optimized);
        let g = normalize_filtergraph(&info, &t);
        assert!(g.contains("trim=end_frame=60[v]"), "{g}");
        assert!(g.contains("[0:a:0]aresample=48000"), "{g}");
        assert!(g.contains("atrim=end_sample=96000[a]"), "{g}");
        info.audio = None;
        let g = normalize_filtergraph(&info, &t);
        assert!(g.contains("anullsrc=channel_layout=stereo:sample_rate=48000,atrim=end_sample=96000[a]"), "{g}");
    }

    #[test]
    fn labels() {
        assert_eq!(sanitize_label("clip 1: it's"), "clip 1_ it_s");
    }
}
