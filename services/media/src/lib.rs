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
//! The crate reads no environment: a [`MediaConfig`] passed to every call names the
//! binaries (default: `ffmpeg` / `ffprobe` on `PATH`), turns the native MP4/MOV header
//! reader on or off, and bounds what a clip may declare ([`ProbeLimits`]). Every
//! [`MediaError`] knows its own [`Verdict`] ([`Classify`]).
//! See `docs/MEDIA.md` for the rules and the exact ffmpeg settings.
//!
//! ```no_run
//! # async fn demo(clips: Vec<std::path::PathBuf>, dir: &std::path::Path) -> Result<(), reel_media::MediaError> {
//! use reel_events::{Compression, Mode, Orientation};
//! use reel_media::*;
//!
//! let config = MediaConfig::default();
//! let (orientation, compression) = (Orientation::Portrait, Compression::Optimized);
//! let mut infos = Vec::new();
//! for c in &clips {
//!     infos.push(probe(&config, c).await?);
//! }
//! let opts = RunOptions::new().with_timeout(std::time::Duration::from_secs(600));
//! let out = dir.join("reel.mp4");
//! let plan = plan(&infos, orientation, compression);
//! if plan.mode == Mode::Copy {
//!     match concat_copy(&config, &clips, &out, &opts, &mut |_| {}).await {
//!         // Same parameters but different codec headers: re-encode after all.
//!         Err(MediaError::Incompatible { .. }) => {}
//!         done => return done,
//!     }
//! }
//! let target = plan.target.unwrap_or_else(|| EncodeTarget::new(orientation, compression));
//! let mut segments = Vec::new();
//! for (i, (clip, info)) in clips.iter().zip(&infos).enumerate() {
//!     let seg = dir.join(format!("seg{i}.mp4"));
//!     normalize_clip(&config, clip, info, &target, &seg, &opts, &mut |s| println!("{s:.1}s")).await?;
//!     segments.push(seg);
//! }
//! concat_copy(&config, &segments, &out, &opts, &mut |_| {}).await
//! # }
//! ```

mod cancel;
mod clip;
mod config;
mod encode;
mod error;
mod mp4;
mod plan;
mod probe;
mod process;

pub use cancel::{CancelToken, RunOptions};
pub use config::{LimitExceeded, MediaConfig, ProbeLimits};
pub use encode::{
    assemble_copy, check_copy_compatible, concat_copy, ffmpeg_version, make_sample_clip, normalize_clip, Assembled,
    SampleSpec,
};
pub use error::MediaError;
pub use mp4::{read_headers, whole_file_assembly_header};
pub use plan::{plan, EncodeTarget, Plan, TARGET_FPS, TARGET_SAMPLE_RATE};
pub use probe::{
    fingerprint_with_ffprobe, is_mov_family, probe, probe_headers, probe_native, probe_native_bytes,
    probe_with_ffprobe, Fingerprint, NativeProbe, INPUT_FORMATS, PROBE_TIMEOUT,
};
/// Re-exported so that `.verdict()` works with `reel_media::*` in scope.
pub use reel_events::{Classify, Verdict};

use std::ffi::OsString;
use std::path::Path;

/// `path` as an ffmpeg `file:` URL, so that a name containing `:` or starting
/// with `-` is never read as a protocol or an option.
pub(crate) fn file_url(path: &Path) -> OsString {
    let mut s = OsString::from("file:");
    s.push(path.as_os_str());
    s
}
