//! Native ISO-BMFF (MP4 / MOV) header reader: a clip's [`ClipInfo`] and codec-header
//! [`Fingerprint`] without starting ffprobe.
//!
//! # Why
//!
//! On the stream-copy path of `reel stitch` the joining ffmpeg is quick, and most of
//! reel's overhead was ffprobe: one run per clip for [`probe`](crate::probe()), a second
//! per clip for the codec-header check of
//! [`check_copy_compatible`](crate::check_copy_compatible), ~90 ms each and almost all
//! of it process start-up (ffprobe links some 200 shared libraries). The facts reel
//! needs sit in the `moov` box, a few KB wherever it is in the file, so this module
//! reads them in-process: a few dozen small reads, no media data.
//!
//! # Contract: ffprobe's answer, or no answer
//!
//! [`read`] returns exactly what `parse_ffprobe_json` makes of ffprobe 5.1's output
//! and exactly the [`Fingerprint`] ffprobe's `-show_data_hash CRC32` gives — or
//! [`Declined`], and the caller asks ffprobe. Declining costs one ffprobe run; a wrong
//! answer could let stitch stream-copy clips that do not belong together. So every
//! rule errs towards declining, and `tests/native_probe.rs` compares both readers on
//! a varied corpus made with the real ffmpeg.
//!
//! # How each field is derived (mirroring libavformat `mov.c` and the decoders)
//!
//! * `container`: always `mov,mp4,m4a,3gp,3g2,mj2`, the name of the one demuxer that
//!   claims a file starting with an `ftyp` box.
//! * `duration_seconds`: `mvhd` duration / timescale, rounded to microseconds as
//!   `av_rescale` does. `mov.c` sets the format duration from `mvhd` and nothing later
//!   overrides it (for unfragmented files). Edit lists move stream start times and
//!   durations, neither of which is in [`ClipInfo`], so they do not matter here.
//! * video, from the only `vide` track: codec `h264` (`avc1`, `avc3`) or `hevc`
//!   (`hvc1`, `hev1`); width, height and `pix_fmt` from the one SPS in `avcC` /
//!   `hvcC`, as the decoder derives them (chroma format, bit depth, cropping, the VUI
//!   full-range flag that makes `yuvj420p`), and the size must equal the sample
//!   entry's; `frame_rate` = mdhd timescale / first `stts` delta, reduced, which is how
//!   `mov.c` sets `r_frame_rate` when `stts` has one entry (or two, the second for one
//!   sample); `time_base` = 1/mdhd timescale; `rotation` from the `tkhd` matrix, as
//!   ffprobe's display-matrix rotation.
//! * audio, from the first `soun` track: AAC-LC from `esds` (directly or in a
//!   QuickTime `wave`); sample rate, channels and layout from the AudioSpecificConfig,
//!   which is what the AAC decoder reports.
//! * fingerprint: the codec names and `CRC32:%08x` (CRC-32/IEEE) of the bytes
//!   libavformat keeps as extradata: the `avcC` / `hvcC` payload, the `esds`
//!   DecoderSpecificInfo.
//!
//! # When it declines
//!
//! Anything not listed above, and anything odd: no `ftyp` first, no or two `moov`,
//! fragmented files (`mvex`, `moof`, `sidx`...), stray bytes or a box running past its
//! parent (truncation is then reported by the ffprobe path exactly as before), zero or
//! unknown durations and timescales, two video tracks, tracks of other kinds whose
//! sample entry is not a known text/timecode/metadata format, more than one sample
//! entry, other codecs (mpeg4, mjpeg, ProRes, HE-AAC, mp3...), `avcC` / `hvcC` without
//! exactly one SPS, SPS features the decoder might treat otherwise (monochrome,
//! separate colour planes, RGB 4:4:4, bit depths other than 8 and 10, left/top
//! cropping, a size that differs from the sample entry's), a `colr` box that disagrees
//! with the SPS about the range or carries the only full-range flag, an AAC config
//! with a PCE or 3 channels, explicit or possible SBR (≤ 24 kHz without an explicit
//! "no SBR"), `stts` shapes where ffmpeg guesses the frame rate from timestamps
//! (variable frame rate), display matrices other than 0/90/180/270° rotations, and
//! missing or inconsistent sample tables.
//!
//! # Bounded work on hostile input
//!
//! Only known containers are entered, at fixed depth, so nesting cannot recurse.
//! Payloads are read only for small boxes (`stsd` up to 1 MiB, tables only their
//! headers); `mdat` is seeked over. Box, child and read counts are capped. Every read
//! is bounds-checked; nothing here panics or allocates more than the caps.
//!
//! # Forcing ffprobe
//!
//! Set [`MediaConfig::native_probe`](crate::MediaConfig::native_probe) to `false` to
//! skip this reader everywhere and use ffprobe, e.g. to rule it out when debugging.
//!
//! # Layout
//!
//! One file per layer, each using only the ones above it, so the bounds of each layer
//! can be reviewed in one place:
//!
//! * `boxes.rs`: box headers and bounded reads (sizes, offsets, work caps);
//! * `tables.rs`: the `moov` tree into per-track facts (headers and table counts);
//! * `codec.rs`: the SPS and AAC configuration, bit by bit;
//! * `header.rs`: all of it into [`ClipInfo`] and [`Fingerprint`], or a decline;
//! * `assemble.rs`: beside the probe, the zero-copy join: the whole sample tables of
//!   several clips (on `boxes.rs` and `tables.rs`) into one new `moov`, or a decline.

