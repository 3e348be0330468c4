//! `plan`: stream copy or re-encode, and with which settings.

use crate::probe::is_mov_family;
use reel_events::{ClipInfo, Compression, Mode, Orientation};
use serde::Serialize;

/// Output frame rate of every re-encode.
pub const TARGET_FPS: u32 = 30;
/// Output audio sample rate of every re-encode (always stereo AAC).
pub const TARGET_SAMPLE_RATE: u32 = 48_000;

/// The decision for one reel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Copy (concat demuxer, `-c copy`) or re-encode every clip.
    pub mode: Mode,
    /// Why, in words, for logs and the job record.
    pub reason: String,
    /// The encode settings; `Some` exactly when `mode == Reencode`.
    pub target: Option<EncodeTarget>,
}

/// What every normalised segment looks like. Segments made with the same target
/// can be joined by [`concat_copy`](crate::concat_copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncodeTarget {
    /// Output width in pixels (even).
    pub width: u32,
    /// Output height in pixels (even).
    pub height: u32,
    /// Output frame rate (30).
    pub fps: u32,
    /// Output audio sample rate (48000), stereo.
    pub sample_rate: u32,
    /// libx264 `-preset`.
    pub preset: &'static str,
    /// libx264 `-crf`.
    pub crf: u8,
    /// AAC bitrate in kbit/s.
    pub audio_bitrate_k: u32,
}

impl EncodeTarget {
    /// The target for `orientation` (its `dimensions()`) and `compression`:
    ///
    /// | compression    | preset   | crf | audio   |
    /// |----------------|----------|-----|---------|
    /// | `original`     | veryfast | 18  | 192k    |
    /// | `optimized`    | veryfast | 23  | 128k    |
    /// | `high_quality` | medium   | 18  | 192k    |
    /// | `small`        | veryfast | 28  | 96k     |
    pub fn new(orientation: Orientation, compression: Compression) -> Self {
        let (width, height) = orientation.dimensions();
        let (preset, crf, audio_bitrate_k) = match compression {
            Compression::Original => ("veryfast", 18, 192),
            Compression::Optimized => ("veryfast", 23, 128),
            Compression::HighQuality => ("medium", 18, 192),
            Compression::Small => ("veryfast", 28, 96),
        };
        Self { width, height, fps: TARGET_FPS, sample_rate: TARGET_SAMPLE_RATE, preset, crf, audio_bitrate_k }
    }
}

/// Decides between stream copy and re-encode for `clips` (in reel order).
///
/// Copy only when `compression.allows_stream_copy()` and every clip matches the
/// first exactly on: container family (mp4/mov), video codec (h264 or hevc), coded
/// width × height, pix_fmt, frame rate, time base, rotation; and all clips have an
/// AAC audio track with the same sample rate, channels, layout and time base (a reel
/// always has audio, so clips without any audio are re-encoded to get a silent track);
/// and the displayed aspect is the requested `orientation`. Otherwise re-encode with
/// [`EncodeTarget::new`].
pub fn plan(clips: &[ClipInfo], orientation: Orientation, compression: Compression) -> Plan {
    match copy_blocker(clips, orientation, compression) {
        None => {
            let first = &clips[0];
            let v = &first.video;
            let a = first.audio.as_ref().expect("checked: all clips have audio");
            let (dw, dh) = v.display_size();
            Plan {
                mode: Mode::Copy,
                reason: format!(
                    "all {} clip(s) are {} {}x{} {} at {} fps (displayed {}x{}, {}) with {} {} Hz {} audio: stream copy",
                    clips.len(),
                    v.codec,
                    v.width,
                    v.height,
                    v.pix_fmt,
                    v.frame_rate,
                    dw,
                    dh,
                    orientation,
                    a.codec,
                    a.sample_rate,
                    layout_or_channels(&a.channel_layout, a.channels),
                ),
                target: None,
            }
        }
        Some(why) => Plan {
            mode: Mode::Reencode,
            reason: format!("{why}: re-encode"),
            target: Some(EncodeTarget::new(orientation, compression)),
        },
    }
}

fn layout_or_channels(layout: &str, channels: u32) -> String {
    if layout.is_empty() {
        format!("{channels}-channel")
    } else {
        layout.to_string()
    }
}

