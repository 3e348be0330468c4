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
//! Set `REEL_NATIVE_PROBE=0` (or `false`, `off`, `no`) to skip this reader everywhere
//! and use ffprobe, e.g. to rule it out when debugging.

use crate::probe::{normalise_rotation, Fingerprint};
use reel_events::{AudioInfo, ClipInfo, VideoInfo};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// ffprobe's `format_name` for the QuickTime / ISO-BMFF demuxer.
pub(crate) const MOV_FORMAT_NAME: &str = "mov,mp4,m4a,3gp,3g2,mj2";

/// The variable that turns the native reader off (`0`, `false`, `off`, `no`).
pub const NATIVE_PROBE_ENV: &str = "REEL_NATIVE_PROBE";

const MAX_TOP_LEVEL_BOXES: u32 = 10_000;
const MAX_CHILDREN: usize = 1_024;
const MAX_BOXES: u32 = 50_000;
const MAX_READS: u32 = 50_000;
const MAX_STSD_BYTES: u64 = 1 << 20;
const MAX_SMALL_BOX_READ: u64 = 256;
/// `hvcC` arrays and NAL counts in one config, each.
const MAX_PARAMETER_SETS: usize = 64;

/// Whether the native reader is enabled (`REEL_NATIVE_PROBE` is not `0`/`false`/`off`/`no`).
pub(crate) fn enabled() -> bool {
    match std::env::var(NATIVE_PROBE_ENV) {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"),
        Err(_) => true,
    }
}

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
    let mut src = Source { reader, len, reads: 0, boxes: 0 };
    let moov = find_moov(&mut src)?;
    let movie = read_moov(&mut src, &moov)?;
    describe(movie)
}

// ---------------------------------------------------------------------------------
// Box structure

fn fourcc(kind: [u8; 4]) -> String {
    kind.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' }).collect()
}

#[derive(Debug, Clone, Copy)]
struct BoxHeader {
    kind: [u8; 4],
    /// Offset of the payload (after the size/type header).
    body: u64,
    /// Offset just past the box.
    end: u64,
}

impl BoxHeader {
    fn body_len(&self) -> u64 {
        self.end - self.body
    }
}

/// The file, with bounds-checked reads and work counters.
struct Source<R> {
    reader: R,
    len: u64,
    reads: u32,
    boxes: u32,
}

impl<R: Read + Seek> Source<R> {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Res<()> {
        self.reads += 1;
        if self.reads > MAX_READS {
            return decline("too many reads");
        }
        let end = pos.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return decline("read past the end of the file");
        }
        self.reader.seek(SeekFrom::Start(pos)).map_err(io_declined)?;
        self.reader.read_exact(buf).map_err(io_declined)
    }

    /// The first `min(body_len, cap)` payload bytes of `h`.
    fn payload(&mut self, h: &BoxHeader, cap: u64) -> Res<Vec<u8>> {
        let n = h.body_len().min(cap);
        let mut buf = vec![0u8; n as usize];
        self.read_at(h.body, &mut buf)?;
        Ok(buf)
    }

    /// The header of the box at `pos`, which must end by `limit`; `None` when fewer
    /// than 8 bytes remain (libavformat ignores such a tail inside a container).
    fn header(&mut self, pos: u64, limit: u64) -> Res<Option<BoxHeader>> {
        let room = limit.saturating_sub(pos);
        if room < 8 {
            return Ok(None);
        }
        self.boxes += 1;
        if self.boxes > MAX_BOXES {
            return decline("too many boxes");
        }
        let mut raw = [0u8; 16];
        let avail = room.min(16) as usize;
        self.read_at(pos, &mut raw[..avail])?;
        let size32 = be32(&raw[0..4]);
        let kind = [raw[4], raw[5], raw[6], raw[7]];
        let (size, header_len) = match size32 {
            0 => (room, 8),
            1 if avail < 16 => return decline(format!("'{}' box: 64-bit size cut short", fourcc(kind))),
            1 => (be64(&raw[8..16]), 16),
            n => (u64::from(n), 8),
        };
        if size < header_len {
            return decline(format!("'{}' box of size {size}", fourcc(kind)));
        }
        match pos.checked_add(size) {
            Some(end) if end <= limit => Ok(Some(BoxHeader { kind, body: pos + header_len, end })),
            _ => decline(format!("'{}' box at {pos} runs past its parent", fourcc(kind))),
        }
    }

    fn children(&mut self, parent: &BoxHeader) -> Res<Vec<BoxHeader>> {
        let mut out = Vec::new();
        let mut pos = parent.body;
        while let Some(h) = self.header(pos, parent.end)? {
            if out.len() >= MAX_CHILDREN {
                return decline(format!("'{}' has too many children", fourcc(parent.kind)));
            }
            pos = h.end;
            out.push(h);
        }
        Ok(out)
    }
}

/// Walks the top-level boxes: `ftyp` first, exactly one `moov`, nothing fragmented,
/// every box inside the file.
fn find_moov<R: Read + Seek>(src: &mut Source<R>) -> Res<BoxHeader> {
    let mut pos = 0u64;
    let mut count = 0u32;
    let mut moov = None;
    let mut first = [0u8; 8];
    if src.len < 8 || src.read_at(0, &mut first).is_err() || &first[4..8] != b"ftyp" {
        return decline("not ISO-BMFF (no 'ftyp' box first)");
    }
    while pos < src.len {
        let Some(h) = src.header(pos, src.len)? else {
            return decline("stray bytes after the last top-level box");
        };
        count += 1;
        if count > MAX_TOP_LEVEL_BOXES {
            return decline("too many top-level boxes");
        }
        match &h.kind {
            b"moov" => set_once(&mut moov, h, h.kind)?,
            b"moof" | b"mfra" | b"sidx" | b"ssix" | b"styp" | b"emsg" | b"prft" => {
                return decline(format!("fragmented ('{}' box)", fourcc(h.kind)))
            }
            _ => {}
        }
        pos = h.end;
    }
    moov.ok_or_else(|| Declined("no 'moov' box".into()))
}

/// Splits an in-memory container payload into `(type, payload)` children, with
/// libavformat's rules (size 0 = to the end, trailing < 8 bytes ignored).
fn slice_boxes(mut data: &[u8]) -> Res<Vec<([u8; 4], &[u8])>> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        if out.len() >= MAX_CHILDREN {
            return decline("too many boxes in a sample entry");
        }
        let size32 = be32(&data[0..4]);
        let kind = [data[4], data[5], data[6], data[7]];
        let (size, header_len) = match size32 {
            0 => (data.len() as u64, 8usize),
            1 if data.len() < 16 => return decline("64-bit box size cut short"),
            1 => (be64(&data[8..16]), 16),
            n => (u64::from(n), 8),
        };
        if size < header_len as u64 || size > data.len() as u64 {
            return decline(format!("'{}' box of bad size {size}", fourcc(kind)));
        }
        let size = size as usize;
        out.push((kind, &data[header_len..size]));
        data = &data[size..];
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// moov

/// What the `moov` box says, before interpretation.
#[derive(Debug)]
struct Movie {
    timescale: u32,
    duration: u64,
    matrix: [i32; 9],
    tracks: Vec<Track>,
}

#[derive(Debug)]
struct Track {
    handler: [u8; 4],
    /// `hdlr` subtypes inside `minf` (QuickTime data handlers: `alis`, `url `).
    minf_handlers: Vec<[u8; 4]>,
    matrix: [i32; 9],
    timescale: u32,
    /// The `stsd` payload (version, flags, entry count, entries).
    stsd: Option<Vec<u8>>,
    /// `stts` entry count and the first two entries as (count, delta).
    stts: Option<(u32, [(u32, u32); 2])>,
    chunk_count: Option<u32>,
    stsc_count: Option<u32>,
    sample_count: Option<u32>,
}

const IDENTITY: [i32; 9] = [1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30];

fn read_moov<R: Read + Seek>(src: &mut Source<R>, moov: &BoxHeader) -> Res<Movie> {
    let mut mvhd = None;
    let mut tracks = Vec::new();
    for child in src.children(moov)? {
        match &child.kind {
            b"mvhd" => {
                if mvhd.is_some() {
                    return decline("two 'mvhd' boxes");
                }
                mvhd = Some(parse_mvhd(&src.payload(&child, MAX_SMALL_BOX_READ)?)?);
            }
            b"trak" => tracks.push(read_trak(src, &child)?),
            b"mvex" => return decline("fragmented ('mvex' box)"),
            b"cmov" => return decline("compressed 'moov'"),
            _ => {}
        }
    }
    let Some((timescale, duration, matrix)) = mvhd else {
        return decline("no 'mvhd' box");
    };
    Ok(Movie { timescale, duration, matrix, tracks })
}

