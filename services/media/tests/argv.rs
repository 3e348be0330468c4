//! Every ffmpeg and ffprobe that reel starts is told to open plain files only
//! (`-protocol_whitelist file` before its input), so no clip, playlist or concat list can
//! make it open a URL, a device or another protocol. Checked on the real command lines:
//! `REEL_FFMPEG` / `REEL_FFPROBE` point at a wrapper that records its arguments and runs
//! the real program.

use reel_events::{Compression, Orientation};
use reel_media::{concat_copy, make_sample_clip, normalize_clip, plan, probe, EncodeTarget, RunOptions, SampleSpec};
use std::path::{Path, PathBuf};

fn wrapper(dir: &Path, real: &str, log: &Path) -> PathBuf {
    let path = dir.join(format!("record-{real}"));
    // One line per invocation: the program, then each argument after a tab.
    let script = format!(
        "#!/bin/sh\n{{ printf '%s' {real}; for a in \"$@\"; do printf '\\t%s' \"$a\"; done; printf '\\n'; }} >> '{}'\nexec {real} \"$@\"\n",
        log.display()
    );
    std::fs::write(&path, script).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

/// The inputs of one command line: the value after each `-i` (ffmpeg), or the last
/// argument (ffprobe).
fn inputs_whitelisted(line: &str) -> Result<usize, String> {
    let args: Vec<&str> = line.split('\t').collect();
    let whitelist = args.windows(2).position(|w| w[0] == "-protocol_whitelist" && w[1] == "file");
    let input_positions: Vec<usize> = if args[0] == "ffprobe" {
        vec![args.len() - 1]
    } else {
        args.iter().enumerate().filter(|(_, a)| **a == "-i").map(|(i, _)| i).collect()
    };
    if input_positions.is_empty() {
        return Ok(0); // `ffmpeg -version` and the like open nothing
    }
    match whitelist {
        Some(w) if input_positions.iter().all(|i| *i > w) => Ok(input_positions.len()),
        _ => Err(format!("an input without -protocol_whitelist file before it: {line}")),
    }
}

#[test]
fn every_ffmpeg_and_ffprobe_invocation_whitelists_the_file_protocol_only() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let (ffmpeg, ffprobe) = (wrapper(dir.path(), "ffmpeg", &log), wrapper(dir.path(), "ffprobe", &log));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Clips made before the wrappers are in place (make_sample_clip reads no input file).
    let spec = |w, h| SampleSpec { width: w, height: h, seconds: 1.0, fps: 10, audio: true, label: "x".into() };
    let (a, b, mkv) = (dir.path().join("a.mp4"), dir.path().join("b.mp4"), dir.path().join("c.mkv"));
    rt.block_on(make_sample_clip(&a, &spec(160, 120))).unwrap();
    rt.block_on(make_sample_clip(&b, &spec(160, 120))).unwrap();
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&a)
        .args(["-c", "copy"])
        .arg(&mkv)
        .status()
        .unwrap();
    assert!(status.success());

    std::env::set_var("REEL_FFMPEG", &ffmpeg);
    std::env::set_var("REEL_FFPROBE", &ffprobe);
    // The probe path ffprobe takes (also for MP4 when native reading is off).
    std::env::set_var("REEL_NATIVE_PROBE", "0");
    rt.block_on(async {
        let info_a = probe(&a).await.unwrap();
        probe(&mkv).await.unwrap();
        let p = plan(&[info_a.clone(), info_a.clone()], Orientation::Landscape, Compression::Optimized);
        let target = p.target.unwrap_or_else(|| EncodeTarget::new(Orientation::Landscape, Compression::Optimized));
        let seg = dir.path().join("seg.mp4");
        normalize_clip(&a, &info_a, &target, &seg, &RunOptions::new(), &mut |_| {}).await.unwrap();
        concat_copy(&[a.clone(), b.clone()], &dir.path().join("joined.mp4"), &RunOptions::new(), &mut |_| {})
            .await
            .unwrap();
    });
    std::env::remove_var("REEL_NATIVE_PROBE");

    let text = std::fs::read_to_string(&log).expect("the wrappers ran");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("ffprobe")), "no ffprobe ran: {text}");
    assert!(
        lines.iter().filter(|l| l.starts_with("ffmpeg")).count() >= 2,
        "normalize and concat did not both run ffmpeg: {text}"
    );
    let mut opened = 0;
    for line in &lines {
        opened += inputs_whitelisted(line).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(opened >= 4, "only {opened} inputs seen: {text}");
}