/// The first reason stream copy is impossible, or `None` when it is possible.
fn copy_blocker(clips: &[ClipInfo], orientation: Orientation, compression: Compression) -> Option<String> {
    if !compression.allows_stream_copy() {
        return Some(format!("compression {compression} always re-encodes"));
    }
    let Some(first) = clips.first() else {
        return Some("no clips".into());
    };

    // Properties of the first clip that make it copyable at all.
    let v1 = &first.video;
    if !is_mov_family(&first.container) {
        return Some(format!("clip 1 is in a {} container, not mp4/mov", first.container));
    }
    if v1.codec != "h264" && v1.codec != "hevc" {
        return Some(format!("clip 1 is {} video, not h264/hevc", v1.codec));
    }
    if clips.iter().all(|c| c.audio.is_none()) {
        return Some("no clip has audio and a reel needs an audio track".into());
    }
    let (dw, dh) = v1.display_size();
    let shown = Orientation::closest_to(dw, dh);
    if shown != orientation {
        return Some(format!("the clips are {shown} (displayed {dw}x{dh}) but the reel is {orientation}"));
    }

    for (i, c) in clips.iter().enumerate().skip(1) {
        let n = i + 1;
        let v = &c.video;
        if !is_mov_family(&c.container) {
            return Some(format!("clip {n} is in a {} container, not mp4/mov", c.container));
        }
        let checks: [(&str, String, String); 5] = [
            ("video codec", v.codec.clone(), v1.codec.clone()),
            ("", format!("{}x{}", v.width, v.height), format!("{}x{}", v1.width, v1.height)),
            ("pixel format", v.pix_fmt.clone(), v1.pix_fmt.clone()),
            ("frame rate", v.frame_rate.clone(), v1.frame_rate.clone()),
            ("video time base", v.time_base.clone(), v1.time_base.clone()),
        ];
        for (what, mine, theirs) in checks {
            if mine != theirs {
                return Some(if what.is_empty() {
                    format!("clip {n} is {mine}, clip 1 is {theirs}")
                } else {
                    format!("clip {n} has {what} {mine}, clip 1 has {theirs}")
                });
            }
        }
        if v.rotation != v1.rotation {
            return Some(format!("clip {n} is rotated {}°, clip 1 is rotated {}°", v.rotation, v1.rotation));
        }
    }

    for (i, c) in clips.iter().enumerate() {
        let n = i + 1;
        let Some(a) = &c.audio else {
            return Some(format!("clip {n} has no audio"));
        };
        if a.codec != "aac" {
            return Some(format!("clip {n} has {} audio, not aac", a.codec));
        }
        let Some(a1) = first.audio.as_ref() else {
            return Some("clip 1 has no audio".into());
        };
        if a.sample_rate != a1.sample_rate {
            return Some(format!("clip {n} has {} Hz audio, clip 1 has {} Hz", a.sample_rate, a1.sample_rate));
        }
        if a.channels != a1.channels || a.channel_layout != a1.channel_layout {
            return Some(format!(
                "clip {n} has {} audio, clip 1 has {}",
                layout_or_channels(&a.channel_layout, a.channels),
                layout_or_channels(&a1.channel_layout, a1.channels)
            ));
        }
        if a.time_base != a1.time_base {
            return Some(format!("clip {n} has audio time base {}, clip 1 has {}", a.time_base, a1.time_base));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::{AudioInfo, VideoInfo};

    fn clip(w: u32, h: u32) -> ClipInfo {
        ClipInfo {
            duration_seconds: 2.0,
            container: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            video: VideoInfo {
                codec: "h264".into(),
                width: w,
                height: h,
                pix_fmt: "yuv420p".into(),
                frame_rate: "30/1".into(),
                time_base: "1/15360".into(),
                rotation: 0,
            },
            audio: Some(AudioInfo {
                codec: "aac".into(),
                sample_rate: 48000,
                channels: 2,
                channel_layout: "stereo".into(),
                time_base: "1/48000".into(),
            }),
        }
    }

    #[test]
    fn identical_portrait_clips_copy() {
        let clips = vec![clip(1080, 1920); 3];
        for c in [Compression::Original, Compression::Optimized] {
            let p = plan(&clips, Orientation::Portrait, c);
            assert_eq!(p.mode, Mode::Copy, "{}", p.reason);
            assert!(p.target.is_none());
            assert!(p.reason.contains("stream copy"), "{}", p.reason);
        }
    }

    #[test]
    fn quality_presets_always_reencode() {
        let clips = vec![clip(1080, 1920); 2];
        let p = plan(&clips, Orientation::Portrait, Compression::HighQuality);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("high_quality"), "{}", p.reason);
        let t = p.target.unwrap();
        assert_eq!((t.width, t.height, t.preset, t.crf, t.audio_bitrate_k), (1080, 1920, "medium", 18, 192));
        let p = plan(&clips, Orientation::Portrait, Compression::Small);
        assert_eq!(p.mode, Mode::Reencode);
        let t = p.target.unwrap();
        assert_eq!((t.preset, t.crf, t.audio_bitrate_k, t.fps, t.sample_rate), ("veryfast", 28, 96, 30, 48000));
    }

    #[test]
    fn preset_table() {
        let t = EncodeTarget::new(Orientation::Landscape, Compression::Original);
        assert_eq!((t.width, t.height, t.preset, t.crf, t.audio_bitrate_k), (1920, 1080, "veryfast", 18, 192));
        let t = EncodeTarget::new(Orientation::Square, Compression::Optimized);
        assert_eq!((t.width, t.height, t.preset, t.crf, t.audio_bitrate_k), (1080, 1080, "veryfast", 23, 128));
    }

    #[test]
    fn size_mismatch_reencodes_with_reason() {
        let clips = vec![clip(1080, 1920), clip(1280, 720)];
        let p = plan(&clips, Orientation::Portrait, Compression::Optimized);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("clip 2 is 1280x720, clip 1 is 1080x1920"), "{}", p.reason);
        assert_eq!(p.target.unwrap().width, 1080);
    }

    #[test]
    fn wrong_orientation_reencodes() {
        let clips = vec![clip(1920, 1080); 2];
        let p = plan(&clips, Orientation::Portrait, Compression::Original);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("landscape"), "{}", p.reason);
        // ...but the same clips copy into a landscape reel.
        assert_eq!(plan(&clips, Orientation::Landscape, Compression::Original).mode, Mode::Copy);
    }

    #[test]
    fn rotated_phone_clips_are_portrait() {
        let mut c = clip(1920, 1080);
        c.video.rotation = 90;
        let clips = vec![c.clone(), c.clone()];
        assert_eq!(plan(&clips, Orientation::Portrait, Compression::Optimized).mode, Mode::Copy);
        let mut other = c.clone();
        other.video.rotation = 270;
        let p = plan(&[c, other], Orientation::Portrait, Compression::Optimized);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("rotated"), "{}", p.reason);
    }

    #[test]
    fn audio_rules() {
        let mut silent = clip(1080, 1920);
        silent.audio = None;
        let p = plan(&[silent.clone(), silent.clone()], Orientation::Portrait, Compression::Original);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("no clip has audio"), "{}", p.reason);

        let p = plan(&[clip(1080, 1920), silent], Orientation::Portrait, Compression::Original);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("clip 2 has no audio"), "{}", p.reason);

        let mut other_rate = clip(1080, 1920);
        other_rate.audio.as_mut().unwrap().sample_rate = 44100;
        let p = plan(&[clip(1080, 1920), other_rate], Orientation::Portrait, Compression::Original);
        assert_eq!(p.mode, Mode::Reencode);
        assert!(p.reason.contains("44100"), "{}", p.reason);

        let mut mp3 = clip(1080, 1920);
        mp3.audio.as_mut().unwrap().codec = "mp3".into();
        let p = plan(&[mp3.clone(), mp3], Orientation::Portrait, Compression::Original);
        assert_eq!(p.mode, Mode::Reencode);
    }

    #[test]
    fn other_mismatches() {
        let base = clip(1080, 1920);
        type Tweak = fn(&mut ClipInfo);
        let tweaks: [(&str, Tweak); 7] = [
            ("container", |c| c.container = "matroska,webm".into()),
            ("codec", |c| c.video.codec = "vp9".into()),
            ("pixel format", |c| c.video.pix_fmt = "yuv420p10le".into()),
            ("frame rate", |c| c.video.frame_rate = "60/1".into()),
            ("time base", |c| c.video.time_base = "1/600".into()),
            ("stereo", |c| {
                let a = c.audio.as_mut().unwrap();
                a.channels = 1;
                a.channel_layout = "mono".into();
            }),
            ("audio time base", |c| c.audio.as_mut().unwrap().time_base = "1/44100".into()),
        ];
        for (what, tweak) in tweaks {
            let mut other = base.clone();
            tweak(&mut other);
            let p = plan(&[base.clone(), other], Orientation::Portrait, Compression::Optimized);
            assert_eq!(p.mode, Mode::Reencode, "{what}");
            assert!(p.reason.contains("clip 2"), "{what}: {}", p.reason);
        }
        // hevc copies like h264.
        let mut hevc = base.clone();
        hevc.video.codec = "hevc".into();
        assert_eq!(plan(&[hevc.clone(), hevc], Orientation::Portrait, Compression::Optimized).mode, Mode::Copy);
    }

    #[test]
    fn no_clips_reencodes() {
        let p = plan(&[], Orientation::Square, Compression::Optimized);
        assert_eq!(p.mode, Mode::Reencode);
        assert_eq!(p.reason, "no clips: re-encode");
    }
}
