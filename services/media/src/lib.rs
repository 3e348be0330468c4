//! `reel-media`: everything in reel that knows ffmpeg.
//!
//! * [`probe`] a file into a [`ClipInfo`](reel_events::ClipInfo) (MP4/MOV headers
//!   read natively when the reader is sure, see [`probe_native`]; otherwise ffprobe),
//! * [`plan`] stream copy vs re-encode for a list of clips,
//! * [`normalize_clip`] one clip into a segment of an [`EncodeTarget`],
//! * [`concat_copy`] segments (or copy-compatible clips) into the reel,
//! * [`make_sample_clip`] for demos, tests and benchmarks.
//!
//! ffmpeg and ffprobe are run as child processes with explicit arguments (never a
//! shell), stdin closed, stderr's last 4 KB kept for errors, progress read from
//! `-progress pipe:1`, and stopped (SIGTERM, SIGKILL after 2 s) on cancel or deadline.
//! Every input is opened as a `file:` URL under `-protocol_whitelist file` and
//! `-format_whitelist` [`INPUT_FORMATS`] (so no playlist or script can open more files).
//! `REEL_FFMPEG` / `REEL_FFPROBE` override the binaries (default: `PATH`);
//! `REEL_NATIVE_PROBE=0` turns the native MP4/MOV header reader off (ffprobe only).
//! See `docs/MEDIA.md` for the rules and the exact ffmpeg settings.
//!
//! ```no_run
//! # async fn demo(clips: Vec<std::path::PathBuf>, dir: &std::path::Path) -> Result<(), reel_media::MediaError> {
//! use reel_events::{Compression, Mode, Orientation};
//! use reel_media::*;
//!
//! let (orientation, compression) = (Orientation::Portrait, Compression::Optimized);
//! let mut infos = Vec::new();
//! for c in &clips {
//!     infos.push(probe(c).await?);
//! }
//! let opts = RunOptions::new().with_timeout(std::time::Duration::from_secs(600));
//! let out = dir.join("reel.mp4");
//! let plan = plan(&infos, orientation, compression);
//! if plan.mode == Mode::Copy {
//!     match concat_copy(&clips, &out, &opts, &mut |_| {}).await {
//!         // Same parameters but different codec headers: re-encode after all.
//!         Err(MediaError::Incompatible { .. }) => {}
//!         done => return done,
//!     }
//! }
//! let target = plan.target.unwrap_or_else(|| EncodeTarget::new(orientation, compression));
//! let mut segments = Vec::new();
//! for (i, (clip, info)) in clips.iter().zip(&infos).enumerate() {
//!     let seg = dir.join(format!("seg{i}.mp4"));
//!     normalize_clip(clip, info, &target, &seg, &opts, &mut |s| println!("{s:.1}s")).await?;
//!     segments.push(seg);
//! }
//! concat_copy(&segments, &out, &opts, &mut |_| {}).await
//! # }
//! ```

mod cancel;
mod encode;
mod error;
mod mp4;
mod plan;
mod probe;
mod process;

pub use cancel::{CancelToken, RunOptions};
pub use encode::{check_copy_compatible, concat_copy, ffmpeg_version, make_sample_clip, normalize_clip, SampleSpec};
pub use error::MediaError;
pub use mp4::NATIVE_PROBE_ENV;
pub use plan::{plan, EncodeTarget, Plan, TARGET_FPS, TARGET_SAMPLE_RATE};
pub use probe::{
    fingerprint_with_ffprobe, is_mov_family, probe, probe_native, probe_with_ffprobe, Fingerprint, NativeProbe,
    INPUT_FORMATS, PROBE_TIMEOUT,
};

use std::ffi::OsString;
use std::path::Path;

/// `path` as an ffmpeg `file:` URL, so that a name containing `:` or starting
/// with `-` is never read as a protocol or an option.
pub(crate) fn file_url(path: &Path) -> OsString {
    let mut s = OsString::from("file:");
    s.push(path.as_os_str());
    s
}
