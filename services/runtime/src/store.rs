//! Object storage: where clips come from, where work files live between stages, and
//! where reels go.
//!
//! The contract is Cloud Storage's, reduced to what the stages need. Implementations:
//! [`crate::embedded::DirStore`] (a directory) and `reel-gcp`'s Cloud Storage store,
//! both passing `conformance` (feature `conformance`).
//!
//! - Keys are `/`-separated relative names without `..`, empty segments or a leading `/`.
//! - Reads and writes are streamed: no implementation holds a whole object in memory.
//! - A put is atomic: readers see the old object (or none) until the new one is whole.
//! - [`PutMode::CreateOnly`] fails with [`StoreError::AlreadyExists`] if the key exists,
//!   atomically (Cloud Storage: `ifGenerationMatch=0`; directory: `link(2)`).
//! - [`PutMode::IfGeneration`]`(g)` replaces the object only if its current generation
//!   is exactly `g`, else fails with [`StoreError::PreconditionFailed`] and writes nothing
//!   (Cloud Storage: `ifGenerationMatch=g`; directory: the check and the rename happen
//!   under an exclusive `flock(2)` of the target's directory, which every put of the
//!   directory store takes, so it is atomic against every other reel writer — not
//!   against a program that writes the file behind reel's back).
//! - Objects carry custom metadata ([`ObjectMeta::metadata`], string to string: Cloud
//!   Storage's custom metadata; directory: `user.reel.*` extended attributes). A write
//!   sets exactly [`PutOptions::metadata`] (a put without metadata leaves none); a copy
//!   carries the source's. [`Store::head`] returns it; [`Store::list`] may leave it
//!   empty (the directory store does). Where the directory's filesystem has no user
//!   extended attributes (some tmpfs, FAT, some network mounts), writes still succeed
//!   and the metadata reads empty.
//! - [`Store::delete`] of a missing key is not an error.
//!
//! Contract change (issue 12, output ownership): `ObjectMeta` gained `metadata`,
//! `PutMode` gained `IfGeneration`, `StoreError` gained `PreconditionFailed`, and writes
//! take [`PutOptions`] through [`Store::put_with`] and [`Store::put_file_with`]; [`Store::put`]
//! is the wrapper without metadata that existing callers keep using.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reel_events::{Classify, ErrorType, Verdict};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A streamed object body.
pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;

/// Metadata of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key within its store.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C (Castagnoli) of the content.
    pub crc32c: u32,
    /// Increases on every write of the key (Cloud Storage generation; directory: mtime ns).
    pub generation: i64,
    /// Last write time.
    pub updated: DateTime<Utc>,
    /// Custom metadata (Cloud Storage custom metadata; directory: `user.reel.*` extended
    /// attributes). Returned by [`Store::head`] and by puts and copies; [`Store::list`]
    /// may leave it empty.
    pub metadata: BTreeMap<String, String>,
}

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] if the key exists.
    CreateOnly,
    /// Replace the object only if its current generation is exactly this one; fail with
    /// [`StoreError::PreconditionFailed`] otherwise (also when the key is missing).
    IfGeneration(i64),
}

/// How a write is done: its [`PutMode`] and the custom metadata the new object carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOptions {
    /// Whether the write may replace an existing object.
    pub mode: PutMode,
    /// The new object's custom metadata (exactly this: nothing of a replaced object's
    /// metadata is kept).
    pub metadata: BTreeMap<String, String>,
}

impl PutOptions {
    /// `mode` without metadata.
    pub fn new(mode: PutMode) -> PutOptions {
        PutOptions { mode, metadata: BTreeMap::new() }
    }

    /// The same, with `metadata`.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> PutOptions {
        self.metadata = metadata;
        self
    }
}

