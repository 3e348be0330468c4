//! The native MP4/MOV reader against the real ffprobe: for every file of a varied
//! corpus made with ffmpeg, the native answer must equal ffprobe's exactly (durations
//! within 1 ms), or the reader must decline. Hostile files must never panic it and
//! must still end as `Corrupt` when ffprobe says so.
//!
//! `cargo test -p reel-media --test native_probe -- --nocapture` prints which files
//! were read natively and why the others were declined.

use reel_events::ClipInfo;
use reel_media::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// `ffmpeg -v error -nostdin -y ARGS`; `Err(stderr)` on failure.
fn ffmpeg(args: &[String]) -> Result<(), String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn strings(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn video(rate: &str, size: &str) -> Vec<String> {
    vec!["-f".into(), "lavfi".into(), "-i".into(), format!("testsrc2=size={size}:rate={rate}:duration=0.4")]
}

fn tone(sample_rate: u32, seconds: f64) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        // Stereo, the common case; cases remix with -ac.
        format!("sine=frequency=440:sample_rate={sample_rate}:duration={seconds},pan=stereo|c0=c0|c1=c0"),
    ]
}

/// What the native reader must do with a corpus file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Read it natively (and agree with ffprobe).
    Native,
    /// Decline it (ffprobe decides).
    Decline,
    /// Either, as long as a native answer agrees with ffprobe.
    Either,
}

struct Case {
    name: &'static str,
    /// ffmpeg arguments; the output path is appended.
    args: Vec<String>,
    expect: Expect,
}

fn case(name: &'static str, inputs: Vec<Vec<String>>, rest: &str, expect: Expect) -> Case {
    let mut args: Vec<String> = inputs.into_iter().flatten().collect();
    args.extend(strings(rest));
    Case { name, args, expect }
}

const X264: &str = "-c:v libx264 -preset ultrafast";
const AAC: &str = "-c:a aac -b:a 64k";

