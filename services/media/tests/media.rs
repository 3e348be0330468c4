//! Integration tests against the real ffmpeg / ffprobe.

use reel_events::{Compression, Orientation};
use reel_media::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The configuration every test here runs with: ffmpeg and ffprobe from `PATH`.
fn media() -> MediaConfig {
    MediaConfig::default()
}

fn sample(dir: &Path, name: &str, width: u32, height: u32, seconds: f64, audio: bool) -> PathBuf {
    let path = dir.join(name);
    let spec = SampleSpec { width, height, seconds, fps: 30, audio, label: name.to_string() };
    block(make_sample_clip(&media(), &path, &spec)).unwrap_or_else(|e| panic!("make_sample_clip {name}: {e}"));
    path
}

/// Each test owns a small current-thread runtime; ffmpeg does the heavy lifting.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Stream-copies `input` to `output` with a legacy `rotate` tag, as phones write it.
fn remux_rotated(input: &Path, output: &Path, rotate: u32) {
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-i"])
        .arg(input)
        .args(["-c", "copy", "-metadata:s:v:0"])
        .arg(format!("rotate={rotate}"))
        .arg(output)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `ffmpeg -v error -i path -f null -`: must print nothing for a valid file.
fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "decode failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

fn stream_types(path: &Path) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect()
}

/// Mean luma of the top `rows` of a frame at `at` seconds, frame scaled to 54x96.
fn top_luma(path: &Path, at: f64, rows: usize) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-ss", &format!("{at}"), "-i"])
        .arg(path)
        .args(["-frames:v", "1", "-vf", "scale=54:96,format=gray", "-f", "rawvideo", "pipe:1"])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 54 * 96, "{}", String::from_utf8_lossy(&out.stderr));
    let top = &out.stdout[..54 * rows];
    top.iter().map(|&b| b as f64).sum::<f64>() / top.len() as f64
}

/// Files in `dir` whose names start with a dot: our temporaries.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn version() {
    let v = ffmpeg_version(&media()).unwrap();
    assert!(v.starts_with("ffmpeg version"), "{v}");
}

#[test]
fn probe_generated_clip() {
    let dir = tempfile::tempdir().unwrap();
    let clip = sample(dir.path(), "a.mp4", 320, 240, 1.0, true);
    let info = block(probe(&media(), &clip)).unwrap();
    assert!((info.duration_seconds - 1.0).abs() < 0.1, "{info:?}");
    assert!(is_mov_family(&info.container), "{}", info.container);
    assert_eq!(info.video.codec, "h264");
    assert_eq!((info.video.width, info.video.height), (320, 240));
    assert_eq!(info.video.pix_fmt, "yuv420p");
    assert_eq!(info.video.frame_rate, "30/1");
    assert_eq!(info.video.rotation, 0);
    assert!(!info.video.time_base.is_empty());
    let a = info.audio.expect("audio");
    assert_eq!((a.codec.as_str(), a.sample_rate, a.channels), ("aac", 48000, 2));
    assert_eq!(a.channel_layout, "stereo");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn probe_without_audio() {
    let dir = tempfile::tempdir().unwrap();
    let clip = sample(dir.path(), "silent.mp4", 160, 90, 1.0, false);
    let info = block(probe(&media(), &clip)).unwrap();
    assert!(info.audio.is_none());
    assert_eq!((info.video.width, info.video.height), (160, 90));
}

#[test]
fn probe_rejects_garbage_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.mp4");
    let bytes: Vec<u8> = (0u32..20_000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&garbage, bytes).unwrap();
    let e = block(probe(&media(), &garbage)).unwrap_err();
    assert!(matches!(e, MediaError::Corrupt { .. }), "{e:?}");
    assert_eq!(e.verdict(), Verdict::reject(reel_events::ErrorType::CorruptInput));

    // Playlists and scripts that would open other files are refused, whatever the name.
    let inner = sample(dir.path(), "inner.mp4", 160, 90, 1.0, false);
    let hls = dir.path().join("playlist.mp4");
    let m3u = format!("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1,\n{}\n#EXT-X-ENDLIST\n", inner.display());
    std::fs::write(&hls, m3u).unwrap();
    let e = block(probe(&media(), &hls)).unwrap_err();
    assert!(matches!(e, MediaError::Corrupt { .. }), "{e:?}");
    let script = dir.path().join("script.mp4");
    std::fs::write(&script, "ffconcat version 1.0\nfile 'inner.mp4'\n").unwrap();
    let e = block(probe(&media(), &script)).unwrap_err();
    assert!(matches!(e, MediaError::Corrupt { .. }), "{e:?}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a video at all\n").unwrap();
    assert!(matches!(block(probe(&media(), &text)), Err(MediaError::Corrupt { .. })));

    // faststart (index first): ffprobe alone would accept the truncated file.
    let clip = sample(dir.path(), "full.mp4", 320, 240, 1.0, true);
    let data = std::fs::read(&clip).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let e = block(probe(&media(), &cut)).unwrap_err();
    assert!(matches!(&e, MediaError::Corrupt { reason } if reason.contains("truncated")), "{e:?}");
    std::fs::write(&cut, &data[..data.len() - 1]).unwrap();
    assert!(matches!(block(probe(&media(), &cut)), Err(MediaError::Corrupt { .. })));

    // index last (plain ffmpeg output): the moov box is missing.
    let plain = dir.path().join("plain.mp4");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-i"])
        .arg(&clip)
        .args(["-c", "copy"])
        .arg(&plain)
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&plain).unwrap();
    std::fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    assert!(matches!(block(probe(&media(), &cut)), Err(MediaError::Corrupt { .. })));

    std::fs::write(&cut, b"").unwrap();
    assert!(matches!(block(probe(&media(), &cut)), Err(MediaError::Corrupt { .. })));

    let missing = block(probe(&media(), &dir.path().join("nope.mp4"))).unwrap_err();
    assert!(matches!(&missing, MediaError::Io(e) if e.kind() == std::io::ErrorKind::NotFound), "{missing:?}");
}

