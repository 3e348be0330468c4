//! `probe`: a file into a [`ClipInfo`], natively for MP4/MOV, else with ffprobe.
//!
//! MP4/MOV (ISO-BMFF) headers are read in-process by [`crate::mp4`], which answers
//! only when it is sure to give ffprobe's answer; everything else (other containers,
//! codecs or layouts it does not know, anything odd) goes to ffprobe as before.
//! [`MediaConfig::native_probe`] `false` sends everything to ffprobe. Whichever path
//! answers, the clip must then fit [`MediaConfig::limits`](crate::ProbeLimits).

use crate::clip::normalise_rotation;
pub use crate::clip::Fingerprint;
use crate::error::MediaError;
use crate::mp4;
use crate::process::{self, Stdout, Tool};
use crate::{file_url, MediaConfig, RunOptions};
use reel_events::{AudioInfo, ClipInfo, VideoInfo};
use serde_json::Value;
use std::ffi::OsString;
use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

/// Demuxers reel accepts for clips (`-format_whitelist`): QuickTime/MP4 family,
/// Matroska/WebM, AVI, MPEG-TS (camera `.mts`), MPEG-PS, FLV, Ogg, ASF/WMV.
/// Anything else, notably playlists and scripts that open further files
/// (`hls`, `concat`, `tee`...), is refused, even if it is named `.mp4`.
pub const INPUT_FORMATS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,ogg,asf";

/// ffprobe's own time limit.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Probes `path`: MP4/MOV headers natively when the reader is sure (see
/// [`probe_native`]), otherwise ffprobe (`-v error -protocol_whitelist file
/// -format_whitelist INPUT_FORMATS -show_streams -show_format -of json`, no shell,
/// 30 s limit). Both give the same [`ClipInfo`]; `config.native_probe = false` forces
/// ffprobe. Either way the clip must fit `config.limits` ([`ProbeLimits`]).
///
/// ```no_run
/// # async fn demo(path: &std::path::Path) -> Result<(), reel_media::MediaError> {
/// let info = reel_media::probe(&reel_media::MediaConfig::default(), path).await?;
/// println!("{}x{}", info.video.width, info.video.height);
/// # Ok(()) }
/// ```
///
/// Errors: `OutOfBounds` if the clip declares frames, a frame rate or a duration
/// beyond the limits; `Io` if the file cannot be opened (missing, permissions); `Corrupt` if
/// ffprobe cannot read it, it has no video stream, no positive duration, is a still
/// image, or is an MP4/MOV whose box structure runs past the end of the file
/// (a truncated download); `Timeout` after 30 s; `NotInstalled` without ffprobe.
/// The native reader decides no error itself (except `Timeout` if reading the headers
/// takes 30 s, as the ffprobe run would): whatever it is unsure about, ffprobe
/// decides, so the errors are those of [`probe_with_ffprobe`].
///
/// [`ProbeLimits`]: crate::ProbeLimits
pub async fn probe(config: &MediaConfig, path: &Path) -> Result<ClipInfo, MediaError> {
    let len = probe_input_len(path).await?;
    if config.native_probe {
        match read_native(path, &RunOptions::new()).await? {
            Ok((info, _)) => {
                check_iso_boxes(path, len).await?;
                return within_limits(config, info);
            }
            Err(declined) => tracing::debug!(
                path = %path.display(),
                reason = %declined,
                "native MP4 reader declined; running ffprobe"
            ),
        }
    }
    within_limits(config, run_ffprobe(config, path, len).await?)
}

/// [`probe`] with ffprobe only, never the native reader (for diagnostics and tests).
/// The clip must fit `config.limits` all the same.
pub async fn probe_with_ffprobe(config: &MediaConfig, path: &Path) -> Result<ClipInfo, MediaError> {
    let len = probe_input_len(path).await?;
    within_limits(config, run_ffprobe(config, path, len).await?)
}

/// The one bounds check of both probe paths: nothing beyond the limits gets to ffmpeg.
fn within_limits(config: &MediaConfig, info: ClipInfo) -> Result<ClipInfo, MediaError> {
    config.limits.check(&info)?;
    Ok(info)
}

