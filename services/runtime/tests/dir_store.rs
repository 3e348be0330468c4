//! Behaviour of the directory store beyond the conformance suite: temp files, pruning,
//! symlinks, the root `/`, hard-link copies, generations.

use reel_runtime::conformance::store_cases::{body, pattern, read_all};
use reel_runtime::embedded::{DirStore, TEMP_PREFIX};
use reel_runtime::store::{PutMode, Store, StoreError};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(&path, base, out);
            } else {
                out.push(rel);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn store() -> (tempfile::TempDir, DirStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path().join("root")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn new_creates_the_root_and_maps_keys_to_paths() {
    let (dir, store) = store();
    assert!(dir.path().join("root").is_dir());
    assert_eq!(store.describe(), format!("dir:{}", dir.path().join("root").display()));
    assert_eq!(store.local_path("a/b.mp4"), Some(dir.path().join("root/a/b.mp4")));
    assert_eq!(store.local_path("a/../b"), None);
    store.put("a/b.mp4", body(b"video"), PutMode::CreateOnly).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("root/a/b.mp4")).unwrap(), b"video");
    assert_eq!(store.list("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_store_rooted_at_slash_reaches_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip one.mp4");
    std::fs::write(&file, b"clip").unwrap();
    let key = file.to_str().unwrap().trim_start_matches('/').to_string();
    let root = DirStore::new("/").unwrap();
    assert_eq!(root.local_path(&key), Some(file.clone()));
    let meta = root.head(&key).await.unwrap().expect("head through /");
    assert_eq!((meta.size, meta.crc32c), (4, crc32c::crc32c(b"clip")));
    assert_eq!(read_all(&root, &key).await, b"clip");
    let out_key = format!("{}/out/reel.mp4", dir.path().to_str().unwrap().trim_start_matches('/'));
    root.copy(&key, &out_key, PutMode::CreateOnly).await.unwrap();
    assert!(root.delete(&out_key).await.unwrap());
    // With the root `/`, the user's directories are not pruned.
    assert!(dir.path().join("out").is_dir());
    assert_eq!(
        root.list(&format!("{}/clip", dir.path().to_str().unwrap().trim_start_matches('/'))).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn failed_and_cancelled_puts_leave_no_temp_files() {
    let (dir, store) = store();
    let root = dir.path().join("root");
    // A body that fails.
    let failing = tokio_util::io::StreamReader::new(futures::stream::iter(vec![
        Ok(bytes::Bytes::from_static(b"partial")),
        Err(std::io::Error::other("upstream died")),
    ]));
    assert!(store.put("jobs/j1/a.bin", Box::pin(failing), PutMode::Overwrite).await.is_err());
    assert_eq!(files_under(&root), vec!["jobs/", "jobs/j1/"], "a temp file was left behind");
    // A put whose future is dropped mid-stream.
    let (mut writer, reader) = tokio::io::duplex(1024);
    let put = store.put("jobs/j1/b.bin", Box::pin(reader), PutMode::CreateOnly);
    let feed = async {
        writer.write_all(&pattern(1, 10_000)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::select! {
        _ = put => panic!("the put cannot finish: its body never ends"),
        _ = feed => {}
    }
    assert_eq!(files_under(&root), vec!["jobs/", "jobs/j1/"], "a cancelled put left its temp file");
    // A refused CreateOnly put.
    store.put("jobs/j1/c.bin", body(b"one"), PutMode::CreateOnly).await.unwrap();
    assert!(matches!(
        store.put("jobs/j1/c.bin", body(b"two"), PutMode::CreateOnly).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(files_under(&root), vec!["jobs/", "jobs/j1/", "jobs/j1/c.bin"]);
}

#[tokio::test]
async fn list_hides_temp_files_and_symlinks_out_of_the_root() {
    let (dir, store) = store();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
    store.put("data/a.txt", body(b"a"), PutMode::CreateOnly).await.unwrap();
    std::fs::write(root.join(format!("data/{TEMP_PREFIX}123")), b"half").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("data/escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("data/secret-link")).unwrap();
    std::os::unix::fs::symlink(root.join("data/a.txt"), root.join("data/inside-link")).unwrap();
    let keys: Vec<String> = store.list("data/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, vec!["data/a.txt", "data/inside-link"]);
    for key in ["data/escape/secret.txt", "data/secret-link"] {
        assert!(store.get(key).await.is_err(), "{key} read through a symlink out of the root");
        assert!(store.head(key).await.is_err(), "{key} head through a symlink out of the root");
        assert!(store.put(key, body(b"x"), PutMode::Overwrite).await.is_err() || key == "data/secret-link");
    }
    assert!(store.list("data/escape/").await.unwrap().is_empty());
    assert_eq!(std::fs::read(outside.join("secret.txt")).unwrap(), b"secret");
    // Temp names are not keys.
    assert!(matches!(store.head(&format!("data/{TEMP_PREFIX}123")).await, Err(StoreError::InvalidKey(..))));
}

#[tokio::test]
async fn delete_prunes_empty_directories_but_not_the_root() {
    let (dir, store) = store();
    let root = dir.path().join("root");
    store.put("jobs/j1/work/a.bin", body(b"a"), PutMode::CreateOnly).await.unwrap();
    store.put("jobs/j1/keep.bin", body(b"k"), PutMode::CreateOnly).await.unwrap();
    assert!(store.delete("jobs/j1/work/a.bin").await.unwrap());
    assert_eq!(files_under(&root), vec!["jobs/", "jobs/j1/", "jobs/j1/keep.bin"]);
    assert!(store.delete("jobs/j1/keep.bin").await.unwrap());
    assert!(root.is_dir());
    assert_eq!(files_under(&root), Vec::<String>::new());
    // A directory is not an object.
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    assert!(!store.delete("d").await.unwrap());
    assert_eq!(store.head("d").await.unwrap(), None);
    assert!(matches!(store.get("d").await, Err(StoreError::NotFound(_))));
    assert_eq!(reel_runtime::store::delete_prefix(&store, "d").await.unwrap(), 0);
}

#[tokio::test]
async fn copies_are_hard_links_and_generations_grow() {
    use std::os::unix::fs::MetadataExt;
    let (dir, store) = store();
    let root = dir.path().join("root");
    let content = pattern(5, 3 * 1024 * 1024);
    let put = store.put("in/src.bin", body(&content), PutMode::CreateOnly).await.unwrap();
    let copied = store.copy("in/src.bin", "out/dst.bin", PutMode::CreateOnly).await.unwrap();
    assert_eq!((copied.size, copied.crc32c), (put.size, put.crc32c));
    let (a, b) =
        (std::fs::metadata(root.join("in/src.bin")).unwrap(), std::fs::metadata(root.join("out/dst.bin")).unwrap());
    assert_eq!(a.ino(), b.ino(), "copy did not hard-link");
    // Overwrite copies (twice: the second renames a link onto the same file).
    store.put("out/other.bin", body(b"other"), PutMode::CreateOnly).await.unwrap();
    for _ in 0..2 {
        let meta = store.copy("in/src.bin", "out/other.bin", PutMode::Overwrite).await.unwrap();
        assert_eq!(meta.crc32c, put.crc32c);
    }
    store.copy("in/src.bin", "in/src.bin", PutMode::Overwrite).await.unwrap();
    assert!(matches!(
        store.copy("in/src.bin", "in/src.bin", PutMode::CreateOnly).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(files_under(&root), vec!["in/", "in/src.bin", "out/", "out/dst.bin", "out/other.bin"]);
    // Rapid overwrites still get growing generations.
    let mut last = i64::MIN;
    for i in 0..20u8 {
        let meta = store.put("gen.txt", body(&[i]), PutMode::Overwrite).await.unwrap();
        assert!(meta.generation > last, "generation did not grow");
        assert_eq!(store.head("gen.txt").await.unwrap().unwrap().generation, meta.generation);
        last = meta.generation;
    }
}

#[tokio::test]
async fn head_sees_changes_made_through_local_paths() {
    let (_dir, store) = store();
    store.put("f.txt", body(b"before"), PutMode::CreateOnly).await.unwrap();
    let first = store.head("f.txt").await.unwrap().unwrap();
    assert_eq!(first.crc32c, crc32c::crc32c(b"before"));
    // A tool (ffmpeg) rewrites the file in place through local_path.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(store.local_path("f.txt").unwrap(), b"after!!").unwrap();
    let second = store.head("f.txt").await.unwrap().unwrap();
    assert_eq!((second.size, second.crc32c), (7, crc32c::crc32c(b"after!!")));
    assert!(second.generation > first.generation);
}

#[tokio::test]
async fn list_prefix_edge_cases() {
    let (_dir, store) = store();
    for key in ["a/b/c", "a/bc", "ab", "b"] {
        store.put(key, body(key.as_bytes()), PutMode::CreateOnly).await.unwrap();
    }
    let keys = |prefix: &'static str| {
        let store = store.clone();
        async move { store.list(prefix).await.unwrap().into_iter().map(|m| m.key).collect::<Vec<_>>() }
    };
    assert_eq!(keys("").await, vec!["a/b/c", "a/bc", "ab", "b"]);
    assert_eq!(keys("a").await, vec!["a/b/c", "a/bc", "ab"]);
    assert_eq!(keys("a/b").await, vec!["a/b/c", "a/bc"]);
    assert_eq!(keys("a/b/c").await, vec!["a/b/c"]);
    assert_eq!(keys("a/b/c/").await, Vec::<String>::new());
    for nothing in ["/a", "../", "a//", "a/../a", "zzz", "a/x/"] {
        assert_eq!(keys(nothing).await, Vec::<String>::new(), "list({nothing:?})");
    }
}