fn parse_mvhd(p: &[u8]) -> Res<(u32, u64, [i32; 9])> {
    let mut c = Cursor::new(p, "mvhd");
    let version = c.u8()?;
    c.skip(3)?;
    let (timescale, duration) = match version {
        0 => {
            c.skip(8)?;
            let ts = c.u32()?;
            let d = c.u32()?;
            if d == u32::MAX {
                return decline("'mvhd' duration unknown");
            }
            (ts, u64::from(d))
        }
        1 => {
            c.skip(16)?;
            (c.u32()?, c.u64()?)
        }
        v => return decline(format!("'mvhd' version {v}")),
    };
    c.skip(4 + 2 + 10)?; // rate, volume, reserved
    Ok((timescale, duration, c.matrix()?))
}

fn read_trak<R: Read + Seek>(src: &mut Source<R>, trak: &BoxHeader) -> Res<Track> {
    let mut tkhd = None;
    let mut mdia = None;
    for child in src.children(trak)? {
        match &child.kind {
            b"tkhd" => set_once(&mut tkhd, child, child.kind)?,
            b"mdia" => set_once(&mut mdia, child, child.kind)?,
            _ => {}
        }
    }
    let (Some(tkhd), Some(mdia)) = (tkhd, mdia) else {
        return decline("track without 'tkhd' or 'mdia'");
    };
    let matrix = parse_tkhd(&src.payload(&tkhd, MAX_SMALL_BOX_READ)?)?;
    let mut track = Track {
        handler: [0; 4],
        minf_handlers: Vec::new(),
        matrix,
        timescale: 0,
        stsd: None,
        stts: None,
        chunk_count: None,
        stsc_count: None,
        sample_count: None,
    };
    let (mut mdhd, mut hdlr, mut minf) = (None, None, None);
    for child in src.children(&mdia)? {
        let slot = match &child.kind {
            b"mdhd" => &mut mdhd,
            b"hdlr" => &mut hdlr,
            b"minf" => &mut minf,
            _ => continue,
        };
        if slot.replace(child).is_some() {
            return decline(format!("two '{}' boxes in a track", fourcc(child.kind)));
        }
    }
    let (Some(mdhd), Some(hdlr), Some(minf)) = (mdhd, hdlr, minf) else {
        return decline("track without 'mdhd', 'hdlr' or 'minf'");
    };
    track.timescale = parse_mdhd(&src.payload(&mdhd, MAX_SMALL_BOX_READ)?)?;
    track.handler = parse_hdlr(&src.payload(&hdlr, MAX_SMALL_BOX_READ)?)?;
    let mut stbl = None;
    for child in src.children(&minf)? {
        match &child.kind {
            b"hdlr" => track.minf_handlers.push(parse_hdlr(&src.payload(&child, MAX_SMALL_BOX_READ)?)?),
            b"stbl" => set_once(&mut stbl, child, child.kind)?,
            _ => {}
        }
    }
    let Some(stbl) = stbl else {
        return decline("track without 'stbl'");
    };
    for child in src.children(&stbl)? {
        let kind = child.kind;
        match &kind {
            b"stsd" => {
                if child.body_len() > MAX_STSD_BYTES {
                    return decline("'stsd' box is too large");
                }
                set_once(&mut track.stsd, src.payload(&child, MAX_STSD_BYTES)?, kind)?;
            }
            b"stts" => {
                let p = src.payload(&child, 8 + 16)?;
                let count = table_count(&p, child.body_len(), 8, kind)?;
                let mut c = Cursor::new(&p, "stts");
                c.skip(8)?;
                let mut first = [(0u32, 0u32); 2];
                for slot in first.iter_mut().take(count.min(2) as usize) {
                    *slot = (c.u32()?, c.u32()?);
                }
                set_once(&mut track.stts, (count, first), kind)?;
            }
            b"stco" | b"co64" => {
                let p = src.payload(&child, 8)?;
                let width = if &kind == b"stco" { 4 } else { 8 };
                let count = table_count(&p, child.body_len(), width, kind)?;
                set_once(&mut track.chunk_count, count, kind)?;
            }
            b"stsc" => {
                let p = src.payload(&child, 8)?;
                let count = table_count(&p, child.body_len(), 12, kind)?;
                set_once(&mut track.stsc_count, count, kind)?;
            }
            b"stsz" => {
                let p = src.payload(&child, 12)?;
                let mut c = Cursor::new(&p, "stsz");
                c.skip(4)?;
                let sample_size = c.u32()?;
                let count = c.u32()?;
                let need = if sample_size == 0 { 12 + 4 * u64::from(count) } else { 12 };
                if child.body_len() < need {
                    return decline("'stsz' box is shorter than its entries");
                }
                set_once(&mut track.sample_count, count, kind)?;
            }
            b"stz2" => {
                let p = src.payload(&child, 12)?;
                let mut c = Cursor::new(&p, "stz2");
                c.skip(7)?;
                let field_bits = u64::from(c.u8()?);
                let count = c.u32()?;
                if !matches!(field_bits, 4 | 8 | 16)
                    || child.body_len() < 12 + (u64::from(count) * field_bits).div_ceil(8)
                {
                    return decline("bad 'stz2' box");
                }
                set_once(&mut track.sample_count, count, kind)?;
            }
            b"stss" | b"stps" => {
                table_count(&src.payload(&child, 8)?, child.body_len(), 4, kind)?;
            }
            b"ctts" => {
                table_count(&src.payload(&child, 8)?, child.body_len(), 8, kind)?;
            }
            _ => {}
        }
    }
    Ok(track)
}

/// Fills `slot` with the content of a box that may appear only once in its parent.
fn set_once<T>(slot: &mut Option<T>, value: T, kind: [u8; 4]) -> Res<()> {
    if slot.replace(value).is_some() {
        return decline(format!("two '{}' boxes in one parent", fourcc(kind)));
    }
    Ok(())
}

/// The entry count of a sample table (full box header, then a 32-bit count), which
/// must fit in the box.
fn table_count(p: &[u8], body_len: u64, entry_size: u64, kind: [u8; 4]) -> Res<u32> {
    let mut c = Cursor::new(p, "sample table");
    c.skip(4)?;
    let count = c.u32()?;
    if body_len < 8 + u64::from(count) * entry_size {
        return decline(format!("'{}' box is shorter than its {count} entries", fourcc(kind)));
    }
    Ok(count)
}

fn parse_tkhd(p: &[u8]) -> Res<[i32; 9]> {
    let mut c = Cursor::new(p, "tkhd");
    let version = c.u8()?;
    c.skip(3)?;
    match version {
        0 => c.skip(4 + 4 + 4 + 4 + 4)?,
        1 => c.skip(8 + 8 + 4 + 4 + 8)?,
        v => return decline(format!("'tkhd' version {v}")),
    }
    c.skip(8 + 2 + 2 + 2 + 2)?; // reserved, layer, alternate group, volume, reserved
    c.matrix()
}

fn parse_mdhd(p: &[u8]) -> Res<u32> {
    let mut c = Cursor::new(p, "mdhd");
    let version = c.u8()?;
    c.skip(3)?;
    match version {
        0 => c.skip(8)?,
        1 => c.skip(16)?,
        v => return decline(format!("'mdhd' version {v}")),
    }
    c.u32()
}

/// The handler (component subtype) of an `hdlr` box.
fn parse_hdlr(p: &[u8]) -> Res<[u8; 4]> {
    let mut c = Cursor::new(p, "hdlr");
    c.skip(8)?; // version, flags, component type
    c.fourcc()
}

// ---------------------------------------------------------------------------------
// Interpretation

/// Sample-entry formats of non-audio, non-video tracks that libavformat can never
/// turn into an audio or video stream (timecode, subtitles, captions, metadata).
const HARMLESS_FORMATS: &[&[u8; 4]] =
    &[b"tmcd", b"text", b"tx3g", b"c608", b"c708", b"wvtt", b"stpp", b"mebx", b"gpmd", b"mett", b"metx", b"urim"];

/// Handlers whose tracks libavformat makes audio, video or subtitle streams.
const STREAM_HANDLERS: &[&[u8; 4]] = &[b"vide", b"soun", b"m1a ", b"subp", b"clcp"];