/// What the native MP4/MOV reader makes of one file (see [`probe_native`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // one short-lived value per probe
pub enum NativeProbe {
    /// Read natively: exactly what [`probe_with_ffprobe`] and
    /// [`fingerprint_with_ffprobe`] would return.
    Read {
        /// The clip, as [`probe`] returns it.
        info: ClipInfo,
        /// The codec headers, as the stream-copy check compares them.
        fingerprint: Fingerprint,
    },
    /// The reader was not sure (not ISO-BMFF, an unknown codec, anything odd), so
    /// [`probe`] asks ffprobe. The reason, for logs.
    Declined(String),
}

/// Runs only the native ISO-BMFF reader on `path`, with no ffprobe fallback, whatever
/// [`MediaConfig::native_probe`] says and without the [`ProbeLimits`](crate::ProbeLimits)
/// check: for diagnostics and the differential tests. Reads only headers (a few KB);
/// never fails, a problem is a `Declined`.
pub async fn probe_native(path: &Path) -> NativeProbe {
    match read_native(path, &RunOptions::new()).await {
        Ok(Ok((info, fingerprint))) => NativeProbe::Read { info, fingerprint },
        Ok(Err(declined)) => NativeProbe::Declined(declined.0),
        Err(e) => NativeProbe::Declined(format!("reading the headers: {e}")),
    }
}

/// [`probe_native`] on a file held in memory: the reader alone, no file system, no
/// ffprobe, no limits. Its entry for fuzzing (`fuzz/fuzz_targets/mp4.rs`); never
/// panics, whatever the bytes.
pub fn probe_native_bytes(bytes: &[u8]) -> NativeProbe {
    match mp4::read(std::io::Cursor::new(bytes), bytes.len() as u64) {
        Ok((info, fingerprint)) => NativeProbe::Read { info, fingerprint },
        Err(declined) => NativeProbe::Declined(declined.0),
    }
}

/// The native reader on a blocking thread (it does small synchronous reads), under
/// the same limits as an ffprobe run: `opts`' cancel token and deadline, and at most
/// [`PROBE_TIMEOUT`], so a hung filesystem gives `Timeout` rather than a stuck task.
async fn read_native(
    path: &Path,
    opts: &RunOptions,
) -> Result<Result<(ClipInfo, Fingerprint), mp4::Declined>, MediaError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || mp4::read_path(&owned));
    let limit = std::time::Instant::now() + PROBE_TIMEOUT;
    let deadline = opts.deadline.map_or(limit, |d| d.min(limit));
    tokio::select! {
        joined = read => Ok(joined.unwrap_or_else(|e| {
            // A bug in the reader must not take the stage down: ffprobe decides instead.
            Err(mp4::Declined(format!("native reader failed: {e}")))
        })),
        _ = opts.cancel.cancelled() => Err(MediaError::Cancelled),
        _ = tokio::time::sleep_until(deadline.into()) => Err(MediaError::Timeout),
    }
}

/// The length of `path`, which must be a non-empty regular file.
async fn probe_input_len(path: &Path) -> Result<u64, MediaError> {
    // Distinguish "not there / not readable" (Io) from "not a video" (Corrupt).
    let meta = tokio::fs::metadata(path).await?;
    if !meta.is_file() {
        return Err(MediaError::corrupt(format!("{} is not a regular file", path.display())));
    }
    if meta.len() == 0 {
        return Err(MediaError::corrupt("file is empty"));
    }
    Ok(meta.len())
}

async fn run_ffprobe(config: &MediaConfig, path: &Path, len: u64) -> Result<ClipInfo, MediaError> {
    let args: Vec<OsString> = [
        "-v",
        "error",
        "-hide_banner",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        INPUT_FORMATS,
        "-show_streams",
        "-show_format",
        "-of",
        "json",
    ]
    .iter()
    .map(OsString::from)
    .chain(std::iter::once(file_url(path)))
    .collect();
    let opts = RunOptions::new().with_timeout(PROBE_TIMEOUT);
    let fin = process::run(config, Tool::Ffprobe, &args, &opts, Stdout::Collect).await?;
    if !fin.status.success() {
        let reason = fin.stderr_tail.trim();
        return Err(MediaError::corrupt(if reason.is_empty() {
            format!("ffprobe failed ({})", fin.status)
        } else {
            // ffprobe prefixes the URL; keep the message, drop our `file:` noise.
            reason.lines().last().unwrap_or(reason).to_string()
        }));
    }
    let json: Value = serde_json::from_slice(&fin.stdout)
        .map_err(|e| MediaError::corrupt(format!("unreadable ffprobe output: {e}")))?;
    let info = parse_ffprobe_json(&json)?;
    if is_mov_family(&info.container) {
        check_iso_boxes(path, len).await?;
    }
    Ok(info)
}

