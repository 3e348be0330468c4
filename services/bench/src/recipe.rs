//! The bare-ffmpeg contenders: the commands a person would run by hand.
//!
//! The re-encode ones use the same filter graph and x264/AAC settings as reel's
//! `normalize_clip` (docs/MEDIA.md), taken from reel-media itself
//! (`EncodeTarget::filter_chains`, `EncodeTarget::encoder_args`), never re-typed here;
//! [`compare_with_reel`] still checks them against the commands reel really ran
//! (captured through the ffmpeg wrapper), which also covers the arguments around them.

use reel_events::ClipInfo;
use reel_media::{EncodeTarget, MediaConfig, ProbeLimits};
use std::path::{Path, PathBuf};

fn s(list: &[&str]) -> Vec<String> {
    list.iter().map(|x| x.to_string()).collect()
}

/// How the bench probes clips and reels: reel's defaults, without the per-clip duration
/// bound (a reel is as long as all its clips).
pub fn probe_config() -> MediaConfig {
    MediaConfig::default().set_limits(ProbeLimits::default().set_max_duration_seconds(f64::INFINITY))
}

/// reel's per-clip graph (outputs `[v]` and `[a]`).
pub fn normalize_graph(info: &ClipInfo, t: &EncodeTarget) -> String {
    let (v, a) = t.filter_chains(info, 0, "v", "a");
    format!("{v};{a}")
}

/// Everything after the graph up to the output: maps, then reel's x264, AAC and muxer
/// arguments.
pub fn encoder_args(t: &EncodeTarget) -> Vec<String> {
    let mut a = s(&["-map", "[v]", "-map", "[a]"]);
    a.extend(t.encoder_args());
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
        let (v, au) = t.filter_chains(info, i, &format!("v{i}"), &format!("a{i}"));
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
            "[0:V:0]fps=30,scale=w=1080:h=1920:force_original_aspect_ratio=decrease:force_divisible_by=2:out_range=tv,\
             pad=w=1080:h=1920:x=(ow-iw)/2:y=(oh-ih)/2:color=black,setsar=1,format=yuv420p,\
             setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709,\
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
