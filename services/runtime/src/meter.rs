//! What one delivery did to storage: how many operations it asked for, and how many
//! bytes passed through this process in each direction.
//!
//! The worker hands every handler its stores wrapped in a [`MeteredStore`] (the work
//! store, and every store the [`MeteredResolver`] resolves), all counting into one
//! [`StorageMeter`] per delivery, and logs the totals with the delivery's outcome
//! (`storage_ops`, `bytes_read`, `bytes_written` on its "stage done" line). Bytes are
//! what went through the program: a server-side copy or compose, and a directory store's
//! hard link or `copy_file_range`, move none through it and count as one operation.

use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

use crate::location::{Location, StoreResolver};
use crate::store::{ByteReader, ObjectMeta, PutMode, PutOptions, RemoteObject, Store, StoreError};

/// Counters of one delivery's storage use. Cheap to share.
#[derive(Debug, Default)]
pub struct StorageMeter {
    operations: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// A [`StorageMeter`]'s totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageUse {
    /// Requests made to a store (each part of a ranged read, each compose call, …).
    pub operations: u64,
    /// Bytes read from stores into this process.
    pub bytes_read: u64,
    /// Bytes written from this process to stores.
    pub bytes_written: u64,
}

impl StorageMeter {
    /// The totals so far.
    pub fn totals(&self) -> StorageUse {
        StorageUse {
            operations: self.operations.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }

    fn op(&self, n: u64) {
        self.operations.fetch_add(n, Ordering::Relaxed);
    }
}

/// A store that counts what its callers do with it into a [`StorageMeter`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    meter: Arc<StorageMeter>,
}

impl MeteredStore {
    /// `inner`, counted into `meter`.
    pub fn new(inner: Arc<dyn Store>, meter: Arc<StorageMeter>) -> MeteredStore {
        MeteredStore { inner, meter }
    }
}

/// A reader that counts the bytes that pass through it.
struct Counted {
    inner: ByteReader,
    meter: Arc<StorageMeter>,
    written: bool,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        let counter = if self.written { &self.meter.bytes_written } else { &self.meter.bytes_read };
        counter.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl MeteredStore {
    fn counted(&self, inner: ByteReader, written: bool) -> ByteReader {
        Box::pin(Counted { inner, meter: self.meter.clone(), written })
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.meter.op(1);
        self.inner.head(key).await
    }

    async fn get(&self, key: &str) -> Result<ByteReader, StoreError> {
        self.meter.op(1);
        Ok(self.counted(self.inner.get(key).await?, false))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.meter.op(1);
        let bytes = self.inner.get_range(key, offset, len).await?;
        self.meter.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn put_with(&self, key: &str, body: ByteReader, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        self.meter.op(1);
        self.inner.put_with(key, self.counted(body, true), options).await
    }

    async fn put_file_with(&self, key: &str, src: &Path, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        self.meter.op(1);
        let meta = self.inner.put_file_with(key, src, options).await?;
        // A directory store links or copies the file locally; anything else streamed it.
        if self.inner.local_path(key).is_none() {
            self.meter.bytes_written.fetch_add(meta.size, Ordering::Relaxed);
        }
        Ok(meta)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.meter.op(1);
        self.inner.list(prefix).await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.meter.op(1);
        self.inner.list_keys(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.meter.op(1);
        self.inner.delete(key).await
    }

    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        self.meter.op(1);
        self.inner.copy(from, to, mode).await
    }

    async fn compose(&self, sources: &[String], to: &str, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        // Cloud Storage composes at most 32 components per call, nesting beyond.
        self.meter.op((sources.len() as u64).div_ceil(31).max(1));
        self.inner.compose(sources, to, options).await
    }

    fn remote_object(&self, key: &str) -> Option<RemoteObject> {
        self.inner.remote_object(key)
    }

    async fn put_copy_of(
        &self,
        source: &RemoteObject,
        to: &str,
        options: &PutOptions,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        self.meter.op(1);
        self.inner.put_copy_of(source, to, options).await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.local_path(key)
    }
}

/// A resolver whose stores count into one [`StorageMeter`].
pub struct MeteredResolver {
    inner: Arc<dyn StoreResolver>,
    meter: Arc<StorageMeter>,
}

impl MeteredResolver {
    /// `inner`'s stores, counted into `meter`.
    pub fn new(inner: Arc<dyn StoreResolver>, meter: Arc<StorageMeter>) -> MeteredResolver {
        MeteredResolver { inner, meter }
    }
}

impl StoreResolver for MeteredResolver {
    fn resolve(&self, location: &Location) -> Result<(Arc<dyn Store>, String), StoreError> {
        let (store, key) = self.inner.resolve(location)?;
        Ok((Arc::new(MeteredStore::new(store, self.meter.clone())), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::DirStore;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn counts_operations_and_the_bytes_that_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let meter = Arc::new(StorageMeter::default());
        let store = MeteredStore::new(Arc::new(DirStore::new(dir.path()).unwrap()), meter.clone());
        store.put("a", Box::pin(std::io::Cursor::new(vec![7u8; 1000])), PutMode::Overwrite).await.unwrap();
        let mut read = Vec::new();
        store.get("a").await.unwrap().read_to_end(&mut read).await.unwrap();
        assert_eq!(store.get_range("a", 10, 100).await.unwrap().len(), 100);
        store.compose(&["a".into(), "a".into()], "b", &PutOptions::new(PutMode::Overwrite)).await.unwrap();
        assert!(store.head("b").await.unwrap().is_some());
        assert_eq!(
            meter.totals(),
            StorageUse { operations: 5, bytes_read: 1100, bytes_written: 1000 },
            "compose moves nothing through the caller"
        );
    }
}