#[test]
fn probe_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let clip = sample(dir.path(), "land.mp4", 320, 180, 1.0, true);
    // rotate tag -> (ffprobe display-matrix rotation) -> our clockwise degrees.
    for (tag, want) in [(90, 270), (270, 90), (180, 180)] {
        let rotated = dir.path().join(format!("rot{tag}.mp4"));
        remux_rotated(&clip, &rotated, tag);
        let info = block(probe(&media(), &rotated)).unwrap();
        assert_eq!(info.video.rotation, want, "rotate={tag}");
        assert_eq!((info.video.width, info.video.height), (320, 180));
        let shown = if want == 180 { (320, 180) } else { (180, 320) };
        assert_eq!(info.video.display_size(), shown, "rotate={tag}");
    }
}

#[test]
fn concat_copy_identical_clips_with_awkward_names() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["one clip.mp4", "it's two.mp4", "three ''quoted'' : #.mp4"];
    let one = sample(dir.path(), names[0], 320, 240, 1.0, true);
    let mut inputs = vec![one.clone()];
    for n in &names[1..] {
        let p = dir.path().join(n);
        std::fs::copy(&one, &p).unwrap();
        inputs.push(p);
    }
    let infos: Vec<_> = inputs.iter().map(|p| block(probe(&media(), p)).unwrap()).collect();
    let plan = plan(&infos, Orientation::Landscape, Compression::Optimized);
    assert_eq!(plan.mode, reel_events::Mode::Copy, "{}", plan.reason);

    let out = dir.path().join("out put's.mp4");
    let mut last = 0.0f64;
    let mut calls = 0;
    let mut cb = |s: f64| {
        last = s;
        calls += 1;
    };
    let t = Instant::now();
    block(concat_copy(&media(), &inputs, &out, &RunOptions::new(), &mut cb)).unwrap();
    eprintln!("concat_copy of 3 clips: {:?}", t.elapsed());
    assert!(calls > 0);
    let want: f64 = infos.iter().map(|i| i.duration_seconds).sum();
    assert!((last - want).abs() < 0.3, "progress {last} vs {want}");
    let info = block(probe(&media(), &out)).unwrap();
    assert!((info.duration_seconds - want).abs() <= 0.2, "{} vs {want}", info.duration_seconds);
    assert_eq!(decode_errors(&out), "");
    assert_eq!(stream_types(&out), ["video", "audio"]);
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn concat_copy_keeps_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let clip = sample(dir.path(), "phone.mp4", 320, 180, 1.0, true);
    let rotated = dir.path().join("phone90.mp4");
    remux_rotated(&clip, &rotated, 270);
    let info = block(probe(&media(), &rotated)).unwrap();
    let plan = plan(&[info.clone(), info.clone()], Orientation::Portrait, Compression::Original);
    assert_eq!(plan.mode, reel_events::Mode::Copy, "{}", plan.reason);
    let out = dir.path().join("reel.mp4");
    block(concat_copy(&media(), &[rotated.clone(), rotated], &out, &RunOptions::new(), &mut |_| {})).unwrap();
    let joined = block(probe(&media(), &out)).unwrap();
    assert_eq!(joined.video.rotation, 90);
    assert_eq!(joined.video.display_size(), (180, 320));
}

