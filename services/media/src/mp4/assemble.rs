//! Layer 3b: zero-copy assembly. Reads the whole sample tables of each clip (bounded),
//! checks that the clips can share one set of tracks, and writes a new `ftyp` + `moov`
//! whose tables point into one `mdat` made of the clips' own media bytes, in order.
//!
//! The output is the header this module returns, then each [`CopyRange`] of the clips
//! copied unchanged. Every chunk offset is moved by where its clip's media lands in the
//! new `mdat`; samples, sizes, durations and composition offsets are the clips' own.
//! Each clip keeps its own presentation window through one edit per clip and track, so
//! encoder delay (B-frames) and AAC priming and padding are cut exactly as in the clip.
//!
//! It declines (and the caller joins with ffmpeg instead) whatever it cannot express
//! exactly; see [`crate::assemble_copy`] and docs/MEDIA.md.

use super::boxes::{fourcc, set_once, slice_boxes, top_level, BoxHeader, Cursor, Source};
use super::codec::parse_esds;
use super::tables::{parse_hdlr, parse_mvhd, table_count, MAX_STSD_BYTES};
use super::{decline, Declined, Res};
use std::io::{Read, Seek};

/// The largest sample table box read (an `stsz` of 4 M samples is 16 MiB).
const MAX_TABLE_BYTES: u64 = 32 << 20;
/// The most samples one track of one clip may have.
const MAX_CLIP_SAMPLES: u32 = 4_000_000;
/// The most samples one track of the reel may have (memory: ~4 bytes each).
const MAX_TOTAL_SAMPLES: u64 = 16_000_000;
/// The most clips one assembly joins.
const MAX_CLIPS: usize = 1_000;
/// Edit list entries read per track.
const MAX_EDITS: u32 = 16;
/// Sample-table bytes read (and held) for all clips of one assembly together, so that
/// many clips with large hostile tables cannot exhaust memory.
const MAX_TABLE_BUDGET: u64 = 256 << 20;

/// A byte range of clip `clip`'s file that goes, unchanged, into the reel's `mdat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyRange {
    pub(crate) clip: usize,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// What the reel's `mdat` holds after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The clips' `mdat` payloads only (a local file: the kernel copies those ranges).
    MediaOnly,
    /// The clips' whole files, headers and all (a store that concatenates whole objects:
    /// Cloud Storage compose). Their old `ftyp`/`moov`/`mdat` headers lie inside the new
    /// `mdat` as unused bytes; the chunk offsets skip them.
    WholeFiles,
}

/// What to write: `header`, then each range in order.
#[derive(Debug)]
pub(crate) struct Assembly {
    pub(crate) header: Vec<u8>,
    pub(crate) ranges: Vec<CopyRange>,
}

impl Assembly {
    /// The size of the finished file.
    pub(crate) fn total_len(&self) -> u64 {
        self.header.len() as u64 + self.ranges.iter().map(|r| r.len).sum::<u64>()
    }
}