pub(crate) mod assemble;
mod boxes;
mod codec;
mod header;
mod tables;
#[cfg(test)]
pub(crate) mod testfile;
#[cfg(test)]
mod tests;

use crate::clip::Fingerprint;
use reel_events::ClipInfo;
use std::fmt;
use std::io::{Read, Seek};
use std::path::Path;

/// ffprobe's `format_name` for the QuickTime / ISO-BMFF demuxer.
pub(crate) const MOV_FORMAT_NAME: &str = "mov,mp4,m4a,3gp,3g2,mj2";

/// The native reader is not sure about a file; ask ffprobe. Holds the reason, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declined(pub String);

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Res<T> = Result<T, Declined>;

fn decline<T>(reason: impl Into<String>) -> Res<T> {
    Err(Declined(reason.into()))
}

fn io_declined(e: std::io::Error) -> Declined {
    Declined(format!("read error: {e}"))
}

/// Reads `path`'s headers natively; see the module docs.
pub(crate) fn read_path(path: &Path) -> Res<(ClipInfo, Fingerprint)> {
    let file = std::fs::File::open(path).map_err(io_declined)?;
    let len = file.metadata().map_err(io_declined)?.len();
    read(file, len)
}

/// Reads the headers of an ISO-BMFF file of `len` bytes from `reader`.
pub(crate) fn read<R: Read + Seek>(reader: R, len: u64) -> Res<(ClipInfo, Fingerprint)> {
    let mut src = boxes::Source::new(reader, len);
    let moov = boxes::find_moov(&mut src)?;
    let movie = tables::read_moov(&mut src, &moov)?;
    header::describe(movie)
}

/// Plans the zero-copy join of the open `clips` (each with its length): the reel's
/// header and the byte ranges of the clips that follow it; see `assemble.rs`.
pub(crate) fn plan_assembly(clips: &[(std::fs::File, u64)]) -> Res<assemble::Assembly> {
    assemble::plan(clips.iter().map(|(file, len)| (file, *len)).collect(), assemble::Layout::MediaOnly)
}

/// Zero-copy assembly on a store that concatenates whole objects (Cloud Storage
/// compose): the reel's header, to be followed by each clip's file, whole and unchanged,
/// in order (their own headers then sit unused inside the reel's `mdat`). The clips are
/// read through `clips` (readers with their lengths: only their headers are read).
/// `Err(reason)` where the assembler declines (docs/MEDIA.md); join by ffmpeg then.
pub fn whole_file_assembly_header<R: Read + Seek>(clips: Vec<(R, u64)>) -> Result<Vec<u8>, String> {
    assemble::plan(clips, assemble::Layout::WholeFiles).map(|a| a.header).map_err(|Declined(why)| why)
}

/// A file's facts from its headers alone, read natively through `reader` (`len` bytes):
/// how a reel composed in a store is checked without downloading it. `Err(reason)`
/// where the native reader declines.
pub fn read_headers<R: Read + Seek>(reader: R, len: u64) -> Result<ClipInfo, String> {
    read(reader, len).map(|(info, _)| info).map_err(|Declined(why)| why)
}
