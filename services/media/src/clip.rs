//! What both clip readers (the native MP4/MOV reader and ffprobe) report beyond
//! [`ClipInfo`](reel_events::ClipInfo), and the conventions both follow. It lives apart
//! from either reader so that neither imports the other.

/// Codec headers of the first video and first audio stream (cover art excluded), for
/// the stream-copy check: `(codec name, extradata hash)` as ffprobe prints them with
/// `-show_data_hash CRC32`, e.g. `("h264", "CRC32:59cc208d")`. Two clips can be joined
/// by stream copy only if these are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The first video stream's codec name and extradata hash, if any.
    pub video: Option<(String, String)>,
    /// The first audio stream's codec name and extradata hash, if any.
    pub audio: Option<(String, String)>,
}

/// Snaps any angle to the nearest of 0, 90, 180, 270.
pub(crate) fn normalise_rotation(deg: f64) -> u32 {
    let quarter = (deg / 90.0).round() as i64;
    (quarter.rem_euclid(4) * 90) as u32
}