/// Reads the codec name and a CRC32 of the codec extradata (h264 SPS/PPS, AAC
/// AudioSpecificConfig) of the first video and audio stream: natively for MP4/MOV
/// when the reader is sure, else with [`fingerprint_with_ffprobe`].
pub(crate) async fn fingerprint(
    config: &MediaConfig,
    path: &Path,
    opts: &RunOptions,
) -> Result<Fingerprint, MediaError> {
    if config.native_probe {
        // Same contract as the ffprobe run: a cancelled or expired request does no work.
        if opts.cancel.is_cancelled() {
            return Err(MediaError::Cancelled);
        }
        if opts.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(MediaError::Timeout);
        }
        match read_native(path, opts).await? {
            Ok((_, fingerprint)) => return Ok(fingerprint),
            Err(declined) => tracing::debug!(
                path = %path.display(),
                reason = %declined,
                "native MP4 reader declined; running ffprobe for codec headers"
            ),
        }
    }
    fingerprint_with_ffprobe(config, path, opts).await
}

/// The [`Fingerprint`] of `path` from ffprobe only (`-show_data_hash CRC32`), never
/// the native reader (for diagnostics and tests). 30 s limit, or `opts`' deadline.
pub async fn fingerprint_with_ffprobe(
    config: &MediaConfig,
    path: &Path,
    opts: &RunOptions,
) -> Result<Fingerprint, MediaError> {
    let args: Vec<OsString> = [
        "-v",
        "error",
        "-hide_banner",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        INPUT_FORMATS,
        "-show_data_hash",
        "CRC32",
        "-show_entries",
        "stream=codec_type,codec_name,extradata_hash:stream_disposition=attached_pic",
        "-of",
        "json",
    ]
    .iter()
    .map(OsString::from)
    .chain(std::iter::once(file_url(path)))
    .collect();
    let limit = std::time::Instant::now() + PROBE_TIMEOUT;
    let opts =
        RunOptions { cancel: opts.cancel.clone(), deadline: Some(opts.deadline.map_or(limit, |d| d.min(limit))) };
    let fin = process::run(config, Tool::Ffprobe, &args, &opts, Stdout::Collect).await?;
    if !fin.status.success() {
        return Err(MediaError::corrupt(format!(
            "{}: {}",
            path.display(),
            fin.stderr_tail.trim().lines().last().unwrap_or("ffprobe failed")
        )));
    }
    let json: Value = serde_json::from_slice(&fin.stdout)
        .map_err(|e| MediaError::corrupt(format!("unreadable ffprobe output: {e}")))?;
    let streams = json.get("streams").and_then(Value::as_array).cloned().unwrap_or_default();
    let pick = |kind: &str| {
        streams
            .iter()
            .find(|s| {
                str_field(s, "codec_type").as_deref() == Some(kind)
                    && s.pointer("/disposition/attached_pic").and_then(Value::as_i64) != Some(1)
            })
            .map(|s| {
                (str_field(s, "codec_name").unwrap_or_default(), str_field(s, "extradata_hash").unwrap_or_default())
            })
    };
    Ok(Fingerprint { video: pick("video"), audio: pick("audio") })
}

/// Whether an ffprobe `format_name` is the QuickTime / ISO-BMFF family (mp4, mov, m4a, 3gp).
pub fn is_mov_family(format_name: &str) -> bool {
    format_name.split(',').any(|f| f == "mov" || f == "mp4")
}

/// Turns ffprobe's JSON into a [`ClipInfo`]. Public within the crate for unit tests.
pub(crate) fn parse_ffprobe_json(json: &Value) -> Result<ClipInfo, MediaError> {
    let format = json.get("format").cloned().unwrap_or(Value::Null);
    let container = str_field(&format, "format_name").unwrap_or_default();
    if container == "image2" || container.ends_with("_pipe") || container == "tty" {
        return Err(MediaError::corrupt(format!("not a video (format {container})")));
    }
    let streams = json.get("streams").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();

    let video_stream = streams
        .iter()
        .find(|s| {
            str_field(s, "codec_type").as_deref() == Some("video")
                && s.pointer("/disposition/attached_pic").and_then(Value::as_i64) != Some(1)
        })
        .ok_or_else(|| MediaError::corrupt("no video stream"))?;
    let video = parse_video(video_stream)?;

    let audio = streams.iter().find(|s| str_field(s, "codec_type").as_deref() == Some("audio")).map(parse_audio);

    let duration_seconds =
        num_field(&format, "duration").or_else(|| num_field(video_stream, "duration")).unwrap_or(0.0);
    if !(duration_seconds.is_finite() && duration_seconds > 0.0) {
        return Err(MediaError::corrupt("no positive duration"));
    }
    Ok(ClipInfo { duration_seconds, container, video, audio })
}

