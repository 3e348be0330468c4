//! The suite every [`Bus`] and [`Store`] implementation must pass.
//!
//! Each case is an async function taking the implementation (`Arc<dyn Bus>` or
//! `Arc<dyn Store>`) and a unique name prefix (see [`unique_prefix`]); it creates only
//! topics, subscriptions and keys starting with that prefix, so cases can run in
//! parallel against one emulator or bucket. A case panics with a message saying which
//! property failed.
//!
//! Two macros expand to one `#[tokio::test]` per case, in a module of the caller (the
//! calling crate needs `tokio` with the `macros` and `rt-multi-thread` features):
//!
//! ```ignore
//! reel_runtime::bus_conformance_tests!(async { make_bus().await });
//! reel_runtime::store_conformance_tests!(async { make_store().await });
//! // several in one file: name the modules
//! reel_runtime::bus_conformance_tests!(module = pubsub_bus, async { make_bus().await });
//! ```
//!
//! The expression is evaluated once per test and must yield `Arc<dyn Bus>` /
//! `Arc<dyn Store>` (or an `Arc` of an implementation, which coerces).
//!
//! Timing: every case takes well under 2 s on the embedded implementations; waits for
//! something that should arrive allow up to [`ARRIVAL_TIMEOUT`] (dead letters:
//! [`DEAD_LETTER_TIMEOUT`]), so the Pub/Sub emulator passes too. Test subscriptions use
//! Pub/Sub's minimums where it has them (10 s ack deadline, 5 delivery attempts) and a
//! dead-letter policy (without one Pub/Sub does not report delivery attempts).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Bus, BusError, Delivery, Message};
use crate::store::{ByteReader, ObjectMeta, PutMode, PutOptions, Store, StoreError};
use crate::topology::{SubscriptionSpec, TopicSpec, Topology};

/// How long a case waits for a message or result that should arrive.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the dead-letter case waits for the dead letter.
pub const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a case watches for a message that must not arrive.
pub const QUIET_WINDOW: Duration = Duration::from_millis(1500);

/// A fresh name prefix for one case: `rc-{8 hex}-{case}-`, starting with a letter and
/// using only characters valid in Pub/Sub names and object keys.
pub fn unique_prefix(case: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let case: String =
        case.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("rc-{}-{}-", &id[..8], case)
}

/// The Bus cases, by name (each is a function in [`bus_cases`]).
pub const BUS_CASES: &[&str] = &[
    "publish_receive_ack",
    "nack_redelivers",
    "modify_deadline_zero_redelivers",
    "lease_expiry_redelivers",
    "ack_is_final",
    "receivers_share_a_subscription",
    "fan_out",
    "dead_letter_after_max_attempts",
    "peek_does_not_consume",
    "ensure_topology_is_idempotent",
    "missing_topic_and_subscription",
];

/// The Store cases, by name (each is a function in [`store_cases`]).
pub const STORE_CASES: &[&str] = &[
    "put_get_large_streamed",
    "head_missing_is_none",
    "get_missing_is_not_found",
    "create_only_existing_is_already_exists",
    "overwrite_replaces",
    "list_by_prefix",
    "delete_reports_presence",
    "copy_semantics",
    "invalid_keys_rejected",
    "concurrent_create_only_single_winner",
    "put_invisible_until_complete",
    "failed_put_leaves_nothing",
    "metadata_round_trips",
    "if_generation_replaces_only_that_generation",
    "concurrent_if_generation_single_winner",
];

/// The Bus cases.
pub mod bus_cases {
    use super::*;

    /// A topic spec named `name`.
    pub fn topic(name: &str) -> TopicSpec {
        TopicSpec { name: name.to_string(), retention: None }
    }

    /// A subscription spec with the suite's defaults: 10 s ack deadline, immediate retry
    /// (min backoff 0, max 10 s), dead-letter topic `dlq` after 10 attempts (so that
    /// Pub/Sub reports delivery attempts), 10 minutes retention, no exactly-once.
    pub fn subscription(name: &str, topic: &str, dlq: &str) -> SubscriptionSpec {
        SubscriptionSpec {
            name: name.to_string(),
            topic: topic.to_string(),
            ack_deadline: Duration::from_secs(10),
            dead_letter_topic: Some(dlq.to_string()),
            max_delivery_attempts: 10,
            min_backoff: Duration::ZERO,
            max_backoff: Duration::from_secs(10),
            message_retention: Duration::from_secs(600),
            exactly_once: false,
        }
    }

    /// `{p}topic` with subscription `{p}sub`, both dead-lettering to `{p}dlq`.
    pub fn simple_topology(p: &str) -> (Topology, String, String) {
        let (t, s, d) = (format!("{p}topic"), format!("{p}sub"), format!("{p}dlq"));
        let topology = Topology {
            prefix: p.to_string(),
            topics: vec![topic(&t), topic(&d)],
            subscriptions: vec![subscription(&s, &t, &d)],
        };
        (topology, t, s)
    }

    /// A message with binary data, two attributes and an ordering key.
    pub fn sample_message(tag: &str) -> Message {
        let mut attributes = BTreeMap::new();
        attributes.insert("ce-type".to_string(), "reel.test".to_string());
        attributes.insert("tag".to_string(), tag.to_string());
        Message {
            data: [tag.as_bytes(), &[0u8, 0xff, 0x80, b'\n']].concat(),
            attributes,
            ordering_key: format!("job-{tag}"),
        }
    }

