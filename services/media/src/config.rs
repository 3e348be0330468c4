//! [`MediaConfig`]: everything the caller decides about how reel-media works.
//!
//! This crate reads no environment variable: a program builds one `MediaConfig` from
//! its own settings and passes it to every call, so a test can run two configurations
//! side by side and nothing changes behind the caller's back.

use reel_events::ClipInfo;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which binaries to run, whether MP4/MOV headers are read natively, and the bounds
/// every clip must fit before anything decodes it.
///
/// ```
/// use reel_media::{MediaConfig, ProbeLimits};
/// let config = MediaConfig::default()
///     .with_ffmpeg("/opt/ffmpeg/bin/ffmpeg")
///     .set_limits(ProbeLimits::default().set_max_duration_seconds(300.0));
/// assert!(config.native_probe);
/// assert_eq!(config.limits.max_fps, 240.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MediaConfig {
    /// The ffmpeg program. A bare name is looked up on `PATH`. Default: `ffmpeg`.
    pub ffmpeg: PathBuf,
    /// The ffprobe program. A bare name is looked up on `PATH`. Default: `ffprobe`.
    pub ffprobe: PathBuf,
    /// Read MP4/MOV headers in-process when the reader is sure of ffprobe's answer
    /// (docs/MEDIA.md, "Reading MP4/MOV headers natively"). `false` sends every clip
    /// to ffprobe, e.g. to rule the native reader out when debugging. Default: `true`.
    pub native_probe: bool,
    /// The bounds a clip must fit; the probe refuses anything beyond them.
    pub limits: ProbeLimits,
    /// Threads of one clip's encode (ffmpeg's `-threads`); 0 lets the encoder choose
    /// (about one and a half per core). Set it to the instance's vCPUs where several
    /// encodes share a machine, or to 1 to measure how encodes scale out. Default: 0.
    pub encode_threads: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            native_probe: true,
            limits: ProbeLimits::default(),
            encode_threads: 0,
        }
    }
}

impl MediaConfig {
    /// Runs this ffmpeg program instead of `ffmpeg` on `PATH`.
    pub fn with_ffmpeg(mut self, program: impl Into<PathBuf>) -> Self {
        self.ffmpeg = program.into();
        self
    }

    /// Runs this ffprobe program instead of `ffprobe` on `PATH`.
    pub fn with_ffprobe(mut self, program: impl Into<PathBuf>) -> Self {
        self.ffprobe = program.into();
        self
    }

    /// Turns the native MP4/MOV header reader on (the default) or off.
    pub fn set_native_probe(mut self, enabled: bool) -> Self {
        self.native_probe = enabled;
        self
    }

    /// Limits one clip's encode to `threads` threads (0: the encoder's choice).
    pub fn set_encode_threads(mut self, threads: u32) -> Self {
        self.encode_threads = threads;
        self
    }