/// The corpus: files made directly from lavfi sources.
fn corpus() -> Vec<Case> {
    use Expect::*;
    let v30 = || video("30", "96x54");
    let a48 = || tone(48000, 0.4);
    let mut cases = vec![
        case("h264-baseline-faststart.mp4", vec![v30(), a48()],
             &format!("-c:v libx264 -preset ultrafast -profile:v baseline {AAC} -movflags +faststart"), Native),
        case("h264-main-moov-at-end.mp4", vec![v30(), a48()],
             &format!("-c:v libx264 -preset veryfast -profile:v main {AAC}"), Native),
        case("h264-high-bframes-editlist.mp4", vec![v30(), a48()],
             &format!("-c:v libx264 -preset medium -profile:v high -bf 3 {AAC}"), Native),
        case("h264-yuvj420p-full-range.mp4", vec![v30()], &format!("{X264} -pix_fmt yuvj420p"), Native),
        case("h264-yuvj420p-with-colr.mp4", vec![v30()],
             &format!("{X264} -pix_fmt yuvj420p -movflags +write_colr"), Native),
        case("h264-bt709-colr.mov", vec![v30()],
             &format!("{X264} -pix_fmt yuv420p -color_range tv -colorspace bt709 -color_primaries bt709 -color_trc bt709 -movflags +write_colr"), Native),
        case("h264-yuv422p.mp4", vec![v30()], &format!("{X264} -pix_fmt yuv422p"), Native),
        case("h264-yuv444p.mp4", vec![v30()], &format!("{X264} -pix_fmt yuv444p"), Native),
        case("h264-yuv420p10.mp4", vec![v30()], &format!("{X264} -pix_fmt yuv420p10le"), Native),
        case("h264-gray.mp4", vec![v30()], &format!("{X264} -pix_fmt gray"), Either),
        case("h264-98x58-cropped-right.mp4", vec![video("30", "98x58")], X264, Native),
        case("h264-interlaced.mp4", vec![video("30", "96x64")],
             &format!("{X264} -flags +ildct+ilme -x264-params tff=1"), Either),
        case("h264-25fps.mp4", vec![video("25", "96x54"), a48()], &format!("{X264} {AAC}"), Native),
        case("h264-23.976fps.mp4", vec![video("24000/1001", "96x54"), a48()], &format!("{X264} {AAC}"), Native),
        case("h264-29.97fps.mp4", vec![video("30000/1001", "96x54")], X264, Native),
        case("h264-vfr-dropped-frame.mp4", vec![v30()],
             &format!("{X264} -vf select=not(eq(n\\,3)) -vsync vfr"), Decline),
        case("h264-no-audio.mp4", vec![v30()], X264, Native),
        case("aac-mono-44.1k.mp4", vec![v30(), tone(44100, 0.4)], &format!("{X264} {AAC} -ac 1"), Native),
        case("aac-22.05k.mp4", vec![v30(), tone(22050, 0.4)], &format!("{X264} {AAC}"), Native),
        case("aac-5.1.mp4", vec![v30(), a48()], &format!("{X264} {AAC} -ac 6"), Native),
        case("aac-7.1.mp4", vec![v30(), a48()], &format!("{X264} {AAC} -ac 8"), Native),
        case("two-audio-tracks.mp4", vec![v30(), tone(44100, 0.4), a48()],
             &format!("-map 0:v -map 1:a -map 2:a {X264} {AAC} -ac:a:1 1"), Native),
        case("audio-longer-than-video.mp4", vec![v30(), tone(48000, 0.9)], &format!("{X264} {AAC}"), Native),
        case("fragmented.mp4", vec![v30(), a48()],
             &format!("{X264} {AAC} -movflags frag_keyframe+empty_moov"), Decline),
        case("h264-aac.mov", vec![v30(), a48()], &format!("{X264} {AAC}"), Native),
        case("h264-aac-faststart.mov", vec![v30(), a48()], &format!("{X264} {AAC} -movflags +faststart"), Native),
        case("h264-timecode-track.mov", vec![v30(), a48()], &format!("{X264} {AAC} -timecode 01:00:00:00"), Native),
        case("hevc-hev1.mp4", vec![v30(), a48()], &format!("-c:v libx265 -preset ultrafast -x265-params log-level=error {AAC}"), Native),
        case("hevc-hvc1.mp4", vec![v30()], "-c:v libx265 -preset ultrafast -x265-params log-level=error -tag:v hvc1", Native),
        case("hevc-yuvj420p.mp4", vec![v30()], "-c:v libx265 -preset ultrafast -x265-params log-level=error -pix_fmt yuvj420p -tag:v hvc1", Native),
        case("hevc-yuv420p10.mov", vec![v30()], "-c:v libx265 -preset ultrafast -x265-params log-level=error -pix_fmt yuv420p10le -tag:v hvc1", Native),
        case("hevc-yuv444p.mp4", vec![v30()], "-c:v libx265 -preset ultrafast -x265-params log-level=error -pix_fmt yuv444p", Native),
        case("mjpeg.mov", vec![v30()], "-c:v mjpeg", Decline),
        case("mpeg4-part2.mov", vec![v30(), a48()], &format!("-c:v mpeg4 {AAC}"), Decline),
        case("pcm-audio.mov", vec![v30(), a48()], &format!("{X264} -c:a pcm_s16le"), Decline),
        case("h264-aac.mkv", vec![v30(), a48()], &format!("{X264} {AAC}"), Decline),
        case("vp9-opus.webm", vec![v30(), a48()],
             "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -c:a libopus", Decline),
    ];
    // A text subtitle track (tx3g) next to video and audio.
    cases.push(Case {
        name: "mov-text-subtitles.mp4",
        args: Vec::new(), // filled in by `make_corpus`, which writes the .srt first
        expect: Native,
    });
    cases
}

