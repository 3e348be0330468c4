//! Zero-copy assembly against the real ffmpeg: every join either decodes to exactly the
//! clips' frames, in order, with audio and video ending together, or is declined with a
//! reason and writes nothing.

use reel_media::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A test clip: `testsrc2` (+ `sine`), x264 with `x264` settings, then `extra` muxer options.
fn clip(dir: &Path, name: &str, seconds: f64, audio: bool, x264: &[&str], extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=320x240:rate=30:duration={seconds}"));
    if audio {
        cmd.args(["-f", "lavfi", "-i"]).arg(format!("sine=frequency=440:sample_rate=48000:duration={seconds}"));
    }
    cmd.args(["-c:v", "libx264", "-pix_fmt", "yuv420p"]).args(x264);
    if audio {
        cmd.args(["-c:a", "aac", "-ac", "2"]);
    }
    cmd.args(extra).arg(&out);
    let st = cmd.status().unwrap();
    assert!(st.success(), "ffmpeg could not make {name}");
    out
}

/// Stream copy of `input` with other muxer options.
fn remux(input: &Path, output: &Path, extra: &[&str]) -> PathBuf {
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-i"])
        .arg(input)
        .args(["-c", "copy"])
        .args(extra)
        .arg(output)
        .status()
        .unwrap();
    assert!(st.success(), "remux to {}", output.display());
    output.to_path_buf()
}

/// The md5 of every decoded video frame, in order (`-f framemd5`, timestamps ignored).
fn frame_hashes(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
        .collect()
}

/// `(video seconds, audio seconds)` as ffprobe reports the streams, and the format's.
fn durations(path: &Path) -> (f64, Option<f64>, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type,duration:format=duration", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |kind: &str| {
        v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["codec_type"] == kind)
            .map(|s| s["duration"].as_str().unwrap().parse::<f64>().unwrap())
    };
    (of("video").unwrap(), of("audio"), v["format"]["duration"].as_str().unwrap().parse().unwrap())
}

/// `ffmpeg -v error -i path -f null -` output: empty for a sound file.
fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rotation(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream_side_data=rotation", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Joins `clips` and checks everything a user would: the reel decodes without a word
/// from ffmpeg, its frames are the clips' frames in order, its audio and video end
/// within a frame of each other, and it lasts as long as the clips together. The same
/// holds for the whole-file layout (the header, then the clip files as they are: what
/// Cloud Storage compose makes).
fn assert_joined_exactly(dir: &Path, name: &str, clips: &[PathBuf]) -> PathBuf {
    let out = dir.join(format!("{name}.reel.mp4"));
    let result = block(assemble_copy(clips, &out, &RunOptions::new())).unwrap();
    let Assembled::Written { size_bytes } = result else { panic!("{name}: declined: {result:?}") };
    assert_eq!(size_bytes, std::fs::metadata(&out).unwrap().len(), "{name}");
    let media: u64 = clips.iter().map(|c| std::fs::metadata(c).unwrap().len()).sum();
    assert!(size_bytes <= media, "{name}: the reel ({size_bytes}) is larger than its clips ({media})");
    assert_same_frames_as_the_clips(name, &out, clips);

    let readers = clips
        .iter()
        .map(|c| {
            let file = std::fs::File::open(c).unwrap();
            let len = file.metadata().unwrap().len();
            (file, len)
        })
        .collect();
    let mut whole = reel_media::whole_file_assembly_header(readers).unwrap_or_else(|why| panic!("{name}: {why}"));
    for c in clips {
        whole.extend_from_slice(&std::fs::read(c).unwrap());
    }
    let whole_path = dir.join(format!("{name}.whole.mp4"));
    std::fs::write(&whole_path, &whole).unwrap();
    assert_same_frames_as_the_clips(&format!("{name} (whole files)"), &whole_path, clips);
    let info = reel_media::read_headers(std::io::Cursor::new(&whole), whole.len() as u64).unwrap();
    assert!((info.duration_seconds - durations(&out).2).abs() < 0.01, "{name}: {info:?}");
    out
}

fn assert_same_frames_as_the_clips(name: &str, reel: &Path, clips: &[PathBuf]) {
    let errors = decode_errors(reel);
    assert!(errors.is_empty(), "{name}: decode errors: {}", &errors[..errors.len().min(600)]);
    let expected: Vec<String> = clips.iter().flat_map(|c| frame_hashes(c)).collect();
    let got = frame_hashes(reel);
    assert_eq!(got.len(), expected.len(), "{name}: frame count");
    assert!(got == expected, "{name}: frames differ from the clips'");

    let (video, audio, total) = durations(reel);
    let clip_total: f64 = clips.iter().map(|c| durations(c).0).sum();
    assert!((video - clip_total).abs() < 0.5 / 30.0, "{name}: video {video} s, clips' video {clip_total} s");
    if let Some(audio) = audio {
        assert!((audio - video).abs() <= 1.0 / 30.0, "{name}: audio {audio} s, video {video} s");
    }
    assert!((total - video).abs() <= 1.0 / 30.0, "{name}: reel {total} s, video {video} s");
}

fn assert_declined(dir: &Path, name: &str, clips: &[PathBuf], because: &str) {
    let out = dir.join(format!("{name}.reel.mp4"));
    match block(assemble_copy(clips, &out, &RunOptions::new())).unwrap() {
        Assembled::Declined { reason } => assert!(reason.contains(because), "{name}: declined because {reason:?}"),
        other => panic!("{name}: expected a decline ({because}), got {other:?}"),
    }
    assert!(!out.exists(), "{name}: a declined join wrote its output");
}

#[test]
fn clips_from_ffmpegs_muxers_join_frame_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // B-frames (veryfast uses 3), so both tracks carry edit lists: the video's for the
    // composition delay, the audio's for AAC priming and padding. One clip has its moov
    // at the end, one is fast-start; the lengths are not whole AAC frames.
    let bframes = ["-preset", "veryfast"];
    let a = clip(d, "a.mp4", 1.0, true, &bframes, &[]);
    let b = clip(d, "b.mp4", 1.3, true, &bframes, &["-movflags", "+faststart"]);
    let c = clip(d, "c.mp4", 0.7, true, &bframes, &[]);
    assert_joined_exactly(d, "b-frames", &[a.clone(), b.clone(), c.clone(), a.clone()]);

    // QuickTime (.mov, 'qt  ' brand, audio in a 'wave' box).
    let qa = remux(&a, &d.join("a.mov"), &[]);
    let qb = remux(&b, &d.join("b.mov"), &[]);
    let reel = assert_joined_exactly(d, "quicktime", &[qa, qb]);
    assert!(std::fs::read(&reel).unwrap()[8..12] == *b"qt  ", "the reel keeps the QuickTime brand");

    // A phone clip: rotation is the track's display matrix, kept.
    let ra = remux(&a, &d.join("ra.mp4"), &["-metadata:s:v:0", "rotate=90"]);
    let rb = remux(&c, &d.join("rb.mp4"), &["-metadata:s:v:0", "rotate=90"]);
    let reel = assert_joined_exactly(d, "rotated", &[ra, rb]);
    assert_eq!(rotation(&reel), rotation(&d.join("ra.mp4")));
    assert!(!rotation(&reel).is_empty());

    // Video only, and without B-frames (no composition offsets).
    let sa = clip(d, "sa.mp4", 1.0, false, &["-preset", "ultrafast"], &[]);
    let sb = clip(d, "sb.mp4", 0.5, false, &["-preset", "ultrafast"], &[]);
    assert_joined_exactly(d, "silent", &[sa, sb]);

    // Negative composition offsets ('ctts' version 1), as other muxers write them.
    let na = remux(&a, &d.join("na.mp4"), &["-movflags", "+negative_cts_offsets"]);
    let nb = remux(&b, &d.join("nb.mp4"), &["-movflags", "+negative_cts_offsets"]);
    assert_joined_exactly(d, "negative-cts", &[na, nb]);
}

