//! [`StoreResolver`] for the cloud programs: `gs://bucket/key` → that bucket's
//! [`GcsStore`] (one per bucket, cached), a local path → the directory store at `/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reel_runtime::embedded::DirStore;
use reel_runtime::location::{Location, StoreResolver};
use reel_runtime::store::{Store, StoreError};

use crate::{GcsClient, GcsConfig};

/// Resolves locations to Cloud Storage buckets and local files.
pub struct CloudResolver {
    gcs: Option<GcsClient>,
    buckets: Mutex<HashMap<String, Arc<dyn Store>>>,
    local: Mutex<Option<Arc<dyn Store>>>,
}

impl std::fmt::Debug for CloudResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buckets: Vec<String> = self.buckets.lock().unwrap().keys().cloned().collect();
        f.debug_struct("CloudResolver").field("gcs", &self.gcs).field("buckets", &buckets).finish()
    }
}

impl CloudResolver {
    /// A resolver on `gcs`; without a client, `gs://` locations fail to resolve.
    pub fn new(gcs: Option<GcsClient>) -> Self {
        CloudResolver { gcs, buckets: Mutex::new(HashMap::new()), local: Mutex::new(None) }
    }

    /// A resolver with a [`GcsClient`] built from `config`.
    pub async fn connect(config: GcsConfig) -> Result<Self, StoreError> {
        Ok(Self::new(Some(GcsClient::connect(config).await?)))
    }

    fn local_store(&self) -> Result<Arc<dyn Store>, StoreError> {
        let mut local = self.local.lock().unwrap();
        if let Some(store) = local.as_ref() {
            return Ok(store.clone());
        }
        let store: Arc<dyn Store> = Arc::new(DirStore::new("/").map_err(|e| StoreError::from_io("/", e))?);
        *local = Some(store.clone());
        Ok(store)
    }
}

impl StoreResolver for CloudResolver {
    fn resolve(&self, location: &Location) -> Result<(Arc<dyn Store>, String), StoreError> {
        match location {
            Location::Gcs { bucket, key } => {
                let client = self
                    .gcs
                    .as_ref()
                    .ok_or_else(|| StoreError::Other(format!("{location}: no Cloud Storage client is configured")))?;
                let mut buckets = self.buckets.lock().unwrap();
                let store = buckets
                    .entry(bucket.clone())
                    .or_insert_with(|| Arc::new(client.store(bucket)) as Arc<dyn Store>)
                    .clone();
                Ok((store, key.clone()))
            }
            Location::Local(path) => {
                let key = path
                    .to_str()
                    .ok_or_else(|| StoreError::InvalidKey(path.display().to_string(), "not UTF-8".into()))?
                    .trim_start_matches('/')
                    .to_string();
                Ok((self.local_store()?, key))
            }
        }
    }
}