    /// Sets the bounds every probed clip must fit.
    pub fn set_limits(mut self, limits: ProbeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the configuration once, where it is built, so that a bad value fails at
    /// startup rather than refusing every clip later: both programs named, every bound
    /// positive (a duration bound may be `f64::INFINITY`), the frame rate bound finite.
    pub fn validate(&self) -> Result<(), String> {
        if self.ffmpeg.as_os_str().is_empty() || self.ffprobe.as_os_str().is_empty() {
            return Err("media: ffmpeg and ffprobe must name a program".into());
        }
        let l = &self.limits;
        if l.max_width == 0 || l.max_height == 0 || l.max_pixels == 0 {
            return Err("media: frame size limits must be positive".into());
        }
        if !(l.max_fps.is_finite() && l.max_fps > 0.0) {
            return Err(format!("media: max_fps must be a positive number, not {}", l.max_fps));
        }
        if l.max_duration_seconds.is_nan() || l.max_duration_seconds <= 0.0 {
            return Err(format!("media: max_duration_seconds must be positive, not {}", l.max_duration_seconds));
        }
        Ok(())
    }

    pub(crate) fn ffmpeg(&self) -> &Path {
        &self.ffmpeg
    }

    pub(crate) fn ffprobe(&self) -> &Path {
        &self.ffprobe
    }
}

/// Bounds on what a clip may declare, checked by every probe path (native and
/// ffprobe) before anything decodes the clip.
///
/// A clip's headers are the user's word: a few hundred bytes can declare 16384×16384
/// frames, 10 000 fps or a ten-hour duration, and ffmpeg would then allocate frames of
/// a gigabyte or encode for hours (a normalised segment has `duration × 30` frames).
/// So the probe refuses such a clip with [`MediaError::OutOfBounds`], which is
/// rejected as `invalid_request`.
///
/// The defaults: frames up to 8192 pixels on each side and at most 36 million pixels
/// (8K UHD 7680×4320 is 33.2 M; 8192×8192 is not allowed, a 6000×6000 square is), at
/// most 240 fps (phones' slow-motion modes), and at most 600 s per clip (the default of
/// `REEL_MAX_CLIP_SECONDS`; a stage sets its configured value).
///
/// [`MediaError::OutOfBounds`]: crate::MediaError::OutOfBounds
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProbeLimits {
    /// Widest frame allowed, in pixels (coded width). Default: 8192.
    pub max_width: u32,
    /// Tallest frame allowed, in pixels (coded height). Default: 8192.
    pub max_height: u32,
    /// Most pixels per frame (width × height). Default: 36 000 000.
    pub max_pixels: u64,
    /// Highest frame rate allowed (the stream's `r_frame_rate`). Default: 240.
    pub max_fps: f64,
    /// Longest clip allowed, in seconds. Default: 600. `f64::INFINITY` for none (e.g.
    /// when checking a finished reel, which is as long as all its clips). Not a setting
    /// of its own: the download stage sets it from its `max_clip_seconds`.
    #[serde(skip)]
    pub max_duration_seconds: f64,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        Self { max_width: 8192, max_height: 8192, max_pixels: 36_000_000, max_fps: 240.0, max_duration_seconds: 600.0 }
    }
}

impl ProbeLimits {
    /// Sets the largest frame: at most `max_width` × `max_height` and `max_pixels` in all.
    pub fn set_max_frame(mut self, max_width: u32, max_height: u32, max_pixels: u64) -> Self {
        self.max_width = max_width;
        self.max_height = max_height;
        self.max_pixels = max_pixels;
        self
    }

    /// Sets the highest frame rate.
    pub fn set_max_fps(mut self, max_fps: f64) -> Self {
        self.max_fps = max_fps;
        self
    }

    /// Sets the longest clip, in seconds (`f64::INFINITY`: no limit).
    pub fn set_max_duration_seconds(mut self, seconds: f64) -> Self {
        self.max_duration_seconds = seconds;
        self
    }

