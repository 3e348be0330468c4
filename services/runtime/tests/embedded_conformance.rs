//! The conformance suite on the embedded implementations: [`EmbeddedBus`] and [`DirStore`].

use reel_runtime::embedded::{DirStore, EmbeddedBus};
use std::sync::Arc;

/// A fresh bus per test.
async fn make_bus() -> Arc<EmbeddedBus> {
    Arc::new(EmbeddedBus::new())
}

/// A store per test in its own directory under cargo's per-target temp dir (a
/// `TempDir` guard could not outlive the expression, and the cases clean up after
/// themselves).
async fn make_store() -> Arc<DirStore> {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("dir-store-conformance")
        .join(uuid::Uuid::new_v4().simple().to_string());
    Arc::new(DirStore::new(root).expect("creating the store root"))
}

reel_runtime::bus_conformance_tests!(async { make_bus().await });
reel_runtime::store_conformance_tests!(async { make_store().await });