#[test]
fn concat_copy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let e = block(concat_copy(&media(), &[], &out, &RunOptions::new(), &mut |_| {})).unwrap_err();
    assert!(matches!(&e, MediaError::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput), "{e:?}");
    let e = block(concat_copy(&media(), &[dir.path().join("missing.mp4")], &out, &RunOptions::new(), &mut |_| {}))
        .unwrap_err();
    assert!(matches!(&e, MediaError::Io(io) if io.kind() == std::io::ErrorKind::NotFound), "{e:?}");
    // A non-media input is refused; nothing is left behind.
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"junk junk junk").unwrap();
    let e = block(concat_copy(&media(), &[junk], &out, &RunOptions::new(), &mut |_| {})).unwrap_err();
    assert!(matches!(&e, MediaError::Corrupt { .. }), "{e:?}");
    assert!(!out.exists());

    // Same size, rate and codecs, but other h264 headers (ultrafast = baseline, CAVLC):
    // plan() says copy, but the join would mis-decode, so concat_copy refuses.
    let a = sample(dir.path(), "a.mp4", 160, 90, 1.0, true);
    let b = dir.path().join("b.mp4");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-i"])
        .arg(&a)
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    let infos = [block(probe(&media(), &a)).unwrap(), block(probe(&media(), &b)).unwrap()];
    let p = plan(&infos, Orientation::Landscape, Compression::Optimized);
    assert_eq!(p.mode, reel_events::Mode::Copy, "{}", p.reason);
    let inputs = [a.clone(), b];
    let e = block(check_copy_compatible(&media(), &inputs, &RunOptions::new())).unwrap_err();
    assert!(matches!(&e, MediaError::Incompatible { reason } if reason.contains("input 2")), "{e:?}");
    let e = block(concat_copy(&media(), &inputs, &out, &RunOptions::new(), &mut |_| {})).unwrap_err();
    assert!(matches!(&e, MediaError::Incompatible { .. }), "{e:?}");
    assert_eq!(e.verdict(), Verdict::reject(reel_events::ErrorType::Internal));
    block(check_copy_compatible(&media(), &[a.clone(), a], &RunOptions::new())).unwrap();
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn normalize_mixed_clips_to_portrait_and_join() {
    let dir = tempfile::tempdir().unwrap();
    // A 4:3 landscape clip without audio, and a phone clip stored 320x180 but shown
    // upright (rotation 90° clockwise) at 30 fps with audio.
    let silent = sample(dir.path(), "silent clip.mp4", 320, 240, 1.0, false);
    let land = sample(dir.path(), "land.mp4", 320, 180, 1.5, true);
    let phone = dir.path().join("phone's clip.mp4");
    remux_rotated(&land, &phone, 270);
    let infos = [block(probe(&media(), &silent)).unwrap(), block(probe(&media(), &phone)).unwrap()];
    assert_eq!(infos[1].video.rotation, 90);

    let plan = plan(&infos, Orientation::Portrait, Compression::Optimized);
    assert_eq!(plan.mode, reel_events::Mode::Reencode);
    let target = plan.target.clone().unwrap();
    assert_eq!((target.width, target.height), (1080, 1920));

    let mut segments = Vec::new();
    for (i, (src, info)) in [&silent, &phone].into_iter().zip(&infos).enumerate() {
        let seg = dir.path().join(format!("seg {i}.mp4"));
        let mut progressed = 0.0;
        let t = Instant::now();
        block(normalize_clip(&media(), src, info, &target, &seg, &RunOptions::new(), &mut |s| progressed = s)).unwrap();
        eprintln!(
            "normalize_clip {i} ({}x{} -> 1080x1920, {}): {:?}",
            info.video.width,
            info.video.height,
            target.preset,
            t.elapsed()
        );
        assert!(progressed > 0.5, "progress {progressed}");
        let s = block(probe(&media(), &seg)).unwrap();
        assert_eq!((s.video.width, s.video.height, s.video.rotation), (1080, 1920, 0));
        assert_eq!(s.video.frame_rate, "30/1");
        assert_eq!(s.video.pix_fmt, "yuv420p");
        let a = s.audio.as_ref().expect("every segment has audio");
        assert_eq!((a.codec.as_str(), a.sample_rate, a.channels), ("aac", 48000, 2));
        assert!(
            (s.duration_seconds - info.duration_seconds).abs() < 0.05,
            "{} vs {}",
            s.duration_seconds,
            info.duration_seconds
        );
        segments.push(seg);
    }
    // The 4:3 clip is letterboxed (black bars top and bottom); the upright phone clip fills the frame.
    assert!(top_luma(&segments[0], 0.5, 8) < 20.0, "expected black padding on top");
    assert!(top_luma(&segments[1], 0.5, 8) > 40.0, "rotated clip should fill the portrait frame");

    let out = dir.path().join("reel.mp4");
    block(concat_copy(&media(), &segments, &out, &RunOptions::new(), &mut |_| {})).unwrap();
    let reel = block(probe(&media(), &out)).unwrap();
    assert_eq!((reel.video.width, reel.video.height), (1080, 1920));
    assert_eq!(stream_types(&out), ["video", "audio"]);
    let want: f64 = infos.iter().map(|i| i.duration_seconds).sum();
    assert!((reel.duration_seconds - want).abs() <= 0.2, "{} vs {want}", reel.duration_seconds);
    assert_eq!(decode_errors(&out), "");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    if let Some(keep) = std::env::var_os("REEL_MEDIA_KEEP") {
        for (i, seg) in segments.iter().enumerate() {
            std::fs::copy(seg, Path::new(&keep).join(format!("seg{i}.mp4"))).unwrap();
        }
        std::fs::copy(&out, Path::new(&keep).join("reel.mp4")).unwrap();
    }
}