    /// Receive until `n` deliveries arrived or `timeout` passed; returns what came.
    pub async fn receive_n(bus: &dyn Bus, sub: &str, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_secs(2));
            match bus.receive(sub, n - out.len(), wait).await {
                Ok(mut got) => out.append(&mut got),
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("receive on {sub} failed: {e}"),
            }
        }
        out
    }

    /// Receive exactly one delivery within [`ARRIVAL_TIMEOUT`], or panic with `what`.
    pub async fn receive_one(bus: &dyn Bus, sub: &str, what: &str) -> Delivery {
        let mut got = receive_n(bus, sub, 1, ARRIVAL_TIMEOUT).await;
        assert!(!got.is_empty(), "{what}: nothing arrived on {sub} within {ARRIVAL_TIMEOUT:?}");
        got.remove(0)
    }

    /// Assert that nothing arrives on `sub` for `window`.
    pub async fn assert_quiet(bus: &dyn Bus, sub: &str, window: Duration, what: &str) {
        let got = receive_n(bus, sub, 1, window).await;
        assert!(
            got.is_empty(),
            "{what}: unexpected delivery on {sub}: message {} attempt {}",
            got[0].message_id,
            got[0].delivery_attempt
        );
    }

    async fn ensure(bus: &dyn Bus, topology: &Topology) {
        bus.ensure_topology(topology).await.unwrap_or_else(|e| panic!("ensure_topology failed: {e}"));
    }

    async fn publish(bus: &dyn Bus, topic: &str, message: Message) -> String {
        bus.publish(topic, message).await.unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"))
    }

    fn assert_same_message(got: &Message, want: &Message, what: &str) {
        assert_eq!(got.data, want.data, "{what}: data changed in transit");
        for (k, v) in &want.attributes {
            assert_eq!(got.attributes.get(k), Some(v), "{what}: attribute {k} changed or missing");
        }
        assert_eq!(got.ordering_key, want.ordering_key, "{what}: ordering key changed");
    }

    /// Publish → receive → ack: data, attributes and ordering key intact, attempt 1,
    /// the published message id, a plausible publish time; nothing comes back after the ack.
    pub async fn publish_receive_ack(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        let sent = sample_message("a");
        let before = chrono::Utc::now() - chrono::Duration::seconds(60);
        let id = publish(&*bus, &topic, sent.clone()).await;
        assert!(!id.is_empty(), "publish returned an empty message id");
        let d = receive_one(&*bus, &sub, "publish → receive").await;
        assert_eq!(d.message_id, id, "delivered message id differs from the one publish returned");
        assert_same_message(&d.message, &sent, "publish → receive");
        assert_eq!(d.delivery_attempt, 1, "first delivery must have attempt 1");
        let after = chrono::Utc::now() + chrono::Duration::seconds(60);
        assert!(d.publish_time > before && d.publish_time < after, "publish_time {} is not now", d.publish_time);
        assert!(!d.ack_id.is_empty(), "empty ack id");
        bus.ack(&sub, &d.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
        let id2 = publish(&*bus, &topic, sample_message("b")).await;
        assert_ne!(id, id2, "two publishes got the same message id");
        let d2 = receive_one(&*bus, &sub, "second message").await;
        assert_eq!(d2.message_id, id2, "after the ack, the next delivery must be the second message");
        assert_ne!(d2.ack_id, d.ack_id, "two deliveries share an ack id");
        bus.ack(&sub, &d2.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }

    /// A nacked message is redelivered with attempt 2 and a new ack id.
    pub async fn nack_redelivers(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        let id = publish(&*bus, &topic, sample_message("n")).await;
        let first = receive_one(&*bus, &sub, "first delivery").await;
        assert_eq!(first.delivery_attempt, 1);
        bus.nack(&sub, &first.ack_id).await.unwrap_or_else(|e| panic!("nack failed: {e}"));
        let second = receive_one(&*bus, &sub, "redelivery after nack").await;
        assert_eq!(second.message_id, id, "redelivered a different message");
        assert_eq!(second.delivery_attempt, 2, "redelivery after a nack must have attempt 2");
        assert_ne!(second.ack_id, first.ack_id, "a redelivery must get a new ack id");
        assert_same_message(&second.message, &sample_message("n"), "redelivery");
        bus.ack(&sub, &second.ack_id).await.unwrap_or_else(|e| panic!("ack of the redelivery failed: {e}"));
    }

    /// `modify_deadline(…, 0)` ends the lease at once: redelivered with attempt 2.
    pub async fn modify_deadline_zero_redelivers(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        let id = publish(&*bus, &topic, sample_message("m")).await;
        let first = receive_one(&*bus, &sub, "first delivery").await;
        bus.modify_deadline(&sub, &first.ack_id, 0).await.unwrap_or_else(|e| panic!("modify_deadline 0 failed: {e}"));
        let second = receive_one(&*bus, &sub, "redelivery after modify_deadline 0").await;
        assert_eq!(second.message_id, id);
        assert_eq!(second.delivery_attempt, 2, "redelivery after modify_deadline 0 must have attempt 2");
        bus.ack(&sub, &second.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }

    /// A lease shortened to 1 s and left to expire: redelivered with attempt 2, not
    /// before the lease ended (allowing 300 ms of clock slack).
    pub async fn lease_expiry_redelivers(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        let id = publish(&*bus, &topic, sample_message("l")).await;
        let first = receive_one(&*bus, &sub, "first delivery").await;
        let leased_at = tokio::time::Instant::now();
        bus.modify_deadline(&sub, &first.ack_id, 1).await.unwrap_or_else(|e| panic!("modify_deadline 1 failed: {e}"));
        let second = receive_one(&*bus, &sub, "redelivery after lease expiry").await;
        let elapsed = leased_at.elapsed();
        assert_eq!(second.message_id, id);
        assert_eq!(second.delivery_attempt, 2, "redelivery after lease expiry must have attempt 2");
        assert!(elapsed >= Duration::from_millis(700), "redelivered after {elapsed:?}, before the 1 s lease ended");
        bus.ack(&sub, &second.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }

    /// An acked message is not redelivered, even after its (shortened) lease would have ended.
    pub async fn ack_is_final(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        publish(&*bus, &topic, sample_message("f")).await;
        let d = receive_one(&*bus, &sub, "delivery").await;
        bus.modify_deadline(&sub, &d.ack_id, 1).await.unwrap_or_else(|e| panic!("modify_deadline failed: {e}"));
        bus.ack(&sub, &d.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
        assert_quiet(&*bus, &sub, QUIET_WINDOW, "after ack").await;
    }

    /// Two receivers on one subscription: every message is delivered, none twice while leased.
    pub async fn receivers_share_a_subscription(bus: Arc<dyn Bus>, p: &str) {
        const N: usize = 20;
        let (mut topology, topic, sub) = simple_topology(p);
        topology.subscriptions[0].exactly_once = true;
        ensure(&*bus, &topology).await;
        let mut ids = HashSet::new();
        for i in 0..N {
            ids.insert(publish(&*bus, &topic, sample_message(&format!("s{i}"))).await);
        }
        let seen = Arc::new(std::sync::Mutex::new(Vec::<Delivery>::new()));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (bus, sub, seen) = (bus.clone(), sub.clone(), seen.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
                while seen.lock().unwrap().len() < N && tokio::time::Instant::now() < deadline {
                    let got = bus
                        .receive(&sub, 3, Duration::from_millis(200))
                        .await
                        .unwrap_or_else(|e| panic!("receive failed: {e}"));
                    seen.lock().unwrap().extend(got);
                }
            }));
        }
        for task in tasks {
            task.await.expect("receiver task panicked");
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let mut delivered = HashSet::new();
        for d in &seen {
            assert!(delivered.insert(d.message_id.clone()), "message {} delivered twice while leased", d.message_id);
        }
        assert_eq!(delivered, ids, "not every published message was delivered");
        for d in &seen {
            bus.ack(&sub, &d.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
        }
    }

    /// Each subscription of a topic gets its own copy.
    pub async fn fan_out(bus: Arc<dyn Bus>, p: &str) {
        let (t, d) = (format!("{p}topic"), format!("{p}dlq"));
        let (s1, s2) = (format!("{p}sub-1"), format!("{p}sub-2"));
        let topology = Topology {
            prefix: p.to_string(),
            topics: vec![topic(&t), topic(&d)],
            subscriptions: vec![subscription(&s1, &t, &d), subscription(&s2, &t, &d)],
        };
        ensure(&*bus, &topology).await;
        let id = publish(&*bus, &t, sample_message("fan")).await;
        let a = receive_one(&*bus, &s1, "fan-out to the first subscription").await;
        bus.ack(&s1, &a.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
        let b = receive_one(&*bus, &s2, "fan-out to the second subscription (after an ack on the first)").await;
        assert_eq!(a.message_id, id);
        assert_eq!(b.message_id, id, "both subscriptions must see the same message id");
        assert_eq!(b.delivery_attempt, 1, "an ack on one subscription must not affect another");
        assert_same_message(&b.message, &sample_message("fan"), "fan-out");
        bus.ack(&s2, &b.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }

    /// After `max_delivery_attempts` (5) nacks the message arrives on the dead-letter
    /// topic's subscription and stops being delivered on the source subscription.
    pub async fn dead_letter_after_max_attempts(bus: Arc<dyn Bus>, p: &str) {
        let (t, d, s, ds) = (format!("{p}topic"), format!("{p}dlq"), format!("{p}sub"), format!("{p}dlq-sub"));
        let mut source = subscription(&s, &t, &d);
        source.max_delivery_attempts = 5;
        let mut dead = subscription(&ds, &d, &d);
        dead.dead_letter_topic = None;
        let topology =
            Topology { prefix: p.to_string(), topics: vec![topic(&t), topic(&d)], subscriptions: vec![source, dead] };
        ensure(&*bus, &topology).await;
        let sent = sample_message("dead");
        publish(&*bus, &topic_name(&topology, 0), sent.clone()).await;
        let deadline = tokio::time::Instant::now() + DEAD_LETTER_TIMEOUT;
        let mut max_attempt = 0;
        let letter = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no dead letter on {ds} within {DEAD_LETTER_TIMEOUT:?} (highest attempt seen on {s}: {max_attempt})"
            );
            // Keep pulling the source: the Pub/Sub emulator forwards only while pulled.
            for delivery in
                bus.receive(&s, 10, Duration::from_millis(300)).await.unwrap_or_else(|e| panic!("receive failed: {e}"))
            {
                max_attempt = max_attempt.max(delivery.delivery_attempt);
                assert!(
                    delivery.delivery_attempt <= 5,
                    "delivered with attempt {} > max_delivery_attempts 5",
                    delivery.delivery_attempt
                );
                bus.nack(&s, &delivery.ack_id).await.unwrap_or_else(|e| panic!("nack failed: {e}"));
            }
            let mut letters = bus
                .receive(&ds, 1, Duration::from_millis(100))
                .await
                .unwrap_or_else(|e| panic!("receive on the dead-letter subscription failed: {e}"));
            if let Some(letter) = letters.pop() {
                break letter;
            }
        };
        assert_eq!(max_attempt, 5, "the source subscription must deliver exactly 5 attempts before dead-lettering");
        assert_same_message(&letter.message, &sent, "dead letter");
        bus.ack(&ds, &letter.ack_id).await.unwrap_or_else(|e| panic!("ack of the dead letter failed: {e}"));
        assert_quiet(&*bus, &s, Duration::from_millis(500), "source subscription after dead-lettering").await;
    }

    fn topic_name(topology: &Topology, i: usize) -> String {
        topology.topics[i].name.clone()
    }

    /// Peek shows waiting messages and leaves them deliverable.
    pub async fn peek_does_not_consume(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        let mut ids = HashSet::new();
        ids.insert(publish(&*bus, &topic, sample_message("p1")).await);
        ids.insert(publish(&*bus, &topic, sample_message("p2")).await);
        for round in 1..=2 {
            let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
            loop {
                let peeked = bus.peek(&sub, 10).await.unwrap_or_else(|e| panic!("peek failed: {e}"));
                let got: HashSet<String> = peeked.iter().map(|d| d.message_id.clone()).collect();
                if got == ids {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "peek #{round} returned {got:?}, wanted {ids:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let got = receive_n(&*bus, &sub, 2, ARRIVAL_TIMEOUT).await;
        let got_ids: HashSet<String> = got.iter().map(|d| d.message_id.clone()).collect();
        assert_eq!(got_ids, ids, "peeked messages must still be delivered");
        for d in got {
            bus.ack(&sub, &d.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
        }
    }

    /// A second ensure_topology (even with different settings) changes nothing and
    /// loses no queued message.
    pub async fn ensure_topology_is_idempotent(bus: Arc<dyn Bus>, p: &str) {
        let (topology, topic, sub) = simple_topology(p);
        ensure(&*bus, &topology).await;
        ensure(&*bus, &topology).await;
        let id = publish(&*bus, &topic, sample_message("i")).await;
        let mut changed = topology.clone();
        changed.subscriptions[0].ack_deadline = Duration::from_secs(20);
        ensure(&*bus, &changed).await;
        let d = receive_one(&*bus, &sub, "message queued before the second ensure_topology").await;
        assert_eq!(d.message_id, id);
        bus.ack(&sub, &d.ack_id).await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }

    /// Publishing to a missing topic and receiving from a missing subscription are NotFound.
    pub async fn missing_topic_and_subscription(bus: Arc<dyn Bus>, p: &str) {
        match bus.publish(&format!("{p}missing"), sample_message("x")).await {
            Err(BusError::NotFound(_)) => {}
            other => panic!("publish to a missing topic must be NotFound, got {other:?}"),
        }
        match bus.receive(&format!("{p}missing"), 1, Duration::from_millis(100)).await {
            Err(BusError::NotFound(_)) => {}
            other => panic!("receive on a missing subscription must be NotFound, got {other:?}"),
        }
    }
}

/// The Store cases.
pub mod store_cases {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A body reading `bytes`.
    pub fn body(bytes: &[u8]) -> ByteReader {
        Box::pin(std::io::Cursor::new(bytes.to_vec()))
    }

    /// Deterministic pseudo-random bytes (xorshift), so bodies are not compressible.
    pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Read an object to the end.
    pub async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
        let mut reader = store.get(key).await.unwrap_or_else(|e| panic!("get {key} failed: {e}"));
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap_or_else(|e| panic!("reading {key} failed: {e}"));
        out
    }

    async fn put(store: &dyn Store, key: &str, bytes: &[u8], mode: PutMode) -> ObjectMeta {
        store.put(key, body(bytes), mode).await.unwrap_or_else(|e| panic!("put {key} ({mode:?}) failed: {e}"))
    }

    fn check_meta(meta: &ObjectMeta, key: &str, bytes: &[u8], what: &str) {
        assert_eq!(meta.key, key, "{what}: wrong key in metadata");
        assert_eq!(meta.size, bytes.len() as u64, "{what}: wrong size");
        assert_eq!(meta.crc32c, crc32c::crc32c(bytes), "{what}: wrong crc32c");
    }

    /// A streamed body of 8 MiB + 12345 bytes, written in 64 KiB pieces from another
    /// task: put returns the right size and CRC32C, head agrees, get streams it back.
    pub async fn put_get_large_streamed(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}big/object.bin");
        let len = 8 * 1024 * 1024 + 12345;
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let feeder = tokio::spawn(async move {
            let mut crc = 0u32;
            let mut written = 0usize;
            let mut seed = 7u64;
            while written < len {
                let chunk = pattern(seed, (64 * 1024).min(len - written));
                seed += 1;
                crc = crc32c::crc32c_append(crc, &chunk);
                writer.write_all(&chunk).await.expect("feeding the body");
                written += chunk.len();
            }
            writer.shutdown().await.expect("closing the body");
            crc
        });
        let meta = store
            .put(&key, Box::pin(reader), PutMode::CreateOnly)
            .await
            .unwrap_or_else(|e| panic!("streamed put failed: {e}"));
        let crc = feeder.await.expect("feeder task");
        assert_eq!(meta.size, len as u64, "put: wrong size");
        assert_eq!(meta.crc32c, crc, "put: wrong crc32c");
        assert_eq!(meta.key, key);
        let head = store
            .head(&key)
            .await
            .unwrap_or_else(|e| panic!("head failed: {e}"))
            .expect("head of a put object is None");
        assert_eq!((head.size, head.crc32c), (meta.size, meta.crc32c), "head disagrees with put");
        let mut reader = store.get(&key).await.unwrap_or_else(|e| panic!("get failed: {e}"));
        let mut buf = vec![0u8; 100_000];
        let (mut got_crc, mut got_len) = (0u32, 0usize);
        loop {
            let n = reader.read(&mut buf).await.expect("reading the object");
            if n == 0 {
                break;
            }
            got_crc = crc32c::crc32c_append(got_crc, &buf[..n]);
            got_len += n;
        }
        assert_eq!((got_len, got_crc), (len, crc), "get returned different content");
        assert!(store.delete(&key).await.unwrap_or_else(|e| panic!("delete failed: {e}")));
    }

    /// head of a missing key is `None`.
    pub async fn head_missing_is_none(store: Arc<dyn Store>, p: &str) {
        let got = store
            .head(&format!("{p}missing/key"))
            .await
            .unwrap_or_else(|e| panic!("head of a missing key failed: {e}"));
        assert_eq!(got, None, "head of a missing key must be None");
    }

    /// get of a missing key is NotFound.
    pub async fn get_missing_is_not_found(store: Arc<dyn Store>, p: &str) {
        match store.get(&format!("{p}missing/key")).await {
            Err(StoreError::NotFound(_)) => {}
            Err(e) => panic!("get of a missing key must be NotFound, got {e:?}"),
            Ok(_) => panic!("get of a missing key must be NotFound, got a reader"),
        }
    }

    /// CreateOnly onto an existing key fails with AlreadyExists and leaves the content.
    pub async fn create_only_existing_is_already_exists(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}once.txt");
        put(&*store, &key, b"first", PutMode::CreateOnly).await;
        match store.put(&key, body(b"second, longer"), PutMode::CreateOnly).await {
            Err(StoreError::AlreadyExists(_)) => {}
            other => panic!("CreateOnly onto an existing key must be AlreadyExists, got {other:?}"),
        }
        assert_eq!(read_all(&*store, &key).await, b"first", "a refused CreateOnly put changed the content");
        store.delete(&key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
    }

    /// Overwrite replaces content and metadata; the generation grows.
    pub async fn overwrite_replaces(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}doc.txt");
        let first = put(&*store, &key, b"version one", PutMode::Overwrite).await;
        let second = put(&*store, &key, b"v2", PutMode::Overwrite).await;
        check_meta(&second, &key, b"v2", "overwrite");
        assert!(
            second.generation > first.generation,
            "generation must grow on overwrite ({} then {})",
            first.generation,
            second.generation
        );
        assert_eq!(read_all(&*store, &key).await, b"v2", "overwrite did not replace the content");
        let head = store.head(&key).await.unwrap_or_else(|e| panic!("head failed: {e}")).expect("head is None");
        check_meta(&head, &key, b"v2", "head after overwrite");
        assert_eq!(head.generation, second.generation, "head generation differs from the put's");
        store.delete(&key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
    }

    /// list(prefix) is recursive, sorted, and a plain string prefix match.
    pub async fn list_by_prefix(store: Arc<dyn Store>, p: &str) {
        let names = ["jobs/b", "jobs/a/y/z", "jobs/ab", "jobs/a/x", "other"];
        for (i, name) in names.iter().enumerate() {
            put(&*store, &format!("{p}{name}"), name.repeat(i + 1).as_bytes(), PutMode::CreateOnly).await;
        }
        let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
        let full = |names: &[&str]| names.iter().map(|n| format!("{p}{n}")).collect::<Vec<_>>();
        let listed = store.list(&format!("{p}jobs/a")).await.unwrap_or_else(|e| panic!("list failed: {e}"));
        for meta in &listed {
            let name = meta.key.strip_prefix(p).expect("listed key outside the prefix");
            let i = names.iter().position(|n| *n == name).expect("listed an unknown key");
            check_meta(meta, &meta.key, name.repeat(i + 1).as_bytes(), "listed object");
        }
        assert_eq!(keys(listed), full(&["jobs/a/x", "jobs/a/y/z", "jobs/ab"]), "list(jobs/a)");
        assert_eq!(
            keys(store.list(&format!("{p}jobs/a/")).await.unwrap()),
            full(&["jobs/a/x", "jobs/a/y/z"]),
            "list(jobs/a/)"
        );
        assert_eq!(
            keys(store.list(p).await.unwrap()),
            full(&["jobs/a/x", "jobs/a/y/z", "jobs/ab", "jobs/b", "other"]),
            "list(whole prefix)"
        );
        assert_eq!(
            keys(store.list(&format!("{p}nothing")).await.unwrap()),
            Vec::<String>::new(),
            "list of an unused prefix"
        );
        for name in names {
            store.delete(&format!("{p}{name}")).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
        }
        assert_eq!(keys(store.list(p).await.unwrap()), Vec::<String>::new(), "list after deleting everything");
    }

    /// delete returns true, then false; the object is gone.
    pub async fn delete_reports_presence(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}dir/sub/gone.txt");
        put(&*store, &key, b"bye", PutMode::CreateOnly).await;
        assert!(
            store.delete(&key).await.unwrap_or_else(|e| panic!("delete failed: {e}")),
            "delete of an existing key must return true"
        );
        assert_eq!(store.head(&key).await.unwrap(), None, "object still there after delete");
        assert!(
            !store.delete(&key).await.unwrap_or_else(|e| panic!("second delete failed: {e}")),
            "delete of a missing key must return false"
        );
        // The key can be written again afterwards.
        put(&*store, &key, b"again", PutMode::CreateOnly).await;
        assert!(store.delete(&key).await.unwrap());
    }

    /// copy: equal content, CreateOnly respected, Overwrite replaces, missing source NotFound.
    pub async fn copy_semantics(store: Arc<dyn Store>, p: &str) {
        let (src, dst, taken) = (format!("{p}src.bin"), format!("{p}copies/dst.bin"), format!("{p}taken.bin"));
        let content = pattern(3, 100_000);
        put(&*store, &src, &content, PutMode::CreateOnly).await;
        let meta = store.copy(&src, &dst, PutMode::CreateOnly).await.unwrap_or_else(|e| panic!("copy failed: {e}"));
        check_meta(&meta, &dst, &content, "copy");
        assert_eq!(read_all(&*store, &dst).await, content, "copy content differs");
        assert_eq!(read_all(&*store, &src).await, content, "copy changed the source");
        put(&*store, &taken, b"keep me", PutMode::CreateOnly).await;
        match store.copy(&src, &taken, PutMode::CreateOnly).await {
            Err(StoreError::AlreadyExists(_)) => {}
            other => {
                panic!("CreateOnly copy onto an existing key must be AlreadyExists, got {other:?}")
            }
        }
        assert_eq!(read_all(&*store, &taken).await, b"keep me", "a refused copy changed the target");
        let meta =
            store.copy(&src, &taken, PutMode::Overwrite).await.unwrap_or_else(|e| panic!("overwrite copy failed: {e}"));
        check_meta(&meta, &taken, &content, "overwrite copy");
        assert_eq!(read_all(&*store, &taken).await, content, "overwrite copy did not replace the target");
        match store.copy(&format!("{p}missing.bin"), &format!("{p}never.bin"), PutMode::Overwrite).await {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("copy of a missing source must be NotFound, got {other:?}"),
        }
        assert_eq!(store.head(&format!("{p}never.bin")).await.unwrap(), None, "a failed copy created its target");
        for key in [&src, &dst, &taken] {
            store.delete(key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
        }
    }

    /// `get_range` reads a slice: inside, running past the end (shortened), past the end
    /// (empty), empty, and a missing key (`NotFound`).
    pub async fn get_range_reads_a_slice(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}ranged.bin");
        let content = pattern(9, 300_000);
        put(&*store, &key, &content, PutMode::CreateOnly).await;
        let read = |offset: u64, len: u64| {
            let (store, key) = (store.clone(), key.clone());
            async move { store.get_range(&key, offset, len).await.unwrap_or_else(|e| panic!("get_range: {e}")) }
        };
        assert_eq!(read(0, 8).await, content[..8]);
        assert_eq!(read(123_457, 70_000).await, content[123_457..193_457]);
        assert_eq!(read(299_990, 100).await, content[299_990..], "a range running past the end is shortened");
        assert!(read(300_000, 10).await.is_empty(), "a range past the end is empty");
        assert!(read(5, 0).await.is_empty());
        match store.get_range(&format!("{p}missing.bin"), 0, 10).await {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("get_range of a missing key must be NotFound, got {other:?}"),
        }
        store.delete(&key).await.unwrap();
    }

    /// `compose` makes one object of many, in order, with the options' metadata and mode;
    /// more sources than Cloud Storage takes in one call (32) are composed too, and no
    /// temporary object is left behind; a missing source is `NotFound` and creates nothing.
    pub async fn compose_concatenates_in_order(store: Arc<dyn Store>, p: &str) {
        let parts: Vec<(String, Vec<u8>)> =
            (0..40u64).map(|i| (format!("{p}parts/{i:02}.bin"), pattern(i, 1000 + 37 * i as usize))).collect();
        for (key, content) in &parts {
            put(&*store, key, content, PutMode::CreateOnly).await;
        }
        let first: Vec<String> = parts.iter().take(3).map(|(k, _)| k.clone()).collect();
        let to = format!("{p}out/three.bin");
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("reel-job".to_string(), "job_compose".to_string());
        let options = PutOptions::new(PutMode::CreateOnly).with_metadata(metadata.clone());
        let meta = store.compose(&first, &to, &options).await.unwrap_or_else(|e| panic!("compose failed: {e}"));
        let want: Vec<u8> = parts.iter().take(3).flat_map(|(_, c)| c.clone()).collect();
        check_meta(&meta, &to, &want, "compose");
        assert_eq!(read_all(&*store, &to).await, want, "compose content differs");
        assert_eq!(store.head(&to).await.unwrap().unwrap().metadata, metadata, "compose metadata");
        match store.compose(&first, &to, &options).await {
            Err(StoreError::AlreadyExists(_)) => {}
            other => panic!("a CreateOnly compose onto an existing key must be AlreadyExists, got {other:?}"),
        }
        let all: Vec<String> = parts.iter().map(|(k, _)| k.clone()).collect();
        let big = format!("{p}out/forty.bin");
        let meta = store
            .compose(&all, &big, &PutOptions::new(PutMode::Overwrite))
            .await
            .unwrap_or_else(|e| panic!("compose of 40 failed: {e}"));
        let want: Vec<u8> = parts.iter().flat_map(|(_, c)| c.clone()).collect();
        check_meta(&meta, &big, &want, "compose of 40");
        assert_eq!(read_all(&*store, &big).await, want, "compose of 40 differs");
        assert_eq!(
            store.list_keys(&format!("{p}out/")).await.unwrap(),
            vec![big.clone(), to.clone()],
            "compose left temporary objects behind"
        );
        let missing = vec![first[0].clone(), format!("{p}parts/missing.bin")];
        match store.compose(&missing, &format!("{p}out/never.bin"), &PutOptions::new(PutMode::Overwrite)).await {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("compose with a missing source must be NotFound, got {other:?}"),
        }
        assert_eq!(
            store.head(&format!("{p}out/never.bin")).await.unwrap(),
            None,
            "a failed compose created its target"
        );
        for key in all.iter().chain([&to, &big]) {
            store.delete(key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
        }
    }

    /// Keys breaking the key rules are refused by every call, before touching anything.
    pub async fn invalid_keys_rejected(store: Arc<dyn Store>, p: &str) {
        let good = format!("{p}good.txt");
        put(&*store, &good, b"ok", PutMode::CreateOnly).await;
        let bad = [
            String::new(),
            format!("/{p}abs"),
            format!("{p}a//b"),
            format!("{p}a/../b"),
            format!("{p}a/./b"),
            format!("{p}dir/"),
            "..".to_string(),
        ];
        let invalid = |r: &Result<(), StoreError>| matches!(r, Err(StoreError::InvalidKey(..)));
        for key in &bad {
            let r = store.put(key, body(b"x"), PutMode::Overwrite).await.map(drop);
            assert!(invalid(&r), "put {key:?} must be InvalidKey, got {r:?}");
            let r = store.head(key).await.map(drop);
            assert!(invalid(&r), "head {key:?} must be InvalidKey, got {r:?}");
            let r = store.get(key).await.map(drop);
            assert!(invalid(&r), "get {key:?} must be InvalidKey, got {r:?}");
            let r = store.delete(key).await.map(drop);
            assert!(invalid(&r), "delete {key:?} must be InvalidKey, got {r:?}");
            let r = store.copy(&good, key, PutMode::Overwrite).await.map(drop);
            assert!(invalid(&r), "copy to {key:?} must be InvalidKey, got {r:?}");
            let r = store.copy(key, &good, PutMode::Overwrite).await.map(drop);
            assert!(invalid(&r), "copy from {key:?} must be InvalidKey, got {r:?}");
        }
        assert_eq!(read_all(&*store, &good).await, b"ok");
        store.delete(&good).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
    }

    /// Eight concurrent CreateOnly puts of one key: exactly one wins, the rest get
    /// AlreadyExists, and the object holds the winner's bytes.
    pub async fn concurrent_create_only_single_winner(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}race/result.bin");
        let lost = |e: &StoreError| matches!(e, StoreError::AlreadyExists(_));
        race_for_one_key(store, &key, PutMode::CreateOnly, 100, 256 * 1024, lost).await;
    }

    /// Eight concurrent puts of `key` in `mode`: exactly one wins, the others fail as
    /// `lost` says, and the object holds the winner's bytes (then it is deleted).
    async fn race_for_one_key(
        store: Arc<dyn Store>,
        key: &str,
        mode: PutMode,
        seed: u64,
        size: usize,
        lost: fn(&StoreError) -> bool,
    ) {
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let (store, key) = (store.clone(), key.to_string());
            tasks.push(tokio::spawn(async move {
                let bytes = pattern(seed + i, size);
                let r = store.put(&key, body(&bytes), mode).await;
                (bytes, r)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (bytes, r) = task.await.expect("put task panicked");
            match r {
                Ok(meta) => {
                    check_meta(&meta, key, &bytes, "winning put");
                    winners.push(bytes);
                }
                Err(e) if lost(&e) => {}
                Err(e) => panic!("a losing {mode:?} put failed otherwise: {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one concurrent {mode:?} put must win, {} did", winners.len());
        assert!(read_all(&*store, key).await == winners[0], "the object does not hold the winner's bytes");
        store.delete(key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
    }

    /// While a put streams, the key is neither visible to head nor listed (nor is any
    /// temporary object under the prefix); once the put returns it is.
    pub async fn put_invisible_until_complete(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}slow/object.bin");
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let put = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.put(&key, Box::pin(reader), PutMode::CreateOnly).await })
        };
        let half = pattern(9, 512 * 1024);
        writer.write_all(&half).await.expect("writing the first half");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.head(&key).await.unwrap(), None, "a put in progress is visible to head");
        let listed = store.list(p).await.unwrap_or_else(|e| panic!("list failed: {e}"));
        assert!(
            listed.is_empty(),
            "a put in progress shows in list: {:?}",
            listed.iter().map(|m| &m.key).collect::<Vec<_>>()
        );
        writer.write_all(&half).await.expect("writing the second half");
        writer.shutdown().await.expect("closing the body");
        drop(writer);
        let meta = put.await.expect("put task").unwrap_or_else(|e| panic!("put failed: {e}"));
        assert_eq!(meta.size, 2 * half.len() as u64);
        assert!(store.head(&key).await.unwrap().is_some(), "object not visible after the put returned");
        store.delete(&key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
    }

    /// A body failing mid-stream fails the put and leaves no object (and nothing listed).
    pub async fn failed_put_leaves_nothing(store: Arc<dyn Store>, p: &str) {
        struct Failing {
            left: usize,
        }
        impl tokio::io::AsyncRead for Failing {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if self.left == 0 {
                    return std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "body source failed",
                    )));
                }
                let n = self.left.min(buf.remaining()).min(10_000);
                buf.put_slice(&vec![b'z'; n]);
                self.left -= n;
                std::task::Poll::Ready(Ok(()))
            }
        }
        let key = format!("{p}broken.bin");
        let r = store.put(&key, Box::pin(Failing { left: 300_000 }), PutMode::Overwrite).await;
        assert!(r.is_err(), "a put whose body fails must fail");
        assert_eq!(store.head(&key).await.unwrap(), None, "a failed put left an object");
        assert!(store.list(p).await.unwrap().is_empty(), "a failed put left something listed under the prefix");
    }

    /// Custom metadata: a put stores exactly what it is given, head and the put return
    /// it, a put without metadata leaves none, and a copy carries the source's.
    pub async fn metadata_round_trips(store: Arc<dyn Store>, p: &str) {
        let (key, copy) = (format!("{p}meta/reel.mp4"), format!("{p}meta/copy.mp4"));
        let metadata = BTreeMap::from([
            ("reel-project".to_string(), "proj_1".to_string()),
            ("reel-job".to_string(), "job_1".to_string()),
            ("note".to_string(), "für Anna, 2 × 3".to_string()),
        ]);
        let options = PutOptions::new(PutMode::CreateOnly).with_metadata(metadata.clone());
        let written =
            store.put_with(&key, body(b"reel"), &options).await.unwrap_or_else(|e| panic!("put_with failed: {e}"));
        check_meta(&written, &key, b"reel", "put_with");
        assert_eq!(written.metadata, metadata, "put_with must return the metadata it stored");
        let head = store.head(&key).await.unwrap_or_else(|e| panic!("head failed: {e}")).expect("head is None");
        assert_eq!(head.metadata, metadata, "head must return the object's metadata");
        let copied = store.copy(&key, &copy, PutMode::CreateOnly).await.unwrap_or_else(|e| panic!("copy failed: {e}"));
        assert_eq!(copied.metadata, metadata, "a copy must carry the source's metadata");
        assert_eq!(store.head(&copy).await.unwrap().expect("copy is gone").metadata, metadata);
        put(&*store, &key, b"plain", PutMode::Overwrite).await;
        let head = store.head(&key).await.unwrap().expect("head is None");
        assert!(head.metadata.is_empty(), "a put without metadata must leave none, found {:?}", head.metadata);
        for key in [&key, &copy] {
            store.delete(key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
        }
    }

    /// IfGeneration(g) replaces the object only while its generation is g: a stale or
    /// missing generation fails with PreconditionFailed and changes nothing (puts and copies).
    pub async fn if_generation_replaces_only_that_generation(store: Arc<dyn Store>, p: &str) {
        let (key, src) = (format!("{p}gen/out.mp4"), format!("{p}gen/src.mp4"));
        let first = put(&*store, &key, b"first", PutMode::CreateOnly).await;
        let second = put(&*store, &key, b"second", PutMode::IfGeneration(first.generation)).await;
        check_meta(&second, &key, b"second", "IfGeneration put");
        assert!(second.generation > first.generation, "generation must grow on an IfGeneration put");
        assert_eq!(read_all(&*store, &key).await, b"second", "IfGeneration put did not replace the content");
        let precondition = |r: Result<ObjectMeta, StoreError>, what: &str| match r {
            Err(StoreError::PreconditionFailed(_)) => {}
            other => panic!("{what} must be PreconditionFailed, got {other:?}"),
        };
        precondition(
            store.put(&key, body(b"stale"), PutMode::IfGeneration(first.generation)).await,
            "a put at a stale generation",
        );
        assert_eq!(read_all(&*store, &key).await, b"second", "a refused IfGeneration put changed the content");
        let missing = format!("{p}gen/missing.mp4");
        precondition(
            store.put(&missing, body(b"x"), PutMode::IfGeneration(first.generation)).await,
            "a put at a generation of a missing key",
        );
        assert_eq!(store.head(&missing).await.unwrap(), None, "a refused IfGeneration put created the key");
        put(&*store, &src, b"copied", PutMode::CreateOnly).await;
        precondition(
            store.copy(&src, &key, PutMode::IfGeneration(first.generation)).await,
            "a copy at a stale generation",
        );
        assert_eq!(read_all(&*store, &key).await, b"second", "a refused IfGeneration copy changed the target");
        let copied = store
            .copy(&src, &key, PutMode::IfGeneration(second.generation))
            .await
            .unwrap_or_else(|e| panic!("IfGeneration copy at the current generation failed: {e}"));
        check_meta(&copied, &key, b"copied", "IfGeneration copy");
        assert_eq!(read_all(&*store, &key).await, b"copied");
        for key in [&key, &src] {
            store.delete(key).await.unwrap_or_else(|e| panic!("delete failed: {e}"));
        }
    }

    /// Eight concurrent IfGeneration puts expecting one generation: exactly one wins, the
    /// rest get PreconditionFailed, and the object holds the winner's bytes.
    pub async fn concurrent_if_generation_single_winner(store: Arc<dyn Store>, p: &str) {
        let key = format!("{p}race/replace.bin");
        let base = put(&*store, &key, b"base", PutMode::CreateOnly).await;
        let lost = |e: &StoreError| matches!(e, StoreError::PreconditionFailed(_));
        race_for_one_key(store, &key, PutMode::IfGeneration(base.generation), 200, 64 * 1024, lost).await;
    }
}

/// Expands to a module (default `bus_conformance`) with one `#[tokio::test]` per Bus
/// case. The expression is evaluated in each test and must yield an `Arc` of a [`Bus`].
///
/// ```ignore
/// reel_runtime::bus_conformance_tests!(async { make_bus().await });
/// reel_runtime::bus_conformance_tests!(module = other_bus, async { make_other().await });
/// ```
#[macro_export]
macro_rules! bus_conformance_tests {
    (module = $module:ident, $make:expr $(,)?) => {
        $crate::bus_conformance_tests!(@cases $module, $make;
            publish_receive_ack,
            nack_redelivers,
            modify_deadline_zero_redelivers,
            lease_expiry_redelivers,
            ack_is_final,
            receivers_share_a_subscription,
            fan_out,
            dead_letter_after_max_attempts,
            peek_does_not_consume,
            ensure_topology_is_idempotent,
            missing_topic_and_subscription,
        );
    };
    (@cases $module:ident, $make:expr; $($case:ident,)*) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let bus: ::std::sync::Arc<dyn $crate::bus::Bus> = $make.await;
                    let prefix = $crate::conformance::unique_prefix(stringify!($case));
                    $crate::conformance::bus_cases::$case(bus, &prefix).await;
                }
            )*
        }
    };
    ($make:expr $(,)?) => {
        $crate::bus_conformance_tests!(module = bus_conformance, $make);
    };
}

