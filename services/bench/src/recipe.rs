//! The bare-ffmpeg contenders: the commands a person would run by hand.
//!
//! The re-encode ones use the same filter graph and x264/AAC settings as reel's
//! `normalize_clip` (services/media/src/encode.rs, docs/MEDIA.md), rebuilt here from
//! `reel_media::EncodeTarget`; [`compare_with_reel`] checks them against the commands
//! reel really ran (captured through the ffmpeg wrapper) so that drift is caught.

use reel_events::ClipInfo;
use reel_media::EncodeTarget;
use std::path::{Path, PathBuf};

fn s(list: &[&str]) -> Vec<String> {
    list.iter().map(|x| x.to_string()).collect()
}

/// Frames and audio samples of a normalised segment (as reel's `segment_length`).
pub fn segment_length(seconds: f64, fps: u32, sample_rate: u32) -> (u64, u64) {
    let frames = ((seconds * fps as f64).round() as u64).max(1);
    let samples = (frames as u128 * sample_rate as u128 / fps as u128) as u64;
    (frames, samples)
}

/// The video and audio chains of one input, reading `[{i}:V:0]` / `[{i}:a:0]` and
/// writing `[{v}]` / `[{a}]`.
fn chains(i: usize, info: &ClipInfo, t: &EncodeTarget, v: &str, a: &str) -> (String, String) {
    let (frames, samples) = segment_length(info.duration_seconds, t.fps, t.sample_rate);
    let (w, h, fps, sr) = (t.width, t.height, t.fps, t.sample_rate);
    let video = format!(
        "[{i}:V:0]fps={fps},scale=w={w}:h={h}:force_original_aspect_ratio=decrease:force_divisible_by=2,\
         pad=w={w}:h={h}:x=(ow-iw)/2:y=(oh-ih)/2:color=black,setsar=1,format=yuv420p,\
         tpad=stop_mode=clone:stop=-1,trim=end_frame={frames}[{v}]"
    );
    let audio = if info.audio.is_some() {
        format!(
            "[{i}:a:0]aresample={sr}:async=1:first_pts=0,\
             aformat=sample_fmts=fltp:sample_rates={sr}:channel_layouts=stereo,\
             apad,atrim=end_sample={samples}[{a}]"
        )
    } else {
        format!("anullsrc=channel_layout=stereo:sample_rate={sr},atrim=end_sample={samples}[{a}]")
    };
    (video, audio)
}

/// reel's per-clip graph (outputs `[v]` and `[a]`).
pub fn normalize_graph(info: &ClipInfo, t: &EncodeTarget) -> String {
    let (v, a) = chains(0, info, t, "v", "a");
    format!("{v};{a}")
}

/// Everything after the graph up to the output: maps, x264, AAC, muxer (as reel).
pub fn encoder_args(t: &EncodeTarget) -> Vec<String> {
    let mut a = s(&["-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", t.preset, "-crf"]);
    a.push(t.crf.to_string());
    a.extend(s(&["-profile:v", "high", "-pix_fmt", "yuv420p", "-g"]));
    a.push((t.fps * 2).to_string());
    a.extend(s(&["-x264-params", "stitchable=1", "-c:a", "aac", "-b:a"]));
    a.push(format!("{}k", t.audio_bitrate_k));
    a.push("-ar".into());
    a.push(t.sample_rate.to_string());
    a.extend(s(&[
        "-ac",
        "2",
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        "-max_muxing_queue_size",
        "4096",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
    ]));
    a
}

const QUIET: &[&str] = &["-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-y"];

/// Bare ffmpeg: one clip to one segment, reel's graph and settings.
pub fn normalize_args(input: &Path, info: &ClipInfo, t: &EncodeTarget, out: &Path) -> Vec<String> {
    let mut a = s(QUIET);
    a.extend(["-i".into(), input.display().to_string(), "-filter_complex".into(), normalize_graph(info, t)]);
    a.extend(encoder_args(t));
    a.push(out.display().to_string());
    a
}

/// The concat-demuxer list for `inputs` (absolute paths, quoted as reel quotes them).
pub fn concat_list(inputs: &[PathBuf]) -> String {
    let mut list = String::from("ffconcat version 1.0\n");
    for p in inputs {
        list.push_str(&format!("file '{}'\n", p.display().to_string().replace('\'', "'\\''")));
    }
    list
}

/// Bare ffmpeg: `-f concat -safe 0 -i LIST -c copy -movflags +faststart OUT` (the
/// issue's floor; for segments also `-map 0:v:0 -map 0:a:0`, as reel).
pub fn concat_args(list: &Path, out: &Path, map: bool) -> Vec<String> {
    let mut a = s(QUIET);
    a.extend(s(&["-f", "concat", "-safe", "0", "-i"]));
    a.push(list.display().to_string());
    if map {
        a.extend(s(&["-map", "0:v:0", "-map", "0:a:0"]));
    }
    a.extend(s(&["-c", "copy", "-movflags", "+faststart", "-f", "mp4"]));
    a.push(out.display().to_string());
    a
}

