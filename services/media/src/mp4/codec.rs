//! Layer 3: the codec configurations inside the sample entries: the one SPS of an `avcC`
//! / `hvcC` read as the h264 / hevc decoders read it, and the AAC AudioSpecificConfig of
//! an `esds`, bit by bit, every read bounded.

use super::boxes::Cursor;
use super::{decline, Res};

/// `hvcC` arrays and NAL counts in one config, each.
pub(super) const MAX_PARAMETER_SETS: usize = 64;

/// What the decoder learns from the SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sps {
    pub(super) chroma_format_idc: u32,
    pub(super) bit_depth: u32,
    pub(super) width: u32,
    pub(super) height: u32,
    /// The VUI `video_full_range_flag`, when `video_signal_type_present_flag` is set.
    pub(super) full_range: Option<bool>,
    /// The VUI `matrix_coefficients`, when `colour_description_present_flag` is set.
    pub(super) matrix: Option<u32>,
}

/// The one SPS NAL unit of an `avcC` box.
pub(super) fn avcc_sps(avcc: &[u8]) -> Res<&[u8]> {
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
pub(super) fn hvcc_sps(hvcc: &[u8]) -> Res<&[u8]> {
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
pub(super) fn unescape(payload: &[u8]) -> Vec<u8> {
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

pub(super) fn parse_h264_sps(nal: &[u8]) -> Res<Sps> {
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

pub(super) fn dimension(v: u64) -> Res<u32> {
    match u32::try_from(v) {
        Ok(v) if v > 0 && v <= 65535 => Ok(v),
        _ => decline(format!("frame dimension {v}")),
    }
}

pub(super) fn skip_scaling_list(b: &mut Bits<'_>, size: usize) -> Res<()> {
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
pub(super) fn vui_colour(b: &mut Bits<'_>) -> Res<(Option<bool>, Option<u32>)> {
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

pub(super) fn parse_hevc_sps(nal: &[u8]) -> Res<Sps> {
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

pub(super) fn skip_hevc_scaling_list_data(b: &mut Bits<'_>) -> Res<()> {
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

/// `(objectTypeIndication, DecoderSpecificInfo)`, read as libavformat's
/// `ff_mov_read_esds` does (sequentially, ignoring the outer descriptor lengths).
pub(super) fn parse_esds(body: &[u8]) -> Res<(u8, &[u8])> {
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
pub(super) struct AudioConfig {
    pub(super) sample_rate: u32,
    pub(super) channels: u32,
    pub(super) layout: &'static str,
}

pub(super) const AAC_SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// The AudioSpecificConfig of an AAC-LC stream, as the AAC decoder reads it
/// (libavcodec `ff_mpeg4audio_get_config_gb` with the sync-extension scan).
pub(super) fn parse_audio_specific_config(dsi: &[u8]) -> Res<AudioConfig> {
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

pub(super) fn aac_object_type(b: &mut Bits<'_>) -> Res<u32> {
    let t = b.bits(5)?;
    Ok(if t == 31 { 32 + b.bits(6)? } else { t })
}

/// MSB-first bit reads with Exp-Golomb codes; running out declines.
pub(super) struct Bits<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(super) fn left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    pub(super) fn bit(&mut self) -> Res<u32> {
        if self.left() == 0 {
            return decline("parameter set cut short");
        }
        let byte = self.data[self.pos / 8];
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    pub(super) fn bits(&mut self, n: u32) -> Res<u32> {
        debug_assert!(n <= 32);
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Ok(v as u32)
    }

    pub(super) fn peek(&self, n: u32) -> Res<u32> {
        let mut copy = Bits { data: self.data, pos: self.pos };
        copy.bits(n)
    }

    pub(super) fn skip(&mut self, n: usize) -> Res<()> {
        if self.left() < n {
            return decline("parameter set cut short");
        }
        self.pos += n;
        Ok(())
    }

    /// Unsigned Exp-Golomb, up to 32 significant bits.
    pub(super) fn ue(&mut self) -> Res<u32> {
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
    pub(super) fn se(&mut self) -> Res<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        Ok(v as i32)
    }
}