fn parse_video(s: &Value) -> Result<VideoInfo, MediaError> {
    let width = num_field(s, "width").unwrap_or(0.0) as u32;
    let height = num_field(s, "height").unwrap_or(0.0) as u32;
    if width == 0 || height == 0 {
        return Err(MediaError::corrupt("video stream has no frame size"));
    }
    let frame_rate = [str_field(s, "r_frame_rate"), str_field(s, "avg_frame_rate")]
        .into_iter()
        .flatten()
        .find(|r| valid_fraction(r))
        .unwrap_or_default();
    Ok(VideoInfo {
        codec: str_field(s, "codec_name").unwrap_or_default(),
        width,
        height,
        pix_fmt: str_field(s, "pix_fmt").unwrap_or_default(),
        frame_rate,
        time_base: str_field(s, "time_base").unwrap_or_default(),
        rotation: rotation_of(s),
    })
}

fn parse_audio(s: &Value) -> AudioInfo {
    AudioInfo {
        codec: str_field(s, "codec_name").unwrap_or_default(),
        sample_rate: num_field(s, "sample_rate").unwrap_or(0.0) as u32,
        channels: num_field(s, "channels").unwrap_or(0.0) as u32,
        channel_layout: str_field(s, "channel_layout").unwrap_or_default(),
        time_base: str_field(s, "time_base").unwrap_or_default(),
    }
}

/// Display rotation, degrees clockwise, normalised to 0/90/180/270.
///
/// ffprobe's display-matrix `rotation` is counter-clockwise (the libavutil
/// convention: `-90` is a phone held upright, shown after turning the frame 90°
/// clockwise), so it is negated. The legacy `rotate` tag (ffmpeg < 5) is already
/// clockwise.
pub(crate) fn rotation_of(stream: &Value) -> u32 {
    let from_matrix = stream
        .get("side_data_list")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .filter(|sd| str_field(sd, "side_data_type").as_deref() == Some("Display Matrix"))
                .find_map(|sd| num_field(sd, "rotation"))
        })
        .map(|ccw| -ccw);
    let clockwise = from_matrix.or_else(|| {
        stream.pointer("/tags/rotate").and_then(|v| match v {
            Value::String(s) => s.trim().parse::<f64>().ok(),
            other => other.as_f64(),
        })
    });
    match clockwise {
        Some(deg) if deg.is_finite() => normalise_rotation(deg),
        _ => 0,
    }
}

