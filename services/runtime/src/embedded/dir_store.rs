//! A [`Store`] over a local directory.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::store::{check_key, ByteReader, ObjectMeta, PutMode, PutOptions, Store, StoreError};

/// File-name prefix of the temp files a put or copy writes next to its target before
/// renaming or linking it into place. [`DirStore::list`](Store::list) never shows them
/// and keys with a segment starting with it are refused.
pub const TEMP_PREFIX: &str = ".reel-tmp-";

const CHUNK: usize = 1 << 20;
const CRC_CACHE_MAX: usize = 4096;

/// A [`Store`] whose objects are the regular files under a root directory.
///
/// - Key `k` is the file `root/k` ([`check_key`] applies; keys with a segment starting
///   with [`TEMP_PREFIX`] are refused too). Symlinks are not followed out of the root
///   (unless the root is `/`, where reel resolves absolute local paths).
/// - Puts stream into a hidden temp file in the target's directory, give it its
///   metadata, fsync it, then rename it over the target ([`PutMode::Overwrite`]) or
///   hard-link it to the target ([`PutMode::CreateOnly`]: atomic, `EEXIST` →
///   [`StoreError::AlreadyExists`]). The directory is fsynced afterwards. The temp file
///   is removed on every error path, including when the put future is dropped.
/// - Every change of a key (put, copy, delete) happens under an exclusive `flock(2)` of
///   its directory (the directory itself: no lock file clutters the user's folders), so
///   [`PutMode::IfGeneration`]'s check of the generation and its rename are one step for
///   every reel writer, in this process or another. A program that writes the file
///   without reel does not take the lock; on filesystems where `flock` is not shared
///   between machines (some network mounts) it guards one machine only.
/// - Custom metadata is stored as user extended attributes `user.reel.{name}` on the
///   file, set on the temp file before it is renamed or linked into place (so the object
///   and its metadata appear together, and no side file is left next to the user's).
///   On a filesystem without user extended attributes writes still succeed and the
///   metadata reads empty (reel then treats an output as not written by reel). `list`
///   leaves metadata empty; `head` reads it.
/// - `generation` is the file's mtime in nanoseconds; puts set it to
///   `max(now, previous generation + 1)` so it grows on every put of a key. `crc32c` is
///   computed by reading the file and cached by (file identity, size, mtime).
/// - Delete prunes directories left empty, up to (not including) the root; with the
///   root `/` nothing is pruned (those are the user's directories).
/// - Listing reads the CRC32C of every listed file not yet in the cache (the file is
///   read once).
/// - [`Store::put_file_with`] hard-links the local file into place when it is on the
///   same filesystem (the file takes the object's generation and metadata), else streams it.
#[derive(Clone)]
pub struct DirStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The root as given (made absolute).
    root: PathBuf,
    /// The root with symlinks resolved, for containment checks.
    canonical_root: PathBuf,
    /// Whether the root is `/` (no containment checks, no pruning).
    is_fs_root: bool,
}

/// CRC32Cs already computed, by file identity, for the whole process: several
/// `DirStore`s see the same files (the CLI's work store and the stores the resolver opens
/// for clips and outputs; a reel linked from the workspace to its output is one inode),
/// and a checksum computed by one must not cost another read of the file by the next.
static CRC_CACHE: std::sync::LazyLock<Mutex<HashMap<FileId, CrcEntry>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileId {
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg_attr(unix, allow(dead_code))]
    Path(PathBuf),
}

#[derive(Debug, Clone, Copy)]
struct CrcEntry {
    len: u64,
    mtime_ns: i64,
    crc: u32,
}

impl DirStore {
    /// A store rooted at `root`, which is created (with its parents) if missing. A
    /// relative root is taken relative to the working directory. `DirStore::new("/")`
    /// gives a store whose keys are absolute paths without their leading `/`.
    pub fn new(root: impl AsRef<Path>) -> io::Result<DirStore> {
        let root = std::path::absolute(root.as_ref())?;
        fs::create_dir_all(&root)?;
        let canonical_root = fs::canonicalize(&root)?;
        let is_fs_root = canonical_root.parent().is_none();
        Ok(DirStore { inner: Arc::new(Inner { root, canonical_root, is_fs_root }) })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other(format!("storage task failed: {e}")))?
    }
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStore").field("root", &self.inner.root).finish()
    }
}