    /// `Err` with the first bound `info` is beyond.
    pub fn check(&self, info: &ClipInfo) -> Result<(), LimitExceeded> {
        let (width, height) = (info.video.width, info.video.height);
        if width > self.max_width || height > self.max_height {
            return Err(LimitExceeded::FrameSize {
                width,
                height,
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(LimitExceeded::Pixels { width, height, max: self.max_pixels });
        }
        // An unknown or unreadable rate (ffprobe may leave it empty) is not a bound broken;
        // the segment is made at 30 fps regardless.
        if let Some(fps) = fraction(&info.video.frame_rate) {
            if fps > self.max_fps {
                return Err(LimitExceeded::FrameRate { fps, max: self.max_fps });
            }
        }
        // A NaN duration is refused too: it is not known to be within the bound.
        let within = info.duration_seconds.partial_cmp(&self.max_duration_seconds);
        if !matches!(within, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)) {
            return Err(LimitExceeded::Duration { seconds: info.duration_seconds, max: self.max_duration_seconds });
        }
        Ok(())
    }
}

/// `"30000/1001"` as a number; `None` for anything else.
fn fraction(rate: &str) -> Option<f64> {
    let (n, d) = rate.split_once('/')?;
    let (n, d): (f64, f64) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
    (d > 0.0 && n.is_finite()).then(|| n / d)
}

/// Which [`ProbeLimits`] bound a clip is beyond.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// A side of the frame is too long.
    #[error("{width}x{height} frames are over the {max_width}x{max_height} limit")]
    FrameSize {
        /// The clip's coded width.
        width: u32,
        /// The clip's coded height.
        height: u32,
        /// [`ProbeLimits::max_width`].
        max_width: u32,
        /// [`ProbeLimits::max_height`].
        max_height: u32,
    },
    /// The frame has too many pixels.
    #[error("{width}x{height} frames are over the {max} pixel limit")]
    Pixels {
        /// The clip's coded width.
        width: u32,
        /// The clip's coded height.
        height: u32,
        /// [`ProbeLimits::max_pixels`].
        max: u64,
    },
    /// The frame rate is too high.
    #[error("{fps:.3} fps is over the {max} fps limit")]
    FrameRate {
        /// The clip's frame rate.
        fps: f64,
        /// [`ProbeLimits::max_fps`].
        max: f64,
    },
    /// The clip is too long.
    #[error("{seconds:.1} s is over the {max:.0} s clip limit")]
    Duration {
        /// The clip's duration.
        seconds: f64,
        /// [`ProbeLimits::max_duration_seconds`].
        max: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::VideoInfo;

    fn clip(width: u32, height: u32, frame_rate: &str, seconds: f64) -> ClipInfo {
        ClipInfo {
            duration_seconds: seconds,
            container: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            video: VideoInfo {
                codec: "h264".into(),
                width,
                height,
                pix_fmt: "yuv420p".into(),
                frame_rate: frame_rate.into(),
                time_base: "1/15360".into(),
                rotation: 0,
            },
            audio: None,
        }
    }

    #[test]
    fn default_limits_let_real_clips_through_and_refuse_absurd_ones() {
        let limits = ProbeLimits::default();
        for ok in [
            clip(1080, 1920, "30/1", 30.0),
            clip(3840, 2160, "60000/1001", 600.0),
            clip(7680, 4320, "24/1", 5.0),
            clip(6000, 6000, "240/1", 1.0),
            clip(1920, 1080, "", 1.0),
        ] {
            assert_eq!(limits.check(&ok), Ok(()), "{:?}", ok.video);
        }
        let refused = |c: &ClipInfo| limits.check(c).unwrap_err().to_string();
        assert_eq!(refused(&clip(16384, 16384, "30/1", 1.0)), "16384x16384 frames are over the 8192x8192 limit");
        assert_eq!(refused(&clip(8192, 8192, "30/1", 1.0)), "8192x8192 frames are over the 36000000 pixel limit");
        assert_eq!(refused(&clip(1920, 1080, "1000/1", 1.0)), "1000.000 fps is over the 240 fps limit");
        assert_eq!(refused(&clip(1920, 1080, "30/1", 36000.0)), "36000.0 s is over the 600 s clip limit");
        assert!(limits.check(&clip(1920, 1080, "30/1", f64::NAN)).is_err());
        let reel = ProbeLimits::default().set_max_duration_seconds(f64::INFINITY);
        assert_eq!(reel.check(&clip(1920, 1080, "30/1", 36000.0)), Ok(()));
    }

    #[test]
    fn config_reads_from_toml_like_data_and_denies_unknown_fields() {
        let config: MediaConfig = serde_json::from_value(serde_json::json!({
            "ffprobe": "/usr/local/bin/ffprobe",
            "native_probe": false,
            "limits": { "max_fps": 120.0 }
        }))
        .unwrap();
        assert_eq!(config.ffmpeg, PathBuf::from("ffmpeg"));
        assert_eq!(config.ffprobe, PathBuf::from("/usr/local/bin/ffprobe"));
        assert!(!config.native_probe);
        assert_eq!(config.limits.max_fps, 120.0);
        assert_eq!(config.limits.max_width, 8192);
        let typo = serde_json::from_value::<MediaConfig>(serde_json::json!({"native_prob": false}));
        assert!(typo.is_err());
    }

    #[test]
    fn validation_catches_bounds_that_would_refuse_every_clip() {
        assert_eq!(MediaConfig::default().validate(), Ok(()));
        let unbounded = ProbeLimits::default().set_max_duration_seconds(f64::INFINITY);
        assert_eq!(MediaConfig::default().set_limits(unbounded).validate(), Ok(()));
        for bad in [
            ProbeLimits::default().set_max_frame(0, 1080, 1 << 30),
            ProbeLimits::default().set_max_fps(0.0),
            ProbeLimits::default().set_max_fps(f64::NAN),
            ProbeLimits::default().set_max_duration_seconds(0.0),
            ProbeLimits::default().set_max_duration_seconds(f64::NAN),
        ] {
            assert!(MediaConfig::default().set_limits(bad).validate().is_err(), "{bad:?}");
        }
        assert!(MediaConfig::default().with_ffprobe("").validate().is_err());
    }
}
