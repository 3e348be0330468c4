//! The Bus conformance suite against the Pub/Sub emulator (one per test binary,
//! started on first use, killed when the binary exits).

use std::sync::Arc;

use reel_testkit::Emulators;

reel_runtime::bus_conformance_tests!(async { Arc::new(Emulators::shared().bus().await) });