/// Map an I/O error about `key` (the key names NotFound / AlreadyExists errors).
fn io_err(key: &str, err: io::Error) -> StoreError {
    StoreError::from_io(key, err)
}

fn mtime_ns(meta: &Metadata) -> i64 {
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    match modified.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn time_of_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn file_id(path: &Path, meta: &Metadata) -> FileId {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        FileId::Inode(meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        FileId::Path(path.to_path_buf())
    }
}

fn temp_name() -> String {
    format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// fsync a directory so a rename or link in it survives a crash (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Prefix of the extended attributes that hold an object's custom metadata.
const XATTR_PREFIX: &str = "user.reel.";

/// Whether an extended-attribute error means "this filesystem keeps no user attributes".
fn xattrs_unsupported(err: &rustix::io::Errno) -> bool {
    *err == rustix::io::Errno::NOTSUP
}

/// Make `metadata` the custom metadata of the open `file`: `user.reel.*` attributes not
/// in it are removed (a linked file may carry an earlier object's), the rest set. A
/// filesystem without user extended attributes is not an error (nothing is stored).
fn write_metadata(file: &File, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    use rustix::fs::{fgetxattr_query, flistxattr, flistxattr_query, fremovexattr, fsetxattr, XattrFlags};
    let unsupported = |e: rustix::io::Errno| -> io::Result<()> {
        if xattrs_unsupported(&e) {
            tracing::debug!("no user extended attributes on this filesystem; metadata not stored");
            Ok(())
        } else {
            Err(e.into())
        }
    };
    let size = match flistxattr_query(file) {
        Ok(size) => size,
        Err(e) => return unsupported(e),
    };
    if size > 0 {
        let mut names = vec![0u8; size];
        let n = flistxattr(file, &mut names[..])?;
        for name in names[..n].split(|b| *b == 0).filter(|n| n.starts_with(XATTR_PREFIX.as_bytes())) {
            let wanted = std::str::from_utf8(&name[XATTR_PREFIX.len()..]).is_ok_and(|k| metadata.contains_key(k));
            if !wanted && fgetxattr_query(file, name).is_ok() {
                fremovexattr(file, name)?;
            }
        }
    }
    for (name, value) in metadata {
        if let Err(e) = fsetxattr(file, format!("{XATTR_PREFIX}{name}"), value.as_bytes(), XattrFlags::empty()) {
            return unsupported(e);
        }
    }
    Ok(())
}

/// The custom metadata of the file at `path` (empty when the filesystem has no user
/// extended attributes; attributes that are not UTF-8 are left out).
fn read_metadata(path: &Path) -> io::Result<BTreeMap<String, String>> {
    use rustix::fs::{getxattr, getxattr_query, listxattr, listxattr_query};
    let mut out = BTreeMap::new();
    let size = match listxattr_query(path) {
        Ok(size) => size,
        Err(e) if xattrs_unsupported(&e) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; size];
    let n = match listxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => return read_metadata(path), // grew meanwhile
        Err(e) => return Err(e.into()),
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| n.starts_with(XATTR_PREFIX.as_bytes())) {
        let Ok(key) = std::str::from_utf8(&name[XATTR_PREFIX.len()..]) else {
            continue;
        };
        let len = match getxattr_query(path, name) {
            Ok(len) => len,
            Err(rustix::io::Errno::NODATA) => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        let mut value = vec![0u8; len];
        let got = match getxattr(path, name, &mut value[..]) {
            Ok(got) => got,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        value.truncate(got);
        if let Ok(value) = String::from_utf8(value) {
            out.insert(key.to_string(), value);
        }
    }
    Ok(out)
}

/// An exclusive `flock(2)` of a directory, released when dropped.
struct DirLock {
    _dir: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> io::Result<DirLock> {
        let file = File::open(dir)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(DirLock { _dir: file })
    }
}

/// Removes a temp file when dropped, unless disarmed.
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    fn new(path: PathBuf) -> TempGuard {
        TempGuard { path: Some(path) }
    }
    fn path(&self) -> &Path {
        self.path.as_deref().expect("temp guard armed")
    }
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl Inner {
    /// Check `key` and give its path.
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        if key.split('/').any(|segment| segment.starts_with(TEMP_PREFIX)) {
            return Err(StoreError::InvalidKey(
                key.to_string(),
                format!("segments starting with {TEMP_PREFIX} are reserved"),
            ));
        }
        Ok(self.root.join(key))
    }

    /// Whether the existing `path` (symlinks resolved) lies inside the root.
    fn is_inside(&self, path: &Path) -> io::Result<bool> {
        if self.is_fs_root {
            return Ok(true);
        }
        Ok(fs::canonicalize(path)?.starts_with(&self.canonical_root))
    }

    fn ensure_inside(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        match self.is_inside(path) {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(StoreError::InvalidKey(key.to_string(), "leads outside the store through a symlink".into()))
            }
            Err(e) => Err(io_err(key, e)),
        }
    }

    /// Create the directory of a target (racing with [`Inner::prune`]) and check it.
    fn prepare_dir(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
        self.ensure_inside(key, dir)
    }

    /// Create a new temp file in `dir`, recreating `dir` if a concurrent delete pruned it.
    fn create_temp(&self, key: &str, dir: &Path) -> Result<(TempGuard, File), StoreError> {
        let mut attempts = 0;
        loop {
            self.prepare_dir(key, dir)?;
            let path = dir.join(temp_name());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempGuard::new(path), file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
                Err(e) => return Err(io_err(&path.display().to_string(), e)),
            }
        }
    }

    /// Hard-link `from` to a new temp name in `dir` (for an atomic overwrite by rename).
    /// `dir` was prepared (created and checked) by the caller.
    fn link_temp(from: &Path, dir: &Path) -> io::Result<TempGuard> {
        let mut attempts = 0;
        loop {
            if attempts > 0 {
                fs::create_dir_all(dir)?;
            }
            let path = dir.join(temp_name());
            match fs::hard_link(from, &path) {
                Ok(()) => return Ok(TempGuard::new(path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 && from.exists() => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The generation a new write of `target` gets: now, but past the current one.
    fn next_generation(target: &Path) -> i64 {
        let now = mtime_ns_of_time(SystemTime::now());
        match fs::metadata(target) {
            Ok(meta) => now.max(mtime_ns(&meta).saturating_add(1)),
            Err(_) => now,
        }
    }

    /// Give a finished temp file its generation, fsync it, and return its metadata.
    fn seal(file: &File, target: &Path) -> io::Result<Metadata> {
        file.set_modified(time_of_ns(Self::next_generation(target)))?;
        file.sync_all()?;
        file.metadata()
    }

    /// Lock the directory of `target` (every change of a key holds it).
    fn lock_dir_of(key: &str, target: &Path) -> Result<DirLock, StoreError> {
        let dir = target.parent().expect("a key has a parent directory");
        DirLock::acquire(dir).map_err(|e| io_err(&format!("locking the directory of {key}"), e))
    }

    /// Move the sealed temp file into place under `mode`, holding the directory lock;
    /// the guard removes the temp whatever happens.
    fn install(&self, key: &str, mut temp: TempGuard, target: &Path, mode: PutMode) -> Result<(), StoreError> {
        let lock = Self::lock_dir_of(key, target)?;
        if let PutMode::IfGeneration(expected) = mode {
            let current = match fs::metadata(target) {
                Ok(meta) if meta.is_file() => Some(mtime_ns(&meta)),
                Ok(_) => None,
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => None,
                Err(e) => return Err(io_err(key, e)),
            };
            if current != Some(expected) {
                let found = current.map_or("no object".to_string(), |g| format!("generation {g}"));
                return Err(StoreError::PreconditionFailed(format!(
                    "{key}: expected generation {expected}, found {found}"
                )));
            }
        }
        match mode {
            PutMode::Overwrite | PutMode::IfGeneration(_) => {
                fs::rename(temp.path(), target).map_err(|e| io_err(key, e))?;
                // rename(2) does nothing when both names are links to one file: the temp
                // name may still exist, so it is removed (not disarmed).
                if !temp.path().exists() {
                    temp.disarm();
                }
            }
            PutMode::CreateOnly => {
                fs::hard_link(temp.path(), target).map_err(|e| io_err(key, e))?;
            }
        }
        drop(lock);
        drop(temp);
        if let Some(dir) = target.parent() {
            sync_dir(dir);
        }
        Ok(())
    }

    fn remember(&self, path: &Path, meta: &Metadata, crc: u32) {
        let mut cache = CRC_CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CRC_CACHE_MAX {
            cache.clear();
        }
        cache.insert(file_id(path, meta), CrcEntry { len: meta.len(), mtime_ns: mtime_ns(meta), crc });
    }

    /// CRC32C of the file at `path` whose metadata is `meta`, from the cache or read.
    fn crc_of(&self, path: &Path, meta: &Metadata) -> io::Result<u32> {
        let id = file_id(path, meta);
        let cached = CRC_CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
        if let Some(entry) = cached {
            if entry.len == meta.len() && entry.mtime_ns == mtime_ns(meta) {
                return Ok(entry.crc);
            }
        }
        let mut file = File::open(path)?;
        let mut buf = vec![0u8; CHUNK];
        let mut crc = 0u32;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
        }
        // Only cache if the file did not change while it was read.
        let after = file.metadata()?;
        if after.len() == meta.len() && mtime_ns(&after) == mtime_ns(meta) {
            self.remember(path, meta, crc);
        }
        Ok(crc)
    }

    /// The object's metadata; its custom metadata is read only `with_custom` (head).
    fn object_meta(
        &self,
        key: &str,
        path: &Path,
        meta: &Metadata,
        with_custom: bool,
    ) -> Result<ObjectMeta, StoreError> {
        let crc32c = self.crc_of(path, meta).map_err(|e| io_err(key, e))?;
        let metadata = if with_custom { read_metadata(path).map_err(|e| io_err(key, e))? } else { BTreeMap::new() };
        Ok(meta_with(key, meta.len(), crc32c, mtime_ns(meta), metadata))
    }

    /// Metadata of the regular file for `key`, or `None`.
    fn head(&self, key: &str, path: &Path) -> Result<Option<ObjectMeta>, StoreError> {
        let meta = match fs::metadata(path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(None),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
            Err(e) => return Err(io_err(key, e)),
        };
        self.ensure_inside(key, path)?;
        self.object_meta(key, path, &meta, true).map(Some)
    }

    /// Open `key` for reading: NotFound unless it is a regular file inside the root.
    fn open(&self, key: &str, path: &Path) -> Result<(File, Metadata), StoreError> {
        let not_found = || StoreError::NotFound(key.to_string());
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Err(not_found())
            }
            Err(e) => return Err(io_err(key, e)),
        };
        let meta = file.metadata().map_err(|e| io_err(key, e))?;
        if !meta.is_file() {
            return Err(not_found());
        }
        self.ensure_inside(key, path)?;
        Ok((file, meta))
    }

    /// Remove directories left empty above `path`, up to (not including) the root.
    fn prune(&self, path: &Path) {
        if self.is_fs_root {
            return;
        }
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    fn delete(&self, key: &str, path: &Path) -> Result<bool, StoreError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => return Ok(false),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(false),
            Err(e) => return Err(io_err(key, e)),
        }
        if let Some(dir) = path.parent() {
            self.ensure_inside(key, dir)?;
        }
        let lock = match Self::lock_dir_of(key, path) {
            Ok(lock) => lock,
            Err(StoreError::NotFound(_)) => return Ok(false), // pruned meanwhile
            Err(e) => return Err(e),
        };
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(key, e)),
        }
        drop(lock);
        self.prune(path);
        Ok(true)
    }

    /// Stream `source` into a new temp file in `dir` with `metadata`, sealed.
    fn copy_to_temp(
        &self,
        key: &str,
        mut source: File,
        metadata: &BTreeMap<String, String>,
        dir: &Path,
        target: &Path,
    ) -> Result<TempGuard, StoreError> {
        let (temp, mut file) = self.create_temp(key, dir)?;
        let temp_name = temp.path().display().to_string();
        let mut buf = vec![0u8; CHUNK];
        let mut crc = 0u32;
        loop {
            let n = source.read(&mut buf).map_err(|e| io_err(key, e))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| io_err(&temp_name, e))?;
        }
        write_metadata(&file, metadata).map_err(|e| io_err(&temp_name, e))?;
        let meta = Self::seal(&file, target).map_err(|e| io_err(&temp_name, e))?;
        self.remember(temp.path(), &meta, crc);
        Ok(temp)
    }

    fn copy(
        &self,
        from: &str,
        from_path: &Path,
        to: &str,
        to_path: &Path,
        mode: PutMode,
    ) -> Result<ObjectMeta, StoreError> {
        let (source, _) = self.open(from, from_path)?;
        // Link the file itself, never a symlink to it.
        let source_path = fs::canonicalize(from_path).map_err(|e| io_err(from, e))?;
        let dir = to_path.parent().expect("a key has a parent directory").to_path_buf();
        self.prepare_dir(to, &dir)?;
        if from_path == to_path {
            match mode {
                PutMode::CreateOnly => return Err(StoreError::AlreadyExists(to.to_string())),
                PutMode::IfGeneration(_) => {
                    // Nothing changes, but the caller's expectation is still checked.
                    let temp = Inner::link_temp(&source_path, &dir).map_err(|e| io_err(to, e))?;
                    self.install(to, temp, to_path, mode)?;
                }
                PutMode::Overwrite => {}
            }
        } else {
            // A second link to the source (the copy shares its generation and metadata),
            // or a streamed copy where links are impossible (another filesystem).
            let temp = match Inner::link_temp(&source_path, &dir) {
                Ok(temp) => temp,
                Err(e) => {
                    tracing::debug!(error = %e, "hard link failed; copying the bytes");
                    let metadata = read_metadata(&source_path).map_err(|e| io_err(from, e))?;
                    self.copy_to_temp(to, source, &metadata, &dir, to_path)?
                }
            };
            self.install(to, temp, to_path, mode)?;
        }
        self.head(to, to_path)?.ok_or_else(|| StoreError::NotFound(to.to_string()))
    }

    /// [`Store::compose`]: the sources copied by the kernel (`copy_file_range`, via
    /// `std::io::copy`) into a temp file next to the target, which is then put in place
    /// as [`Inner::link_file`] does (mode, metadata, CRC).
    fn compose(
        &self,
        key: &str,
        sources: &[(String, PathBuf)],
        target: &Path,
        options: &PutOptions,
    ) -> Result<ObjectMeta, StoreError> {
        let dir = target.parent().expect("a key has a parent directory");
        let (temp, mut file) = self.create_temp(key, dir)?;
        let temp_name = temp.path().display().to_string();
        for (source, path) in sources {
            let (mut from, _) = self.open(source, path)?;
            io::copy(&mut from, &mut file).map_err(|e| io_err(&temp_name, e))?;
        }
        drop(file);
        match self.link_file(key, temp.path(), target, options)? {
            Some(meta) => Ok(meta),
            None => Err(StoreError::Other(format!("cannot link {temp_name} into place"))),
        }
    }

    /// [`Store::put_file_with`] by hard link: `None` when `src` cannot be linked into the
    /// target's directory (another filesystem), so the caller streams it instead.
    fn link_file(
        &self,
        key: &str,
        src: &Path,
        target: &Path,
        options: &PutOptions,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let dir = target.parent().expect("a key has a parent directory");
        self.prepare_dir(key, dir)?;
        let temp = match Inner::link_temp(src, dir) {
            Ok(temp) => temp,
            Err(e) => {
                tracing::debug!(error = %e, "hard link failed; streaming the file");
                return Ok(None);
            }
        };
        let temp_name = temp.path().display().to_string();
        let file = OpenOptions::new().write(true).open(temp.path()).map_err(|e| io_err(&temp_name, e))?;
        let before = file.metadata().map_err(|e| io_err(&temp_name, e))?;
        // The CRC of the file as it was (usually cached), carried over to its new mtime.
        let crc = self.crc_of(temp.path(), &before).map_err(|e| io_err(&temp_name, e))?;
        write_metadata(&file, &options.metadata).map_err(|e| io_err(&temp_name, e))?;
        let meta = Self::seal(&file, target).map_err(|e| io_err(&temp_name, e))?;
        drop(file);
        self.remember(temp.path(), &meta, crc);
        self.install(key, temp, target, options.mode)?;
        Ok(Some(meta_with(key, meta.len(), crc, mtime_ns(&meta), options.metadata.clone())))
    }

    /// Every regular file under `dir` whose key (relative to the root) is pushed to `out`.
    /// Does not descend into symlinked directories; includes symlinked files only if
    /// they resolve inside the root; skips temp files and names that are not UTF-8.
    fn walk(
        &self,
        dir: &Path,
        key_prefix: &str,
        name_filter: &str,
        out: &mut Vec<(String, PathBuf, Metadata)>,
    ) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(name_filter) || name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let key = format!("{key_prefix}{name}");
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                self.walk(&path, &format!("{key}/"), "", out)?;
            } else if file_type.is_file() {
                if let Ok(meta) = entry.metadata() {
                    out.push((key, path, meta));
                }
            } else if file_type.is_symlink() {
                if let Ok(meta) = fs::metadata(&path) {
                    if meta.is_file() && self.is_inside(&path).unwrap_or(false) {
                        out.push((key, path, meta));
                    }
                }
            }
        }
        Ok(())
    }

    fn list(&self, prefix: &str, keys_only: bool) -> Result<Vec<ObjectMeta>, StoreError> {
        let (dir_part, name_filter) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let (start, key_prefix) = if dir_part.is_empty() {
            if prefix.starts_with('/') {
                return Ok(Vec::new()); // no key starts with '/'
            }
            (self.root.clone(), String::new())
        } else {
            if self.path_of(dir_part).is_err() {
                return Ok(Vec::new()); // no valid key lies under an invalid directory
            }
            let start = self.root.join(dir_part);
            match self.is_inside(&start) {
                Ok(true) => {}
                Ok(false) => return Ok(Vec::new()),
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(io_err(prefix, e)),
            }
            if fs::symlink_metadata(&start).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
                return Ok(Vec::new()); // symlinked directories are not followed
            }
            (start, format!("{dir_part}/"))
        };
        let mut found = Vec::new();
        self.walk(&start, &key_prefix, name_filter, &mut found).map_err(|e| io_err(prefix, e))?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        if keys_only {
            return Ok(found
                .into_iter()
                .map(|(key, _, meta)| meta_with(&key, meta.len(), 0, mtime_ns(&meta), BTreeMap::new()))
                .collect());
        }
        let mut objects = Vec::with_capacity(found.len());
        for (key, path, meta) in found {
            match self.object_meta(&key, &path, &meta, false) {
                Ok(object) => objects.push(object),
                Err(StoreError::NotFound(_)) => {} // deleted while listing
                Err(e) => return Err(e),
            }
        }
        Ok(objects)
    }
}

