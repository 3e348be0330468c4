//! PubSubBus against the real Pub/Sub emulator (one per test binary): what the
//! conformance suite does not cover.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reel_gcp::PubSubBus;
use reel_runtime::bus::{Bus, BusError, Message};
use reel_runtime::topology::{SubscriptionSpec, TopicSpec, Topology};
use reel_testkit::fixtures::subscription;
use reel_testkit::{unique, Emulators};

/// The test kit's subscription, with quick redelivery (min backoff 0, max 1 s) and a
/// 10 s ack deadline.
fn sub_spec(name: &str, topic: &str, dead_letter: Option<&str>, exactly_once: bool) -> SubscriptionSpec {
    SubscriptionSpec {
        ack_deadline: Duration::from_secs(10),
        dead_letter_topic: dead_letter.map(str::to_string),
        min_backoff: Duration::ZERO,
        max_backoff: Duration::from_secs(1),
        exactly_once,
        ..subscription(name, topic)
    }
}

/// A topic with one subscription (and optionally a dead-letter topic with its own).
struct Fixture {
    bus: PubSubBus,
    topic: String,
    sub: String,
    dlq_sub: String,
}

async fn fixture(dead_letter: bool, exactly_once: bool) -> Fixture {
    let bus = Emulators::shared().bus().await;
    let topic = unique("t");
    let sub = unique("s");
    let dlq = unique("dlq");
    let dlq_sub = unique("dlq-s");
    let mut topics = vec![TopicSpec { name: topic.clone(), retention: Some(Duration::from_secs(3600)) }];
    let mut subscriptions = vec![sub_spec(&sub, &topic, dead_letter.then_some(dlq.as_str()), exactly_once)];
    if dead_letter {
        topics.push(TopicSpec { name: dlq.clone(), retention: None });
        subscriptions.push(sub_spec(&dlq_sub, &dlq, None, false));
    }
    let topology = Topology { prefix: String::new(), topics, subscriptions };
    bus.ensure_topology(&topology).await.unwrap();
    // Idempotent: a second call finds everything there.
    bus.ensure_topology(&topology).await.unwrap();
    Fixture { bus, topic, sub, dlq_sub }
}

fn message(data: &[u8]) -> Message {
    let mut attributes = BTreeMap::new();
    attributes.insert("ce-type".to_string(), "reel.test".to_string());
    attributes.insert("ce-id".to_string(), "42".to_string());
    Message { data: data.to_vec(), attributes, ordering_key: "job-1".into() }
}

#[tokio::test]
async fn binary_message_round_trip_with_attributes_and_ordering_key() {
    let f = fixture(false, false).await;
    let data: Vec<u8> = (0..=255u8).collect();
    let id = f.bus.publish(&f.topic, message(&data)).await.unwrap();
    let got = f.bus.receive(&f.sub, 10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.message_id, id);
    assert_eq!(d.message, message(&data));
    assert_eq!(d.delivery_attempt, 1);
    assert!((chrono::Utc::now() - d.publish_time).num_seconds().abs() < 60);
    f.bus.ack(&f.sub, &d.ack_id).await.unwrap();
    // Settled: a second ack is refused, and nothing comes back.
    assert!(matches!(f.bus.ack(&f.sub, &d.ack_id).await, Err(BusError::InvalidAckId(_))));
    assert!(f.bus.receive(&f.sub, 10, Duration::from_millis(1500)).await.unwrap().is_empty());
}

#[tokio::test]
async fn nack_redelivers_and_attempts_count_up_without_dead_letter_policy() {
    let f = fixture(false, false).await;
    f.bus.publish(&f.topic, message(b"again")).await.unwrap();
    for attempt in 1..=3 {
        let got = f.bus.receive(&f.sub, 1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].delivery_attempt, attempt);
        f.bus.nack(&f.sub, &got[0].ack_id).await.unwrap();
    }
    let got = f.bus.receive(&f.sub, 1, Duration::from_secs(10)).await.unwrap();
    f.bus.ack(&f.sub, &got[0].ack_id).await.unwrap();
}

