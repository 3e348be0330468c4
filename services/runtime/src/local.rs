//! Local files as a store: the resolver the embedded pipeline uses.

use std::sync::Arc;

use crate::embedded::DirStore;
use crate::location::{Location, StoreResolver};
use crate::store::{Store, StoreError};

/// Resolves local paths through a [`DirStore`] rooted at `/`; refuses `gs://`
/// locations (those need the cloud programs, which wire in `reel-gcp`).
pub struct LocalResolver {
    root: Arc<dyn Store>,
}

impl LocalResolver {
    /// A resolver for this machine's files.
    pub fn new() -> LocalResolver {
        LocalResolver { root: Arc::new(DirStore::new("/").expect("the root directory exists")) }
    }
}

impl Default for LocalResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreResolver for LocalResolver {
    fn resolve(&self, location: &Location) -> Result<(Arc<dyn Store>, String), StoreError> {
        match location {
            Location::Local(path) => {
                let key = path.to_string_lossy().trim_start_matches('/').to_string();
                Ok((self.root.clone(), key))
            }
            Location::Gcs { bucket, .. } => Err(StoreError::PermissionDenied(format!(
                "gs://{bucket}: Cloud Storage paths need the cloud pipeline (reel submit), not the local one"
            ))),
        }
    }
}
