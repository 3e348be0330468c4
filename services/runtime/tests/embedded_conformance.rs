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

/// `RangedReader` reads an object through windows of ranged reads: what it returns is
/// the object, whatever the reads and seeks, and small reads share one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_reader_reads_the_object_through_few_requests() {
    use std::io::{Read, Seek, SeekFrom};
    let store: Arc<dyn reel_runtime::Store> = make_store().await;
    let content: Vec<u8> = (0..500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    store
        .put("obj.bin", Box::pin(std::io::Cursor::new(content.clone())), reel_runtime::store::PutMode::Overwrite)
        .await
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let (store2, content2) = (store.clone(), content.clone());
    tokio::task::spawn_blocking(move || {
        let mut r = reel_runtime::store::RangedReader::new(store2, "obj.bin", content2.len() as u64, handle);
        let mut head = [0u8; 8];
        r.read_exact(&mut head).unwrap();
        assert_eq!(head, content2[..8]);
        let mut more = [0u8; 100];
        r.read_exact(&mut more).unwrap();
        assert_eq!(more, content2[8..108]);
        assert_eq!(r.requests, 1, "small reads share one window");
        r.seek(SeekFrom::End(-10)).unwrap();
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, content2[content2.len() - 10..]);
        r.seek(SeekFrom::Start(200_000)).unwrap();
        let mut big = vec![0u8; 150_000];
        r.read_exact(&mut big).unwrap();
        assert_eq!(big, content2[200_000..350_000]);
        assert!(r.seek(SeekFrom::Current(-1_000_000)).is_err());
        assert!(r.bytes_read < content2.len() as u64, "read {} of {}", r.bytes_read, content2.len());
    })
    .await
    .unwrap();
}