fn describe(movie: Movie) -> Res<(ClipInfo, Fingerprint)> {
    // mov.c: a non-positive timescale is replaced by 1; an int read of > i32::MAX is negative.
    if movie.timescale == 0 || movie.timescale > i32::MAX as u32 {
        return decline(format!("'mvhd' timescale {}", movie.timescale));
    }
    if movie.duration == 0 {
        return decline("'mvhd' duration is 0");
    }
    if movie.matrix != IDENTITY {
        return decline("movie display matrix is not the identity");
    }
    // av_rescale(duration, AV_TIME_BASE, timescale), rounding half away from zero.
    let ts = u128::from(movie.timescale);
    let micros = (u128::from(movie.duration) * 1_000_000 + ts / 2) / ts;
    if micros == 0 || micros > i64::MAX as u128 {
        return decline("duration out of range");
    }
    let duration_seconds = micros as f64 / 1e6;

    let mut video_track = None;
    let mut audio_track = None;
    for track in &movie.tracks {
        if track.minf_handlers.iter().any(|h| STREAM_HANDLERS.contains(&h) && *h != track.handler) {
            return decline("a track has conflicting handlers");
        }
        match &track.handler {
            b"vide" => {
                if video_track.replace(track).is_some() {
                    return decline("more than one video track");
                }
            }
            b"soun" => {
                audio_track.get_or_insert(track);
            }
            other => {
                if STREAM_HANDLERS.contains(&other) {
                    return decline(format!("'{}' track", fourcc(*other)));
                }
                // libavformat turns a track of another kind into audio or video when
                // its sample entry is an audio or video format; allow only known others.
                if let Some(format) = first_entry_format(track)? {
                    if !HARMLESS_FORMATS.contains(&&format) {
                        return decline(format!("'{}' track with '{}' samples", fourcc(*other), fourcc(format)));
                    }
                }
            }
        }
    }
    let Some(video_track) = video_track else {
        return decline("no video track");
    };
    let (video, video_headers) = describe_video(video_track)?;
    let (audio, audio_headers) = match audio_track {
        Some(t) => {
            let (a, h) = describe_audio(t)?;
            (Some(a), Some(h))
        }
        None => (None, None),
    };
    Ok((
        ClipInfo { duration_seconds, container: MOV_FORMAT_NAME.to_string(), video, audio },
        Fingerprint { video: Some(video_headers), audio: audio_headers },
    ))
}

/// The format of the first sample entry, if the track has an `stsd` with entries.
fn first_entry_format(track: &Track) -> Res<Option<[u8; 4]>> {
    let Some(stsd) = &track.stsd else {
        return Ok(None);
    };
    let mut c = Cursor::new(stsd, "stsd");
    c.skip(4)?;
    if c.u32()? == 0 {
        return Ok(None);
    }
    c.skip(4)?;
    Ok(Some(c.fourcc()?))
}

/// Checks what `mov.c` needs to set a stream's time base and frame rate (its "missing
/// mandatory atoms" check, a valid timescale) and returns the timescale.
fn checked_timescale(track: &Track) -> Res<u32> {
    let has = |v: Option<u32>| v.is_some_and(|n| n > 0);
    if !(has(track.chunk_count) && has(track.stsc_count) && has(track.sample_count) && has(track.stts.map(|s| s.0))) {
        return decline("track with missing or empty sample tables");
    }
    if track.timescale == 0 || track.timescale > i32::MAX as u32 {
        return decline(format!("'mdhd' timescale {}", track.timescale));
    }
    Ok(track.timescale)
}

/// The single sample entry of `track`: `(format, whole entry including its header)`.
fn single_entry(track: &Track) -> Res<([u8; 4], &[u8])> {
    let Some(stsd) = &track.stsd else {
        return decline("track without 'stsd'");
    };
    let mut c = Cursor::new(stsd, "stsd");
    if c.u8()? != 0 {
        return decline("'stsd' version is not 0");
    }
    c.skip(3)?;
    let entries = c.u32()?;
    if entries != 1 {
        return decline(format!("{entries} sample entries"));
    }
    let rest = c.rest();
    if rest.len() < 16 {
        return decline("sample entry cut short");
    }
    let size = be32(&rest[0..4]) as usize;
    if size < 16 || size > rest.len() {
        return decline(format!("sample entry of bad size {size}"));
    }
    Ok(([rest[4], rest[5], rest[6], rest[7]], &rest[..size]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    H264,
    Hevc,
}

/// What a `colr` box says (`nclx` / `nclc`; ICC profiles say nothing we use).
#[derive(Debug, Default, Clone, Copy)]
struct Colr {
    full_range: Option<bool>,
    matrix: Option<u16>,
}

/// What the decoder learns from the SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sps {
    chroma_format_idc: u32,
    bit_depth: u32,
    width: u32,
    height: u32,
    /// The VUI `video_full_range_flag`, when `video_signal_type_present_flag` is set.
    full_range: Option<bool>,
    /// The VUI `matrix_coefficients`, when `colour_description_present_flag` is set.
    matrix: Option<u32>,
}

fn describe_video(track: &Track) -> Res<(VideoInfo, (String, String))> {
    let timescale = checked_timescale(track)?;
    let (format, entry) = single_entry(track)?;
    let codec = match &format {
        b"avc1" | b"avc3" => VideoCodec::H264,
        b"hvc1" | b"hev1" => VideoCodec::Hevc,
        _ => return decline(format!("video codec '{}'", fourcc(format))),
    };
    // VisualSampleEntry: 16 bytes of box/entry header, then 70 bytes of fields.
    if entry.len() < 86 {
        return decline("video sample entry cut short");
    }
    let entry_width = u32::from(be16(&entry[32..34]));
    let entry_height = u32::from(be16(&entry[34..36]));
    let depth = be16(&entry[82..84]);
    // mov.c reads a QuickTime palette after these depths, moving the child boxes.
    if matches!(depth & 0x1f, 1 | 2 | 4 | 8) {
        return decline(format!("video sample entry depth {depth}"));
    }
    let mut config: Option<&[u8]> = None;
    let mut colr: Option<Colr> = None;
    let config_kind: &[u8; 4] = match codec {
        VideoCodec::H264 => b"avcC",
        VideoCodec::Hevc => b"hvcC",
    };
    for (kind, body) in slice_boxes(&entry[86..])? {
        match &kind {
            k if k == config_kind => {
                if config.replace(body).is_some() {
                    return decline(format!("two '{}' boxes", fourcc(kind)));
                }
            }
            b"colr" => {
                if colr.replace(parse_colr(body)?).is_some() {
                    return decline("two 'colr' boxes");
                }
            }
            b"pasp" | b"btrt" | b"fiel" | b"clli" | b"mdcv" => {}
            _ => return decline(format!("unexpected '{}' box in the video sample entry", fourcc(kind))),
        }
    }
    let Some(config) = config else {
        return decline(format!("no '{}' box", fourcc(*config_kind)));
    };
    let sps = match codec {
        VideoCodec::H264 => parse_h264_sps(avcc_sps(config)?)?,
        VideoCodec::Hevc => parse_hevc_sps(hvcc_sps(config)?)?,
    };
    if (sps.width, sps.height) != (entry_width, entry_height) {
        return decline(format!(
            "SPS size {}x{} differs from the sample entry's {entry_width}x{entry_height}",
            sps.width, sps.height
        ));
    }
    let colr = colr.unwrap_or_default();
    let full_range = match (sps.full_range, colr.full_range) {
        (Some(s), Some(c)) if s != c => return decline("'colr' and SPS disagree about the range"),
        (Some(s), _) => s,
        (None, Some(true)) => return decline("full range signalled only in 'colr'"),
        (None, _) => false,
    };
    let rgb = sps.matrix == Some(0) || colr.matrix == Some(0);
    let pix_fmt = pixel_format(&sps, full_range, rgb, codec)?;
    let frame_rate = frame_rate(track, timescale)?;
    let rotation = rotation(&track.matrix)?;
    let codec_name = match codec {
        VideoCodec::H264 => "h264",
        VideoCodec::Hevc => "hevc",
    };
    Ok((
        VideoInfo {
            codec: codec_name.to_string(),
            width: sps.width,
            height: sps.height,
            pix_fmt: pix_fmt.to_string(),
            frame_rate,
            time_base: format!("1/{timescale}"),
            rotation,
        },
        (codec_name.to_string(), extradata_hash(config)),
    ))
}

fn parse_colr(body: &[u8]) -> Res<Colr> {
    let mut c = Cursor::new(body, "colr");
    match &c.fourcc()? {
        b"nclx" => {
            let (_, _, matrix) = (c.u16()?, c.u16()?, c.u16()?);
            let full = c.u8()? >> 7 == 1;
            Ok(Colr { full_range: Some(full), matrix: Some(matrix) })
        }
        b"nclc" => {
            let (_, _, matrix) = (c.u16()?, c.u16()?, c.u16()?);
            Ok(Colr { full_range: None, matrix: Some(matrix) })
        }
        b"prof" | b"rICC" => Ok(Colr::default()),
        other => decline(format!("'colr' type '{}'", fourcc(*other))),
    }
}

/// libavcodec's pixel format for this SPS (h264 `get_pixel_format`, hevc
/// `map_pixel_format` plus the VUI full-range switch), for the cases read natively.
fn pixel_format(sps: &Sps, full_range: bool, rgb: bool, codec: VideoCodec) -> Res<&'static str> {
    if sps.chroma_format_idc == 3 && rgb {
        return decline("RGB 4:4:4");
    }
    if sps.bit_depth > 8 && cfg!(target_endian = "big") {
        return decline("high bit depth on a big-endian host");
    }
    // h264 picks the full-range ("j") formats for 8-bit 4:2:0, 4:2:2 and 4:4:4;
    // hevc only for 8-bit 4:2:0.
    let j = full_range && (codec == VideoCodec::H264 || sps.chroma_format_idc == 1);
    Ok(match (sps.bit_depth, sps.chroma_format_idc, j) {
        (8, 1, false) => "yuv420p",
        (8, 1, true) => "yuvj420p",
        (8, 2, false) => "yuv422p",
        (8, 2, true) => "yuvj422p",
        (8, 3, false) => "yuv444p",
        (8, 3, true) => "yuvj444p",
        (10, 1, _) => "yuv420p10le",
        (10, 2, _) => "yuv422p10le",
        (10, 3, _) => "yuv444p10le",
        (depth, chroma, _) => return decline(format!("bit depth {depth}, chroma format {chroma}")),
    })
}

