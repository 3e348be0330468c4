//! The Store conformance suite against fake-gcs-server (one per test binary, started on
//! first use, killed when the binary exits).

use std::sync::Arc;

use reel_gcp::testing::Emulators;

reel_runtime::store_conformance_tests!(async { Arc::new(Emulators::shared().store("reel-conformance").await) });
