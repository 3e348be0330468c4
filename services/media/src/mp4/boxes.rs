//! Layer 1: the box structure. Bounds-checked reads with work caps, box headers that
//! must fit their parent, the top-level walk, and the big-endian readers every other layer
//! uses: this is where hostile sizes and offsets are stopped.

use super::{decline, io_declined, Res};
use std::io::{Read, Seek, SeekFrom};

pub(super) const MAX_TOP_LEVEL_BOXES: u32 = 10_000;

pub(super) const MAX_CHILDREN: usize = 1_024;

pub(super) const MAX_BOXES: u32 = 50_000;

pub(super) const MAX_READS: u32 = 50_000;

pub(super) fn fourcc(kind: [u8; 4]) -> String {
    kind.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' }).collect()
}

#[derive(Debug, Clone, Copy)]
pub(super) struct BoxHeader {
    pub(super) kind: [u8; 4],
    /// Offset of the payload (after the size/type header).
    pub(super) body: u64,
    /// Offset just past the box.
    pub(super) end: u64,
}

impl BoxHeader {
    pub(super) fn body_len(&self) -> u64 {
        self.end - self.body
    }
}

/// The file, with bounds-checked reads and work counters.
pub(super) struct Source<R> {
    pub(super) reader: R,
    pub(super) len: u64,
    pub(super) reads: u32,
    pub(super) boxes: u32,
}

impl<R: Read + Seek> Source<R> {
    pub(super) fn new(reader: R, len: u64) -> Self {
        Self { reader, len, reads: 0, boxes: 0 }
    }

    pub(super) fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Res<()> {
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
    pub(super) fn payload(&mut self, h: &BoxHeader, cap: u64) -> Res<Vec<u8>> {
        let n = h.body_len().min(cap);
        let mut buf = vec![0u8; n as usize];
        self.read_at(h.body, &mut buf)?;
        Ok(buf)
    }

    /// The header of the box at `pos`, which must end by `limit`; `None` when fewer
    /// than 8 bytes remain (libavformat ignores such a tail inside a container).
    pub(super) fn header(&mut self, pos: u64, limit: u64) -> Res<Option<BoxHeader>> {
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

    pub(super) fn children(&mut self, parent: &BoxHeader) -> Res<Vec<BoxHeader>> {
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

/// The top-level boxes that matter: the `ftyp`, the one `moov`, and every `mdat`.
pub(super) struct TopLevel {
    pub(super) ftyp: BoxHeader,
    pub(super) moov: BoxHeader,
    pub(super) mdats: Vec<BoxHeader>,
}

/// Walks the top-level boxes: `ftyp` first, exactly one `moov`, nothing fragmented,
/// every box inside the file.
pub(super) fn find_moov<R: Read + Seek>(src: &mut Source<R>) -> Res<BoxHeader> {
    top_level(src).map(|top| top.moov)
}

/// [`find_moov`], keeping the `ftyp` and the `mdat` boxes too.
pub(super) fn top_level<R: Read + Seek>(src: &mut Source<R>) -> Res<TopLevel> {
    let mut pos = 0u64;
    let mut count = 0u32;
    let mut moov = None;
    let mut ftyp = None;
    let mut mdats = Vec::new();
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
            b"ftyp" => {
                ftyp.get_or_insert(h);
            }
            b"mdat" => mdats.push(h),
            b"moof" | b"mfra" | b"sidx" | b"ssix" | b"styp" | b"emsg" | b"prft" => {
                return decline(format!("fragmented ('{}' box)", fourcc(h.kind)))
            }
            _ => {}
        }
        pos = h.end;
    }
    let (Some(ftyp), Some(moov)) = (ftyp, moov) else {
        return decline("no 'moov' box");
    };
    Ok(TopLevel { ftyp, moov, mdats })
}

/// Splits an in-memory container payload into `(type, payload)` children, with
/// libavformat's rules (size 0 = to the end, trailing < 8 bytes ignored).
pub(super) fn slice_boxes(mut data: &[u8]) -> Res<Vec<([u8; 4], &[u8])>> {
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

/// Fills `slot` with the content of a box that may appear only once in its parent.
pub(super) fn set_once<T>(slot: &mut Option<T>, value: T, kind: [u8; 4]) -> Res<()> {
    if slot.replace(value).is_some() {
        return decline(format!("two '{}' boxes in one parent", fourcc(kind)));
    }
    Ok(())
}

pub(super) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Big-endian reads from a byte slice; running out declines.
pub(super) struct Cursor<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }

    pub(super) fn bytes(&mut self, n: usize) -> Res<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let out = &self.data[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            _ => decline(format!("'{}' box cut short", self.what)),
        }
    }

    pub(super) fn skip(&mut self, n: usize) -> Res<()> {
        self.bytes(n).map(|_| ())
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    pub(super) fn u8(&mut self) -> Res<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Res<u16> {
        self.bytes(2).map(be16)
    }

    pub(super) fn u32(&mut self) -> Res<u32> {
        self.bytes(4).map(be32)
    }

    pub(super) fn u64(&mut self) -> Res<u64> {
        self.bytes(8).map(be64)
    }

    pub(super) fn fourcc(&mut self) -> Res<[u8; 4]> {
        let b = self.bytes(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    pub(super) fn matrix(&mut self) -> Res<[i32; 9]> {
        let mut m = [0i32; 9];
        for v in &mut m {
            *v = self.u32()? as i32;
        }
        Ok(m)
    }

    /// An MPEG-4 descriptor header: tag, then up to four 7-bit length bytes.
    pub(super) fn descriptor(&mut self) -> Res<(u8, usize)> {
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
