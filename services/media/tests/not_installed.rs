//! With the binaries pointed somewhere that does not exist, every call says
//! `NotInstalled`, names the program, and is retried (an operator fixes the image).

use reel_events::ErrorType;
use reel_media::*;

#[test]
fn missing_binaries_are_reported() {
    let config = MediaConfig::default().with_ffmpeg("/nonexistent/ffmpeg").with_ffprobe("/nonexistent/ffprobe");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.mp4");
    std::fs::write(&file, b"whatever").unwrap();

    let e = rt.block_on(probe(&config, &file)).unwrap_err();
    assert!(matches!(e, MediaError::NotInstalled { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/ffprobe"), "{e}");
    let e = ffmpeg_version(&config).unwrap_err();
    assert!(matches!(e, MediaError::NotInstalled { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/ffmpeg"), "{e}");
    let spec = SampleSpec { width: 160, height: 90, seconds: 1.0, fps: 30, audio: true, label: "x".into() };
    let e = rt.block_on(make_sample_clip(&config, &dir.path().join("b.mp4"), &spec)).unwrap_err();
    assert!(matches!(e, MediaError::NotInstalled { .. }), "{e:?}");
    assert_eq!(e.verdict(), Verdict::retry(ErrorType::Internal));
}
