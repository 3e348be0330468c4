//! Layer 2: what the `moov` box says, before interpretation: the movie header, and per
//! track its header, media header, handlers, sample description and the entry counts of
//! its sample tables (only their headers are read; the entries never are).

use super::boxes::{fourcc, set_once, BoxHeader, Cursor, Source};
use super::{decline, Res};
use std::io::{Read, Seek};

pub(super) const MAX_STSD_BYTES: u64 = 1 << 20;

pub(super) const MAX_SMALL_BOX_READ: u64 = 256;

/// What the `moov` box says, before interpretation.
#[derive(Debug)]
pub(super) struct Movie {
    pub(super) timescale: u32,
    pub(super) duration: u64,
    pub(super) matrix: [i32; 9],
    pub(super) tracks: Vec<Track>,
}

#[derive(Debug)]
pub(super) struct Track {
    pub(super) handler: [u8; 4],
    /// `hdlr` subtypes inside `minf` (QuickTime data handlers: `alis`, `url `).
    pub(super) minf_handlers: Vec<[u8; 4]>,
    pub(super) matrix: [i32; 9],
    pub(super) timescale: u32,
    /// The `stsd` payload (version, flags, entry count, entries).
    pub(super) stsd: Option<Vec<u8>>,
    /// `stts` entry count and the first two entries as (count, delta).
    pub(super) stts: Option<(u32, [(u32, u32); 2])>,
    pub(super) chunk_count: Option<u32>,
    pub(super) stsc_count: Option<u32>,
    pub(super) sample_count: Option<u32>,
}

pub(super) const IDENTITY: [i32; 9] = [1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30];

pub(super) fn read_moov<R: Read + Seek>(src: &mut Source<R>, moov: &BoxHeader) -> Res<Movie> {
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

pub(super) fn parse_mvhd(p: &[u8]) -> Res<(u32, u64, [i32; 9])> {
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

pub(super) fn read_trak<R: Read + Seek>(src: &mut Source<R>, trak: &BoxHeader) -> Res<Track> {
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

/// The entry count of a sample table (full box header, then a 32-bit count), which
/// must fit in the box.
pub(super) fn table_count(p: &[u8], body_len: u64, entry_size: u64, kind: [u8; 4]) -> Res<u32> {
    let mut c = Cursor::new(p, "sample table");
    c.skip(4)?;
    let count = c.u32()?;
    if body_len < 8 + u64::from(count) * entry_size {
        return decline(format!("'{}' box is shorter than its {count} entries", fourcc(kind)));
    }
    Ok(count)
}

pub(super) fn parse_tkhd(p: &[u8]) -> Res<[i32; 9]> {
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

pub(super) fn parse_mdhd(p: &[u8]) -> Res<u32> {
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
pub(super) fn parse_hdlr(p: &[u8]) -> Res<[u8; 4]> {
    let mut c = Cursor::new(p, "hdlr");
    c.skip(8)?; // version, flags, component type
    c.fourcc()
}