/// The single-command reference: every clip through reel's chains, the `concat`
/// filter, one encode with reel's settings.
pub fn filter_complex_args(inputs: &[(PathBuf, ClipInfo)], t: &EncodeTarget, out: &Path) -> Vec<String> {
    let mut a = s(QUIET);
    let mut graph = Vec::new();
    let mut pads = String::new();
    for (i, (path, info)) in inputs.iter().enumerate() {
        a.extend(["-i".into(), path.display().to_string()]);
        let (v, au) = chains(i, info, t, &format!("v{i}"), &format!("a{i}"));
        graph.push(v);
        graph.push(au);
        pads.push_str(&format!("[v{i}][a{i}]"));
    }
    graph.push(format!("{pads}concat=n={}:v=1:a=1[v][a]", inputs.len()));
    a.extend(["-filter_complex".into(), graph.join(";")]);
    a.extend(encoder_args(t));
    a.push(out.display().to_string());
    a
}

/// The part of a normalise command that decides the work: from `-filter_complex` up to
/// (not including) the output. `None` when there is no `-filter_complex`.
pub fn work_part(args: &[String]) -> Option<&[String]> {
    let i = args.iter().position(|a| a == "-filter_complex")?;
    Some(&args[i..args.len().saturating_sub(1)])
}

/// Compares the bench's normalise commands with reel's (in order). Returns `Ok(n)` when
/// all `n` match, or a description of the first difference.
pub fn compare_with_reel(ours: &[Vec<String>], reels: &[Vec<String>]) -> Result<usize, String> {
    if ours.len() != reels.len() {
        return Err(format!("reel ran {} normalise command(s), the bench {}", reels.len(), ours.len()));
    }
    for (i, (o, r)) in ours.iter().zip(reels).enumerate() {
        let (Some(o), Some(r)) = (work_part(o), work_part(r)) else {
            return Err(format!("command {} has no -filter_complex", i + 1));
        };
        if o != r {
            let at = o.iter().zip(r).position(|(a, b)| a != b).unwrap_or(o.len().min(r.len()));
            return Err(format!(
                "clip {}: argument {} differs: bench {:?}, reel {:?}",
                i + 1,
                at,
                o.get(at).map(String::as_str).unwrap_or("<end>"),
                r.get(at).map(String::as_str).unwrap_or("<end>")
            ));
        }
    }
    Ok(ours.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::{AudioInfo, Compression, Orientation, VideoInfo};

    fn info(audio: bool) -> ClipInfo {
        ClipInfo {
            duration_seconds: 2.0,
            container: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            video: VideoInfo {
                codec: "h264".into(),
                width: 320,
                height: 240,
                pix_fmt: "yuv420p".into(),
                frame_rate: "25/1".into(),
                time_base: "1/12800".into(),
                rotation: 0,
            },
            audio: audio.then(|| AudioInfo {
                codec: "aac".into(),
                sample_rate: 44100,
                channels: 1,
                channel_layout: "mono".into(),
                time_base: "1/44100".into(),
            }),
        }
    }

    #[test]
    fn graph_matches_the_documented_recipe() {
        let t = EncodeTarget::new(Orientation::Portrait, Compression::Optimized);
        assert_eq!(
            normalize_graph(&info(true), &t),
            "[0:V:0]fps=30,scale=w=1080:h=1920:force_original_aspect_ratio=decrease:force_divisible_by=2,\
             pad=w=1080:h=1920:x=(ow-iw)/2:y=(oh-ih)/2:color=black,setsar=1,format=yuv420p,\
             tpad=stop_mode=clone:stop=-1,trim=end_frame=60[v];\
             [0:a:0]aresample=48000:async=1:first_pts=0,\
             aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo,apad,atrim=end_sample=96000[a]"
        );
        assert!(normalize_graph(&info(false), &t)
            .ends_with("anullsrc=channel_layout=stereo:sample_rate=48000,atrim=end_sample=96000[a]"));
    }

    #[test]
    fn comparison_finds_the_difference() {
        let t = EncodeTarget::new(Orientation::Portrait, Compression::Optimized);
        let a = normalize_args(Path::new("/a.mp4"), &info(true), &t, Path::new("/o.mp4"));
        let mut b = a.clone();
        assert_eq!(compare_with_reel(std::slice::from_ref(&a), std::slice::from_ref(&b)), Ok(1));
        let crf = b.iter().position(|x| x == "-crf").unwrap() + 1;
        b[crf] = "18".into();
        assert!(compare_with_reel(&[a], &[b]).unwrap_err().contains("\"18\""));
    }

    #[test]
    fn list_quotes() {
        assert_eq!(concat_list(&[PathBuf::from("/x/it's.mp4")]), "ffconcat version 1.0\nfile '/x/it'\\''s.mp4'\n");
    }
}