/// A clip whose (claimed) duration is an hour: ffmpeg holds the last frame for
/// an hour of output, i.e. runs far longer than any test waits.
fn endless_job(dir: &Path) -> (PathBuf, reel_events::ClipInfo, EncodeTarget) {
    let clip = sample(dir, "short.mp4", 160, 90, 0.5, true);
    let mut info = block(probe(&media(), &clip)).unwrap();
    info.duration_seconds = 3600.0;
    let target =
        EncodeTarget { width: 320, height: 240, ..EncodeTarget::new(Orientation::Landscape, Compression::Optimized) };
    (clip, info, target)
}

/// Running processes (children of this test binary) whose command line mentions `needle`.
#[cfg(target_os = "linux")]
fn children_mentioning(needle: &Path) -> usize {
    let me = std::process::id().to_string();
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            Some((stat, String::from_utf8_lossy(&cmdline).into_owned()))
        })
        .filter(|(stat, cmdline)| {
            // pid (comm) state ppid ...; a zombie ('Z') has finished.
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next().unwrap_or("");
            let ppid = rest.next().unwrap_or("");
            ppid == me && state != "Z" && cmdline.contains(&needle)
        })
        .count()
}

#[test]
fn cancel_stops_ffmpeg_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, info, target) = endless_job(dir.path());
    let out = dir.path().join("never.mp4");
    let opts = RunOptions::new();
    let cancel = opts.cancel.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (res, since_cancel, progressed) = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
        let fired = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
        let fired2 = fired.clone();
        let watched = dir.path().to_path_buf();
        let canceller = tokio::spawn(async move {
            // Wait until ffmpeg is demonstrably encoding, then cancel.
            while *rx.borrow_and_update() < 0.5 {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            #[cfg(target_os = "linux")]
            assert_eq!(children_mentioning(&watched), 1, "the running ffmpeg is visible");
            let _ = &watched;
            *fired2.lock().unwrap() = Some(Instant::now());
            cancel.cancel();
        });
        let mut cb = |s: f64| {
            let _ = tx.send(s);
        };
        let res = normalize_clip(&media(), &clip, &info, &target, &out, &opts, &mut cb).await;
        let returned = Instant::now();
        let at = fired.lock().unwrap().expect("cancel fired");
        canceller.await.unwrap();
        let last = *tx.borrow();
        (res, returned - at, last)
    });
    eprintln!("cancel -> return: {since_cancel:?} (after {progressed:.1}s of output)");
    assert!(matches!(res, Err(MediaError::Cancelled)), "{res:?}");
    assert!(since_cancel < Duration::from_secs(3), "{since_cancel:?}");
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    #[cfg(target_os = "linux")]
    assert_eq!(children_mentioning(dir.path()), 0, "ffmpeg still running");

    // An already-cancelled token never starts ffmpeg.
    let res = block(normalize_clip(&media(), &clip, &info, &target, &out, &opts, &mut |_| {}));
    assert!(matches!(res, Err(MediaError::Cancelled)), "{res:?}");
}

