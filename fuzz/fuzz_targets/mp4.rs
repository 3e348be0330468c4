//! The native MP4/MOV header reader (`reel_media::probe_native_bytes`) on any bytes: it
//! never panics, and whatever it does answer is a whole answer (a positive duration, a
//! frame size, codec headers), which the probe's bounds check then takes without
//! panicking either. The seeds in `fuzz/seeds/mp4/` are tiny ffmpeg-made clips (moov
//! first and last); the bounded version of this property runs on every `cargo test`
//! (`services/media/src/mp4/tests.rs`, `hostile_inputs_never_panic`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reel_media::{probe_native_bytes, NativeProbe, ProbeLimits};

fuzz_target!(|input: &[u8]| {
    if let NativeProbe::Read { info, fingerprint } = probe_native_bytes(input) {
        assert!(info.duration_seconds.is_finite() && info.duration_seconds > 0.0, "{info:?}");
        assert!(info.video.width > 0 && info.video.height > 0, "{info:?}");
        assert!(fingerprint.video.is_some(), "{fingerprint:?}");
        assert_eq!(fingerprint.audio.is_some(), info.audio.is_some(), "{fingerprint:?}");
        let _ = ProbeLimits::default().check(&info);
    }
});