fn meta_with(key: &str, size: u64, crc32c: u32, generation: i64, metadata: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size,
        crc32c,
        generation,
        updated: DateTime::<Utc>::from(time_of_ns(generation)),
        metadata,
    }
}

fn mtime_ns_of_time(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

#[async_trait]
impl Store for DirStore {
    /// `dir:{root}`.
    fn describe(&self) -> String {
        format!("dir:{}", self.inner.root.display())
    }

    /// `None` for a missing key or one that names a directory.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.inner.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.head(&key, &path)).await
    }

    /// The file, buffered in 512 KiB reads. [`StoreError::NotFound`] if missing or a directory.
    async fn get(&self, key: &str) -> Result<ByteReader, StoreError> {
        let path = self.inner.path_of(key)?;
        let key = key.to_string();
        let (file, _) = self.blocking(move |inner| inner.open(&key, &path)).await?;
        Ok(Box::pin(tokio::io::BufReader::with_capacity(512 * 1024, tokio::fs::File::from_std(file))))
    }

    /// A seek and one read.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.inner.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |inner| {
            let (file, _) = inner.open(&key, &path)?;
            let mut out = Vec::new();
            let mut file = file;
            io::Seek::seek(&mut file, io::SeekFrom::Start(offset)).map_err(|e| io_err(&key, e))?;
            file.take(len).read_to_end(&mut out).map_err(|e| io_err(&key, e))?;
            Ok(out)
        })
        .await
    }

    /// Streams `body` into a temp file next to the target computing its CRC32C, sets its
    /// metadata, fsyncs it, then renames (Overwrite, IfGeneration) or hard-links
    /// (CreateOnly) it into place under the directory lock.
    async fn put_with(&self, key: &str, body: ByteReader, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let target = self.inner.path_of(key)?;
        let dir = target.parent().expect("a key has a parent directory").to_path_buf();
        let (temp, file) = {
            let (key, dir) = (key.to_string(), dir.clone());
            self.blocking(move |inner| inner.create_temp(&key, &dir)).await?
        };
        // From here on `temp` removes the file if anything fails or the future is dropped.
        let temp_name = temp.path().display().to_string();
        let mut body = body;
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; CHUNK];
        let mut crc = 0u32;
        let mut size = 0u64;
        loop {
            let n = body.read(&mut buf).await.map_err(|e| io_err(&format!("reading the body of {key}"), e))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            size += n as u64;
            file.write_all(&buf[..n]).await.map_err(|e| io_err(&temp_name, e))?;
        }
        file.flush().await.map_err(|e| io_err(&temp_name, e))?;
        let file = file.into_std().await;
        let key = key.to_string();
        let options = options.clone();
        self.blocking(move |inner| {
            write_metadata(&file, &options.metadata).map_err(|e| io_err(&temp_name, e))?;
            let meta = Inner::seal(&file, &target).map_err(|e| io_err(&temp_name, e))?;
            drop(file);
            debug_assert_eq!(meta.len(), size);
            inner.remember(temp.path(), &meta, crc);
            inner.install(&key, temp, &target, options.mode)?;
            Ok(meta_with(&key, meta.len(), crc, mtime_ns(&meta), options.metadata))
        })
        .await
    }

    /// A hard link of `src` into place when it is on the store's filesystem (no bytes
    /// copied; `src` takes the object's generation and metadata), else a streamed put.
    async fn put_file_with(&self, key: &str, src: &Path, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let target = self.inner.path_of(key)?;
        let linked = {
            let (key, src, options) = (key.to_string(), src.to_path_buf(), options.clone());
            self.blocking(move |inner| inner.link_file(&key, &src, &target, &options)).await?
        };
        match linked {
            Some(meta) => Ok(meta),
            None => {
                let file =
                    tokio::fs::File::open(src).await.map_err(|e| StoreError::from_io(&src.display().to_string(), e))?;
                self.put_with(key, Box::pin(file), options).await
            }
        }
    }

    /// The sources copied by the kernel into one file (no bytes through this process),
    /// put in place as `put_file_with` puts a file.
    async fn compose(&self, sources: &[String], to: &str, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let target = self.inner.path_of(to)?;
        let sources =
            sources.iter().map(|k| Ok((k.clone(), self.inner.path_of(k)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let (to, options) = (to.to_string(), options.clone());
        self.blocking(move |inner| inner.compose(&to, &sources, &target, &options)).await
    }

    /// Recursive, sorted by key; `prefix` is a plain string prefix of the key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| inner.list(&prefix, false)).await
    }

    /// The keys alone: no file is read (no CRC computed).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        let found = self.blocking(move |inner| inner.list(&prefix, true)).await?;
        Ok(found.into_iter().map(|m| m.key).collect())
    }

    /// Removes the file (`false` if there was none), then the directories it leaves empty.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.inner.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.delete(&key, &path)).await
    }

    /// A hard link where possible (no bytes copied; the copy shares the source's
    /// generation), else a streamed copy through a temp file; `mode` as for a put.
    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        let from_path = self.inner.path_of(from)?;
        let to_path = self.inner.path_of(to)?;
        let (from, to) = (from.to_string(), to.to_string());
        self.blocking(move |inner| inner.copy(&from, &from_path, &to, &to_path, mode)).await
    }

    /// `root/key` for a valid key (whether or not the file exists).
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.path_of(key).ok()
    }
}
