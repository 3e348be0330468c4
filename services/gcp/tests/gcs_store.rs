//! GcsStore and CloudResolver against fake-gcs-server: what the conformance suite does
//! not cover (both upload paths, chunk boundaries, paging, notifications, resolving).

use std::time::Duration;

use reel_gcp::{CloudResolver, GcsStore, UploadStrategy};
use reel_runtime::bus::Bus;
use reel_runtime::location::{Location, StoreResolver};
use reel_runtime::store::{ByteReader, PutMode, PutOptions, Store, StoreError};
use reel_runtime::topology::{TopicSpec, Topology};
use reel_testkit::fixtures::subscription;
use reel_testkit::{unique, EmulatorOptions, Emulators};
use tokio::io::AsyncReadExt;

const CHUNK: usize = reel_gcp::CHUNK_SIZE;

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn body(data: &[u8]) -> ByteReader {
    Box::pin(std::io::Cursor::new(data.to_vec()))
}

async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store.get(key).await.unwrap().read_to_end(&mut out).await.unwrap();
    out
}

async fn store(strategy: UploadStrategy) -> GcsStore {
    Emulators::shared().store("reel-gcs-tests").await.with_upload_strategy(strategy)
}

#[tokio::test]
async fn both_upload_paths_round_trip_at_chunk_boundaries() {
    for strategy in [UploadStrategy::Resumable, UploadStrategy::Multipart] {
        let store = store(strategy).await;
        let p = unique("sizes");
        for (i, len) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3].into_iter().enumerate() {
            let key = format!("{p}/{i}.bin");
            let data = bytes(i as u8, len);
            let meta = store
                .put(&key, body(&data), PutMode::Overwrite)
                .await
                .unwrap_or_else(|e| panic!("{strategy:?} {len}: {e}"));
            assert_eq!(meta.size, len as u64, "{strategy:?} {len}");
            assert_eq!(meta.crc32c, crc32c::crc32c(&data), "{strategy:?} {len}");
            assert_eq!(meta.key, key);
            assert!(meta.generation > 0);
            let head = store.head(&key).await.unwrap().unwrap();
            assert_eq!((head.size, head.crc32c, head.generation), (meta.size, meta.crc32c, meta.generation));
            assert_eq!(read_all(&store, &key).await, data, "{strategy:?} {len}");
        }
        assert_eq!(reel_runtime::store::delete_prefix(&store, &p).await.unwrap(), 6);
    }
}

#[tokio::test]
async fn create_only_is_enforced_on_the_emulator_by_multipart() {
    let store = store(UploadStrategy::Auto).await;
    let key = format!("{}/once", unique("create"));
    store.put(&key, body(b"one"), PutMode::CreateOnly).await.unwrap();
    assert!(
        matches!(store.put(&key, body(b"two"), PutMode::CreateOnly).await, Err(StoreError::AlreadyExists(k)) if k == key)
    );
    // Overwrite is a resumable upload and replaces.
    let meta = store.put(&key, body(b"three"), PutMode::Overwrite).await.unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(read_all(&store, &key).await, b"three");
}

/// Custom metadata travels on both upload paths (the multipart part's object resource,
/// the resumable session's) and comes back from head and list.
#[tokio::test]
async fn metadata_travels_on_both_upload_paths() {
    let metadata = std::collections::BTreeMap::from([
        ("reel-project".to_string(), "proj_1".to_string()),
        ("reel-job".to_string(), "job_1".to_string()),
    ]);
    for strategy in [UploadStrategy::Resumable, UploadStrategy::Multipart] {
        let store = store(strategy).await;
        let key = format!("{}/reel.mp4", unique("metadata"));
        let options = PutOptions::new(PutMode::Overwrite).with_metadata(metadata.clone());
        let meta = store.put_with(&key, body(&bytes(7, CHUNK + 5)), &options).await.unwrap();
        assert_eq!(meta.metadata, metadata, "{strategy:?}: put");
        assert_eq!(store.head(&key).await.unwrap().unwrap().metadata, metadata, "{strategy:?}: head");
        let listed = store.list(&key).await.unwrap();
        assert_eq!(listed[0].metadata, metadata, "{strategy:?}: list");
        store.delete(&key).await.unwrap();
    }
}