impl From<PutMode> for PutOptions {
    fn from(mode: PutMode) -> PutOptions {
        PutOptions::new(mode)
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object under this key. Permanent for this key.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A create-only put found the key taken. Nothing was written.
    #[error("object already exists: {0}")]
    AlreadyExists(String),
    /// An [`PutMode::IfGeneration`] write found another generation (or none): someone
    /// replaced or deleted the object meanwhile. Nothing was written.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Credentials refused (HTTP 401/403). Permanent; fail fast.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The key is not acceptable (`..`, empty segment, …). Permanent.
    #[error("invalid key {0:?}: {1}")]
    InvalidKey(String, String),
    /// Worth retrying: timeouts, 429, 5xx, connection resets.
    #[error("transient storage error: {0}")]
    Transient(String),
    /// Local disk is full (ENOSPC). Transient once temp files are cleaned.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Anything else (a 400, a local I/O error of no known kind). Permanent.
    #[error("storage error: {0}")]
    Other(String),
}

/// The error matrix for storage, decided here and nowhere else:
///
/// | error | verdict |
/// | --- | --- |
/// | `Transient` (timeout, 429, 5xx, reset) | retry, `internal` |
/// | `DiskFull` | retry, `resource_exhausted` (temp files are cleaned between attempts) |
/// | `PermissionDenied` (401/403) | fail fast, `permission_denied` |
/// | `NotFound` | fail, `not_found` |
/// | `InvalidKey` | fail, `invalid_request` |
/// | `AlreadyExists`, `PreconditionFailed`, `Other` | fail, `internal` |
///
/// `AlreadyExists` and `PreconditionFailed` are the two ways a conditional write loses
/// to another writer. Repeating the call cannot succeed (the object it expected is gone),
/// so neither is retried; what the conflict *means* belongs to the caller that chose the
/// condition, which handles it before it reaches this table (the project lock reads
/// `AlreadyExists` as `job_already_running`; upload reads both as `permission_denied`,
/// the output rule of `crate::output`). Reaching the table, a conflict is a bug of
/// reel's: `internal`.
impl Classify for StoreError {
    fn verdict(&self) -> Verdict {
        match self {
            StoreError::Transient(_) => Verdict::retry(ErrorType::Internal),
            StoreError::DiskFull(_) => Verdict::retry(ErrorType::ResourceExhausted),
            StoreError::PermissionDenied(_) => Verdict::reject(ErrorType::PermissionDenied),
            StoreError::NotFound(_) => Verdict::reject(ErrorType::NotFound),
            StoreError::InvalidKey(..) => Verdict::reject(ErrorType::InvalidRequest),
            StoreError::AlreadyExists(_) | StoreError::PreconditionFailed(_) | StoreError::Other(_) => {
                Verdict::reject(ErrorType::Internal)
            }
        }
    }
}

impl StoreError {
    /// Whether repeating the call may succeed (the verdict's, for adapters that retry
    /// within one call).
    pub fn is_transient(&self) -> bool {
        self.verdict().retryable
    }

    /// Classify a local I/O error (the one place that decides it for local disks).
    pub fn from_io(context: &str, err: std::io::Error) -> StoreError {
        use std::io::ErrorKind::*;
        let text = format!("{context}: {err}");
        match err.kind() {
            NotFound => StoreError::NotFound(context.to_string()),
            AlreadyExists => StoreError::AlreadyExists(context.to_string()),
            PermissionDenied => StoreError::PermissionDenied(text),
            StorageFull => StoreError::DiskFull(text),
            TimedOut | Interrupted | WouldBlock => StoreError::Transient(text),
            _ if err.raw_os_error() == Some(28) => StoreError::DiskFull(text),
            _ => StoreError::Other(text),
        }
    }
}

/// An object store (see the module docs for the contract).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A human-readable name for logs, e.g. `dir:/var/reel` or `gs://bucket`.
    fn describe(&self) -> String;

    /// Metadata of `key`, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// Stream the content of `key`.
    async fn get(&self, key: &str) -> Result<ByteReader, StoreError>;