/// Expands to a module (default `store_conformance`) with one `#[tokio::test]` per
/// Store case. The expression is evaluated in each test and must yield an `Arc` of a
/// [`Store`]. Each case uses keys under its own unique prefix.
///
/// ```ignore
/// reel_runtime::store_conformance_tests!(async { make_store().await });
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    (module = $module:ident, $make:expr $(,)?) => {
        $crate::store_conformance_tests!(@cases $module, $make;
            put_get_large_streamed,
            head_missing_is_none,
            get_missing_is_not_found,
            create_only_existing_is_already_exists,
            overwrite_replaces,
            list_by_prefix,
            delete_reports_presence,
            copy_semantics,
            compose_concatenates_in_order,
            get_range_reads_a_slice,
            invalid_keys_rejected,
            concurrent_create_only_single_winner,
            put_invisible_until_complete,
            failed_put_leaves_nothing,
            metadata_round_trips,
            if_generation_replaces_only_that_generation,
            concurrent_if_generation_single_winner,
        );
    };
    (@cases $module:ident, $make:expr; $($case:ident,)*) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store: ::std::sync::Arc<dyn $crate::store::Store> = $make.await;
                    let prefix = $crate::conformance::unique_prefix(stringify!($case));
                    $crate::conformance::store_cases::$case(store, &prefix).await;
                }
            )*
        }
    };
    ($make:expr $(,)?) => {
        $crate::store_conformance_tests!(module = store_conformance, $make);
    };
}