#[tokio::test]
async fn dead_letter_policy_reports_attempts_and_forwards_after_max() {
    let f = fixture(true, false).await;
    let id = f.bus.publish(&f.topic, message(b"poison")).await.unwrap();
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let got = f.bus.receive(&f.sub, 1, Duration::from_secs(2)).await.unwrap();
        let Some(d) = got.into_iter().next() else {
            if seen.len() >= 5 {
                break;
            }
            continue;
        };
        seen.push(d.delivery_attempt);
        f.bus.nack(&f.sub, &d.ack_id).await.unwrap();
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5], "server-reported attempts");
    // The emulator forwards a message when it would deliver it again, so a subscriber
    // keeps asking (as a worker does) while the dead letter is awaited; no sixth
    // delivery may come.
    let until = Instant::now() + Duration::from_secs(45);
    let dead = loop {
        let again = f.bus.receive(&f.sub, 1, Duration::from_millis(300)).await.unwrap();
        assert!(again.is_empty(), "delivered after max_delivery_attempts: {:?}", again[0].delivery_attempt);
        let dead = f.bus.receive(&f.dlq_sub, 1, Duration::from_millis(700)).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < until, "not forwarded to the dead-letter topic");
    };
    assert_eq!(dead.len(), 1, "forwarded to the dead-letter topic");
    assert_eq!(dead[0].message.data, b"poison");
    assert_ne!(dead[0].message_id, "", "{id}");
    f.bus.ack(&f.dlq_sub, &dead[0].ack_id).await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_redelivered() {
    let f = fixture(false, false).await;
    f.bus.publish(&f.topic, message(b"slow")).await.unwrap();
    let first = f.bus.receive(&f.sub, 1, Duration::from_secs(10)).await.unwrap();
    // Shorten the lease to one second and let it pass.
    f.bus.modify_deadline(&f.sub, &first[0].ack_id, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(matches!(f.bus.ack(&f.sub, &first[0].ack_id).await, Err(BusError::InvalidAckId(_))));
    let again = f.bus.receive(&f.sub, 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, first[0].message_id);
    assert_eq!(again[0].delivery_attempt, 2);
    // Extending keeps it.
    f.bus.modify_deadline(&f.sub, &again[0].ack_id, 60).await.unwrap();
    f.bus.ack(&f.sub, &again[0].ack_id).await.unwrap();
}

#[tokio::test]
async fn peek_leaves_messages_available() {
    let f = fixture(false, false).await;
    for i in 0..3u8 {
        f.bus.publish(&f.topic, message(&[i])).await.unwrap();
    }
    let peeked = f.bus.peek(&f.sub, 10).await.unwrap();
    assert_eq!(peeked.len(), 3);
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while got.len() < 3 && Instant::now() < until {
        for d in f.bus.receive(&f.sub, 10, Duration::from_secs(2)).await.unwrap() {
            f.bus.ack(&f.sub, &d.ack_id).await.unwrap();
            got.push(d.message.data[0]);
        }
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2]);
}

#[tokio::test]
async fn exactly_once_acks_are_confirmed() {
    let f = fixture(true, true).await;
    f.bus.publish(&f.topic, message(b"once")).await.unwrap();
    let got = f.bus.receive(&f.sub, 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery_attempt, 1);
    f.bus.ack(&f.sub, &got[0].ack_id).await.unwrap();
    assert!(f.bus.receive(&f.sub, 1, Duration::from_millis(1500)).await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_say_what_happened() {
    let f = fixture(false, false).await;
    assert!(matches!(f.bus.publish("no-such-topic", message(b"x")).await, Err(BusError::NotFound(_))));
    assert!(matches!(
        f.bus.receive("no-such-subscription", 1, Duration::from_secs(1)).await,
        Err(BusError::NotFound(_))
    ));
    assert!(matches!(f.bus.peek("no-such-subscription", 1).await, Err(BusError::NotFound(_))));
    let big = Message { data: vec![0; 10_000_001], ..Default::default() };
    assert!(matches!(f.bus.publish(&f.topic, big).await, Err(BusError::TooLarge(_))));
    assert!(matches!(f.bus.ack(&f.sub, "nonsense").await, Err(BusError::InvalidAckId(_))));
    // Nothing unpublishable was left behind on the topic.
    assert!(f.bus.receive(&f.sub, 1, Duration::from_millis(500)).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_standard_topology_is_created_idempotently() {
    let bus = Emulators::shared().bus().await;
    let topology = Topology::standard(&format!("{}-", unique("std")));
    bus.ensure_topology(&topology).await.unwrap();
    bus.ensure_topology(&topology).await.unwrap();
    let names = topology.names();
    let sub = names.subscription(reel_events::Stage::Download);
    assert!(bus.receive(&sub, 1, Duration::from_millis(200)).await.unwrap().is_empty());
}

/// Subscriptions are created never to expire: Pub/Sub deletes one idle for 31 days by
/// default, which would silently drop a quiet stage's input.
#[tokio::test]
async fn subscriptions_never_expire() {
    let f = fixture(true, false).await;
    let emulators = Emulators::shared();
    for sub in [&f.sub, &f.dlq_sub] {
        let url = format!("http://{}/v1/projects/{}/subscriptions/{sub}", emulators.pubsub_host(), emulators.project());
        let out = std::process::Command::new("curl").args(["-sf", &url]).output().expect("curl");
        assert!(out.status.success(), "GET {url} failed");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let policy = json.get("expirationPolicy").unwrap_or_else(|| panic!("no expirationPolicy on {sub}: {json}"));
        assert!(policy.get("ttl").is_none(), "{sub} expires: {json}");
    }
}