#[test]
fn segments_of_a_reencode_join_frame_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let target = EncodeTarget::new(reel_events::Orientation::Square, reel_events::Compression::Small);
    let config = MediaConfig::default();
    let mut segments = Vec::new();
    for (i, seconds) in [1.0, 0.6, 1.4].into_iter().enumerate() {
        let src = clip(d, &format!("src{i}.mp4"), seconds, i != 1, &["-preset", "ultrafast"], &[]);
        let info = block(probe(&config, &src)).unwrap();
        let seg = d.join(format!("seg{i}.mp4"));
        block(normalize_clip(&config, &src, &info, &target, &seg, &RunOptions::new(), &mut |_| {})).unwrap();
        segments.push(seg);
    }
    assert_joined_exactly(d, "segments", &segments);
}

#[test]
fn what_it_cannot_join_exactly_is_declined_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = clip(d, "a.mp4", 1.0, true, &["-preset", "veryfast"], &[]);
    let b = clip(d, "b.mp4", 1.0, true, &["-preset", "veryfast"], &[]);

    // Other H.264 headers (ultrafast: no CABAC, no B-frames): one sample description
    // per track cannot describe both.
    let other = clip(d, "other.mp4", 1.0, true, &["-preset", "ultrafast"], &[]);
    assert_declined(d, "other-sps", &[a.clone(), other], "sample description");

    let frag = remux(&b, &d.join("frag.mp4"), &["-movflags", "frag_keyframe+empty_moov"]);
    assert_declined(d, "fragmented", &[a.clone(), frag], "fragmented");

    let silent = clip(d, "silent.mp4", 1.0, false, &["-preset", "veryfast"], &[]);
    assert_declined(d, "no-audio", &[a.clone(), silent], "other tracks");

    // Without edit lists the B-frame delay shows as a gap the reel could not repeat.
    let no_edits = remux(&b, &d.join("noedit.mp4"), &["-use_editlist", "0"]);
    assert_declined(d, "no-edit-list", &[a.clone(), no_edits], "edit");

    // Audio longer than video by more than a frame.
    let long_audio = d.join("long-audio.mp4");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=1"])
        .args(["-f", "lavfi", "-i", "sine=sample_rate=48000:duration=1.5"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2"])
        .arg(&long_audio)
        .status()
        .unwrap();
    assert!(st.success());
    assert_declined(d, "av-apart", &[long_audio, a.clone()], "apart");

    let junk = d.join("junk.mp4");
    std::fs::write(&junk, b"not a video").unwrap();
    assert_declined(d, "junk", &[a.clone(), junk], "clip 2");

    let listing: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(listing.iter().all(|n| !n.to_string_lossy().starts_with('.')), "temporaries left: {listing:?}");
}
