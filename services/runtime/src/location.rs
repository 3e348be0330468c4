//! Where a clip or a reel lives: `gs://bucket/key`, `file:///abs/path`, or a plain path.
//!
//! Parsing is strict on purpose (the trust boundary): no other URL scheme, no `..`, no
//! ffmpeg protocol syntax (`concat:`, `subfile:`, …) ever reaches a store or ffmpeg.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::store::{Store, StoreError};

/// A parsed object location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// An object in a Cloud Storage bucket.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object name.
        key: String,
    },
    /// A file on this machine (absolute, normalised).
    Local(PathBuf),
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?}: {reason}")]
pub struct LocationError {
    /// The path as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Location {
    /// Parse a path as found in a `stitch.requested` event. Relative local paths are
    /// resolved against `base_dir` (the CLI passes the working directory).
    pub fn parse(raw: &str, base_dir: Option<&Path>) -> Result<Location, LocationError> {
        let err = |reason: &str| LocationError { path: raw.to_string(), reason: reason.to_string() };
        if raw.is_empty() {
            return Err(err("empty path"));
        }
        if raw.chars().any(|c| c.is_control()) {
            return Err(err("control characters are not allowed"));
        }
        if let Some(rest) = raw.strip_prefix("gs://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| err("gs:// URL without an object name"))?;
            if !valid_bucket_name(bucket) {
                return Err(err("invalid bucket name"));
            }
            crate::store::check_key(key).map_err(|e| err(&e.to_string()))?;
            return Ok(Location::Gcs { bucket: bucket.to_string(), key: key.to_string() });
        }
        let path_text = if let Some(rest) = raw.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(err("file:// URLs must be absolute (file:///path)"));
            }
            let decoded = percent_decode(rest).ok_or_else(|| err("bad percent-encoding"))?;
            if decoded.chars().any(|c| c.is_control()) {
                return Err(err("control characters are not allowed"));
            }
            decoded
        } else {
            // Anything that looks like a URL scheme or an ffmpeg protocol is refused.
            if let Some((scheme, _)) = raw.split_once(':') {
                if !scheme.is_empty()
                    && scheme.len() > 1
                    && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
                    && !scheme.contains('/')
                {
                    return Err(err(&format!(
                        "the {scheme}: scheme is not allowed; use gs://, file:// or a plain path"
                    )));
                }
            }
            raw.to_string()
        };
        let path = Path::new(&path_text);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            match base_dir {
                Some(base) => base.join(path),
                None => return Err(err("relative paths are only accepted from the command line")),
            }
        };
        let mut normal = PathBuf::from("/");
        for component in absolute.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => {}
                Component::CurDir => {}
                Component::ParentDir => return Err(err("'..' is not allowed")),
                Component::Normal(part) => normal.push(part),
            }
        }
        if normal == Path::new("/") {
            return Err(err("a path must name a file"));
        }
        Ok(Location::Local(normal))
    }

    /// The file name part (for messages and work-file extensions).
    pub fn file_name(&self) -> String {
        match self {
            Location::Gcs { key, .. } => key.rsplit('/').next().unwrap_or(key).to_string(),
            Location::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }

    /// The lower-case extension, if any, limited to a safe alphabet.
    pub fn extension(&self) -> Option<String> {
        let name = self.file_name();
        let (_, ext) = name.rsplit_once('.')?;
        let ext = ext.to_ascii_lowercase();
        if !ext.is_empty() && ext.len() <= 8 && ext.chars().all(|c| c.is_ascii_alphanumeric()) {
            Some(ext)
        } else {
            None
        }
    }

    /// Whether this location lies inside `root` (a `gs://bucket/prefix` or a local dir).
    pub fn is_within(&self, root: &Location) -> bool {
        match (self, root) {
            (Location::Gcs { bucket, key }, Location::Gcs { bucket: rb, key: rk }) => {
                bucket == rb && (rk.is_empty() || key.starts_with(&format!("{}/", rk.trim_end_matches('/'))))
            }
            (Location::Local(p), Location::Local(r)) => p.starts_with(r),
            _ => false,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Gcs { bucket, key } => write!(f, "gs://{bucket}/{key}"),
            Location::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A root under which locations are allowed: `gs://bucket`, `gs://bucket/prefix`, or a
/// local directory. Parsed like a [`Location`], but a bare bucket is accepted.
pub fn parse_root(raw: &str) -> Result<Location, LocationError> {
    if let Some(rest) = raw.strip_prefix("gs://") {
        let rest = rest.trim_end_matches('/');
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket_name(bucket) {
            return Err(LocationError { path: raw.to_string(), reason: "invalid bucket name".into() });
        }
        return Ok(Location::Gcs { bucket: bucket.to_string(), key: key.to_string() });
    }
    if raw == "/" {
        return Ok(Location::Local(PathBuf::from("/")));
    }
    Location::parse(raw, None)
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=222).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Maps locations to the store that holds them and the key inside it.
pub trait StoreResolver: Send + Sync + 'static {
    /// The store and key for `location`.
    fn resolve(&self, location: &Location) -> Result<(Arc<dyn Store>, String), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(
            Location::parse("gs://my-bucket/clips/a b.mp4", None).unwrap(),
            Location::Gcs { bucket: "my-bucket".into(), key: "clips/a b.mp4".into() }
        );
        assert_eq!(Location::parse("/tmp/x.mp4", None).unwrap(), Location::Local("/tmp/x.mp4".into()));
        assert_eq!(Location::parse("file:///tmp/a%20b.mp4", None).unwrap(), Location::Local("/tmp/a b.mp4".into()));
        assert_eq!(
            Location::parse("clips/./x.mp4", Some(Path::new("/home/u"))).unwrap(),
            Location::Local("/home/u/clips/x.mp4".into())
        );
        // A colon inside a file name is fine when it is not a scheme.
        assert_eq!(
            Location::parse("/tmp/take 1: intro.mp4", None).unwrap(),
            Location::Local("/tmp/take 1: intro.mp4".into())
        );
    }

    #[test]
    fn refuses_what_could_escape() {
        for bad in [
            "",
            "http://example.com/a.mp4",
            "https://example.com/a.mp4",
            "concat:/a.mp4|/b.mp4",
            "subfile:,,start,0,end,0,,:/etc/passwd",
            "data:video/mp4;base64,AAAA",
            "gs://bucket",
            "gs://Bad_Bucket/x",
            "gs://bucket/../x",
            "gs://bucket/a//b",
            "/tmp/../etc/passwd",
            "file://relative/x",
            "relative.mp4",
            "/tmp/a\nb.mp4",
            "file:///tmp/a%0Ab.mp4",
            "file:///tmp/%1b[31m.mp4",
        ] {
            assert!(Location::parse(bad, None).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn roots_contain_their_children_only() {
        let root = parse_root("gs://bucket/projects/p1").unwrap();
        assert!(Location::parse("gs://bucket/projects/p1/a.mp4", None).unwrap().is_within(&root));
        assert!(!Location::parse("gs://bucket/projects/p10/a.mp4", None).unwrap().is_within(&root));
        assert!(!Location::parse("gs://other/projects/p1/a.mp4", None).unwrap().is_within(&root));
        let whole = parse_root("gs://bucket").unwrap();
        assert!(Location::parse("gs://bucket/x.mp4", None).unwrap().is_within(&whole));
        let dir = parse_root("/srv/clips").unwrap();
        assert!(Location::parse("/srv/clips/a.mp4", None).unwrap().is_within(&dir));
        assert!(!Location::parse("/srv/clipsx/a.mp4", None).unwrap().is_within(&dir));
    }
}