/// `r_frame_rate` as mov.c sets it: timescale / first `stts` delta, when `stts` has
/// one entry or two with the second for a single sample. Otherwise ffmpeg estimates
/// it from timestamps, which is not reproduced here.
fn frame_rate(track: &Track, timescale: u32) -> Res<String> {
    let Some((count, first)) = track.stts else {
        return decline("no 'stts' box");
    };
    let regular = count == 1 || (count == 2 && first[1].0 == 1);
    if !regular {
        return decline(format!("variable frame rate ({count} 'stts' entries)"));
    }
    let delta = first[0].1;
    if delta == 0 || delta > i32::MAX as u32 || first[0].0 == 0 {
        return decline(format!("'stts' delta {delta}"));
    }
    let g = gcd(timescale, delta);
    Ok(format!("{}/{}", timescale / g, delta / g))
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Clockwise display rotation from the track matrix, as [`rotation_of`] turns
/// ffprobe's display-matrix rotation. Only exact 0/90/180/270° rotations (no
/// mirroring, scaling or perspective) are read.
///
/// [`rotation_of`]: crate::probe::rotation_of
fn rotation(m: &[i32; 9]) -> Res<u32> {
    const ONE: i32 = 1 << 16;
    if m[2] != 0 || m[5] != 0 || m[8] != 1 << 30 {
        return decline("display matrix with perspective terms");
    }
    // ffprobe: rotation = -atan2(m[1], m[0]) in degrees; reel negates it again.
    let clockwise = match (m[0], m[1], m[3], m[4]) {
        (ONE, 0, 0, ONE) => 0.0,
        (0, ONE, x, 0) if x == -ONE => 90.0,
        (x, 0, 0, y) if x == -ONE && y == -ONE => 180.0,
        (0, x, ONE, 0) if x == -ONE => 270.0,
        _ => return decline("display matrix is not a plain rotation"),
    };
    Ok(normalise_rotation(clockwise))
}

fn describe_audio(track: &Track) -> Res<(AudioInfo, (String, String))> {
    let timescale = checked_timescale(track)?;
    let (format, entry) = single_entry(track)?;
    if &format != b"mp4a" {
        return decline(format!("audio codec '{}'", fourcc(format)));
    }
    if entry.len() < 36 {
        return decline("audio sample entry cut short");
    }
    // mov.c reads the QuickTime sound description v1/v2 extensions (stsd version 0).
    let children_at = match be16(&entry[16..18]) {
        0 => 36,
        1 => 36 + 16,
        2 => 36 + 36,
        v => return decline(format!("sound sample entry version {v}")),
    };
    if entry.len() < children_at {
        return decline("audio sample entry cut short");
    }
    let mut esds: Option<&[u8]> = None;
    let mut take_esds = |body| {
        if esds.replace(body).is_some() {
            return decline("two 'esds' boxes");
        }
        Ok(())
    };
    for (kind, body) in slice_boxes(&entry[children_at..])? {
        match &kind {
            b"esds" => take_esds(body)?,
            b"wave" => {
                for (inner, inner_body) in slice_boxes(body)? {
                    match &inner {
                        b"esds" => take_esds(inner_body)?,
                        b"frma" | b"mp4a" | [0, 0, 0, 0] => {}
                        _ => return decline(format!("unexpected '{}' box in 'wave'", fourcc(inner))),
                    }
                }
            }
            b"chan" | b"btrt" => {}
            _ => return decline(format!("unexpected '{}' box in the audio sample entry", fourcc(kind))),
        }
    }
    let Some(esds) = esds else {
        return decline("no 'esds' box");
    };
    let (object_type, dsi) = parse_esds(esds)?;
    if object_type != 0x40 {
        return decline(format!("MPEG-4 object type {object_type:#x}"));
    }
    let asc = parse_audio_specific_config(dsi)?;
    Ok((
        AudioInfo {
            codec: "aac".to_string(),
            sample_rate: asc.sample_rate,
            channels: asc.channels,
            channel_layout: asc.layout.to_string(),
            time_base: format!("1/{timescale}"),
        },
        ("aac".to_string(), extradata_hash(dsi)),
    ))
}

/// `(objectTypeIndication, DecoderSpecificInfo)`, read as libavformat's
/// `ff_mov_read_esds` does (sequentially, ignoring the outer descriptor lengths).
fn parse_esds(body: &[u8]) -> Res<(u8, &[u8])> {
    let mut c = Cursor::new(body, "esds");
    c.skip(4)?; // version, flags
    let (tag, _) = c.descriptor()?;
    if tag == 0x03 {
        c.skip(2)?; // ES_ID
        let flags = c.u8()?;
        if flags & 0x80 != 0 {
            c.skip(2)?;
        }
        if flags & 0x40 != 0 {
            let n = c.u8()?;
            c.skip(usize::from(n))?;
        }
        if flags & 0x20 != 0 {
            c.skip(2)?;
        }
    } else {
        c.skip(2)?;
    }
    let (tag, _) = c.descriptor()?;
    if tag != 0x04 {
        return decline("'esds' without a DecoderConfigDescriptor");
    }
    let object_type = c.u8()?;
    c.skip(1 + 3 + 4 + 4)?; // stream type, buffer size, max and average bit rate
    let (tag, len) = c.descriptor()?;
    if tag != 0x05 || len == 0 {
        return decline("'esds' without a DecoderSpecificInfo");
    }
    Ok((object_type, c.bytes(len)?))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AudioConfig {
    sample_rate: u32,
    channels: u32,
    layout: &'static str,
}

const AAC_SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// The AudioSpecificConfig of an AAC-LC stream, as the AAC decoder reads it
/// (libavcodec `ff_mpeg4audio_get_config_gb` with the sync-extension scan).
fn parse_audio_specific_config(dsi: &[u8]) -> Res<AudioConfig> {
    let mut b = Bits::new(dsi);
    let object_type = aac_object_type(&mut b)?;
    if object_type != 2 {
        return decline(format!("AAC object type {object_type}, not AAC-LC"));
    }
    let index = b.bits(4)? as usize;
    let Some(&sample_rate) = AAC_SAMPLE_RATES.get(index) else {
        return decline(format!("AAC sampling frequency index {index}"));
    };
    let channel_config = b.bits(4)?;
    // The backward-compatible SBR signalling libavcodec scans for, bit by bit.
    let mut sbr_ruled_out = false;
    while b.left() > 15 {
        if b.peek(11)? == 0x2b7 {
            b.skip(11)?;
            if aac_object_type(&mut b)? == 5 {
                if b.bit()? == 1 {
                    return decline("AAC with SBR (HE-AAC)");
                }
                sbr_ruled_out = true;
            }
            break;
        }
        b.skip(1)?;
    }
    // Without an explicit "no SBR", the decoder may find SBR data in the first frame
    // and double the rate; encoders do that for core rates up to 24 kHz.
    if sample_rate <= 24000 && !sbr_ruled_out {
        return decline(format!("AAC at {sample_rate} Hz may carry implicit SBR"));
    }
    // The layouts libavcodec 5.1's AAC decoder reports for these channel configurations.
    let (channels, layout) = match channel_config {
        1 => (1, "mono"),
        2 => (2, "stereo"),
        4 => (4, "4.0"),
        5 => (5, "5.0"),
        6 => (6, "5.1"),
        7 => (8, "7.1"),
        other => return decline(format!("AAC channel configuration {other}")),
    };
    Ok(AudioConfig { sample_rate, channels, layout })
}

fn aac_object_type(b: &mut Bits<'_>) -> Res<u32> {
    let t = b.bits(5)?;
    Ok(if t == 31 { 32 + b.bits(6)? } else { t })
}

// ---------------------------------------------------------------------------------
// Parameter sets

/// The one SPS NAL unit of an `avcC` box.
fn avcc_sps(avcc: &[u8]) -> Res<&[u8]> {
    let mut c = Cursor::new(avcc, "avcC");
    if c.u8()? != 1 {
        return decline("'avcC' version is not 1");
    }
    c.skip(4)?; // profile, compatibility, level, NAL length size
    let sps_count = c.u8()? & 0x1f;
    if sps_count != 1 {
        return decline(format!("'avcC' with {sps_count} SPS"));
    }
    let len = usize::from(c.u16()?);
    let sps = c.bytes(len)?;
    let pps_count = c.u8()?;
    if pps_count == 0 {
        return decline("'avcC' without a PPS");
    }
    for _ in 0..pps_count {
        let len = usize::from(c.u16()?);
        c.bytes(len)?;
    }
    Ok(sps)
}

/// The one SPS NAL unit of an `hvcC` box.
fn hvcc_sps(hvcc: &[u8]) -> Res<&[u8]> {
    let mut c = Cursor::new(hvcc, "hvcC");
    if c.u8()? != 1 {
        return decline("'hvcC' version is not 1");
    }
    c.skip(21)?;
    let arrays = usize::from(c.u8()?);
    if arrays > MAX_PARAMETER_SETS {
        return decline("too many 'hvcC' arrays");
    }
    let mut sps = None;
    let mut sps_count = 0;
    for _ in 0..arrays {
        c.skip(1)?; // completeness, NAL type (the NAL header is what counts)
        let count = usize::from(c.u16()?);
        if count > MAX_PARAMETER_SETS {
            return decline("too many NAL units in 'hvcC'");
        }
        for _ in 0..count {
            let len = usize::from(c.u16()?);
            let nal = c.bytes(len)?;
            if nal.first().is_some_and(|h| (h >> 1) & 0x3f == 33) {
                sps_count += 1;
                sps = Some(nal);
            }
        }
    }
    match (sps_count, sps) {
        (1, Some(sps)) => Ok(sps),
        _ => decline(format!("'hvcC' with {sps_count} SPS")),
    }
}

/// The RBSP of a NAL unit payload: emulation-prevention bytes (`00 00 03`) removed.
fn unescape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut zeros = 0;
    for &byte in payload {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

fn parse_h264_sps(nal: &[u8]) -> Res<Sps> {
    match nal.first() {
        Some(h) if h & 0x80 == 0 && h & 0x1f == 7 => {}
        _ => return decline("'avcC' SPS is not an SPS NAL unit"),
    }
    let rbsp = unescape(&nal[1..]);
    let mut b = Bits::new(&rbsp);
    let profile = b.bits(8)?;
    b.skip(16)?; // constraint flags, level
    if b.ue()? > 31 {
        return decline("SPS id out of range");
    }
    let (mut chroma_format_idc, mut bit_depth) = (1, 8);
    match profile {
        66 | 77 | 88 => {}
        100 | 110 | 122 | 244 | 44 => {
            chroma_format_idc = b.ue()?;
            if chroma_format_idc > 3 {
                return decline("bad chroma_format_idc");
            }
            if chroma_format_idc == 3 && b.bit()? == 1 {
                return decline("separate colour planes");
            }
            bit_depth = b.ue()?.saturating_add(8);
            let bit_depth_chroma = b.ue()?.saturating_add(8);
            if bit_depth != bit_depth_chroma {
                return decline("luma and chroma bit depths differ");
            }
            b.skip(1)?; // qpprime_y_zero_transform_bypass_flag
            if b.bit()? == 1 {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if b.bit()? == 1 {
                        skip_scaling_list(&mut b, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        other => return decline(format!("h264 profile_idc {other}")),
    }
    if chroma_format_idc == 0 {
        return decline("monochrome h264");
    }
    if b.ue()? > 12 {
        return decline("bad log2_max_frame_num");
    }
    match b.ue()? {
        0 => {
            if b.ue()? > 12 {
                return decline("bad log2_max_pic_order_cnt_lsb");
            }
        }
        1 => {
            b.skip(1)?;
            b.se()?;
            b.se()?;
            let cycle = b.ue()?;
            if cycle > 255 {
                return decline("bad POC cycle");
            }
            for _ in 0..cycle {
                b.se()?;
            }
        }
        2 => {}
        _ => return decline("bad pic_order_cnt_type"),
    }
    if b.ue()? > 16 {
        return decline("too many reference frames");
    }
    b.skip(1)?; // gaps_in_frame_num_value_allowed_flag
    let mb_width = u64::from(b.ue()?) + 1;
    let map_units_height = u64::from(b.ue()?) + 1;
    let frame_mbs_only = b.bit()?;
    if frame_mbs_only == 0 {
        b.skip(1)?; // mb_adaptive_frame_field_flag
    }
    b.skip(1)?; // direct_8x8_inference_flag
    let (mut crop_left, mut crop_right, mut crop_top, mut crop_bottom) = (0, 0, 0, 0);
    if b.bit()? == 1 {
        crop_left = u64::from(b.ue()?);
        crop_right = u64::from(b.ue()?);
        crop_top = u64::from(b.ue()?);
        crop_bottom = u64::from(b.ue()?);
    }
    if crop_left != 0 || crop_top != 0 {
        return decline("SPS crops on the left or top");
    }
    let (step_x, step_y) = match chroma_format_idc {
        1 => (2, 2 * (2 - u64::from(frame_mbs_only))),
        2 => (2, 2 - u64::from(frame_mbs_only)),
        _ => (1, 2 - u64::from(frame_mbs_only)),
    };
    let coded_width = 16 * mb_width;
    let coded_height = 16 * map_units_height * (2 - u64::from(frame_mbs_only));
    // libavcodec ignores cropping that would leave nothing.
    if crop_right * step_x >= coded_width || crop_bottom * step_y >= coded_height {
        return decline("SPS cropping larger than the frame");
    }
    let (full_range, matrix) = if b.bit()? == 1 { vui_colour(&mut b)? } else { (None, None) };
    Ok(Sps {
        chroma_format_idc,
        bit_depth,
        width: dimension(coded_width - crop_right * step_x)?,
        height: dimension(coded_height - crop_bottom * step_y)?,
        full_range,
        matrix,
    })
}

fn dimension(v: u64) -> Res<u32> {
    match u32::try_from(v) {
        Ok(v) if v > 0 && v <= 65535 => Ok(v),
        _ => decline(format!("frame dimension {v}")),
    }
}

fn skip_scaling_list(b: &mut Bits<'_>, size: usize) -> Res<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + i64::from(b.se()?)).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// The start of the VUI (same in h264 and hevc) up to the colour description:
/// `(video_full_range_flag, matrix_coefficients)`, each if present.
fn vui_colour(b: &mut Bits<'_>) -> Res<(Option<bool>, Option<u32>)> {
    if b.bit()? == 1 && b.bits(8)? == 255 {
        b.skip(32)?; // sar_width, sar_height
    }
    if b.bit()? == 1 {
        b.skip(1)?; // overscan_appropriate_flag
    }
    if b.bit()? == 0 {
        return Ok((None, None));
    }
    b.skip(3)?; // video_format
    let full_range = b.bit()? == 1;
    let matrix = if b.bit()? == 1 {
        b.skip(16)?; // colour_primaries, transfer_characteristics
        Some(b.bits(8)?)
    } else {
        None
    };
    Ok((Some(full_range), matrix))
}

fn parse_hevc_sps(nal: &[u8]) -> Res<Sps> {
    if nal.len() < 2 || nal[0] & 0x80 != 0 || (nal[0] >> 1) & 0x3f != 33 {
        return decline("'hvcC' SPS is not an SPS NAL unit");
    }
    let rbsp = unescape(&nal[2..]);
    let mut b = Bits::new(&rbsp);
    b.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers = b.bits(3)? + 1;
    if max_sub_layers > 7 {
        return decline("bad sps_max_sub_layers");
    }
    b.skip(1)?; // temporal_id_nesting
                // profile_tier_level
    b.skip(88 + 8)?; // general profile (88 bits) and level
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..(max_sub_layers - 1) as usize {
        sub_profile[i] = b.bit()? == 1;
        sub_level[i] = b.bit()? == 1;
    }
    if max_sub_layers > 1 {
        b.skip(2 * (8 - (max_sub_layers as usize - 1)))?;
    }
    for i in 0..(max_sub_layers - 1) as usize {
        if sub_profile[i] {
            b.skip(88)?;
        }
        if sub_level[i] {
            b.skip(8)?;
        }
    }
    if b.ue()? > 15 {
        return decline("SPS id out of range");
    }
    let chroma_format_idc = b.ue()?;
    match chroma_format_idc {
        1 | 2 => {}
        3 if b.bit()? == 0 => {}
        _ => return decline("monochrome hevc or separate colour planes"),
    }
    let coded_width = u64::from(b.ue()?);
    let coded_height = u64::from(b.ue()?);
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let (mut right, mut bottom) = (0, 0);
    if b.bit()? == 1 {
        let left = u64::from(b.ue()?);
        right = u64::from(b.ue()?) * sub_w;
        let top = u64::from(b.ue()?);
        bottom = u64::from(b.ue()?) * sub_h;
        if left != 0 || top != 0 {
            return decline("SPS crops on the left or top");
        }
    }
    if right >= coded_width || bottom >= coded_height {
        return decline("SPS cropping larger than the frame");
    }
    let bit_depth = b.ue()?.saturating_add(8);
    if b.ue()?.saturating_add(8) != bit_depth {
        return decline("luma and chroma bit depths differ");
    }
    let log2_max_poc_lsb = b.ue()?.saturating_add(4);
    if log2_max_poc_lsb > 16 {
        return decline("bad log2_max_pic_order_cnt_lsb");
    }
    let ordering_for_all = b.bit()? == 1;
    let first = if ordering_for_all { 0 } else { max_sub_layers - 1 };
    for _ in first..max_sub_layers {
        b.ue()?;
        b.ue()?;
        b.ue()?;
    }
    for _ in 0..6 {
        b.ue()?; // coding/transform block sizes, transform hierarchy depths
    }
    if b.bit()? == 1 && b.bit()? == 1 {
        skip_hevc_scaling_list_data(&mut b)?;
    }
    b.skip(2)?; // amp_enabled_flag, sample_adaptive_offset_enabled_flag
    if b.bit()? == 1 {
        b.skip(8)?; // pcm sample bit depths
        b.ue()?;
        b.ue()?;
        b.skip(1)?;
    }
    let rps_count = b.ue()?;
    if rps_count > 64 {
        return decline("too many short-term reference picture sets");
    }
    let mut delta_pocs: Vec<u32> = Vec::with_capacity(rps_count as usize);
    for i in 0..rps_count as usize {
        let predicted = i != 0 && b.bit()? == 1;
        let count = if predicted {
            b.skip(1)?; // delta_rps_sign
            if b.ue()? >= 32768 {
                return decline("bad abs_delta_rps");
            }
            let mut count = 0;
            for _ in 0..=delta_pocs[i - 1] {
                let used = b.bit()? == 1;
                if used || b.bit()? == 1 {
                    count += 1;
                }
            }
            count
        } else {
            let negative = b.ue()?;
            let positive = b.ue()?;
            if negative >= 16 || positive >= 16 {
                return decline("bad short-term reference picture set");
            }
            for _ in 0..negative + positive {
                b.ue()?;
                b.skip(1)?;
            }
            negative + positive
        };
        if count >= 32 {
            return decline("bad short-term reference picture set");
        }
        delta_pocs.push(count);
    }
    if b.bit()? == 1 {
        let long_term = b.ue()?;
        if long_term > 32 {
            return decline("too many long-term reference pictures");
        }
        for _ in 0..long_term {
            b.skip(log2_max_poc_lsb as usize + 1)?;
        }
    }
    b.skip(2)?; // temporal MVP, strong intra smoothing
    let (full_range, matrix) = if b.bit()? == 1 { vui_colour(&mut b)? } else { (None, None) };
    Ok(Sps {
        chroma_format_idc,
        bit_depth,
        width: dimension(coded_width - right)?,
        height: dimension(coded_height - bottom)?,
        full_range,
        matrix,
    })
}

fn skip_hevc_scaling_list_data(b: &mut Bits<'_>) -> Res<()> {
    for size_id in 0..4 {
        let step = if size_id == 3 { 3 } else { 1 };
        for _ in (0..6).step_by(step) {
            if b.bit()? == 0 {
                b.ue()?; // scaling_list_pred_matrix_id_delta
            } else {
                let coefficients = 64.min(1 << (4 + (size_id << 1)));
                if size_id > 1 {
                    b.se()?; // dc coefficient
                }
                for _ in 0..coefficients {
                    b.se()?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// CRC32 (IEEE, as libavutil's AV_CRC_32_IEEE_LE with ffprobe's init and final xor)

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC32_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// ffprobe's `extradata_hash` with `-show_data_hash CRC32`.
fn extradata_hash(extradata: &[u8]) -> String {
    format!("CRC32:{:08x}", crc32(extradata))
}

// ---------------------------------------------------------------------------------
// Readers

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Big-endian reads from a byte slice; running out declines.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }

    fn bytes(&mut self, n: usize) -> Res<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let out = &self.data[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            _ => decline(format!("'{}' box cut short", self.what)),
        }
    }

    fn skip(&mut self, n: usize) -> Res<()> {
        self.bytes(n).map(|_| ())
    }

    fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Res<u16> {
        self.bytes(2).map(be16)
    }

    fn u32(&mut self) -> Res<u32> {
        self.bytes(4).map(be32)
    }

    fn u64(&mut self) -> Res<u64> {
        self.bytes(8).map(be64)
    }

    fn fourcc(&mut self) -> Res<[u8; 4]> {
        let b = self.bytes(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    fn matrix(&mut self) -> Res<[i32; 9]> {
        let mut m = [0i32; 9];
        for v in &mut m {
            *v = self.u32()? as i32;
        }
        Ok(m)
    }

    /// An MPEG-4 descriptor header: tag, then up to four 7-bit length bytes.
    fn descriptor(&mut self) -> Res<(u8, usize)> {
        let tag = self.u8()?;
        let mut len = 0usize;
        for _ in 0..4 {
            let b = self.u8()?;
            len = (len << 7) | usize::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok((tag, len))
    }
}

/// MSB-first bit reads with Exp-Golomb codes; running out declines.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    fn bit(&mut self) -> Res<u32> {
        if self.left() == 0 {
            return decline("parameter set cut short");
        }
        let byte = self.data[self.pos / 8];
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Res<u32> {
        debug_assert!(n <= 32);
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Ok(v as u32)
    }

    fn peek(&self, n: u32) -> Res<u32> {
        let mut copy = Bits { data: self.data, pos: self.pos };
        copy.bits(n)
    }

    fn skip(&mut self, n: usize) -> Res<()> {
        if self.left() < n {
            return decline("parameter set cut short");
        }
        self.pos += n;
        Ok(())
    }

    /// Unsigned Exp-Golomb, up to 32 significant bits.
    fn ue(&mut self) -> Res<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return decline("Exp-Golomb code too long");
            }
        }
        let rest = u64::from(self.bits(zeros)?);
        let v = (1u64 << zeros) - 1 + rest;
        u32::try_from(v).or_else(|_| decline("Exp-Golomb value too large"))
    }

    /// Signed Exp-Golomb.
    fn se(&mut self) -> Res<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        Ok(v as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor as IoCursor;

    /// The `avcC` libx264 (`-preset ultrafast`, so constrained baseline) writes for
    /// 96x54: 96x64 coded, cropped by 10 rows. ffprobe: `CRC32:85008759`.
    const AVCC_96X54: &[u8] = &[
        0x01, 0x42, 0xc0, 0x0a, 0xff, 0xe1, 0x00, 0x17, 0x67, 0x42, 0xc0, 0x0a, 0xda, 0x18, 0x9f, 0x9b, 0x01, 0x10,
        0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x22, 0x6a, 0x01, 0x00, 0x04, 0x68, 0xce,
        0x0f, 0xc8,
    ];
    const ASC_STEREO_48K: &[u8] = &[0x11, 0x90, 0x56, 0xe5, 0x00];
    /// The SPS NAL unit libx264 (`-profile:v high444 -pix_fmt yuv444p`) writes for
    /// 96x54: High 4:4:4 Predictive, so it has the chroma format and bit-depth fields.
    const H264_SPS_444_96X54: &[u8] = &[
        0x67, 0xf4, 0x00, 0x0a, 0x91, 0x96, 0x86, 0x27, 0xe2, 0xf0, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00,
        0x03, 0x00, 0x3c, 0x0f, 0x12, 0x26, 0xa0,
    ];
    /// The SPS NAL unit libx265 (`-preset ultrafast`) writes into `hvcC` for 96x54
    /// (coded 96x56, conformance window 2 rows), 4:2:0 8-bit.
    const HEVC_SPS_96X54: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x1e,
        0xa0, 0x30, 0x81, 0x07, 0xcd, 0x96, 0x56, 0x54, 0xa4, 0xc2, 0xf0, 0x16, 0x80, 0x80, 0x00, 0x00, 0x03, 0x00,
        0x80, 0x00, 0x00, 0x0f, 0x04,
    ];

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn full(kind: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![version, 0, 0, 0];
        p.extend_from_slice(payload);
        boxed(kind, &p)
    }

    fn matrix_bytes(m: [i32; 9]) -> Vec<u8> {
        m.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn tables(stsd: Vec<u8>, stts: &[(u32, u32)]) -> Vec<u8> {
        let mut stts_p = (stts.len() as u32).to_be_bytes().to_vec();
        for (count, delta) in stts {
            stts_p.extend_from_slice(&count.to_be_bytes());
            stts_p.extend_from_slice(&delta.to_be_bytes());
        }
        let samples: u32 = stts.iter().map(|s| s.0).sum();
        let mut stsz_p = 100u32.to_be_bytes().to_vec();
        stsz_p.extend_from_slice(&samples.to_be_bytes());
        let stsc_p = [1u32, 1, samples, 1].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<_>>();
        let stco_p = [1u32, 0].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<_>>();
        let mut stbl = stsd;
        stbl.extend(full(b"stts", 0, &stts_p));
        stbl.extend(full(b"stsc", 0, &stsc_p));
        stbl.extend(full(b"stsz", 0, &stsz_p));
        stbl.extend(full(b"stco", 0, &stco_p));
        boxed(b"stbl", &stbl)
    }

    fn trak(handler: &[u8; 4], timescale: u32, matrix: [i32; 9], stbl: Vec<u8>) -> Vec<u8> {
        let mut tkhd = vec![0u8; 20];
        tkhd.extend_from_slice(&[0u8; 16]);
        tkhd.extend(matrix_bytes(matrix));
        tkhd.extend_from_slice(&[0u8; 8]);
        let mut mdhd = vec![0u8; 8];
        mdhd.extend_from_slice(&timescale.to_be_bytes());
        mdhd.extend_from_slice(&1000u32.to_be_bytes());
        mdhd.extend_from_slice(&[0u8; 4]);
        let mut hdlr = vec![0u8; 4];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0u8; 13]);
        let minf = boxed(b"minf", &stbl);
        let mut mdia = full(b"mdhd", 0, &mdhd);
        mdia.extend(full(b"hdlr", 0, &hdlr));
        mdia.extend(minf);
        let mut t = full(b"tkhd", 0, &tkhd);
        t.extend(boxed(b"mdia", &mdia));
        boxed(b"trak", &t)
    }

    fn video_stsd(width: u16, height: u16, avcc: &[u8]) -> Vec<u8> {
        let mut entry = vec![0u8; 6];
        entry.extend_from_slice(&1u16.to_be_bytes());
        entry.extend_from_slice(&[0u8; 16]);
        entry.extend_from_slice(&width.to_be_bytes());
        entry.extend_from_slice(&height.to_be_bytes());
        entry.extend_from_slice(&[0u8; 14]);
        entry.extend_from_slice(&[0u8; 32]);
        entry.extend_from_slice(&24u16.to_be_bytes());
        entry.extend_from_slice(&0xffffu16.to_be_bytes());
        entry.extend(boxed(b"avcC", avcc));
        let mut stsd = 1u32.to_be_bytes().to_vec();
        stsd.extend(boxed(b"avc1", &entry));
        full(b"stsd", 0, &stsd)
    }

    fn audio_stsd(asc: &[u8]) -> Vec<u8> {
        let mut entry = vec![0u8; 6];
        entry.extend_from_slice(&1u16.to_be_bytes());
        entry.extend_from_slice(&[0u8; 8]);
        entry.extend_from_slice(&2u16.to_be_bytes());
        entry.extend_from_slice(&16u16.to_be_bytes());
        entry.extend_from_slice(&[0u8; 4]);
        entry.extend_from_slice(&(48000u32 << 16).to_be_bytes());
        let mut dec = vec![0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dec.push(0x05);
        dec.push(asc.len() as u8);
        dec.extend_from_slice(asc);
        let mut es = vec![0x00, 0x01, 0x00, 0x04, dec.len() as u8];
        es.extend(dec);
        let mut esds = vec![0x03, es.len() as u8];
        esds.extend(es);
        entry.extend(full(b"esds", 0, &esds));
        let mut stsd = 1u32.to_be_bytes().to_vec();
        stsd.extend(boxed(b"mp4a", &entry));
        full(b"stsd", 0, &stsd)
    }

    /// A small faststart MP4: 96x54 h264 at 30 fps (timescale 15360) plus stereo AAC.
    fn sample_file(rotation_matrix: [i32; 9]) -> Vec<u8> {
        let mut mvhd = vec![0u8; 8];
        mvhd.extend_from_slice(&1000u32.to_be_bytes());
        mvhd.extend_from_slice(&2500u32.to_be_bytes());
        mvhd.extend_from_slice(&[0u8; 16]);
        mvhd.extend(matrix_bytes(IDENTITY));
        mvhd.extend_from_slice(&[0u8; 28]);
        let mut moov = full(b"mvhd", 0, &mvhd);
        moov.extend(trak(b"vide", 15360, rotation_matrix, tables(video_stsd(96, 54, AVCC_96X54), &[(75, 512)])));
        moov.extend(trak(b"soun", 48000, IDENTITY, tables(audio_stsd(ASC_STEREO_48K), &[(117, 1024), (1, 832)])));
        let mut file = boxed(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41");
        file.extend(boxed(b"moov", &moov));
        file.extend(boxed(b"mdat", &[0u8; 64]));
        file
    }

    fn read_bytes(bytes: &[u8]) -> Res<(ClipInfo, Fingerprint)> {
        read(IoCursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn reads_a_synthetic_file() {
        let (info, fp) = read_bytes(&sample_file(IDENTITY)).unwrap();
        assert_eq!(info.container, MOV_FORMAT_NAME);
        assert_eq!(info.duration_seconds, 2.5);
        assert_eq!(info.video.codec, "h264");
        assert_eq!((info.video.width, info.video.height), (96, 54));
        assert_eq!(info.video.pix_fmt, "yuv420p");
        assert_eq!(info.video.frame_rate, "30/1");
        assert_eq!(info.video.time_base, "1/15360");
        assert_eq!(info.video.rotation, 0);
        let audio = info.audio.unwrap();
        assert_eq!((audio.sample_rate, audio.channels, audio.channel_layout.as_str()), (48000, 2, "stereo"));
        assert_eq!(audio.time_base, "1/48000");
        assert_eq!(fp.video.unwrap(), ("h264".into(), "CRC32:85008759".into()));
        assert_eq!(fp.audio.unwrap(), ("aac".into(), extradata_hash(ASC_STEREO_48K)));
    }

    #[test]
    fn rotations() {
        let one = 1 << 16;
        let rot = |a, b, c, d| [a, b, 0, c, d, 0, 0, 0, 1 << 30];
        assert_eq!(rotation(&rot(one, 0, 0, one)).unwrap(), 0);
        // ffmpeg's `rotate=90` tag writes this matrix; ffprobe says 90, reel 270.
        assert_eq!(rotation(&rot(0, -one, one, 0)).unwrap(), 270);
        assert_eq!(rotation(&rot(0, one, -one, 0)).unwrap(), 90);
        assert_eq!(rotation(&rot(-one, 0, 0, -one)).unwrap(), 180);
        assert!(rotation(&rot(-one, 0, 0, one)).is_err(), "mirror");
        assert!(rotation(&rot(2 * one, 0, 0, one)).is_err(), "scale");
        let (info, _) = read_bytes(&sample_file(rot(0, -one, one, 0))).unwrap();
        assert_eq!(info.video.rotation, 270);
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(extradata_hash(b""), "CRC32:00000000");
    }

    #[test]
    fn parameter_sets() {
        let sps = parse_h264_sps(avcc_sps(AVCC_96X54).unwrap()).unwrap();
        assert_eq!(
            sps,
            Sps { chroma_format_idc: 1, bit_depth: 8, width: 96, height: 54, full_range: None, matrix: None }
        );
        let high444 = parse_h264_sps(H264_SPS_444_96X54).unwrap();
        assert_eq!((high444.chroma_format_idc, high444.bit_depth, high444.width, high444.height), (3, 8, 96, 54));
        let hevc = parse_hevc_sps(HEVC_SPS_96X54).unwrap();
        assert_eq!((hevc.chroma_format_idc, hevc.bit_depth, hevc.width, hevc.height), (1, 8, 96, 54));
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3]), vec![0, 0, 1, 0, 0]);
        let asc = parse_audio_specific_config(ASC_STEREO_48K).unwrap();
        assert_eq!((asc.sample_rate, asc.channels, asc.layout), (48000, 2, "stereo"));
        // 22.05 kHz LC with no SBR signalling: the decoder might find SBR.
        assert!(parse_audio_specific_config(&[0x13, 0x90]).is_err());
        // ... but not when the sync extension rules it out.
        assert!(parse_audio_specific_config(&[0x13, 0x90, 0x56, 0xe5, 0x00]).is_ok());
        // HE-AAC (object type 5) and a PCE (channel configuration 0) are declined.
        assert!(parse_audio_specific_config(&[0x2b, 0x92, 0x08, 0x00]).is_err());
        assert!(parse_audio_specific_config(&[0x11, 0x80]).is_err());
    }

    #[test]
    fn declines_the_unusual() {
        let good = sample_file(IDENTITY);
        // Not starting with ftyp.
        let mut no_ftyp = boxed(b"free", &[]);
        no_ftyp.extend_from_slice(&good);
        assert!(read_bytes(&no_ftyp).is_err());
        // A fragment after the moov.
        let mut fragmented = good.clone();
        fragmented.extend(boxed(b"moof", &[0u8; 8]));
        assert!(read_bytes(&fragmented).is_err());
        // Stray bytes at the end (a truncated box header).
        let mut stray = good.clone();
        stray.extend_from_slice(&[0, 0, 0]);
        assert!(read_bytes(&stray).is_err());
        // Truncated mdat.
        assert!(read_bytes(&good[..good.len() - 1]).is_err());
        // Variable frame rate.
        let mut t = Track {
            handler: *b"vide",
            minf_handlers: vec![],
            matrix: IDENTITY,
            timescale: 15360,
            stsd: None,
            stts: Some((2, [(10, 512), (10, 500)])),
            chunk_count: Some(1),
            stsc_count: Some(1),
            sample_count: Some(20),
        };
        assert!(frame_rate(&t, 15360).is_err());
        t.stts = Some((2, [(19, 512), (1, 500)]));
        assert_eq!(frame_rate(&t, 15360).unwrap(), "30/1");
    }

    /// Every truncation and many byte mutations of a valid file: never a panic, and
    /// any answer is still a complete, plausible one.
    #[test]
    fn hostile_inputs_never_panic() {
        let good = sample_file(IDENTITY);
        for cut in 0..good.len() {
            let _ = read_bytes(&good[..cut]);
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..1 + (seed % 4) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % bytes.len() as u64) as usize;
                bytes[at] = match seed >> 60 {
                    0 => 0,
                    1 => 1,
                    2 => 0xff,
                    _ => (seed >> 32) as u8,
                };
            }
            if let Ok((info, _)) = read_bytes(&bytes) {
                assert!(info.duration_seconds > 0.0);
                assert!(info.video.width > 0 && info.video.height > 0);
            }
        }
        // Lying sizes: every box header rewritten to 0, 1, 7 and huge.
        for at in 0..good.len().saturating_sub(8) {
            if !good[at + 4..at + 8].iter().all(u8::is_ascii_alphanumeric) {
                continue;
            }
            for size in [0u32, 1, 7, 8, u32::MAX] {
                let mut bytes = good.clone();
                bytes[at..at + 4].copy_from_slice(&size.to_be_bytes());
                let _ = read_bytes(&bytes);
            }
        }
    }

    /// The bit-level parsers on mutated real parameter sets and configs, including
    /// runs of zero bytes (huge Exp-Golomb values): a decline or an answer, no panic.
    #[test]
    fn parameter_set_parsers_never_panic() {
        let h264_sps = avcc_sps(AVCC_96X54).unwrap().to_vec();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..30_000 {
            let mut bytes = match round % 5 {
                0 => h264_sps.clone(),
                1 => H264_SPS_444_96X54.to_vec(),
                2 => HEVC_SPS_96X54.to_vec(),
                3 => ASC_STEREO_48K.to_vec(),
                _ => AVCC_96X54.to_vec(),
            };
            for _ in 0..1 + next() % 3 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 4 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.splice(at..at, [0u8; 4]).for_each(drop),
                    2 => bytes.truncate(at.max(1)),
                    _ => bytes[at] ^= 1 << (next() % 8),
                }
            }
            let _ = parse_h264_sps(&bytes);
            let _ = parse_hevc_sps(&bytes);
            let _ = parse_audio_specific_config(&bytes);
            let _ = avcc_sps(&bytes).map(parse_h264_sps);
            let _ = hvcc_sps(&bytes).map(parse_hevc_sps);
            let _ = parse_esds(&bytes);
        }
    }

    /// The Exp-Golomb code of `u32::MAX - 1` (31 zeros, 32 ones) inserted at every bit
    /// position of the real SPSs' RBSP, so that every field in turn reads a huge value.
    #[test]
    fn huge_exp_golomb_values_never_panic() {
        fn insert_bits(bytes: &[u8], at: usize, pattern: &[u8]) -> Vec<u8> {
            let mut bits: Vec<u8> = bytes.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
            bits.splice(at..at, pattern.iter().copied());
            bits.chunks(8).map(|c| c.iter().fold(0u8, |acc, &bit| acc << 1 | bit) << (8 - c.len())).collect()
        }
        /// RBSP to NAL payload: an emulation-prevention byte before 00..03 after two zeros.
        fn escape(rbsp: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut zeros = 0;
            for &byte in rbsp {
                if zeros >= 2 && byte <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if byte == 0 { zeros + 1 } else { 0 };
                out.push(byte);
            }
            out
        }
        let huge: Vec<u8> = [0u8; 31].into_iter().chain([1u8; 32]).collect();
        let mut check = Bits::new(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(check.ue().unwrap(), u32::MAX - 1);
        let h264_sps = avcc_sps(AVCC_96X54).unwrap().to_vec();
        for (sps, header_len) in [(&h264_sps[..], 1), (H264_SPS_444_96X54, 1), (HEVC_SPS_96X54, 2)] {
            let rbsp = unescape(&sps[header_len..]);
            assert_eq!(unescape(&escape(&rbsp)), rbsp);
            for at in 0..rbsp.len() * 8 {
                let mut nal = sps[..header_len].to_vec();
                nal.extend(escape(&insert_bits(&rbsp, at, &huge)));
                let _ = parse_h264_sps(&nal);
                let _ = parse_hevc_sps(&nal);
            }
        }
    }

    #[test]
    fn deep_nesting_and_many_boxes_are_bounded() {
        // 10 000 nested 'trak' boxes inside a moov: only the first level is entered.
        let mut nested = boxed(b"free", &[]);
        for _ in 0..10_000 {
            nested = boxed(b"trak", &nested);
        }
        let mut file = boxed(b"ftyp", b"isom");
        file.extend(boxed(b"moov", &nested));
        assert!(read_bytes(&file).is_err());
        // 100 000 empty top-level boxes: capped.
        let mut many = boxed(b"ftyp", b"isom");
        for _ in 0..100_000 {
            many.extend(boxed(b"free", &[]));
        }
        assert!(read_bytes(&many).is_err());
        // A moov with 5 000 empty children: capped.
        let mut wide = Vec::new();
        for _ in 0..5_000 {
            wide.extend(boxed(b"udta", &[]));
        }
        let mut file = boxed(b"ftyp", b"isom");
        file.extend(boxed(b"moov", &wide));
        assert!(read_bytes(&file).is_err());
    }
}
