//! With the binaries pointed somewhere that does not exist, every call says
//! `NotInstalled`. Its own test binary, because it changes the environment.

use reel_media::*;

#[test]
fn missing_binaries_are_reported() {
    // Safety: this binary has exactly one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("REEL_FFMPEG", "/nonexistent/ffmpeg");
        std::env::set_var("REEL_FFPROBE", "/nonexistent/ffprobe");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.mp4");
    std::fs::write(&file, b"whatever").unwrap();

    let e = rt.block_on(probe(&file)).unwrap_err();
    assert!(matches!(e, MediaError::NotInstalled(_)), "{e:?}");
    let e = ffmpeg_version().unwrap_err();
    assert!(matches!(e, MediaError::NotInstalled(_)), "{e:?}");
    let spec = SampleSpec { width: 160, height: 90, seconds: 1.0, fps: 30, audio: true, label: "x".into() };
    let e = rt.block_on(make_sample_clip(&dir.path().join("b.mp4"), &spec)).unwrap_err();
    assert!(matches!(e, MediaError::NotInstalled(_)), "{e:?}");
    assert!(!e.is_transient());
}