#[test]
fn deadline_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, info, target) = endless_job(dir.path());
    let out = dir.path().join("never.mp4");
    let opts = RunOptions::new().with_timeout(Duration::from_millis(1500));
    let t = Instant::now();
    let res = block(normalize_clip(&media(), &clip, &info, &target, &out, &opts, &mut |_| {}));
    let took = t.elapsed();
    eprintln!("deadline 1.5 s -> returned after {took:?}");
    assert!(matches!(res, Err(MediaError::Timeout)), "{res:?}");
    assert_eq!(res.unwrap_err().verdict(), Verdict::retry(reel_events::ErrorType::Timeout));
    assert!(took < Duration::from_millis(1500 + 2500), "{took:?}");
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn sample_clip_validation() {
    let dir = tempfile::tempdir().unwrap();
    let bad = SampleSpec { width: 161, height: 90, seconds: 1.0, fps: 30, audio: false, label: String::new() };
    assert!(block(make_sample_clip(&media(), &dir.path().join("x.mp4"), &bad)).is_err());
    let bad = SampleSpec { width: 160, height: 90, seconds: 0.0, fps: 30, audio: false, label: String::new() };
    assert!(block(make_sample_clip(&media(), &dir.path().join("x.mp4"), &bad)).is_err());
}

/// Needs a tiny filesystem, e.g. `mount -t tmpfs -o size=64k tmpfs /tmp/fullfs`, named by
/// `REEL_MEDIA_FULL_DIR`; skipped (passes) without it.
#[test]
fn disk_full_is_reported() {
    let Some(full) = std::env::var_os("REEL_MEDIA_FULL_DIR").map(PathBuf::from) else {
        eprintln!("REEL_MEDIA_FULL_DIR not set; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clip = sample(dir.path(), "a.mp4", 320, 240, 2.0, true);
    let info = block(probe(&media(), &clip)).unwrap();
    let target = EncodeTarget::new(Orientation::Portrait, Compression::HighQuality);
    let out = full.join("seg.mp4");
    let e = block(normalize_clip(&media(), &clip, &info, &target, &out, &RunOptions::new(), &mut |_| {})).unwrap_err();
    assert!(matches!(e, MediaError::DiskFull { .. }), "{e:?}");
    assert_eq!(e.verdict(), Verdict::retry(reel_events::ErrorType::ResourceExhausted));
    assert!(!out.exists());
    assert!(leftovers(&full).is_empty(), "{:?}", leftovers(&full));
    let e =
        block(concat_copy(&media(), &[clip.clone(), clip.clone()], &out, &RunOptions::new(), &mut |_| {})).unwrap_err();
    assert!(matches!(e, MediaError::DiskFull { .. }), "{e:?}");
    assert!(leftovers(&full).is_empty(), "{:?}", leftovers(&full));

    // Completely full: writing our own concat list fails.
    let filler = full.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let e = block(concat_copy(&media(), &[clip.clone(), clip], &out, &RunOptions::new(), &mut |_| {})).unwrap_err();
    std::fs::remove_file(&filler).unwrap();
    assert!(matches!(e, MediaError::DiskFull { .. }), "{e:?}");
    assert!(leftovers(&full).is_empty(), "{:?}", leftovers(&full));
}

/// Segments of clips whose colour tags differ (one untagged, one tagged BT.709 as phones
/// tag theirs, one full-range BT.601) share one set of stream headers, so the segments of a
/// re-encode can always be joined (issue 14: x264 writes the tags into the SPS).
#[test]
fn segments_of_differently_tagged_clips_share_stream_headers() {
    let dir = tempfile::tempdir().unwrap();
    let tags: [&[&str]; 3] = [
        &[],
        &["-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709"],
        &[
            "-pix_fmt",
            "yuvj420p",
            "-color_primaries",
            "smpte170m",
            "-color_trc",
            "smpte170m",
            "-colorspace",
            "smpte170m",
        ],
    ];
    let target = EncodeTarget::new(Orientation::Landscape, Compression::Small);
    let mut segments = Vec::new();
    for (i, extra) in tags.iter().enumerate() {
        let src = dir.path().join(format!("src{i}.mp4"));
        let st = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=0.5"])
            .args(["-c:v", "libx264", "-preset", "ultrafast"])
            .args(*extra)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let info = block(probe(&media(), &src)).unwrap();
        let seg = dir.path().join(format!("seg{i}.mp4"));
        block(normalize_clip(&media(), &src, &info, &target, &seg, &RunOptions::new(), &mut |_| {})).unwrap();
        segments.push(seg);
    }
    block(check_copy_compatible(&media(), &segments, &RunOptions::new())).unwrap();
    let out = dir.path().join("joined.mp4");
    block(concat_copy(&media(), &segments, &out, &RunOptions::new(), &mut |_| {})).unwrap();
    assert_eq!(decode_errors(&out), "");
}
