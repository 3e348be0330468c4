//! The user-facing knobs of a reel: orientation, compression, and how it was made.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The frame of the reel. Re-encoded reels have exactly these dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// 1080×1920.
    Portrait,
    /// 1920×1080.
    Landscape,
    /// 1080×1080.
    Square,
}

impl Orientation {
    /// All values, in contract order.
    pub const ALL: [Orientation; 3] = [Self::Portrait, Self::Landscape, Self::Square];

    /// Output frame size (width, height) in pixels.
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::Portrait => (1080, 1920),
            Self::Landscape => (1920, 1080),
            Self::Square => (1080, 1080),
        }
    }

    /// The wire name (`portrait`, `landscape`, `square`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Portrait => "portrait",
            Self::Landscape => "landscape",
            Self::Square => "square",
        }
    }

    /// The orientation whose aspect is closest to a displayed frame of `width`×`height`.
    pub fn closest_to(width: u32, height: u32) -> Orientation {
        if width == 0 || height == 0 {
            return Self::Portrait;
        }
        let ratio = width as f64 / height as f64;
        if ratio > 1.2 {
            Self::Landscape
        } else if ratio < 0.83 {
            Self::Portrait
        } else {
            Self::Square
        }
    }
}

/// What kind of job it is (CONTRACT 1.1: `JobStatus.type`, `job.completed.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    /// Clips joined into a reel (`stitch.requested`).
    #[default]
    VideoStitching,
    /// Clips generated from prompts (`generate.requested`).
    VideoGeneration,
}

impl JobType {
    /// The contract's name: `video_stitching`, `video_generation`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::VideoStitching => "video_stitching",
            JobType::VideoGeneration => "video_generation",
        }
    }
}

/// How hard to compress a re-encoded reel. See `docs/MEDIA.md` for the ffmpeg settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Keep the source quality: stream copy when possible, otherwise near-transparent.
    Original,
    /// The default: stream copy when possible, otherwise a balanced encode.
    Optimized,
    /// Always re-encode, slower preset, high quality.
    HighQuality,
    /// Always re-encode, smallest files.
    Small,
}

impl Compression {
    /// All values, in contract order.
    pub const ALL: [Compression; 4] = [Self::Original, Self::Optimized, Self::HighQuality, Self::Small];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Optimized => "optimized",
            Self::HighQuality => "high_quality",
            Self::Small => "small",
        }
    }

    /// Whether this preset may join matching clips by stream copy. `high_quality` and
    /// `small` ask for a specific encode, so they always re-encode.
    pub fn allows_stream_copy(self) -> bool {
        matches!(self, Self::Original | Self::Optimized)
    }
}

/// How the reel was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Joined by stream copy (concat demuxer), no re-encode.
    Copy,
    /// Each clip normalised and re-encoded.
    Reencode,
}

impl Mode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Reencode => "reencode",
        }
    }
}

macro_rules! wire_enum {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown {} {:?}; expected one of: {}", $what, s, known.join(", "))
                })
            }
        }
    };
}

impl Mode {
    /// All values.
    pub const ALL: [Mode; 2] = [Self::Copy, Self::Reencode];
}

wire_enum!(Orientation, "orientation");
wire_enum!(Compression, "compression");
wire_enum!(Mode, "mode");
