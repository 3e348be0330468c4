//! Layer 4: the tables and codec configurations turned into the [`ClipInfo`] and
//! [`Fingerprint`] ffprobe would report, declining wherever ffprobe might say otherwise.

use super::boxes::{be16, be32, fourcc, slice_boxes, Cursor};
use super::codec::{avcc_sps, hvcc_sps, parse_audio_specific_config, parse_esds, parse_h264_sps, parse_hevc_sps, Sps};
use super::tables::{Movie, Track, IDENTITY};
use super::{decline, Res, MOV_FORMAT_NAME};
use crate::clip::{normalise_rotation, Fingerprint};
use reel_events::{AudioInfo, ClipInfo, VideoInfo};

/// Sample-entry formats of non-audio, non-video tracks that libavformat can never
/// turn into an audio or video stream (timecode, subtitles, captions, metadata).
pub(super) const HARMLESS_FORMATS: &[&[u8; 4]] =
    &[b"tmcd", b"text", b"tx3g", b"c608", b"c708", b"wvtt", b"stpp", b"mebx", b"gpmd", b"mett", b"metx", b"urim"];

/// Handlers whose tracks libavformat makes audio, video or subtitle streams.
pub(super) const STREAM_HANDLERS: &[&[u8; 4]] = &[b"vide", b"soun", b"m1a ", b"subp", b"clcp"];

pub(super) fn describe(movie: Movie) -> Res<(ClipInfo, Fingerprint)> {
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
pub(super) fn first_entry_format(track: &Track) -> Res<Option<[u8; 4]>> {
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
pub(super) fn checked_timescale(track: &Track) -> Res<u32> {
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
pub(super) fn single_entry(track: &Track) -> Res<([u8; 4], &[u8])> {
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
pub(super) enum VideoCodec {
    H264,
    Hevc,
}

/// What a `colr` box says (`nclx` / `nclc`; ICC profiles say nothing we use).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Colr {
    pub(super) full_range: Option<bool>,
    pub(super) matrix: Option<u16>,
}

pub(super) fn describe_video(track: &Track) -> Res<(VideoInfo, (String, String))> {
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

pub(super) fn parse_colr(body: &[u8]) -> Res<Colr> {
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
pub(super) fn pixel_format(sps: &Sps, full_range: bool, rgb: bool, codec: VideoCodec) -> Res<&'static str> {
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
pub(super) fn frame_rate(track: &Track, timescale: u32) -> Res<String> {
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

pub(super) fn gcd(mut a: u32, mut b: u32) -> u32 {
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
pub(super) fn rotation(m: &[i32; 9]) -> Res<u32> {
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

pub(super) fn describe_audio(track: &Track) -> Res<(AudioInfo, (String, String))> {
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

pub(super) const CRC32_TABLE: [u32; 256] = {
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

pub(super) fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC32_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// ffprobe's `extradata_hash` with `-show_data_hash CRC32`.
pub(super) fn extradata_hash(extradata: &[u8]) -> String {
    format!("CRC32:{:08x}", crc32(extradata))
}
