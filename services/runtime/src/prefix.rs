//! A view of a store under a key prefix (e.g. `gs://bucket/work` as the work store).

use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{ByteReader, ObjectMeta, PutMode, PutOptions, Store, StoreError};

/// Every key `k` is stored as `{prefix}/{k}` in the inner store.
pub struct PrefixStore {
    inner: Arc<dyn Store>,
    prefix: String,
}

impl PrefixStore {
    /// A view of `inner` under `prefix` (no leading or trailing `/` needed).
    pub fn new(inner: Arc<dyn Store>, prefix: &str) -> PrefixStore {
        let prefix = prefix.trim_matches('/');
        PrefixStore { inner, prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") } }
    }

    fn full(&self, key: &str) -> Result<String, StoreError> {
        crate::store::check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn strip(&self, mut meta: ObjectMeta) -> ObjectMeta {
        meta.key = meta.key.strip_prefix(&self.prefix).unwrap_or(&meta.key).to_string();
        meta
    }
}

#[async_trait]
impl Store for PrefixStore {
    fn describe(&self) -> String {
        format!("{}/{}", self.inner.describe(), self.prefix.trim_end_matches('/'))
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.inner.head(&self.full(key)?).await?.map(|m| self.strip(m)))
    }
    async fn get(&self, key: &str) -> Result<ByteReader, StoreError> {
        self.inner.get(&self.full(key)?).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(&self.full(key)?, offset, len).await
    }
    async fn put_with(&self, key: &str, body: ByteReader, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        Ok(self.strip(self.inner.put_with(&self.full(key)?, body, options).await?))
    }
    async fn put_file_with(&self, key: &str, src: &Path, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        Ok(self.strip(self.inner.put_file_with(&self.full(key)?, src, options).await?))
    }
    async fn compose(&self, sources: &[String], to: &str, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let sources = sources.iter().map(|k| self.full(k)).collect::<Result<Vec<_>, _>>()?;
        Ok(self.strip(self.inner.compose(&sources, &self.full(to)?, options).await?))
    }
    fn remote_object(&self, key: &str) -> Option<crate::store::RemoteObject> {
        self.inner.remote_object(&self.full(key).ok()?)
    }
    async fn put_copy_of(
        &self,
        source: &crate::store::RemoteObject,
        to: &str,
        options: &PutOptions,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.inner.put_copy_of(source, &self.full(to)?, options).await?.map(|m| self.strip(m)))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let all = self.inner.list(&format!("{}{prefix}", self.prefix)).await?;
        Ok(all.into_iter().map(|m| self.strip(m)).collect())
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let keys = self.inner.list_keys(&format!("{}{prefix}", self.prefix)).await?;
        Ok(keys.into_iter().map(|k| k.strip_prefix(&self.prefix).unwrap_or(&k).to_string()).collect())
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(&self.full(key)?).await
    }
    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        Ok(self.strip(self.inner.copy(&self.full(from)?, &self.full(to)?, mode).await?))
    }
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.local_path(&self.full(key).ok()?)
    }
}
