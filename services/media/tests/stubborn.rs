//! An "ffmpeg" that ignores SIGTERM is killed after the grace period.
//! Its own test binary, because it points `REEL_FFMPEG` at a stub.

use reel_media::*;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn sigterm_ignored_then_killed() {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("ffmpeg");
    std::fs::write(&stub, "#!/bin/sh\ntrap '' TERM\nwhile true; do sleep 0.1; done\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Safety: this binary has exactly one test, so no other thread reads the environment.
    unsafe { std::env::set_var("REEL_FFMPEG", &stub) };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let out = dir.path().join("x.mp4");
    let opts = RunOptions::new().with_timeout(Duration::from_millis(300));
    let t = Instant::now();
    // The stub never reads its arguments; any call with a deadline will do.
    let info = reel_events::ClipInfo {
        duration_seconds: 1.0,
        container: "mov,mp4,m4a,3gp,3g2,mj2".into(),
        video: reel_events::VideoInfo {
            codec: "h264".into(),
            width: 160,
            height: 90,
            pix_fmt: "yuv420p".into(),
            frame_rate: "30/1".into(),
            time_base: "1/15360".into(),
            rotation: 0,
        },
        audio: None,
    };
    let target = EncodeTarget {
        width: 160,
        height: 90,
        ..EncodeTarget::new(reel_events::Orientation::Landscape, reel_events::Compression::Small)
    };
    let res = rt.block_on(normalize_clip(&stub, &info, &target, &out, &opts, &mut |_| {}));
    let took = t.elapsed();
    assert!(matches!(res, Err(MediaError::Timeout)), "{res:?}");
    // 0.3 s deadline + 2 s grace after SIGTERM, then SIGKILL.
    assert!(took >= Duration::from_millis(2200) && took < Duration::from_secs(4), "{took:?}");
    assert!(!out.exists());
}