#[tokio::test]
async fn list_follows_every_page() {
    let store = store(UploadStrategy::Auto).await.with_list_page_size(2);
    let p = unique("pages");
    for i in 0..7 {
        store.put(&format!("{p}/k{i}"), body(&[i]), PutMode::CreateOnly).await.unwrap();
    }
    let listed: Vec<String> = store.list(&format!("{p}/")).await.unwrap().into_iter().map(|m| m.key).collect();
    let want: Vec<String> = (0..7).map(|i| format!("{p}/k{i}")).collect();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn a_missing_bucket_is_not_found_and_creation_is_idempotent() {
    let emulators = Emulators::shared();
    let client = emulators.gcs_client().await;
    let missing = client.store(&unique("no-such-bucket"));
    assert!(matches!(missing.put("k", body(b"x"), PutMode::Overwrite).await, Err(StoreError::NotFound(_))));
    assert!(missing.list("").await.is_err());
    let bucket = client.store(&unique("bucket"));
    assert!(bucket.create_bucket_if_missing(emulators.project()).await.unwrap());
    assert!(!bucket.create_bucket_if_missing(emulators.project()).await.unwrap());
    assert!(bucket.describe().starts_with("gs://bucket-"));
}

#[tokio::test]
async fn the_resolver_maps_buckets_and_local_paths() {
    let emulators = Emulators::shared();
    let resolver = CloudResolver::new(Some(emulators.gcs_client().await));
    let gcs = emulators.store("reel-resolver").await;
    let key = format!("{}/clip.mp4", unique("res"));
    gcs.put(&key, body(b"video"), PutMode::Overwrite).await.unwrap();
    let (store, k) = resolver.resolve(&Location::Gcs { bucket: "reel-resolver".into(), key: key.clone() }).unwrap();
    assert_eq!(k, key);
    assert_eq!(read_all(&*store, &k).await, b"video");
    let (again, _) = resolver.resolve(&Location::Gcs { bucket: "reel-resolver".into(), key: "x".into() }).unwrap();
    assert!(std::sync::Arc::ptr_eq(&store, &again), "one store per bucket");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.mp4");
    std::fs::write(&file, b"local bytes").unwrap();
    let (local, k) = resolver.resolve(&Location::Local(file.clone())).unwrap();
    assert_eq!(k, file.to_str().unwrap().trim_start_matches('/'));
    assert_eq!(read_all(&*local, &k).await, b"local bytes");

    let offline = CloudResolver::new(None);
    assert!(offline.resolve(&Location::Gcs { bucket: "b".into(), key: "k".into() }).is_err());
}

/// fake-gcs-server publishes OBJECT_FINALIZE notifications to the Pub/Sub emulator: the
/// storage trigger's input, as Cloud Storage sends it (JSON_API_V1), for objects under
/// `manifests/` only, as terraform's notification is configured.
#[tokio::test]
async fn uploads_publish_object_finalize_notifications() {
    let topic = unique("gcs-notifications");
    let emulators = Emulators::start_with(EmulatorOptions {
        gcs_notification_topic: Some(topic.clone()),
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    let pids = emulators.pids();
    assert_eq!(pids.len(), 2);
    let bus = emulators.bus().await;
    let sub = unique("gcs-sub");
    let topology = Topology {
        prefix: String::new(),
        topics: vec![TopicSpec { name: topic.clone(), retention: None }],
        subscriptions: vec![subscription(&sub, &topic)],
    };
    bus.ensure_topology(&topology).await.unwrap();
    let store = emulators.store("uploads").await;
    store.put("clips/a.mp4", body(b"not a manifest"), PutMode::CreateOnly).await.unwrap();
    let meta = store.put("manifests/p/manifest.json", body(b"{}"), PutMode::CreateOnly).await.unwrap();
    let got = bus.receive(&sub, 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 1, "no notification");
    let attrs = &got[0].message.attributes;
    assert_eq!(attrs.get("eventType").map(String::as_str), Some("OBJECT_FINALIZE"));
    assert_eq!(attrs.get("bucketId").map(String::as_str), Some("uploads"));
    assert_eq!(attrs.get("objectId").map(String::as_str), Some("manifests/p/manifest.json"));
    assert_eq!(attrs.get("objectGeneration"), Some(&meta.generation.to_string()));
    assert_eq!(attrs.get("payloadFormat").map(String::as_str), Some("JSON_API_V1"));
    let object: serde_json::Value = serde_json::from_slice(&got[0].message.data).unwrap();
    assert_eq!(object["name"], "manifests/p/manifest.json");
    bus.ack(&sub, &got[0].ack_id).await.unwrap();
    let more = bus.receive(&sub, 10, Duration::from_secs(1)).await.unwrap();
    assert!(more.is_empty(), "a notification for an object outside manifests/");
    drop(bus);
    drop(emulators);
    // Dropping kills exactly those processes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "emulator {pid} still running");
    }
}

/// A server-side copy from another bucket (upload's way from the work bucket to the
/// output): the bytes arrive, the metadata is the one asked for, and the write condition
/// holds (create-only, a generation), as for a put.
#[tokio::test]
async fn an_object_of_another_bucket_is_copied_by_the_service_under_the_put_rules() {
    let work = Emulators::shared().store("reel-gcs-tests").await;
    let outputs = Emulators::shared().store("reel-gcs-tests-outputs").await;
    outputs.create_bucket_if_missing(Emulators::shared().project()).await.unwrap();
    let (src, dst) = (unique("copy-src") + ".mp4", unique("copy-dst") + ".mp4");
    let data = bytes(7, 300_000);
    work.put(&src, body(&data), PutMode::Overwrite).await.unwrap();
    let source = work.remote_object(&src).expect("a bucket's object is remote");
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("reel-job".to_string(), "job_copy".to_string());
    let options = PutOptions::new(PutMode::CreateOnly).with_metadata(metadata.clone());
    let meta = outputs.put_copy_of(&source, &dst, &options).await.unwrap().expect("same service: copied");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(read_all(&outputs, &dst).await, data);
    assert_eq!(outputs.head(&dst).await.unwrap().unwrap().metadata, metadata);
    match outputs.put_copy_of(&source, &dst, &options).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("a create-only copy onto an object must be AlreadyExists, got {other:?}"),
    }
    let stale = PutOptions::new(PutMode::IfGeneration(meta.generation + 1));
    match outputs.put_copy_of(&source, &dst, &stale).await {
        Err(StoreError::PreconditionFailed(_)) => {}
        other => panic!("a copy expecting another generation must be PreconditionFailed, got {other:?}"),
    }
    let replaced = outputs
        .put_copy_of(&source, &dst, &PutOptions::new(PutMode::IfGeneration(meta.generation)))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(replaced.generation, meta.generation);
    let gone = reel_runtime::store::RemoteObject { name: unique("missing"), ..source.clone() };
    match outputs.put_copy_of(&gone, &unique("never"), &PutOptions::new(PutMode::Overwrite)).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("a copy of a missing object must be NotFound, got {other:?}"),
    }
}
