//! `reel stitch` as a user runs it: the binary, real ffmpeg, a private state dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn reel(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_reel"))
            .args(args)
            .current_dir(self.dir.path())
            .env("REEL_HOME", self.path("state"))
            .env_remove("LOG_LEVEL")
            .output()
            .expect("run reel")
    }

    /// A test clip made with ffmpeg's test sources.
    fn clip(&self, name: &str, w: u32, h: u32, seconds: f64, audio: bool, extra: &[&str]) -> PathBuf {
        let out = self.path(name);
        let mut cmd = Command::new("ffmpeg");
        cmd.args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={w}x{h}:rate=30:duration={seconds}"),
        ]);
        if audio {
            cmd.args(["-f", "lavfi", "-i", &format!("sine=frequency=440:sample_rate=48000:duration={seconds}")]);
        }
        cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]);
        if audio {
            cmd.args(["-c:a", "aac", "-ac", "2"]);
        }
        cmd.args(extra);
        cmd.arg(&out);
        let status = cmd.status().unwrap();
        assert!(status.success(), "ffmpeg could not make {name}");
        out
    }

    fn log_types(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.path("state/events.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["message"]["attributes"]["ce-type"].as_str().map(str::to_string))
            .collect()
    }

    fn completed_event(&self) -> serde_json::Value {
        self.log_data("phoenix.reel.v1.job.completed").pop().expect("a job.completed on the log")
    }

    /// The payloads of the events of type `ty` on the local log, in order.
    fn log_data(&self, ty: &str) -> Vec<serde_json::Value> {
        use base64::Engine;
        let text = std::fs::read_to_string(self.path("state/events.jsonl")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"]["attributes"]["ce-type"] == ty)
            .map(|line| {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(line["message"]["data"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice(&data).unwrap()
            })
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

struct Probe {
    duration: f64,
    video: Vec<(u32, u32)>,
    audio_streams: usize,
}

fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-show_format", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"].as_array().unwrap();
    Probe {
        duration: v["format"]["duration"].as_str().unwrap().parse().unwrap(),
        video: streams
            .iter()
            .filter(|s| s["codec_type"] == "video")
            .map(|s| (s["width"].as_u64().unwrap() as u32, s["height"].as_u64().unwrap() as u32))
            .collect(),
        audio_streams: streams.iter().filter(|s| s["codec_type"] == "audio").count(),
    }
}

/// `ffmpeg -v error -i OUT -f null -` prints nothing for a sound file.
fn decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]).output().unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "decode errors: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn clips_of_one_format_are_joined_by_stream_copy() {
    let sb = Sandbox::new();
    let clips: Vec<PathBuf> =
        (0..3).map(|i| sb.clip(&format!("c{i}.mp4"), 360, 640, 1.0 + i as f64 * 0.5, true, &[])).collect();
    let mut args = vec!["stitch"];
    let names: Vec<String> = clips.iter().map(|c| c.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    args.extend(["-o", "out.mp4"]);
    let out = sb.reel(&args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mode copy"), "{}", text(&out));
    assert!(stdout.contains(&sb.path("out.mp4").display().to_string()) || stdout.contains("out.mp4"));
    let p = probe(&sb.path("out.mp4"));
    assert_eq!(p.video, vec![(360, 640)]);
    assert_eq!(p.audio_streams, 1);
    assert!((p.duration - 4.5).abs() <= 0.2, "duration {} != 4.5", p.duration);
    decodes_cleanly(&sb.path("out.mp4"));
    let completed = sb.completed_event();
    assert_eq!(completed["mode"], "copy");
    // Joined by zero-copy assembly: no fallback to ffmpeg's concat to report.
    assert_eq!(completed["warnings"], serde_json::json!([]), "{completed}");
    assert_eq!(completed["sizeBytes"].as_u64().unwrap(), std::fs::metadata(sb.path("out.mp4")).unwrap().len());
    // No work files are left behind.
    let work = sb.path("state/work/jobs");
    assert!(!work.exists() || std::fs::read_dir(&work).unwrap().next().is_none(), "workspace not cleaned");
    // Every progress event estimated the completion, and the job taught the rates the
    // next job's estimates come from.
    let progress = sb.log_data("phoenix.reel.v1.job.progress");
    assert!(!progress.is_empty());
    assert!(progress.iter().all(|p| p["estimatedCompletion"].is_string()), "{progress:?}");
    let rates: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path("state/work/control/eta/rates.json")).unwrap()).unwrap();
    assert_eq!(rates["jobs"], 1, "{rates}");
    let legs: Vec<&str> = rates["legs"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(legs, ["download", "finalize", "stitch-copy", "upload", "validate"], "{rates}");
}

/// Clips the zero-copy assembler declines (here: one whose audio runs half a second past
/// its video, which would put every later clip out of step) are still stream-copied, by
/// ffmpeg's concat, and the job's warnings say why.
#[test]
fn clips_the_assembler_declines_are_joined_by_concat_saying_why() {
    let sb = Sandbox::new();
    let a = sb.clip("a.mp4", 320, 240, 1.0, true, &[]);
    let long_audio = sb.path("long audio.mp4");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=1"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=1.5"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2"])
        .arg(&long_audio)
        .status()
        .unwrap();
    assert!(st.success());
    let out = sb.reel(&[
        "stitch",
        long_audio.to_str().unwrap(),
        a.to_str().unwrap(),
        "-o",
        "reel.mp4",
        "--orientation",
        "landscape",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let completed = sb.completed_event();
    assert_eq!(completed["mode"], "copy", "{completed}");
    let warnings = completed["warnings"].to_string();
    assert!(
        warnings.contains("zero-copy assembly declined (audio and video would be more than a frame apart"),
        "{warnings}"
    );
    assert!(warnings.contains("joined with ffmpeg's concat"), "{warnings}");
    let p = probe(&sb.path("reel.mp4"));
    assert_eq!(p.video, vec![(320, 240)]);
    assert_eq!(p.audio_streams, 1);
    decodes_cleanly(&sb.path("reel.mp4"));
}

/// Issue 14's defect: clips that agree on codec, size, rate and audio layout but come
/// from other encoders (other x264 settings, one tagged BT.709 as phones tag it) plan as
/// a stream copy; their H.264 headers differ, so neither the zero-copy join nor the
/// concat join can take them. The job must end in a correct re-encoded reel that says
/// why, not fail.
#[test]
fn clips_with_other_codec_headers_are_reencoded_not_failed() {
    let sb = Sandbox::new();
    let plain = sb.clip("plain.mp4", 320, 240, 1.0, true, &[]);
    let phone = sb.clip(
        "phone.mp4",
        320,
        240,
        1.5,
        true,
        &["-x264-params", "ref=3", "-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709"],
    );
    let out = sb.reel(&[
        "stitch",
        plain.to_str().unwrap(),
        phone.to_str().unwrap(),
        "-o",
        "reel.mp4",
        "--orientation",
        "landscape",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mode reencode"), "{}", text(&out));
    let types = sb.log_types();
    assert!(!types.iter().any(|t| t == "phoenix.reel.v1.job.failed"), "{types:?}");
    let completed = sb.completed_event();
    assert_eq!(completed["mode"], "reencode");
    let warnings: Vec<&str> = completed["warnings"].as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("zero-copy assembly declined") && w.contains("sample description")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.contains("re-encoded")), "{warnings:?}");
    let p = probe(&sb.path("reel.mp4"));
    assert_eq!(p.video, vec![(1920, 1080)]);
    assert_eq!(p.audio_streams, 1);
    assert!((p.duration - 2.5).abs() <= 0.05, "duration {} != 2.5", p.duration);
    decodes_cleanly(&sb.path("reel.mp4"));
}

#[test]
fn mixed_clips_are_reencoded_to_the_orientation_with_audio_for_silent_and_rotated_clips() {
    let sb = Sandbox::new();
    let a = sb.clip("wide.mp4", 320, 180, 1.0, true, &[]);
    let b = sb.clip("silent 4x3.mp4", 320, 240, 1.0, false, &[]);
    // A phone clip: stored landscape, displayed portrait.
    let c = sb.clip("phone.mov", 320, 180, 1.0, true, &["-metadata:s:v:0", "rotate=90"]);
    let out = sb.reel(&[
        "stitch",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
        "-o",
        "reel.mp4",
        "--orientation",
        "portrait",
        "--compression",
        "small",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mode reencode"), "{}", text(&out));
    let p = probe(&sb.path("reel.mp4"));
    assert_eq!(p.video, vec![(1080, 1920)]);
    assert_eq!(p.audio_streams, 1);
    assert!((p.duration - 3.0).abs() <= 0.2, "duration {}", p.duration);
    decodes_cleanly(&sb.path("reel.mp4"));

    let out = sb.reel(&[
        "stitch",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-o",
        "square.mp4",
        "--orientation",
        "square",
        "--compression",
        "small",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(probe(&sb.path("square.mp4")).video, vec![(1080, 1080)]);
}

#[test]
fn a_corrupt_clip_is_skipped_and_named() {
    let sb = Sandbox::new();
    let a = sb.clip("a.mp4", 320, 240, 1.0, true, &[]);
    let b = sb.clip("b.mp4", 320, 240, 1.0, true, &[]);
    let broken = sb.path("broken clip's #2.mp4");
    std::fs::write(&broken, b"this is not a video at all").unwrap();
    let out = sb.reel(&["stitch", a.to_str().unwrap(), broken.to_str().unwrap(), b.to_str().unwrap(), "-o", "out.mp4"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped") && stdout.contains("broken clip's #2.mp4"), "{}", text(&out));
    let completed = sb.completed_event();
    let skipped = completed["skippedClips"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["path"].as_str().unwrap().ends_with("broken clip's #2.mp4"));
    assert!((probe(&sb.path("out.mp4")).duration - 2.0).abs() <= 0.2);
}

#[test]
fn fewer_than_two_good_clips_fail_with_insufficient_clips_and_no_output() {
    let sb = Sandbox::new();
    let a = sb.clip("a.mp4", 320, 240, 1.0, true, &[]);
    let broken = sb.path("broken.mp4");
    std::fs::write(&broken, vec![0u8; 4096]).unwrap();
    let out = sb.reel(&["stitch", a.to_str().unwrap(), broken.to_str().unwrap(), "-o", "out.mp4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("insufficient_clips"), "{}", text(&out));
    assert!(!sb.path("out.mp4").exists());
    assert!(sb.log_types().iter().any(|t| t == "phoenix.reel.v1.job.failed"));
}

#[test]
fn bad_input_exits_non_zero_naming_the_problem() {
    let sb = Sandbox::new();
    let a = sb.clip("a.mp4", 320, 240, 1.0, true, &[]);
    let b = sb.clip("b.mp4", 320, 240, 1.0, true, &[]);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["stitch", a, "missing.mp4", "-o", "o.mp4"], "clip not found: missing.mp4"),
        (vec!["stitch", a, "-o", "o.mp4"], "at least 2 clips"),
        (vec!["stitch", a, b, "-o", "o.mp4", "--compression", "tiny"], "tiny"),
        (vec!["stitch", a, b, "-o", "o.mp4", "--orientation", "diagonal"], "diagonal"),
        (vec!["stitch", a, b, "-o", "/nonexistent-dir/o.mp4"], "does not exist"),
        (vec!["stitch", a, b, "-o", "o.avi"], ".mp4"),
    ];
    for (args, needle) in cases {
        let out = sb.reel(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in\n{stderr}");
    }
    assert!(!sb.path("o.mp4").exists(), "partial output left behind");

    // Without ffmpeg (or ffprobe) it says what to install, before doing anything.
    for (var, missing) in [("REEL_FFMPEG", "ffmpeg"), ("REEL_FFPROBE", "ffprobe"), ("PATH", "ffmpeg")] {
        let value = if var == "PATH" {
            sb.path("empty-bin").display().to_string()
        } else {
            sb.path(&format!("no-{missing}")).display().to_string()
        };
        let out = Command::new(env!("CARGO_BIN_EXE_reel"))
            .args(["stitch", a, b, "-o", "o.mp4"])
            .current_dir(sb.dir.path())
            .env("REEL_HOME", sb.path("state"))
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}: succeeded without {missing}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not installed") && stderr.contains("apt-get install ffmpeg") && stderr.contains(missing),
            "{var}: {stderr}"
        );
        assert!(!sb.path("o.mp4").exists());
    }
}

/// The output rule on a laptop: a file reel did not write is never replaced, not even with
/// --overwrite, and the refusal names it before any work is done; reel's own earlier reel
/// is replaced with --overwrite (refused, naming the flag, without it); and the same
/// command run twice with --overwrite works both times.
#[test]
fn an_existing_output_is_replaced_only_if_reel_wrote_it_and_overwrite_is_given() {
    let sb = Sandbox::new();
    let a = sb.clip("a.mp4", 320, 240, 1.0, true, &[]);
    let b = sb.clip("b.mp4", 320, 240, 1.0, true, &[]);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    std::fs::write(sb.path("exists.mp4"), b"keep me").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["stitch", a, b, "-o", "exists.mp4"];
        args.extend(extra);
        let out = sb.reel(&args);
        assert!(!out.status.success(), "{args:?} replaced a file reel did not write");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("exists.mp4") && stderr.contains("not written by"), "{args:?}: {stderr}");
        assert_eq!(std::fs::read(sb.path("exists.mp4")).unwrap(), b"keep me");
    }
    assert!(sb.log_types().is_empty(), "a refused output still started a job: {:?}", sb.log_types());

    let out = sb.reel(&["stitch", a, b, "-o", "reel.mp4"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!((probe(&sb.path("reel.mp4")).duration - 2.0).abs() <= 0.2);
    let out = sb.reel(&["stitch", a, b, a, "-o", "reel.mp4"]);
    assert!(!out.status.success(), "reel's earlier output was replaced without --overwrite");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --overwrite"), "{}", text(&out));
    assert!((probe(&sb.path("reel.mp4")).duration - 2.0).abs() <= 0.2, "the refused run changed the reel");
    let out = sb.reel(&["stitch", a, b, a, "-o", "reel.mp4", "--overwrite"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!((probe(&sb.path("reel.mp4")).duration - 3.0).abs() <= 0.2, "--overwrite did not replace the reel");

    // The very same command twice.
    for run in 1..=2 {
        let out = sb.reel(&["stitch", b, a, "-o", "twice.mp4", "--overwrite"]);
        assert!(out.status.success(), "run {run}: {}", text(&out));
        assert_eq!(probe(&sb.path("twice.mp4")).video.len(), 1, "run {run}");
    }
}

#[test]
fn killed_mid_job_and_run_again_resumes_without_redoing_finished_stages() {
    let sb = Sandbox::new();
    let clips: Vec<PathBuf> =
        (0..4).map(|i| sb.clip(&format!("k{i}.mp4"), 320 + 16 * i, 240, 2.0, true, &[])).collect();
    let mut args: Vec<String> = vec!["stitch".into()];
    args.extend(clips.iter().map(|c| c.display().to_string()));
    args.extend([
        "-o".into(),
        "out.mp4".into(),
        "--compression".into(),
        "high_quality".into(),
        "--orientation".into(),
        "landscape".into(),
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&args)
        .current_dir(sb.dir.path())
        .env("REEL_HOME", sb.path("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until download has finished (stitching is under way), then SIGKILL.
    let started = std::time::Instant::now();
    loop {
        if sb.log_types().iter().any(|t| t == "phoenix.reel.v1.job.downloaded") {
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "download never finished");
        assert!(child.try_wait().unwrap().is_none(), "reel ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!sb.log_types().iter().any(|t| t == "phoenix.reel.v1.job.completed"), "finished before the kill");
    assert!(!sb.path("out.mp4").exists());

    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sb.reel(&refs);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed job"), "{}", text(&out));
    let types = sb.log_types();
    let count = |t: &str| types.iter().filter(|x| x.as_str() == t).count();
    assert_eq!(count("phoenix.reel.v1.stitch.requested"), 1, "the request was sent again");
    assert_eq!(count("phoenix.reel.v1.job.validated"), 1, "validate ran again");
    assert_eq!(count("phoenix.reel.v1.job.downloaded"), 1, "download ran again");
    assert_eq!(count("phoenix.reel.v1.job.completed"), 1);
    let p = probe(&sb.path("out.mp4"));
    assert_eq!(p.video, vec![(1920, 1080)]);
    assert!((p.duration - 8.0).abs() <= 0.2, "duration {}", p.duration);
}

#[test]
fn status_and_jobs_fold_the_local_log() {
    let sb = Sandbox::new();
    let a = sb.clip("a.mp4", 320, 240, 1.0, true, &[]);
    let b = sb.clip("b.mp4", 320, 240, 1.0, true, &[]);
    let out = sb.reel(&["stitch", a.to_str().unwrap(), b.to_str().unwrap(), "-o", "out.mp4"]);
    assert!(out.status.success(), "{}", text(&out));
    let job_id = sb.completed_event()["jobId"].as_str().unwrap().to_string();
    let out = sb.reel(&["status", &job_id, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["progress"], 100.0);
    assert_eq!(status["stage"], "finalize");
    assert!(status["outputPath"].as_str().unwrap().ends_with("out.mp4"));
    // What it cost, added up from every delivery of every stage.
    let cost = &status["cost"];
    for field in ["cpuSeconds", "memoryGibSeconds", "storageOperations", "estimatedUsd"] {
        assert!(cost[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {status}");
    }
    assert_eq!(&sb.completed_event()["cost"], cost, "job.completed says the same");
    let out = sb.reel(&["cost", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = &lines.as_array().unwrap()[0];
    assert_eq!(
        (line["projectId"].as_str(), line["jobs"].as_u64(), line["completed"].as_u64()),
        (Some("local"), Some(1), Some(1))
    );
    assert_eq!(line["estimatedUsd"], cost["estimatedUsd"]);
    let out = sb.reel(&["cost"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("total"), "{}", text(&out));
    let out = sb.reel(&["cost", "--since", "2999-01-01", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
    let out = sb.reel(&["jobs", "local", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    let out = sb.reel(&["status", "job_nope"]);
    assert!(!out.status.success());
}

#[test]
fn generate_makes_a_clip_per_prompt_and_stitches_them_into_a_reel() {
    let sb = Sandbox::new();
    let out = sb.reel(&[
        "generate",
        "a lighthouse at dawn",
        "gulls over the sea: 3 of them, «quoted»",
        "--seconds",
        "2",
        "--stitch",
        "-o",
        "reel.mp4",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let clips: Vec<&str> = stdout.lines().filter(|l| l.ends_with(".mp4") && l.contains("clip-")).collect();
    assert_eq!(clips.len(), 2, "{}", text(&out));
    for clip in &clips {
        let p = probe(Path::new(clip));
        assert_eq!(p.video, vec![(540, 960)], "a portrait test pattern");
        assert!((p.duration - 2.0).abs() <= 0.1, "{clip}: {}", p.duration);
    }
    let reel = probe(&sb.path("reel.mp4"));
    assert!((reel.duration - 4.0).abs() <= 0.2, "reel duration {}", reel.duration);
    assert_eq!(reel.audio_streams, 1);
    decodes_cleanly(&sb.path("reel.mp4"));
    // Two jobs on the log, each completed once: the clips', then the reel's.
    let completed = sb.log_data("phoenix.reel.v1.job.completed");
    let types: Vec<&str> = completed.iter().filter_map(|c| c["type"].as_str()).collect();
    assert_eq!(types, ["video_generation", "video_stitching"], "{completed:?}");
    // The same command again makes nothing new without --overwrite: the reel is there.
    let again = sb.reel(&["generate", "a lighthouse at dawn", "--stitch", "-o", "reel.mp4", "--quiet"]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"), "{}", text(&again));
}
