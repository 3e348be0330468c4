//! Unit tests of the native reader on synthetic files and mutated parameter sets.

use super::codec::*;
use super::header::*;
use super::tables::*;
use super::testfile::*;
use super::*;
use std::io::Cursor as IoCursor;

/// The SPS NAL unit libx264 (`-profile:v high444 -pix_fmt yuv444p`) writes for
/// 96x54: High 4:4:4 Predictive, so it has the chroma format and bit-depth fields.
const H264_SPS_444_96X54: &[u8] = &[
    0x67, 0xf4, 0x00, 0x0a, 0x91, 0x96, 0x86, 0x27, 0xe2, 0xf0, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03,
    0x00, 0x3c, 0x0f, 0x12, 0x26, 0xa0,
];
/// The SPS NAL unit libx265 (`-preset ultrafast`) writes into `hvcC` for 96x54
/// (coded 96x56, conformance window 2 rows), 4:2:0 8-bit.
const HEVC_SPS_96X54: &[u8] = &[
    0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x1e, 0xa0,
    0x30, 0x81, 0x07, 0xcd, 0x96, 0x56, 0x54, 0xa4, 0xc2, 0xf0, 0x16, 0x80, 0x80, 0x00, 0x00, 0x03, 0x00, 0x80, 0x00,
    0x00, 0x0f, 0x04,
];

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
    assert_eq!(sps, Sps { chroma_format_idc: 1, bit_depth: 8, width: 96, height: 54, full_range: None, matrix: None });
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
        super::testfile::mutate(&mut bytes, &mut seed);
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
