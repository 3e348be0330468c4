//! Builders of small synthetic MP4 files, for the reader's unit tests and the probe's bounds tests.

use super::tables::IDENTITY;

/// The `avcC` libx264 (`-preset ultrafast`, so constrained baseline) writes for
/// 96x54: 96x64 coded, cropped by 10 rows. ffprobe: `CRC32:85008759`.
pub(crate) const AVCC_96X54: &[u8] = &[
    0x01, 0x42, 0xc0, 0x0a, 0xff, 0xe1, 0x00, 0x17, 0x67, 0x42, 0xc0, 0x0a, 0xda, 0x18, 0x9f, 0x9b, 0x01, 0x10, 0x00,
    0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x22, 0x6a, 0x01, 0x00, 0x04, 0x68, 0xce, 0x0f, 0xc8,
];

pub(crate) const ASC_STEREO_48K: &[u8] = &[0x11, 0x90, 0x56, 0xe5, 0x00];

/// Overwrite 1 to 4 bytes of `bytes` at places (and with values) drawn from `seed`,
/// which moves on (xorshift): the hostile-header tests' mutation.
pub(crate) fn mutate(bytes: &mut [u8], seed: &mut u64) {
    for _ in 0..1 + (*seed % 4) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let at = (*seed % bytes.len() as u64) as usize;
        bytes[at] = match *seed >> 60 {
            0 => 0,
            1 => 1,
            2 => 0xff,
            _ => (*seed >> 32) as u8,
        };
    }
}

pub(crate) fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

pub(crate) fn full(kind: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![version, 0, 0, 0];
    p.extend_from_slice(payload);
    boxed(kind, &p)
}

pub(crate) fn matrix_bytes(m: [i32; 9]) -> Vec<u8> {
    m.iter().flat_map(|v| v.to_be_bytes()).collect()
}

pub(crate) fn tables(stsd: Vec<u8>, stts: &[(u32, u32)]) -> Vec<u8> {
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

pub(crate) fn trak(handler: &[u8; 4], timescale: u32, matrix: [i32; 9], stbl: Vec<u8>) -> Vec<u8> {
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

pub(crate) fn video_stsd(width: u16, height: u16, avcc: &[u8]) -> Vec<u8> {
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

pub(crate) fn audio_stsd(asc: &[u8]) -> Vec<u8> {
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
pub(crate) fn sample_file(rotation_matrix: [i32; 9]) -> Vec<u8> {
    file_with_video(rotation_matrix, video_stsd(96, 54, AVCC_96X54))
}

/// A 2.5 s faststart MP4 whose only h264 parameter set declares `width` × `height`
/// frames (multiples of 16) at 30 fps, with stereo AAC: a few hundred bytes that ask
/// for frames of any size. Its media data is a few zero bytes; only headers are real.
pub(crate) fn file_declaring_frames(width: u16, height: u16) -> Vec<u8> {
    let avcc = avcc_for_frames(width, height);
    file_with_video(IDENTITY, video_stsd(width, height, &avcc))
}

/// An `avcC` with one Constrained Baseline SPS for `width` × `height` (multiples of 16,
/// no cropping) and libx264's PPS.
pub(crate) fn avcc_for_frames(width: u16, height: u16) -> Vec<u8> {
    assert!(width.is_multiple_of(16) && height.is_multiple_of(16));
    let mut bits = Vec::new();
    let mut put = |value: u32, count: u32| {
        for i in (0..count).rev() {
            bits.push((value >> i) & 1 == 1);
        }
    };
    // Exp-Golomb: as many zeros as the significant bits of value + 1, less one, then it.
    let ue = |put: &mut dyn FnMut(u32, u32), value: u32| {
        let coded = value + 1;
        let len = 32 - coded.leading_zeros();
        put(0, len - 1);
        put(coded, len);
    };
    put(66, 8); // profile_idc: Baseline
    put(0xc0, 8); // constraint_set0/1: Constrained Baseline
    put(62, 8); // level_idc 6.2, the largest
    ue(&mut put, 0); // seq_parameter_set_id
    ue(&mut put, 0); // log2_max_frame_num_minus4
    ue(&mut put, 2); // pic_order_cnt_type
    ue(&mut put, 1); // max_num_ref_frames
    put(0, 1); // gaps_in_frame_num_value_allowed_flag
    ue(&mut put, u32::from(width / 16) - 1); // pic_width_in_mbs_minus1
    ue(&mut put, u32::from(height / 16) - 1); // pic_height_in_map_units_minus1
    put(0b110, 3); // frame_mbs_only, direct_8x8_inference, no frame_cropping
    put(0, 1); // no VUI
    put(1, 1); // rbsp_stop_one_bit
    let mut rbsp: Vec<u8> =
        bits.chunks(8).map(|c| c.iter().fold(0u8, |byte, &bit| byte << 1 | u8::from(bit)) << (8 - c.len())).collect();
    // Emulation prevention: no 00 00 0x (x <= 3) inside a NAL unit.
    let mut sps = vec![0x67];
    let mut zeros = 0;
    for byte in rbsp.drain(..) {
        if zeros >= 2 && byte <= 3 {
            sps.push(3);
            zeros = 0;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        sps.push(byte);
    }
    let pps = [0x68, 0xce, 0x0f, 0xc8];
    let mut avcc = vec![1, 66, 0xc0, 62, 0xff, 0xe1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend(sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(&pps);
    avcc
}

fn file_with_video(rotation_matrix: [i32; 9], video_stsd: Vec<u8>) -> Vec<u8> {
    let mut mvhd = vec![0u8; 8];
    mvhd.extend_from_slice(&1000u32.to_be_bytes());
    mvhd.extend_from_slice(&2500u32.to_be_bytes());
    mvhd.extend_from_slice(&[0u8; 16]);
    mvhd.extend(matrix_bytes(IDENTITY));
    mvhd.extend_from_slice(&[0u8; 28]);
    let mut moov = full(b"mvhd", 0, &mvhd);
    moov.extend(trak(b"vide", 15360, rotation_matrix, tables(video_stsd, &[(75, 512)])));
    moov.extend(trak(b"soun", 48000, IDENTITY, tables(audio_stsd(ASC_STEREO_48K), &[(117, 1024), (1, 832)])));
    let mut file = boxed(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41");
    file.extend(boxed(b"moov", &moov));
    file.extend(boxed(b"mdat", &[0u8; 64]));
    file
}