/// One clip's headers, as the assembler needs them.
struct Clip {
    ftyp: Vec<u8>,
    movie_timescale: u32,
    movie_matrix: [i32; 9],
    tracks: Vec<TrackTables>,
    /// The payload of every top-level `mdat`, in file order: `(start, end)`.
    media: Vec<(u64, u64)>,
    /// The file's length.
    len: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct TkhdFields {
    layer: u16,
    alternate_group: u16,
    volume: u16,
    matrix: [i32; 9],
    width: u32,
    height: u32,
}

struct TrackTables {
    handler: [u8; 4],
    tkhd: TkhdFields,
    timescale: u32,
    language: u16,
    hdlr: Vec<u8>,
    /// `vmhd` or `smhd`: (type, payload).
    media_header: ([u8; 4], Vec<u8>),
    stsd: Vec<u8>,
    stts: Vec<(u32, u32)>,
    /// (version, entries as raw 32-bit offsets).
    ctts: Option<(u8, Vec<(u32, u32)>)>,
    /// 1-based sync sample numbers; `None`: every sample is a sync sample.
    stss: Option<Vec<u32>>,
    sizes: Vec<u32>,
    /// (first chunk, samples per chunk), 1-based chunks.
    stsc: Vec<(u32, u32)>,
    chunks: Vec<u64>,
    /// The edit (segment duration in movie time, media time), if the track has one.
    edit: Option<(u64, u64)>,
    /// The clip's presentation window in media time: (start, length).
    window: (u64, u64),
}

impl TrackTables {
    fn media_duration(&self) -> u64 {
        self.stts.iter().map(|&(n, d)| u64::from(n) * u64::from(d)).sum()
    }
}

/// Plans the assembly of `clips` (readers and their lengths) laid out as `layout`, or
/// declines.
pub(crate) fn plan<R: Read + Seek>(clips: Vec<(R, u64)>, layout: Layout) -> Res<Assembly> {
    if clips.is_empty() {
        return decline("no clips");
    }
    if clips.len() > MAX_CLIPS {
        return decline(format!("more than {MAX_CLIPS} clips"));
    }
    let mut read = Vec::with_capacity(clips.len());
    let mut budget = MAX_TABLE_BUDGET;
    for (n, (reader, len)) in clips.into_iter().enumerate() {
        let clip =
            read_clip(reader, len, &mut budget).map_err(|Declined(why)| Declined(format!("clip {}: {why}", n + 1)))?;
        read.push(clip);
    }
    check_uniform(&read)?;
    build(&read, layout)
}

/// One clip's headers; `budget` is what is left of [`MAX_TABLE_BUDGET`].
fn read_clip<R: Read + Seek>(reader: R, len: u64, budget: &mut u64) -> Res<Clip> {
    let mut src = Source::new(reader, len);
    let top = top_level(&mut src)?;
    let ftyp = src.payload(&top.ftyp, 1024)?;
    if top.ftyp.body_len() > 1024 {
        return decline("'ftyp' box is too large");
    }
    let mut mvhd = None;
    let mut tracks = Vec::new();
    for child in src.children(&top.moov)? {
        match &child.kind {
            b"mvhd" => set_once(&mut mvhd, parse_mvhd(&src.payload(&child, 256)?)?, child.kind)?,
            b"trak" => tracks.push(read_track(&mut src, &child, budget)?),
            b"mvex" => return decline("fragmented ('mvex' box)"),
            b"cmov" => return decline("compressed 'moov'"),
            _ => {}
        }
    }
    let Some((movie_timescale, _, movie_matrix)) = mvhd else {
        return decline("no 'mvhd' box");
    };
    if movie_timescale == 0 {
        return decline("'mvhd' timescale 0");
    }
    let media = top.mdats.iter().map(|m| (m.body, m.end)).collect();
    let clip = Clip { ftyp, movie_timescale, movie_matrix, tracks, media, len };
    let mut clip = clip;
    for track in &mut clip.tracks {
        check_chunks(track, &clip.media)?;
        track.window = window(track, clip.movie_timescale)?;
    }
    Ok(clip)
}

/// The one child of `parent` of type `kind`; two decline.
fn only_child<R: Read + Seek>(src: &mut Source<R>, parent: &BoxHeader, kind: &[u8; 4]) -> Res<Option<BoxHeader>> {
    let mut found = None;
    for child in src.children(parent)? {
        if &child.kind == kind && found.replace(child).is_some() {
            return decline(format!("two '{}' boxes", fourcc(*kind)));
        }
    }
    Ok(found)
}

fn required<R: Read + Seek>(src: &mut Source<R>, parent: &BoxHeader, kind: &[u8; 4]) -> Res<BoxHeader> {
    only_child(src, parent, kind)?.ok_or_else(|| Declined(format!("no '{}' box", fourcc(*kind))))
}

fn read_track<R: Read + Seek>(src: &mut Source<R>, trak: &BoxHeader, budget: &mut u64) -> Res<TrackTables> {
    let tkhd_box = required(src, trak, b"tkhd")?;
    let tkhd = parse_tkhd(&src.payload(&tkhd_box, 256)?)?;
    let edits = match only_child(src, trak, b"edts")? {
        Some(edts) => match only_child(src, &edts, b"elst")? {
            Some(elst) => {
                if elst.body_len() > 8 + 20 * u64::from(MAX_EDITS) {
                    return decline("too many edits");
                }
                parse_elst(&src.payload(&elst, 8 + 20 * u64::from(MAX_EDITS))?)?
            }
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let mdia = required(src, trak, b"mdia")?;
    let mdhd_box = required(src, &mdia, b"mdhd")?;
    let (timescale, language) = parse_mdhd(&src.payload(&mdhd_box, 256)?)?;
    if timescale == 0 {
        return decline("'mdhd' timescale 0");
    }
    let hdlr_box = required(src, &mdia, b"hdlr")?;
    if hdlr_box.body_len() > 1024 {
        return decline("'hdlr' box is too large");
    }
    let hdlr = src.payload(&hdlr_box, 1024)?;
    let handler = parse_hdlr(&hdlr)?;
    let minf = required(src, &mdia, b"minf")?;
    let header_kind: &[u8; 4] = match &handler {
        b"vide" => b"vmhd",
        b"soun" => b"smhd",
        other => return decline(format!("'{}' track", fourcc(*other))),
    };
    let media_header_box = required(src, &minf, header_kind)?;
    let media_header = (*header_kind, src.payload(&media_header_box, 64)?);
    let stbl = required(src, &minf, b"stbl")?;

    let mut stsd = None;
    let mut stts = None;
    let mut ctts = None;
    let mut stss = None;
    let mut sizes = None;
    let mut stsc = None;
    let mut chunks = None;
    for child in src.children(&stbl)? {
        let kind = child.kind;
        let cap = if &kind == b"stsd" { MAX_STSD_BYTES } else { MAX_TABLE_BYTES };
        let wanted = matches!(&kind, b"stsd" | b"stts" | b"ctts" | b"stss" | b"stsz" | b"stsc" | b"stco" | b"co64");
        if &kind == b"stz2" {
            return decline("'stz2' sample sizes");
        }
        if !wanted {
            continue; // sdtp, sgpd, sbgp, stps...: dropped (see the module docs)
        }
        if child.body_len() > cap {
            return decline(format!("'{}' box is too large", fourcc(kind)));
        }
        // Every table costs its bytes; a constant-size `stsz` costs the sizes it expands to.
        let cost = if &kind == b"stsz" {
            child.body_len().max(4 * u64::from(stsz_count(src, &child)?))
        } else {
            child.body_len()
        };
        *budget = budget.checked_sub(cost).ok_or_else(|| Declined("sample tables too large in all".into()))?;
        let p = src.payload(&child, cap)?;
        let twice = || Declined(format!("two '{}' boxes", fourcc(kind)));
        match &kind {
            b"stsd" => stsd.replace(p).map_or(Ok(()), |_| Err(twice()))?,
            b"stts" => stts.replace(pairs(&p, kind)?).map_or(Ok(()), |_| Err(twice()))?,
            b"ctts" => {
                let entries = pairs(&p, kind)?; // at least the 8-byte header, so p[0] exists
                ctts.replace((p[0], entries)).map_or(Ok(()), |_| Err(twice()))?
            }
            b"stss" => stss.replace(words(&p, kind)?).map_or(Ok(()), |_| Err(twice()))?,
            b"stsz" => sizes.replace(parse_stsz(&p)?).map_or(Ok(()), |_| Err(twice()))?,
            b"stsc" => stsc.replace(parse_stsc(&p)?).map_or(Ok(()), |_| Err(twice()))?,
            b"stco" => {
                let offsets = words(&p, kind)?.into_iter().map(u64::from).collect();
                chunks.replace(offsets).map_or(Ok(()), |_| Err(twice()))?
            }
            _ => {
                let n = table_count(&p, child.body_len(), 8, kind)?;
                let mut c = Cursor::new(&p, "co64");
                c.skip(8)?;
                let offsets = (0..n).map(|_| c.u64()).collect::<Res<Vec<u64>>>()?;
                chunks.replace(offsets).map_or(Ok(()), |_| Err(twice()))?
            }
        }
    }
    let (Some(stsd), Some(stts), Some(sizes), Some(stsc), Some(chunks)) = (stsd, stts, sizes, stsc, chunks) else {
        return decline("track with missing sample tables");
    };
    let mut c = Cursor::new(&stsd, "stsd");
    c.skip(4)?;
    if c.u32()? != 1 {
        return decline("not exactly one sample description");
    }
    let track = TrackTables {
        handler,
        tkhd,
        timescale,
        language,
        hdlr,
        media_header,
        stsd,
        stts,
        ctts,
        stss,
        sizes,
        stsc,
        chunks,
        edit: single_edit(&edits)?,
        window: (0, 0),
    };
    check_counts(&track)?;
    Ok(track)
}

/// The version/flags + count + (u32, u32) entries of `stts` / `ctts`.
fn pairs(p: &[u8], kind: [u8; 4]) -> Res<Vec<(u32, u32)>> {
    let n = table_count(p, p.len() as u64, 8, kind)?;
    let mut c = Cursor::new(p, "table");
    c.skip(8)?;
    (0..n).map(|_| Ok((c.u32()?, c.u32()?))).collect()
}

/// The version/flags + count + u32 entries of `stss` / `stco`.
fn words(p: &[u8], kind: [u8; 4]) -> Res<Vec<u32>> {
    let n = table_count(p, p.len() as u64, 4, kind)?;
    let mut c = Cursor::new(p, "table");
    c.skip(8)?;
    (0..n).map(|_| c.u32()).collect()
}

/// The sample count an `stsz` box declares (its first 12 payload bytes).
fn stsz_count<R: Read + Seek>(src: &mut Source<R>, stsz: &BoxHeader) -> Res<u32> {
    let head = src.payload(stsz, 12)?;
    let mut c = Cursor::new(&head, "stsz");
    c.skip(8)?;
    c.u32()
}

fn parse_stsz(p: &[u8]) -> Res<Vec<u32>> {
    let mut c = Cursor::new(p, "stsz");
    c.skip(4)?;
    let size = c.u32()?;
    let count = c.u32()?;
    if count > MAX_CLIP_SAMPLES {
        return decline(format!("{count} samples in one track"));
    }
    if size != 0 {
        return Ok(vec![size; count as usize]);
    }
    if (p.len() as u64) < 12 + 4 * u64::from(count) {
        return decline("'stsz' box is shorter than its entries");
    }
    (0..count).map(|_| c.u32()).collect()
}

fn parse_stsc(p: &[u8]) -> Res<Vec<(u32, u32)>> {
    let n = table_count(p, p.len() as u64, 12, *b"stsc")?;
    let mut c = Cursor::new(p, "stsc");
    c.skip(8)?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (first, per_chunk, description) = (c.u32()?, c.u32()?, c.u32()?);
        if description != 1 {
            return decline(format!("'stsc' names sample description {description}"));
        }
        out.push((first, per_chunk));
    }
    Ok(out)
}

fn parse_tkhd(p: &[u8]) -> Res<TkhdFields> {
    let mut c = Cursor::new(p, "tkhd");
    let version = c.u8()?;
    c.skip(3)?;
    match version {
        0 => c.skip(20)?,
        1 => c.skip(32)?,
        v => return decline(format!("'tkhd' version {v}")),
    }
    c.skip(8)?;
    let layer = c.u16()?;
    let alternate_group = c.u16()?;
    let volume = c.u16()?;
    c.skip(2)?;
    let matrix = c.matrix()?;
    Ok(TkhdFields { layer, alternate_group, volume, matrix, width: c.u32()?, height: c.u32()? })
}

/// `(timescale, language)`.
fn parse_mdhd(p: &[u8]) -> Res<(u32, u16)> {
    let mut c = Cursor::new(p, "mdhd");
    let version = c.u8()?;
    c.skip(3)?;
    let timescale = match version {
        0 => {
            c.skip(8)?;
            let ts = c.u32()?;
            c.skip(4)?;
            ts
        }
        1 => {
            c.skip(16)?;
            let ts = c.u32()?;
            c.skip(8)?;
            ts
        }
        v => return decline(format!("'mdhd' version {v}")),
    };
    Ok((timescale, c.u16()?))
}

/// Edit list entries as `(segment duration in movie time, media time, rate)`.
fn parse_elst(p: &[u8]) -> Res<Vec<(u64, i64, u32)>> {
    let mut c = Cursor::new(p, "elst");
    let version = c.u8()?;
    c.skip(3)?;
    let n = c.u32()?;
    if n > MAX_EDITS {
        return decline("too many edits");
    }
    (0..n)
        .map(|_| match version {
            0 => Ok((u64::from(c.u32()?), i64::from(c.u32()? as i32), c.u32()?)),
            1 => Ok((c.u64()?, c.u64()? as i64, c.u32()?)),
            v => decline(format!("'elst' version {v}")),
        })
        .collect()
}

/// The tables agree with each other: counts match, chunks and sync samples in range.
fn check_counts(t: &TrackTables) -> Res<()> {
    let samples = t.sizes.len() as u64;
    if samples == 0 {
        return decline("empty track");
    }
    let stts_total: u64 = t.stts.iter().map(|&(n, _)| u64::from(n)).sum();
    if stts_total != samples {
        return decline(format!("'stts' covers {stts_total} samples, 'stsz' has {samples}"));
    }
    if let Some((version, ctts)) = &t.ctts {
        if *version > 1 {
            return decline(format!("'ctts' version {version}"));
        }
        let total: u64 = ctts.iter().map(|&(n, _)| u64::from(n)).sum();
        if total != samples {
            return decline(format!("'ctts' covers {total} samples, 'stsz' has {samples}"));
        }
    }
    if let Some(stss) = &t.stss {
        if stss.first() != Some(&1) {
            return decline("the first sample is not a sync sample");
        }
        if stss.windows(2).any(|w| w[0] >= w[1]) || stss.last().is_some_and(|&s| u64::from(s) > samples) {
            return decline("'stss' out of order or out of range");
        }
    }
    if t.chunks.is_empty() || t.stsc.first().map(|e| e.0) != Some(1) {
        return decline("'stsc' does not start at chunk 1");
    }
    if t.stsc.windows(2).any(|w| w[0].0 >= w[1].0) || t.stsc.iter().any(|e| e.1 == 0) {
        return decline("'stsc' out of order or with empty chunks");
    }
    if t.stsc.last().is_some_and(|e| e.0 as usize > t.chunks.len()) {
        return decline("'stsc' names chunks past 'stco'");
    }
    let mut in_chunks = 0u64;
    for (i, &(first, per_chunk)) in t.stsc.iter().enumerate() {
        let next = t.stsc.get(i + 1).map_or(t.chunks.len() as u64 + 1, |e| u64::from(e.0));
        in_chunks = in_chunks.saturating_add((next - u64::from(first)).saturating_mul(u64::from(per_chunk)));
    }
    if in_chunks != samples {
        return decline(format!("the chunks hold {in_chunks} samples, 'stsz' has {samples}"));
    }
    Ok(())
}

/// Every chunk lies inside one `mdat` payload of its clip.
fn check_chunks(t: &TrackTables, media: &[(u64, u64)]) -> Res<()> {
    let mut sample = 0usize;
    for (chunk, &offset) in t.chunks.iter().enumerate() {
        let per_chunk = samples_in_chunk(&t.stsc, chunk as u32 + 1);
        let end_sample = sample + per_chunk as usize;
        let bytes: u64 = t.sizes[sample..end_sample].iter().map(|&s| u64::from(s)).sum();
        sample = end_sample;
        let end = offset.checked_add(bytes).ok_or_else(|| Declined("chunk past the end".into()))?;
        // The ranges are in file order and do not overlap: the last one starting at or
        // before the chunk is the only one that can hold it.
        let i = media.partition_point(|&(start, _)| start <= offset);
        if i == 0 || end > media[i - 1].1 {
            return decline(format!("chunk {} is not inside an 'mdat' box", chunk + 1));
        }
    }
    Ok(())
}

/// Samples in the 1-based `chunk`, from the (checked) `stsc` runs.
fn samples_in_chunk(stsc: &[(u32, u32)], chunk: u32) -> u32 {
    let i = stsc.partition_point(|e| e.0 <= chunk);
    stsc[i.saturating_sub(1)].1
}

/// The one edit of a track, `(segment duration, media time)`; no edit list is `None`.
/// Empty edits, rates other than 1 and several edits decline.
fn single_edit(edits: &[(u64, i64, u32)]) -> Res<Option<(u64, u64)>> {
    match edits {
        [] => Ok(None),
        [(_, media_time, _)] if *media_time < 0 => decline("an empty edit (a track starting late)"),
        [(_, _, rate)] if *rate != 0x0001_0000 => decline("an edit with a rate other than 1"),
        [(0, _, _)] => decline("an edit of duration 0"),
        [(duration, media_time, _)] => Ok(Some((*duration, *media_time as u64))),
        _ => decline(format!("{} edits in one track", edits.len())),
    }
}

/// Where the clip's presentation of this track starts in media time, and how long it
/// lasts: its edit, or all of its media. Declines windows the reel could not repeat
/// exactly: video must show every frame and nothing more (each frame starts inside,
/// the window ends within a frame of the last), audio must start on a frame and stay
/// inside its media.
fn window(t: &TrackTables, movie_timescale: u32) -> Res<(u64, u64)> {
    let media = t.media_duration();
    let (start, length) = match t.edit {
        Some((duration, media_time)) => {
            (media_time, rescale(duration, u64::from(t.timescale), u64::from(movie_timescale)))
        }
        None => (0, media),
    };
    // One movie tick, in media ticks: what rounding in the clip's own edit can cost.
    let rounding = u64::from(t.timescale).div_ceil(u64::from(movie_timescale));
    let end = start.saturating_add(length);
    let longest = u64::from(t.stts.iter().map(|e| e.1).max().unwrap_or(0));
    match &t.handler {
        b"vide" => {
            let (first, last) = cts_range(t)?;
            if first != start || last >= end || end > last + longest + rounding {
                return decline("the video edit hides or adds frames");
            }
            Ok((start, length))
        }
        _ => {
            if end > media + rounding {
                return decline("the audio edit runs past the media");
            }
            let mut dts = 0u64;
            let mut on_boundary = start == 0;
            for &(n, delta) in &t.stts {
                if on_boundary || dts > start {
                    break;
                }
                let delta = u64::from(delta);
                on_boundary = delta > 0
                    && start >= dts
                    && (start - dts).is_multiple_of(delta)
                    && start - dts <= u64::from(n) * delta;
                dts += u64::from(n) * delta;
            }
            if !on_boundary {
                return decline("the audio edit starts inside a frame");
            }
            Ok((start, length.min(media - start.min(media))))
        }
    }
}

/// First and last composition times of a track's samples; negative ones decline.
fn cts_range(t: &TrackTables) -> Res<(u64, u64)> {
    let (mut min, mut max) = (i128::MAX, i128::MIN);
    let mut dts = 0i128;
    let mut offsets =
        t.ctts.as_ref().map(|(v, e)| (*v, e.iter().flat_map(|&(n, o)| std::iter::repeat_n(o, n as usize))));
    for &(n, delta) in &t.stts {
        for _ in 0..n {
            let offset = match &mut offsets {
                Some((0, it)) => i128::from(it.next().unwrap_or(0)),
                Some((_, it)) => i128::from(it.next().unwrap_or(0) as i32),
                None => 0,
            };
            min = min.min(dts + offset);
            max = max.max(dts + offset);
            dts += i128::from(delta);
        }
    }
    if min < 0 {
        return decline("negative composition time");
    }
    Ok((min as u64, max as u64))
}

/// `value × to / from`, rounded to nearest.
fn rescale(value: u64, to: u64, from: u64) -> u64 {
    let v = (u128::from(value) * u128::from(to) + u128::from(from) / 2) / u128::from(from.max(1));
    v.min(u128::from(u64::MAX)) as u64
}

fn is_quicktime(ftyp: &[u8]) -> bool {
    ftyp.get(0..4) == Some(b"qt  ")
}

/// The clips can share one set of tracks: the same kinds in the same order, identical
/// sample descriptions, timescales and display matrices; audio and video in step.
fn check_uniform(clips: &[Clip]) -> Res<()> {
    let first = &clips[0];
    let videos = first.tracks.iter().filter(|t| &t.handler == b"vide").count();
    let audios = first.tracks.iter().filter(|t| &t.handler == b"soun").count();
    if videos != 1 || audios > 1 {
        return decline(format!("{videos} video and {audios} audio tracks (one video, at most one audio)"));
    }
    for (n, clip) in clips.iter().enumerate().skip(1) {
        let n = n + 1;
        if is_quicktime(&clip.ftyp) != is_quicktime(&first.ftyp) {
            return decline(format!(
                "clip {n} is {}, clip 1 is not",
                if is_quicktime(&clip.ftyp) { "QuickTime" } else { "MP4" }
            ));
        }
        if clip.movie_matrix != first.movie_matrix {
            return decline(format!("clip {n} has another movie matrix than clip 1"));
        }
        if clip.tracks.len() != first.tracks.len()
            || clip.tracks.iter().zip(&first.tracks).any(|(a, b)| a.handler != b.handler)
        {
            return decline(format!("clip {n} has other tracks than clip 1"));
        }
        for (mine, theirs) in clip.tracks.iter().zip(&first.tracks) {
            let what = if &mine.handler == b"vide" { "video" } else { "audio" };
            if comparable_entry(mine)? != comparable_entry(theirs)? {
                return decline(format!("clip {n}'s {what} sample description (codec headers) differs from clip 1's"));
            }
            if mine.timescale != theirs.timescale {
                return decline(format!("clip {n}'s {what} timescale differs from clip 1's"));
            }
            if (mine.tkhd.matrix, mine.tkhd.width, mine.tkhd.height)
                != (theirs.tkhd.matrix, theirs.tkhd.width, theirs.tkhd.height)
            {
                return decline(format!("clip {n}'s {what} display size or rotation differs from clip 1's"));
            }
        }
    }
    // Audio and video in step at every join: within one video frame of each other.
    let video = first.tracks.iter().position(|t| &t.handler == b"vide").unwrap_or(0);
    if let Some(audio) = first.tracks.iter().position(|t| &t.handler == b"soun") {
        let (vts, ats) = (i128::from(first.tracks[video].timescale), i128::from(first.tracks[audio].timescale));
        let frame = i128::from(first.tracks[video].stts.iter().map(|e| e.1).max().unwrap_or(0));
        let (mut v, mut a) = (0i128, 0i128);
        for (n, clip) in clips.iter().enumerate() {
            v += i128::from(clip.tracks[video].window.1);
            a += i128::from(clip.tracks[audio].window.1);
            // |a/ats - v/vts| <= frame/vts
            if (a * vts - v * ats).abs() > frame * ats {
                return decline(format!(
                    "audio and video would be more than a frame apart after clip {} ({:.3} s against {:.3} s)",
                    n + 1,
                    a as f64 / ats as f64,
                    v as f64 / vts as f64
                ));
            }
        }
    }
    Ok(())
}

/// The part of a track's one sample entry that decoding depends on: the entry with its
/// bit-rate hints left out (`btrt`, and the `esds` bit rates and buffer size, which
/// every encoder fills in per file), so clips from one encoder compare equal. The reel
/// keeps the first clip's entry, hints included.
fn comparable_entry(t: &TrackTables) -> Res<Vec<u8>> {
    let mut c = Cursor::new(&t.stsd, "stsd");
    c.skip(8)?;
    let size = c.u32()? as usize;
    c.pos -= 4;
    let entry = c.bytes(size)?;
    let children_at = match &t.handler {
        b"vide" => 86,
        _ => match entry.get(16..18).map(super::boxes::be16) {
            Some(0) => 36,
            Some(1) => 36 + 16,
            Some(2) => 36 + 36,
            _ => return decline("unknown sound sample entry version"),
        },
    };
    let Some(fixed) = entry.get(4..children_at) else {
        return decline("sample entry cut short");
    };
    let mut out = fixed.to_vec();
    comparable_children(&entry[children_at..], &mut out, 0)?;
    Ok(out)
}

fn comparable_children(data: &[u8], out: &mut Vec<u8>, depth: u8) -> Res<()> {
    for (kind, body) in slice_boxes(data)? {
        match &kind {
            b"btrt" => continue,
            b"esds" => {
                let (object_type, config) = parse_esds(body)?;
                out.extend_from_slice(b"esds");
                out.push(object_type);
                out.extend_from_slice(config);
            }
            b"wave" if depth == 0 => {
                out.extend_from_slice(b"wave");
                comparable_children(body, out, 1)?;
            }
            _ => {
                out.extend_from_slice(&kind);
                out.extend_from_slice(&(body.len() as u64).to_be_bytes());
                out.extend_from_slice(body);
            }
        }
    }
    Ok(())
}

/// Writes a box of `kind` whose payload `body` appends.
fn put_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - at) as u32; // moov is bounded far below 4 GiB by the sample caps
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

fn put_full_box(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    put_box(out, kind, |o| {
        o.extend_from_slice(&(u32::from(version) << 24 | (flags & 0x00ff_ffff)).to_be_bytes());
        body(o)
    })
}

fn put_u16(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn put_u32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn put_matrix(o: &mut Vec<u8>, m: &[i32; 9]) {
    for v in m {
        put_u32(o, *v as u32);
    }
}

/// One track of the reel, merged from the clips' tracks.
struct OutTrack<'a> {
    first: &'a TrackTables,
    stts: Vec<(u32, u32)>,
    ctts: Option<(u8, Vec<(u32, u32)>)>,
    stss: Option<Vec<u32>>,
    sizes: Vec<u32>,
    stsc: Vec<(u32, u32)>,
    /// (clip, offset in the clip's file).
    chunks: Vec<(usize, u64)>,
    /// (media time, length) in media ticks.
    edits: Vec<(u64, u64)>,
    media_duration: u64,
}

fn push_run(runs: &mut Vec<(u32, u32)>, count: u32, value: u32) {
    match runs.last_mut() {
        Some((n, v)) if *v == value && n.checked_add(count).is_some() => *n += count,
        _ => runs.push((count, value)),
    }
}

fn merge_track(clips: &[Clip], index: usize) -> Res<OutTrack<'_>> {
    let first = &clips[0].tracks[index];
    let any_ctts = clips.iter().any(|c| c.tracks[index].ctts.is_some());
    let any_stss = clips.iter().any(|c| c.tracks[index].stss.is_some());
    let ctts_version = clips.iter().filter_map(|c| c.tracks[index].ctts.as_ref().map(|x| x.0)).max().unwrap_or(0);
    let mut out = OutTrack {
        first,
        stts: Vec::new(),
        ctts: any_ctts.then(|| (ctts_version, Vec::new())),
        stss: any_stss.then(Vec::new),
        sizes: Vec::new(),
        stsc: Vec::new(),
        chunks: Vec::new(),
        edits: Vec::new(),
        media_duration: 0,
    };
    for (n, clip) in clips.iter().enumerate() {
        let t = &clip.tracks[index];
        let samples_before = out.sizes.len() as u64;
        if samples_before + t.sizes.len() as u64 > MAX_TOTAL_SAMPLES {
            return decline(format!("more than {MAX_TOTAL_SAMPLES} samples in one track"));
        }
        let chunks_before = out.chunks.len() as u32;
        for &(count, delta) in &t.stts {
            push_run(&mut out.stts, count, delta);
        }
        if let Some((_, runs)) = &mut out.ctts {
            match &t.ctts {
                Some((_, mine)) => mine.iter().for_each(|&(c, o)| push_run(runs, c, o)),
                None => push_run(runs, t.sizes.len() as u32, 0),
            }
        }
        if let Some(sync) = &mut out.stss {
            let base = samples_before as u32;
            match &t.stss {
                Some(mine) => sync.extend(mine.iter().map(|s| s + base)),
                None => sync.extend((1..=t.sizes.len() as u32).map(|s| s + base)),
            }
        }
        out.sizes.extend_from_slice(&t.sizes);
        for &(first_chunk, per_chunk) in &t.stsc {
            match out.stsc.last() {
                Some(&(_, p)) if p == per_chunk => {}
                _ => out.stsc.push((first_chunk + chunks_before, per_chunk)),
            }
        }
        out.chunks.extend(t.chunks.iter().map(|&o| (n, o)));
        let (start, length) = t.window;
        let media_time = out.media_duration + start;
        match out.edits.last_mut() {
            Some((at, len)) if *at + *len == media_time => *len += length,
            _ => out.edits.push((media_time, length)),
        }
        out.media_duration += t.media_duration();
    }
    Ok(out)
}