fn valid_fraction(r: &str) -> bool {
    match r.split_once('/') {
        Some((n, d)) => n.parse::<u64>().is_ok_and(|n| n > 0) && d.parse::<u64>().is_ok_and(|d| d > 0),
        None => false,
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn num_field(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Walks the top-level ISO-BMFF boxes and fails if one claims to run past the end
/// of the file: the signature of a truncated download. ffprobe happily reports a
/// full duration for a truncated "faststart" MP4 (the index is at the front), and
/// ffmpeg then fails half-way, so this catches it up front. Reads a few bytes per box.
pub(crate) async fn check_iso_boxes(path: &Path, file_len: u64) -> Result<(), MediaError> {
    let file = std::fs::File::open(path)?;
    tokio::task::spawn_blocking(move || iso_boxes_fit(file, file_len))
        .await
        .map_err(|e| MediaError::Io(std::io::Error::other(e.to_string())))?
}

/// [`check_iso_boxes`] over any reader of `file_len` bytes (a file, or an object read by
/// ranged reads).
fn iso_boxes_fit<R: std::io::Read + std::io::Seek>(mut f: R, file_len: u64) -> Result<(), MediaError> {
    let mut pos = 0u64;
    let mut boxes = 0u32;
    while pos < file_len {
        if file_len - pos < 8 {
            return Err(MediaError::corrupt(format!("truncated MP4: {} stray bytes at the end", file_len - pos)));
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut hdr = [0u8; 16];
        let want = if file_len - pos >= 16 { 16 } else { 8 };
        f.read_exact(&mut hdr[..want])?;
        let size32 = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as u64;
        let kind = String::from_utf8_lossy(&hdr[4..8]).into_owned();
        let size = match size32 {
            0 => return Ok(()), // "extends to end of file": fine by definition
            1 => {
                if want < 16 {
                    return Err(MediaError::corrupt(format!("truncated MP4: '{kind}' box header")));
                }
                u64::from_be_bytes(hdr[8..16].try_into().expect("8 bytes"))
            }
            s => s,
        };
        if size < 8 {
            return Err(MediaError::corrupt(format!("bad MP4 box '{kind}' of size {size} at {pos}")));
        }
        let end = pos.saturating_add(size);
        if end > file_len {
            return Err(MediaError::corrupt(format!(
                "truncated MP4: box '{kind}' at offset {pos} needs {size} bytes, file ends after {}",
                file_len - pos
            )));
        }
        pos = end;
        boxes += 1;
        if boxes > 1_000_000 {
            // Fragmented files have many boxes, but not this many; stop scanning.
            return Ok(());
        }
    }
    Ok(())
}

/// [`probe`] of a file read through `reader` (`len` bytes; a clip in a bucket, read by
/// ranged reads) by the native reader alone: the same checks (box structure, limits) on
/// the headers only. `Ok(None)` where the native reader declines (the caller fetches the
/// file and asks ffprobe). Blocking: call it on a blocking thread.
pub fn probe_headers<R: std::io::Read + std::io::Seek>(
    config: &MediaConfig,
    mut reader: R,
    len: u64,
) -> Result<Option<ClipInfo>, MediaError> {
    if !config.native_probe || len == 0 {
        return Ok(None);
    }
    let info = match mp4::read(&mut reader, len) {
        Ok((info, _)) => info,
        Err(declined) => {
            tracing::debug!(reason = %declined.0, "native MP4 reader declined the headers");
            return Ok(None);
        }
    };
    iso_boxes_fit(reader, len)?;
    within_limits(config, info).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::Classify;
    use serde_json::json;

    #[test]
    fn rotation_sign_convention() {
        let with_matrix = |r: i64| json!({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": r}]});
        // A phone held upright: ffprobe reports -90 => shown turned 90° clockwise.
        assert_eq!(rotation_of(&with_matrix(-90)), 90);
        assert_eq!(rotation_of(&with_matrix(90)), 270);
        assert_eq!(rotation_of(&with_matrix(180)), 180);
        assert_eq!(rotation_of(&with_matrix(-180)), 180);
        assert_eq!(rotation_of(&with_matrix(0)), 0);
        assert_eq!(rotation_of(&json!({"tags": {"rotate": "90"}})), 90);
        assert_eq!(rotation_of(&json!({"tags": {"rotate": "-90"}})), 270);
        assert_eq!(rotation_of(&json!({})), 0);
        assert_eq!(normalise_rotation(-89.9), 270);
        assert_eq!(normalise_rotation(450.0), 90);
    }

    #[test]
    fn parses_streams() {
        let j = json!({
            "streams": [
                {"codec_type": "video", "codec_name": "mjpeg", "width": 100, "height": 100,
                 "disposition": {"attached_pic": 1}},
                {"codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
                 "pix_fmt": "yuv420p", "r_frame_rate": "30000/1001", "time_base": "1/600",
                 "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]},
                {"codec_type": "audio", "codec_name": "aac", "sample_rate": "44100", "channels": 1,
                 "channel_layout": "mono", "time_base": "1/44100"}
            ],
            "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "3.5"}
        });
        let info = parse_ffprobe_json(&j).unwrap();
        assert_eq!(info.video.codec, "h264");
        assert_eq!(info.video.rotation, 90);
        assert_eq!(info.video.display_size(), (1080, 1920));
        assert_eq!(info.video.frame_rate, "30000/1001");
        assert_eq!(info.duration_seconds, 3.5);
        let a = info.audio.unwrap();
        assert_eq!((a.sample_rate, a.channels, a.channel_layout.as_str()), (44100, 1, "mono"));
    }

    #[test]
    fn rejects_non_videos() {
        let audio_only = json!({"streams": [{"codec_type": "audio", "codec_name": "mp3"}],
                                "format": {"format_name": "mp3", "duration": "3"}});
        assert!(matches!(parse_ffprobe_json(&audio_only), Err(MediaError::Corrupt { .. })));
        let image = json!({"streams": [{"codec_type": "video", "codec_name": "png", "width": 5, "height": 5}],
                           "format": {"format_name": "png_pipe"}});
        assert!(matches!(parse_ffprobe_json(&image), Err(MediaError::Corrupt { .. })));
        let no_duration = json!({"streams": [{"codec_type": "video", "codec_name": "h264", "width": 5, "height": 5}],
                                 "format": {"format_name": "matroska,webm"}});
        assert!(matches!(parse_ffprobe_json(&no_duration), Err(MediaError::Corrupt { .. })));
    }

    /// Issue 12: a clip of a few hundred bytes that declares 16000x16000 frames (256 M
    /// pixels, 384 MB a frame) is refused by both probe paths as out of bounds, before
    /// ffmpeg could decode it.
    #[tokio::test]
    async fn both_probe_paths_refuse_frames_beyond_the_limits() {
        use crate::{LimitExceeded, ProbeLimits};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.mp4");
        std::fs::write(&path, mp4::testfile::file_declaring_frames(16000, 16000)).unwrap();

        // The native reader reads it (so `probe` answers without ffprobe) ...
        match probe_native(&path).await {
            NativeProbe::Read { info, .. } => {
                assert_eq!((info.video.width, info.video.height), (16000, 16000))
            }
            other => panic!("the native reader declined: {other:?}"),
        }
        // ... and both paths refuse it.
        let config = MediaConfig::default();
        for (how, result) in
            [("native", probe(&config, &path).await), ("ffprobe", probe_with_ffprobe(&config, &path).await)]
        {
            let e = result.expect_err(how);
            assert!(
                matches!(e, MediaError::OutOfBounds(LimitExceeded::FrameSize { width: 16000, height: 16000, .. })),
                "{how}: {e:?}"
            );
            assert_eq!(e.to_string(), "clip out of bounds: 16000x16000 frames are over the 8192x8192 limit");
            assert_eq!(e.verdict(), reel_events::Verdict::reject(reel_events::ErrorType::InvalidRequest));
        }

        // With the bounds raised, both paths report the declared size: the refusal was
        // the bound, not an unreadable file.
        let raised = MediaConfig::default().set_limits(ProbeLimits::default().set_max_frame(16000, 16000, u64::MAX));
        for (how, result) in
            [("native", probe(&raised, &path).await), ("ffprobe", probe_with_ffprobe(&raised, &path).await)]
        {
            let info = result.unwrap_or_else(|e| panic!("{how}: {e}"));
            assert_eq!((info.video.width, info.video.height), (16000, 16000), "{how}");
        }

        // 16384x16384: the native path refuses it as out of bounds; ffprobe already finds
        // the size invalid (libavutil's image size check) and reports no frame size, so
        // its path refuses it as corrupt. Refused either way.
        std::fs::write(&path, mp4::testfile::file_declaring_frames(16384, 16384)).unwrap();
        let e = probe(&config, &path).await.unwrap_err();
        assert!(matches!(e, MediaError::OutOfBounds(LimitExceeded::FrameSize { .. })), "{e:?}");
        let e = probe_with_ffprobe(&config, &path).await.unwrap_err();
        assert!(!e.verdict().retryable, "{e:?}");
    }

    /// The fuzz target's seeds (`fuzz/seeds/mp4/`) must reach the whole reader, not just
    /// its early declines, or the fuzzer starts from nothing.
    #[test]
    fn fuzz_seeds_are_read_natively() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/mp4");
        let mut read = 0;
        for entry in std::fs::read_dir(&seeds).unwrap() {
            let path = entry.unwrap().path();
            match probe_native_bytes(&std::fs::read(&path).unwrap()) {
                NativeProbe::Read { .. } => read += 1,
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert!(read >= 3, "{read} seeds");
    }

    #[test]
    fn mov_family() {
        assert!(is_mov_family("mov,mp4,m4a,3gp,3g2,mj2"));
        assert!(!is_mov_family("matroska,webm"));
    }
}