    /// Up to `len` bytes of `key` from byte `offset` (fewer at its end; none past it):
    /// a ranged read, for reading a file's headers without its media. This default
    /// streams and skips, for backends that cannot seek.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.get(key).await?;
        let context = format!("reading {key}");
        tokio::io::copy(&mut (&mut reader).take(offset), &mut tokio::io::sink())
            .await
            .map_err(|e| StoreError::from_io(&context, e))?;
        let mut out = Vec::new();
        reader.take(len).read_to_end(&mut out).await.map_err(|e| StoreError::from_io(&context, e))?;
        Ok(out)
    }

    /// Stream `body` into `key` under `mode`, without custom metadata. The object becomes
    /// visible only once complete.
    async fn put(&self, key: &str, body: ByteReader, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        self.put_with(key, body, &PutOptions::new(mode)).await
    }

    /// Stream `body` into `key` as `options` say (mode, custom metadata). The object
    /// becomes visible only once complete, with its metadata.
    async fn put_with(&self, key: &str, body: ByteReader, options: &PutOptions) -> Result<ObjectMeta, StoreError>;

    /// Put the local file `src` into `key` as `options` say. Streams it by default (as
    /// the free function [`put_file`] does); the directory store hard-links it into place
    /// when it can (no bytes copied: `src` and the object are then one file, which takes
    /// the object's generation and metadata), so pass only a file nothing else will
    /// change (a stage's work file).
    async fn put_file_with(&self, key: &str, src: &Path, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let file = tokio::fs::File::open(src).await.map_err(|e| StoreError::from_io(&src.display().to_string(), e))?;
        self.put_with(key, Box::pin(file), options).await
    }

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// The keys under `prefix`, sorted: [`Store::list`] without the metadata, which some
    /// stores must compute (a directory reads every file for its CRC32C).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.list(prefix).await?.into_iter().map(|m| m.key).collect())
    }

    /// Delete `key`. Returns whether something was deleted; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Copy `from` to `to` inside this store without passing the bytes through the caller
    /// where the backend allows it (Cloud Storage rewrite; directory: hard link or copy).
    /// The copy carries the source's custom metadata; `mode` applies to `to`.
    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<ObjectMeta, StoreError>;

    /// Make `to` the concatenation of `sources`, in order, as `options` say (mode,
    /// custom metadata), without passing the bytes through the caller where the backend
    /// allows it (Cloud Storage compose, nested beyond its 32 components; directory:
    /// `copy_file_range`). This default streams them, for backends that cannot.
    /// [`StoreError::NotFound`] names a missing source.
    async fn compose(&self, sources: &[String], to: &str, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        check_key(to)?;
        let mut readers = Vec::with_capacity(sources.len());
        for key in sources {
            readers.push(self.get(key).await?);
        }
        let chained = readers.into_iter().fold(Box::pin(tokio::io::empty()) as ByteReader, |all, next| {
            Box::pin(tokio::io::AsyncReadExt::chain(all, next))
        });
        self.put_with(to, chained, options).await
    }

    /// Where `key` lives when it is an object of a service that can copy it into
    /// another store of the same service without the caller moving the bytes (Cloud
    /// Storage: another bucket). `None` for local stores.
    fn remote_object(&self, _key: &str) -> Option<RemoteObject> {
        None
    }

    /// Copy `source` (another store's [`Store::remote_object`]) into `to` on the
    /// service's side, as `options` say (mode, custom metadata). `Ok(None)` when this
    /// store cannot (another service, or a local store): the caller streams it instead.
    async fn put_copy_of(
        &self,
        _source: &RemoteObject,
        _to: &str,
        _options: &PutOptions,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(None)
    }

    /// The local file behind `key`, when the store is a local directory. Lets stages
    /// hand files to ffmpeg without copying them.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

/// An object as its service names it, for [`Store::put_copy_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    /// The service, as the store that made it tells its own apart (an endpoint URL).
    pub service: String,
    /// The bucket.
    pub bucket: String,
    /// The object's name in it.
    pub name: String,
}

/// Check a key against the contract's rules.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::InvalidKey(key.to_string(), why.to_string()));
    if key.is_empty() {
        return bad("empty key");
    }
    if key.starts_with('/') {
        return bad("leading '/'");
    }
    if key.contains('\0') {
        return bad("NUL byte");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return bad("empty path segment");
        }
        if segment == ".." || segment == "." {
            return bad("'.' or '..' segment");
        }
    }
    Ok(())
}

/// Download `key` into the local file `dest` (streamed), returning bytes written.
pub async fn get_to_file(store: &dyn Store, key: &str, dest: &Path) -> Result<u64, StoreError> {
    let mut reader = store.get(key).await?;
    let mut file =
        tokio::fs::File::create(dest).await.map_err(|e| StoreError::from_io(&dest.display().to_string(), e))?;
    let written = tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| StoreError::from_io(&format!("download {key}"), e))?;
    file.flush().await.map_err(|e| StoreError::from_io(&dest.display().to_string(), e))?;
    file.sync_all().await.map_err(|e| StoreError::from_io(&dest.display().to_string(), e))?;
    Ok(written)
}

/// CRC32C of a local file, streamed.
pub async fn crc32c_of_file(path: &Path) -> std::io::Result<(u32, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        total += n as u64;
    }
    Ok((crc, total))
}

/// The CRC32C in Cloud Storage's notation: base64 of the big-endian bytes.
pub fn crc32c_base64(crc: u32) -> String {
    use base64_engine::encode;
    encode(&crc.to_be_bytes())
}