/// The reel's header for `clips`, and the ranges to copy after it.
fn build(clips: &[Clip], layout: Layout) -> Res<Assembly> {
    let tracks = (0..clips[0].tracks.len()).map(|i| merge_track(clips, i)).collect::<Res<Vec<_>>>()?;
    // Where each clip's media ranges land in the new mdat payload.
    let mut ranges = Vec::new();
    let mut placed: Vec<Vec<(u64, u64, u64)>> = Vec::new(); // per clip: (start, end, position)
    let mut payload = 0u64;
    for (n, clip) in clips.iter().enumerate() {
        let mut mine = Vec::new();
        let whole = [(0, clip.len)];
        let copied: &[(u64, u64)] = match layout {
            Layout::MediaOnly => &clip.media,
            Layout::WholeFiles => &whole,
        };
        for &(start, end) in copied {
            mine.push((start, end, payload));
            if end > start {
                ranges.push(CopyRange { clip: n, offset: start, len: end - start });
            }
            payload += end - start;
        }
        placed.push(mine);
    }
    let video = tracks.iter().find(|t| &t.first.handler == b"vide").map_or(1000, |t| t.first.timescale);
    let movie_timescale = video.max(600);
    let mut ftyp = Vec::new();
    put_box(&mut ftyp, b"ftyp", |o| o.extend_from_slice(&clips[0].ftyp));
    let mdat_header_len: u64 = if payload + 8 > u64::from(u32::MAX) { 16 } else { 8 };
    let mut co64 = false;
    loop {
        let measure = moov(clips, &tracks, &placed, movie_timescale, 0, co64)?;
        let header_len = ftyp.len() as u64 + measure.len() as u64 + mdat_header_len;
        if !co64 && header_len + payload > u64::from(u32::MAX) {
            co64 = true;
            continue;
        }
        let mut header = ftyp;
        header.extend_from_slice(&moov(clips, &tracks, &placed, movie_timescale, header_len, co64)?);
        if mdat_header_len == 16 {
            put_u32(&mut header, 1);
            header.extend_from_slice(b"mdat");
            put_u64(&mut header, payload + 16);
        } else {
            put_u32(&mut header, (payload + 8) as u32);
            header.extend_from_slice(b"mdat");
        }
        debug_assert_eq!(header.len() as u64, header_len);
        return Ok(Assembly { header, ranges });
    }
}

