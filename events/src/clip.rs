//! What the pipeline knows about one clip after probing it: the facts that decide
//! between stream copy and re-encode. Pure data, filled in by `reel-media`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Probe summary of one media file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClipInfo {
    /// Duration in seconds (container duration, or the video stream's when the container has none).
    pub duration_seconds: f64,
    /// ffprobe `format_name`, e.g. `mov,mp4,m4a,3gp,3g2,mj2`.
    pub container: String,
    /// The first video stream.
    pub video: VideoInfo,
    /// The first audio stream, if the clip has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioInfo>,
}

/// The first video stream of a clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoInfo {
    /// ffprobe `codec_name`, e.g. `h264`.
    pub codec: String,
    /// Coded width in pixels (before rotation).
    pub width: u32,
    /// Coded height in pixels (before rotation).
    pub height: u32,
    /// ffprobe `pix_fmt`, e.g. `yuv420p`.
    pub pix_fmt: String,
    /// ffprobe `r_frame_rate` as a fraction, e.g. `30/1` or `30000/1001`.
    pub frame_rate: String,
    /// ffprobe `time_base`, e.g. `1/15360`.
    pub time_base: String,
    /// Display rotation in degrees clockwise, normalised to 0, 90, 180 or 270
    /// (from the display matrix side data or the legacy `rotate` tag).
    pub rotation: u32,
}

impl VideoInfo {
    /// Width and height as displayed, after applying the rotation.
    pub fn display_size(&self) -> (u32, u32) {
        if self.rotation % 180 == 90 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

/// The first audio stream of a clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudioInfo {
    /// ffprobe `codec_name`, e.g. `aac`.
    pub codec: String,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channel count.
    pub channels: u32,
    /// ffprobe `channel_layout`, e.g. `stereo`; empty when ffprobe reports none.
    pub channel_layout: String,
    /// ffprobe `time_base`.
    pub time_base: String,
}