mod base64_engine {
    // Tiny standard-alphabet encoder, to keep the runtime's dependency list short.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// The whole (small) object at `key`, or `None` if there is none: for records, never
/// for media.
pub async fn read_all(store: &dyn Store, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let mut reader = match store.get(key).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.map_err(|e| StoreError::Transient(format!("reading {key}: {e}")))?;
    Ok(Some(bytes))
}

/// Upload the local file `src` to `key` (streamed; the file is left as it is).
pub async fn put_file(store: &dyn Store, key: &str, src: &Path, mode: PutMode) -> Result<ObjectMeta, StoreError> {
    let file = tokio::fs::File::open(src).await.map_err(|e| StoreError::from_io(&src.display().to_string(), e))?;
    store.put(key, Box::pin(file), mode).await
}

/// Delete every object under `prefix`; returns how many were deleted.
pub async fn delete_prefix(store: &dyn Store, prefix: &str) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for key in store.list_keys(prefix).await? {
        if store.delete(&key).await? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A blocking `Read + Seek` view of one object made of ranged reads ([`Store::get_range`]),
/// for parsers that read a file's headers (a few boxes of an MP4) without its media.
/// Reads go through a window of at least [`RangedReader::WINDOW`] bytes, so many small
/// reads cost one request. Use it off the async runtime (in `spawn_blocking`): each
/// request blocks on `handle`.
pub struct RangedReader {
    store: std::sync::Arc<dyn Store>,
    key: String,
    size: u64,
    position: u64,
    window: (u64, Vec<u8>),
    handle: tokio::runtime::Handle,
    /// Ranged reads made, and bytes they returned.
    pub requests: u64,
    /// Bytes the ranged reads returned.
    pub bytes_read: u64,
}

impl RangedReader {
    /// The smallest ranged read.
    pub const WINDOW: u64 = 16 * 1024;

    /// A reader of `key` (`size` bytes, from its [`ObjectMeta`]) in `store`.
    pub fn new(store: std::sync::Arc<dyn Store>, key: &str, size: u64, handle: tokio::runtime::Handle) -> Self {
        RangedReader {
            store,
            key: key.to_string(),
            size,
            position: 0,
            window: (0, Vec::new()),
            handle,
            requests: 0,
            bytes_read: 0,
        }
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl std::io::Read for RangedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.position >= self.size {
            return Ok(0);
        }
        let (start, data) = &self.window;
        let inside = self.position >= *start && self.position < start + data.len() as u64;
        if !inside {
            let len = (buf.len() as u64).max(Self::WINDOW).min(self.size - self.position);
            let (store, key, at) = (self.store.clone(), self.key.clone(), self.position);
            let bytes = self
                .handle
                .block_on(async move { store.get_range(&key, at, len).await })
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.requests += 1;
            self.bytes_read += bytes.len() as u64;
            if bytes.is_empty() {
                return Ok(0);
            }
            self.window = (self.position, bytes);
        }
        let (start, data) = &self.window;
        let from = (self.position - start) as usize;
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for RangedReader {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match pos {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before 0"))?;
        self.position = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_notation_matches_cloud_storage() {
        // Cloud Storage documents crc32c("") == "AAAAAA==".
        assert_eq!(crc32c_base64(0), "AAAAAA==");
        // crc32c("hello world") = 0xc99465aa
        assert_eq!(crc32c::crc32c(b"hello world"), 0xc99465aa);
        assert_eq!(crc32c_base64(0xc99465aa), "yZRlqg==");
    }

    /// Storage's row of the error matrix, one verdict per variant.
    #[test]
    fn storage_errors_follow_the_matrix() {
        let table = [
            (StoreError::Transient("timeout".into()), Verdict::retry(ErrorType::Internal)),
            (StoreError::DiskFull("ENOSPC".into()), Verdict::retry(ErrorType::ResourceExhausted)),
            (StoreError::PermissionDenied("403".into()), Verdict::reject(ErrorType::PermissionDenied)),
            (StoreError::NotFound("k".into()), Verdict::reject(ErrorType::NotFound)),
            (StoreError::InvalidKey("k".into(), "..".into()), Verdict::reject(ErrorType::InvalidRequest)),
            (StoreError::AlreadyExists("k".into()), Verdict::reject(ErrorType::Internal)),
            (StoreError::PreconditionFailed("k".into()), Verdict::reject(ErrorType::Internal)),
            (StoreError::Other("400 bad request".into()), Verdict::reject(ErrorType::Internal)),
        ];
        for (error, verdict) in table {
            assert_eq!(error.verdict(), verdict, "{error}");
        }
    }

    /// Local disk errors are classified once, where they happen.
    #[test]
    fn local_disk_errors_are_classified() {
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(matches!(StoreError::from_io("write", enospc), StoreError::DiskFull(_)));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(StoreError::from_io("open", denied), StoreError::PermissionDenied(_)));
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(StoreError::from_io("read", timeout).verdict().retryable);
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("jobs/a/clip-000.mp4").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a/./b", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