fn moov(
    clips: &[Clip],
    tracks: &[OutTrack<'_>],
    placed: &[Vec<(u64, u64, u64)>],
    movie_timescale: u32,
    base: u64,
    co64: bool,
) -> Res<Vec<u8>> {
    // Edit durations in movie ticks: the running total is rounded, so errors never add up.
    let edit_durations: Vec<Vec<u64>> = tracks
        .iter()
        .map(|t| {
            let mut total = 0u64;
            let mut done = 0u64;
            t.edits
                .iter()
                .map(|&(_, len)| {
                    total += len;
                    let end = rescale(total, u64::from(movie_timescale), u64::from(t.first.timescale));
                    let d = end - done;
                    done = end;
                    d
                })
                .collect()
        })
        .collect();
    let track_durations: Vec<u64> = edit_durations.iter().map(|d| d.iter().sum()).collect();
    let movie_duration = track_durations.iter().copied().max().unwrap_or(0);
    let mut chunk_offsets = Vec::with_capacity(tracks.len());
    for t in tracks {
        let mut offsets = Vec::with_capacity(t.chunks.len());
        for &(clip, offset) in &t.chunks {
            let i = placed[clip].partition_point(|&(s, _, _)| s <= offset);
            let Some(&(start, _, position)) = i.checked_sub(1).and_then(|i| placed[clip].get(i)) else {
                return decline("a chunk outside the media"); // checked when read
            };
            offsets.push(base + position + (offset - start));
        }
        chunk_offsets.push(offsets);
    }
    let mut out = Vec::new();
    put_box(&mut out, b"moov", |o| {
        put_full_box(o, b"mvhd", 1, 0, |o| {
            put_u64(o, 0);
            put_u64(o, 0);
            put_u32(o, movie_timescale);
            put_u64(o, movie_duration);
            put_u32(o, 0x0001_0000);
            put_u16(o, 0x0100);
            o.extend_from_slice(&[0; 10]);
            put_matrix(o, &clips[0].movie_matrix);
            o.extend_from_slice(&[0; 24]);
            put_u32(o, tracks.len() as u32 + 1);
        });
        for (i, t) in tracks.iter().enumerate() {
            put_track(o, t, i as u32 + 1, track_durations[i], &edit_durations[i], &chunk_offsets[i], co64);
        }
    });
    Ok(out)
}

fn put_track(o: &mut Vec<u8>, t: &OutTrack<'_>, id: u32, duration: u64, edits: &[u64], chunks: &[u64], co64: bool) {
    let f = t.first;
    put_box(o, b"trak", |o| {
        put_full_box(o, b"tkhd", 1, 3, |o| {
            put_u64(o, 0);
            put_u64(o, 0);
            put_u32(o, id);
            put_u32(o, 0);
            put_u64(o, duration);
            o.extend_from_slice(&[0; 8]);
            put_u16(o, f.tkhd.layer);
            put_u16(o, f.tkhd.alternate_group);
            put_u16(o, f.tkhd.volume);
            put_u16(o, 0);
            put_matrix(o, &f.tkhd.matrix);
            put_u32(o, f.tkhd.width);
            put_u32(o, f.tkhd.height);
        });
        put_box(o, b"edts", |o| {
            put_full_box(o, b"elst", 1, 0, |o| {
                put_u32(o, t.edits.len() as u32);
                for (&(media_time, _), &d) in t.edits.iter().zip(edits) {
                    put_u64(o, d);
                    put_u64(o, media_time);
                    put_u32(o, 0x0001_0000);
                }
            });
        });
        put_box(o, b"mdia", |o| {
            put_full_box(o, b"mdhd", 1, 0, |o| {
                put_u64(o, 0);
                put_u64(o, 0);
                put_u32(o, f.timescale);
                put_u64(o, t.media_duration);
                put_u16(o, f.language);
                put_u16(o, 0);
            });
            put_box(o, b"hdlr", |o| o.extend_from_slice(&f.hdlr));
            put_box(o, b"minf", |o| {
                put_box(o, &f.media_header.0, |o| o.extend_from_slice(&f.media_header.1));
                put_box(o, b"dinf", |o| {
                    put_full_box(o, b"dref", 0, 0, |o| {
                        put_u32(o, 1);
                        put_full_box(o, b"url ", 0, 1, |_| {}); // media in this file
                    });
                });
                put_box(o, b"stbl", |o| {
                    put_box(o, b"stsd", |o| o.extend_from_slice(&f.stsd));
                    put_full_box(o, b"stts", 0, 0, |o| {
                        put_u32(o, t.stts.len() as u32);
                        t.stts.iter().for_each(|&(n, d)| {
                            put_u32(o, n);
                            put_u32(o, d);
                        });
                    });
                    if let Some((version, runs)) = &t.ctts {
                        put_full_box(o, b"ctts", *version, 0, |o| {
                            put_u32(o, runs.len() as u32);
                            runs.iter().for_each(|&(n, d)| {
                                put_u32(o, n);
                                put_u32(o, d);
                            });
                        });
                    }
                    if let Some(sync) = &t.stss {
                        put_full_box(o, b"stss", 0, 0, |o| {
                            put_u32(o, sync.len() as u32);
                            sync.iter().for_each(|&s| put_u32(o, s));
                        });
                    }
                    put_full_box(o, b"stsc", 0, 0, |o| {
                        put_u32(o, t.stsc.len() as u32);
                        t.stsc.iter().for_each(|&(first, per)| {
                            put_u32(o, first);
                            put_u32(o, per);
                            put_u32(o, 1);
                        });
                    });
                    put_full_box(o, b"stsz", 0, 0, |o| {
                        put_u32(o, 0);
                        put_u32(o, t.sizes.len() as u32);
                        t.sizes.iter().for_each(|&s| put_u32(o, s));
                    });
                    if co64 {
                        put_full_box(o, b"co64", 0, 0, |o| {
                            put_u32(o, chunks.len() as u32);
                            chunks.iter().for_each(|&c| put_u64(o, c));
                        });
                    } else {
                        put_full_box(o, b"stco", 0, 0, |o| {
                            put_u32(o, chunks.len() as u32);
                            chunks.iter().for_each(|&c| put_u32(o, c as u32));
                        });
                    }
                });
            });
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor as Bytes;

    const SEEDS: [&[u8]; 3] = [
        include_bytes!("../../../../fuzz/seeds/mp4/h264-aac-faststart.mp4"),
        include_bytes!("../../../../fuzz/seeds/mp4/h264-bframes-moov-last.mp4"),
        include_bytes!("../../../../fuzz/seeds/mp4/hevc.mov"),
    ];

    fn plan_bytes(files: &[&[u8]]) -> Res<Assembly> {
        plan(files.iter().map(|f| (Bytes::new(*f), f.len() as u64)).collect(), Layout::MediaOnly)
    }

    /// The header joined with the ranges, as the writer would.
    fn written(files: &[&[u8]], a: &Assembly) -> Vec<u8> {
        let mut out = a.header.clone();
        for r in &a.ranges {
            out.extend_from_slice(&files[r.clip][r.offset as usize..(r.offset + r.len) as usize]);
        }
        out
    }

    #[test]
    fn a_clip_joined_with_itself_reads_back_with_twice_the_samples() {
        for seed in SEEDS {
            let files = [seed, seed];
            let a = plan_bytes(&files).unwrap();
            let reel = written(&files, &a);
            assert_eq!(reel.len() as u64, a.total_len());
            // The probe's reader takes the reel: each track has twice the samples, the
            // codec headers are the clip's, and it lasts twice as long.
            let tables = |bytes: &[u8]| {
                let mut src = Source::new(Bytes::new(bytes), bytes.len() as u64);
                let moov = super::super::boxes::find_moov(&mut src).unwrap();
                super::super::tables::read_moov(&mut src, &moov).unwrap()
            };
            let (two, one) = (tables(&reel), tables(seed));
            for (t2, t1) in two.tracks.iter().zip(&one.tracks) {
                assert_eq!(t2.sample_count.unwrap(), 2 * t1.sample_count.unwrap());
                assert_eq!(t2.stsd, t1.stsd);
            }
            let (info2, fp2) = super::super::read(Bytes::new(&reel[..]), reel.len() as u64).unwrap();
            let (info1, fp1) = super::super::read(Bytes::new(seed), seed.len() as u64).unwrap();
            assert_eq!(fp2, fp1);
            assert!((info2.duration_seconds - 2.0 * info1.duration_seconds).abs() < 0.05, "{info2:?} {info1:?}");
            // Fast-start: the moov comes before the media.
            assert_eq!(&reel[4..8], b"ftyp");
            let moov_at = u32::from_be_bytes(reel[0..4].try_into().unwrap()) as usize;
            assert_eq!(&reel[moov_at + 4..moov_at + 8], b"moov");
        }
    }

    /// The whole-file layout (Cloud Storage compose) is the header followed by the files
    /// themselves, and reads back as the same reel as the media-only one.
    #[test]
    fn the_whole_file_layout_is_the_header_and_the_files_as_they_are() {
        for seed in SEEDS {
            let files = [seed, seed];
            let whole =
                plan(files.iter().map(|f| (Bytes::new(*f), f.len() as u64)).collect(), Layout::WholeFiles).unwrap();
            assert_eq!(whole.ranges.len(), 2);
            assert!(whole.ranges.iter().all(|r| r.offset == 0 && r.len == seed.len() as u64));
            let reel = written(&files, &whole);
            let compact = written(&files, &plan_bytes(&files).unwrap());
            let (a, fa) = super::super::read(Bytes::new(&reel[..]), reel.len() as u64).unwrap();
            let (b, fb) = super::super::read(Bytes::new(&compact[..]), compact.len() as u64).unwrap();
            assert_eq!((a, fa), (b, fb));
        }
    }

    #[test]
    fn hostile_headers_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for good in SEEDS {
            for cut in (0..good.len()).step_by(7) {
                let _ = plan_bytes(&[good, &good[..cut]]);
            }
            for _ in 0..3_000 {
                let mut bytes = good.to_vec();
                super::super::testfile::mutate(&mut bytes, &mut seed);
                if let Ok(a) = plan_bytes(&[good, &bytes]) {
                    // Whatever it accepts, it can write: every range inside its clip.
                    let files = [good, &bytes[..]];
                    assert!(a.ranges.iter().all(|r| r.offset + r.len <= files[r.clip].len() as u64));
                    let _ = written(&files, &a);
                }
            }
        }
    }
}
