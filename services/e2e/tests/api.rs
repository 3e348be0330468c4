//! reel-api in the cluster: a reel requested over HTTP, followed to completion with
//! `reel status --api`, another user's view, cancel, and a restart with the same state.

use reel_testkit::fixtures::make_clip;
use reel_testkit::http::wait_healthy;
use reel_testkit::ports::free_port;
use reel_testkit::Cluster;
use std::time::{Duration, Instant};

/// (status, body) of one request with `token` as its bearer token.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    reel_testkit::http::request(port, method, path, &headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reel_requested_over_http_is_followed_to_the_end() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let port = free_port().unwrap();
    let api = cluster.start_api(port);
    wait_healthy(port);
    let mut clips = Vec::new();
    for i in 0..2 {
        let local = cluster.dir().join(format!("a{i}.mp4"));
        make_clip(&local, 320, 240, 1.0);
        cluster.upload(&local, &format!("clips/a{i}.mp4")).await;
        clips.push(format!("gs://{}/clips/a{i}.mp4", cluster.bucket));
    }
    let body = serde_json::json!({
        "clipPaths": clips, "outputPath": format!("gs://{}/reels/api.mp4", cluster.bucket),
        "orientation": "landscape", "compression": "optimized"
    })
    .to_string();
    assert_eq!(http(port, "POST", "/api/projects/pa/stitch", None, &body).0, 401);
    let (status, reply) = http(port, "POST", "/api/projects/pa/stitch", Some("tok-alice"), &body);
    assert_eq!(status, 202, "{reply}");
    let job = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["jobId"].as_str().unwrap().to_string();

    // Followed with the CLI against the API until it completes.
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let mut progress = 0.0;
    let last = loop {
        let out = cluster.reel(&["status", &job, "--json", "--api", &base, "--token", "tok-alice"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let now = s["progress"].as_f64().unwrap();
        assert!(now >= progress, "progress went backwards: {progress} -> {now}");
        progress = now;
        if s["status"] == "completed" {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not completed: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(last["progress"], 100.0);
    assert_eq!(last["outputPath"], format!("gs://{}/reels/api.mp4", cluster.bucket));
    assert!(last["startedAt"].is_string() && last["completedAt"].is_string());

    // Another user sees nothing; cancelling a finished job says so.
    assert_eq!(http(port, "GET", &format!("/api/jobs/{job}/status"), Some("tok-bob"), "").0, 404);
    let (status, reply) = http(port, "POST", &format!("/api/jobs/{job}/cancel"), Some("tok-alice"), "");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&reply).unwrap()["success"], false);
    let out = cluster.reel(&["jobs", "pa", "--json", "--api", &base, "--token", "tok-alice"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);

    // A restart (SIGTERM, snapshot) gives the same state.
    let before = http(port, "GET", &format!("/api/jobs/{job}/status"), Some("tok-alice"), "").1;
    cluster.signal(api, libc::SIGTERM);
    let status = cluster.programs[api].child.wait().unwrap();
    assert!(status.success());
    let port2 = free_port().unwrap();
    cluster.start_api(port2);
    wait_healthy(port2);
    let after = http(port2, "GET", &format!("/api/jobs/{job}/status"), Some("tok-alice"), "").1;
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&before).unwrap(), serde_json::from_str(&after).unwrap());
    assert_eq!(a, b);

    // No token reaches a log: not the configured ones (sent with every request above),
    // not a tampered one, not a JWT-shaped one with a bad signature.
    let jwtish = "eyJhbGciOiJSUzI1NiIsImtpZCI6Im1hbGxvcnkifQ.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl";
    assert_eq!(http(port2, "GET", "/api/projects/pa/jobs", Some(jwtish), "").0, 401);
    assert_eq!(http(port2, "GET", "/api/projects/pa/jobs", Some("tok-alice-tampered"), "").0, 401);
    let logs: Vec<&reel_testkit::Program> = cluster.programs.iter().filter(|p| p.name == "api").collect();
    assert_eq!(logs.len(), 2);
    for program in logs {
        let text = program.log_text();
        assert!(text.lines().count() > 3, "the API logged nothing to check: {text}");
        for secret in ["tok-alice", "tok-bob", jwtish, "c2lnbmF0dXJl"] {
            assert!(!text.contains(secret), "{secret:?} in {}:\n{text}", program.log.display());
        }
    }
}

/// The PIDs of `ffmpeg` processes whose parent is `parent`.
fn ffmpeg_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && comm.ends_with("(ffmpeg") {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_stitching_stops_ffmpeg_and_cleans_the_workspace() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let stitch_pid = cluster.programs[2].child.id();
    let port = free_port().unwrap();
    cluster.start_api(port);
    wait_healthy(port);
    let mut clips = Vec::new();
    for i in 0..3 {
        let local = cluster.dir().join(format!("long{i}.mp4"));
        make_clip(&local, 640, 360, 6.0);
        cluster.upload(&local, &format!("clips/long{i}.mp4")).await;
        clips.push(format!("gs://{}/clips/long{i}.mp4", cluster.bucket));
    }
    let body = serde_json::json!({
        "clipPaths": clips, "outputPath": format!("gs://{}/reels/cancelled.mp4", cluster.bucket),
        "orientation": "portrait", "compression": "high_quality"
    })
    .to_string();
    let (status, reply) = http(port, "POST", "/api/projects/pc/stitch", Some("tok-alice"), &body);
    assert_eq!(status, 202, "{reply}");
    let job = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["jobId"].as_str().unwrap().to_string();
    // Wait until ffmpeg is at work for the stitch stage.
    let start = Instant::now();
    while ffmpeg_children(stitch_pid).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(90), "stitch never started ffmpeg");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled_at = Instant::now();
    let (status, reply) = http(port, "POST", &format!("/api/jobs/{job}/cancel"), Some("tok-alice"), "");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&reply).unwrap()["success"], true);
    cluster.wait_for(Some(&job), reel_events::types::JOB_CANCELLED, Duration::from_secs(30)).await;
    while !ffmpeg_children(stitch_pid).is_empty() {
        assert!(cancelled_at.elapsed() < Duration::from_secs(5), "ffmpeg still running 5 s after cancel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "cancel took {:?}", cancelled_at.elapsed());
    use reel_runtime::Store;
    let store = cluster.emulators.store(&cluster.bucket).await;
    let left = store.list(&format!("work/jobs/{job}/")).await.unwrap();
    assert!(left.is_empty(), "workspace files left: {left:?}");
    assert!(store.head("reels/cancelled.mp4").await.unwrap().is_none(), "a cancelled job wrote its output");
    // The API reports it.
    let start = Instant::now();
    loop {
        let (_, reply) = http(port, "GET", &format!("/api/jobs/{job}/status"), Some("tok-alice"), "");
        if serde_json::from_str::<serde_json::Value>(&reply).unwrap()["status"] == "cancelled" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