/// Makes every corpus file in `dir` (a few at a time) and the files derived from them
/// by stream copy; returns `(path, expectation)`, skipping cases whose encoder is missing.
fn make_corpus(dir: &Path) -> Vec<(PathBuf, Expect)> {
    let mut cases = corpus();
    let srt = dir.join("subs.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:00,300\nhello\n").unwrap();
    for c in cases.iter_mut().filter(|c| c.name == "mov-text-subtitles.mp4") {
        let mut args = video("30", "96x54");
        args.extend(tone(48000, 0.4));
        args.extend(["-i".to_string(), srt.display().to_string()]);
        args.extend(strings(&format!("-map 0 -map 1 -map 2 {X264} {AAC} -c:s mov_text")));
        c.args = args;
    }
    let made: Vec<Option<(PathBuf, Expect)>> = std::thread::scope(|scope| {
        cases
            .chunks(cases.len().div_ceil(3))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| {
                            let out = dir.join(c.name);
                            let mut args = c.args.clone();
                            args.push(out.display().to_string());
                            match ffmpeg(&args) {
                                Ok(()) => Some((out, c.expect)),
                                Err(e) => {
                                    eprintln!("SKIPPED {} (ffmpeg failed: {})", c.name, e.trim());
                                    None
                                }
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut files: Vec<(PathBuf, Expect)> = made.into_iter().flatten().collect();

    // Derived by stream copy from the first (faststart) file.
    let base = dir.join("h264-baseline-faststart.mp4");
    assert!(base.exists(), "the base clip must be made");
    for (tag, name) in [(90, "rotate-90.mp4"), (180, "rotate-180.mp4"), (270, "rotate-270.mov")] {
        let out = dir.join(name);
        let args = vec![
            "-i".into(),
            base.display().to_string(),
            "-c".into(),
            "copy".into(),
            "-metadata:s:v:0".into(),
            format!("rotate={tag}"),
            out.display().to_string(),
        ];
        ffmpeg(&args).unwrap();
        files.push((out, Expect::Native));
    }
    let cover = dir.join("cover.png");
    ffmpeg(&strings(&format!("-f lavfi -i testsrc2=size=32x32:rate=1:duration=1 -frames:v 1 {}", cover.display())))
        .unwrap();
    let with_cover = dir.join("cover-art.mp4");
    ffmpeg(&strings(&format!(
        "-i {} -i {} -map 0 -map 1 -c copy -c:v:1 png -disposition:v:1 attached_pic {}",
        base.display(),
        cover.display(),
        with_cover.display()
    )))
    .unwrap();
    files.push((with_cover, Expect::Native));
    files
}

/// One line of what was read, for the report.
fn summary(info: &ClipInfo, headers: &Fingerprint) -> String {
    let v = &info.video;
    let mut line = format!(
        "{:.3}s {} {}x{} {} {} tb {} rot {} [{}]",
        info.duration_seconds,
        v.codec,
        v.width,
        v.height,
        v.pix_fmt,
        v.frame_rate,
        v.time_base,
        v.rotation,
        headers.video.as_ref().map_or("", |h| h.1.as_str())
    );
    if let Some(a) = &info.audio {
        line += &format!(
            "; {} {} Hz {}ch {} tb {} [{}]",
            a.codec,
            a.sample_rate,
            a.channels,
            a.channel_layout,
            a.time_base,
            headers.audio.as_ref().map_or("", |h| h.1.as_str())
        );
    }
    line
}

/// ClipInfos equal, durations within 1 ms.
fn same_clip(native: &ClipInfo, ffprobe: &ClipInfo) -> bool {
    (native.duration_seconds - ffprobe.duration_seconds).abs() < 0.001
        && ClipInfo { duration_seconds: ffprobe.duration_seconds, ..native.clone() } == *ffprobe
}

#[test]
fn native_reader_agrees_with_ffprobe_or_declines() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let files = make_corpus(dir.path());
    eprintln!("made {} corpus files in {:?}", files.len(), t.elapsed());
    assert!(files.len() >= 35, "corpus too small: {}", files.len());

    // Three files at a time: each check is mostly ffprobe start-up.
    let results: Vec<(String, Vec<String>)> = std::thread::scope(|scope| {
        files
            .chunks(files.len().div_ceil(3))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk.iter().map(|(path, expect)| check_against_ffprobe(path, *expect)).collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let (mut report, failures): (Vec<String>, Vec<Vec<String>>) = results.into_iter().unzip();
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    report.sort();
    eprintln!("native reader on the corpus:\n  {}", report.join("\n  "));
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Compares the native reader with ffprobe on one file: `(report line, failures)`.
fn check_against_ffprobe(path: &Path, expect: Expect) -> (String, Vec<String>) {
    let mut failures = Vec::new();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let by_ffprobe = block(probe_with_ffprobe(path));
    let headers_by_ffprobe = block(fingerprint_with_ffprobe(path, &RunOptions::new()));
    let report = match block(probe_native(path)) {
        NativeProbe::Read { info, fingerprint } => {
            match (&by_ffprobe, &headers_by_ffprobe) {
                (Ok(want), Ok(want_headers)) => {
                    if !same_clip(&info, want) {
                        failures.push(format!("{name}: native {info:?}\n    ffprobe {want:?}"));
                    }
                    if fingerprint != *want_headers {
                        failures.push(format!("{name}: native {fingerprint:?}\n    ffprobe {want_headers:?}"));
                    }
                    // The wired-up probe answers natively with the same result.
                    match block(probe(path)) {
                        Ok(auto) if same_clip(&auto, want) => {}
                        other => failures.push(format!("{name}: probe() gave {other:?}")),
                    }
                }
                _ => failures
                    .push(format!("{name}: read natively but ffprobe failed: {by_ffprobe:?} / {headers_by_ffprobe:?}")),
            }
            if expect == Expect::Decline {
                failures.push(format!("{name}: expected a decline"));
            }
            format!("native    {name}: {}", summary(&info, &fingerprint))
        }
        NativeProbe::Declined(reason) => {
            if reason.starts_with("native reader failed") {
                failures.push(format!("{name}: the native reader panicked: {reason}"));
            }
            if expect == Expect::Native {
                failures.push(format!("{name}: expected a native read, declined: {reason}"));
            }
            format!("declined  {name}: {reason}")
        }
        other => {
            failures.push(format!("{name}: unexpected {other:?}"));
            format!("?         {name}")
        }
    };
    (report, failures)
}

/// A real clip, faststart or with the index at the end.
fn real_clip(dir: &Path, name: &str, faststart: bool) -> PathBuf {
    let out = dir.join(name);
    let mut args = video("30", "96x54");
    args.extend(tone(48000, 0.4));
    args.extend(strings(&format!("{X264} {AAC}")));
    if faststart {
        args.extend(strings("-movflags +faststart"));
    }
    args.push(out.display().to_string());
    ffmpeg(&args).unwrap();
    out
}

/// Offset of the first box of type `kind` (its size field), searching raw bytes.
fn find_box(data: &[u8], kind: &[u8; 4]) -> usize {
    data.windows(4).position(|w| w == kind).expect("box present") - 4
}

fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

#[test]
fn hostile_files_never_panic_and_stay_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let faststart = std::fs::read(real_clip(dir.path(), "fast.mp4", true)).unwrap();
    let at_end = std::fs::read(real_clip(dir.path(), "end.mp4", false)).unwrap();

    // (name, bytes, whether ffprobe's path must call it Corrupt)
    let mut hostile: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for (label, data) in [("faststart", &faststart), ("moov-at-end", &at_end)] {
        // Every cut point is covered natively by the unit tests; here the ffprobe
        // path has to agree, so a few suffice.
        for quarter in 1..4 {
            let cut = data.len() * quarter / 4;
            hostile.push((format!("{label} cut at {quarter}/4"), data[..cut].to_vec(), true));
        }
        hostile.push((format!("{label} minus 1 byte"), data[..data.len() - 1].to_vec(), true));
        let moov = find_box(data, b"moov");
        let mut lying = data.clone();
        lying[moov..moov + 4].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
        hostile.push((format!("{label} moov size past the end"), lying, true));
        for (kind, field, value) in [
            (b"stsd", 12, u32::MAX),    // entry count
            (b"stts", 12, 0x7FFF_FFFF), // entry count
            (b"stsz", 16, 0x7FFF_FFFF), // sample count
            (b"trak", 0, 0),            // size 0 inside moov
            (b"mdia", 0, 7),            // size smaller than a header
            (b"avcC", 0, 0xFFFF),       // runs past the sample entry
            (b"esds", 0, 1),            // 64-bit size that is not there
        ] {
            let at = find_box(data, kind) + field;
            let mut bytes = data.clone();
            bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            hostile.push((format!("{label} '{}'+{field} = {value:#x}", String::from_utf8_lossy(kind)), bytes, false));
        }
    }
    // Garbage after a valid ftyp, and a deeply nested moov.
    let ftyp = boxed(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41");
    let mut garbage = ftyp.clone();
    garbage.extend((0u32..20_000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    hostile.push(("garbage after ftyp".into(), garbage, true));
    let mut nested = boxed(b"mvhd", &[0u8; 100]);
    for _ in 0..5_000 {
        nested = boxed(b"trak", &nested);
    }
    let mut deep = ftyp.clone();
    deep.extend(boxed(b"moov", &nested));
    deep.extend(boxed(b"mdat", &[0u8; 16]));
    hostile.push(("5000-deep nested trak".into(), deep, true));
    let mut zeros = ftyp.clone();
    zeros.extend(boxed(b"moov", &[0u8; 4096]));
    hostile.push(("moov of zero-size boxes".into(), zeros, true));

    let mut failures = Vec::new();
    for (i, (name, bytes, must_be_corrupt)) in hostile.iter().enumerate() {
        let path = dir.path().join(format!("hostile{i}.mp4"));
        std::fs::write(&path, bytes).unwrap();
        let native = block(probe_native(&path));
        let auto = block(probe(&path));
        let by_ffprobe = block(probe_with_ffprobe(&path));
        match &native {
            NativeProbe::Declined(reason) if reason.starts_with("native reader failed") => {
                failures.push(format!("{name}: panicked: {reason}"))
            }
            NativeProbe::Read { info, .. } => match &by_ffprobe {
                Ok(want) if same_clip(info, want) => {}
                other => failures.push(format!("{name}: native {info:?}, ffprobe {other:?}")),
            },
            _ => {}
        }
        let agree = match (&auto, &by_ffprobe) {
            (Ok(a), Ok(b)) => same_clip(a, b),
            (Err(MediaError::Corrupt { .. }), Err(MediaError::Corrupt { .. })) => true,
            _ => false,
        };
        if !agree {
            failures.push(format!("{name}: probe {auto:?} but ffprobe path {by_ffprobe:?}"));
        }
        if *must_be_corrupt && !matches!(auto, Err(MediaError::Corrupt { .. })) {
            failures.push(format!("{name}: expected Corrupt, got {auto:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// One-off timing on a directory of clips (default: the benchmark corpus), as stitch's
/// copy path uses them: `probe` each clip, then `check_copy_compatible`; first checks
/// every clip the native reader reads against ffprobe. `REEL_PROBE_TIMING_DIR` (an
/// absolute path) picks another directory, e.g. of real phone clips. Compare
/// `REEL_NATIVE_PROBE=0 cargo test -p reel-media --release --test native_probe -- --ignored --nocapture`
/// with the same command without the variable.
#[test]
#[ignore = "timing on the benchmark corpus; run by hand"]
fn time_probing_a_clip_directory() {
    let dir = std::env::var_os("REEL_PROBE_TIMING_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-corpus/full-copy-large"),
        PathBuf::from,
    );
    let mut clips: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
        .collect();
    clips.sort();
    let mode = std::env::var("REEL_NATIVE_PROBE").unwrap_or_else(|_| "default (native)".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // Differential check first: any directory of real clips is a corpus too.
    for clip in &clips {
        match rt.block_on(probe_native(clip)) {
            NativeProbe::Read { info, fingerprint } => {
                let want = rt.block_on(probe_with_ffprobe(clip)).unwrap();
                let want_headers = rt.block_on(fingerprint_with_ffprobe(clip, &RunOptions::new())).unwrap();
                assert!(same_clip(&info, &want), "{}: {info:?} vs {want:?}", clip.display());
                assert_eq!(fingerprint, want_headers, "{}", clip.display());
            }
            NativeProbe::Declined(reason) => eprintln!("declined {}: {reason}", clip.display()),
            other => panic!("{other:?}"),
        }
    }
    for round in 0..3 {
        let t = Instant::now();
        for clip in &clips {
            rt.block_on(probe(clip)).unwrap();
        }
        let probed = t.elapsed();
        let t = Instant::now();
        // Mixed corpora are not copy-compatible; the time to find out still counts.
        let verdict = match rt.block_on(check_copy_compatible(&clips, &RunOptions::new())) {
            Ok(()) => "compatible".to_string(),
            Err(MediaError::Incompatible { reason }) => reason,
            Err(e) => panic!("{e}"),
        };
        let checked = t.elapsed();
        eprintln!(
            "REEL_NATIVE_PROBE={mode} round {round}: {} clips: probe {probed:?}, \
             check_copy_compatible {checked:?} ({verdict})",
            clips.len()
        );
    }
}
