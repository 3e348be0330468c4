//! Behaviour of the embedded bus beyond the conformance suite: backoff, jitter, the
//! event log, dead-letter attributes, strict ack ids, close, latency.

use reel_runtime::bus::{Bus, BusError, Delivery, Message};
use reel_runtime::conformance::bus_cases::{sample_message, simple_topology, subscription, topic};
use reel_runtime::embedded::{
    retry_backoff, retry_backoff_ceiling, EmbeddedBus, EventLog, LoggedMessage, SubscriptionStats,
    ATTR_DEAD_LETTER_SOURCE_DELIVERY_COUNT, ATTR_DEAD_LETTER_SOURCE_SUBSCRIPTION,
    ATTR_DEAD_LETTER_SOURCE_TOPIC_PUBLISH_TIME,
};
use reel_runtime::topology::Topology;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(5);

async fn one(bus: &EmbeddedBus, sub: &str) -> Delivery {
    let mut got = bus.receive(sub, 1, LONG).await.expect("receive");
    assert_eq!(got.len(), 1, "nothing arrived on {sub}");
    got.remove(0)
}

async fn bus_with(topology: &Topology) -> Arc<EmbeddedBus> {
    let bus = Arc::new(EmbeddedBus::new());
    bus.ensure_topology(topology).await.expect("ensure_topology");
    bus
}

#[test]
fn backoff_ceiling_doubles_up_to_the_maximum() {
    let (min, max) = (Duration::from_millis(50), Duration::from_secs(1));
    let ceilings: Vec<u128> = (1..=7).map(|a| retry_backoff_ceiling(min, max, a).as_millis()).collect();
    assert_eq!(ceilings, vec![50, 100, 200, 400, 800, 1000, 1000]);
    assert_eq!(retry_backoff_ceiling(min, max, 0), min, "attempt 0 counts as 1");
    assert_eq!(retry_backoff_ceiling(min, max, u32::MAX), max, "huge attempts saturate");
    assert_eq!(retry_backoff_ceiling(Duration::ZERO, max, 9), Duration::ZERO, "min 0 is immediate");
}

#[test]
fn jitter_stays_within_half_to_full_ceiling() {
    let (min, max) = (Duration::from_millis(50), Duration::from_secs(1));
    for attempt in 1..=8 {
        let ceiling = retry_backoff_ceiling(min, max, attempt);
        let samples: Vec<Duration> = (0..2000).map(|_| retry_backoff(min, max, attempt)).collect();
        let lo = *samples.iter().min().unwrap();
        let hi = *samples.iter().max().unwrap();
        assert!(lo >= ceiling / 2, "attempt {attempt}: {lo:?} below half of {ceiling:?}");
        assert!(hi <= ceiling, "attempt {attempt}: {hi:?} above {ceiling:?}");
        // It is actually random across the range.
        assert!(lo < ceiling.mul_f64(0.55), "attempt {attempt}: jitter never goes low ({lo:?})");
        assert!(hi > ceiling.mul_f64(0.95), "attempt {attempt}: jitter never goes high ({hi:?})");
    }
    assert_eq!(retry_backoff(Duration::ZERO, max, 3), Duration::ZERO);
}

#[tokio::test]
async fn backoff_grows_between_attempts() {
    let (mut topology, topic, sub) = simple_topology("backoff-");
    let spec = &mut topology.subscriptions[0];
    spec.min_backoff = Duration::from_millis(50);
    spec.max_backoff = Duration::from_secs(1);
    spec.dead_letter_topic = None;
    let bus = bus_with(&topology).await;
    bus.publish(&topic, sample_message("b")).await.unwrap();
    let mut d = one(&bus, &sub).await;
    let mut waits = Vec::new();
    for attempt in 2..=4 {
        bus.nack(&sub, &d.ack_id).await.unwrap();
        let nacked = Instant::now();
        d = one(&bus, &sub).await;
        waits.push(nacked.elapsed());
        assert_eq!(d.delivery_attempt, attempt);
    }
    bus.ack(&sub, &d.ack_id).await.unwrap();
    // Ceilings 50, 100, 200 ms; jitter takes each down to no less than half.
    assert!(
        waits[0] >= Duration::from_millis(24) && waits[0] < Duration::from_millis(150),
        "attempt 2 after {:?}",
        waits[0]
    );
    assert!(waits[2] >= Duration::from_millis(99), "attempt 4 after {:?}", waits[2]);
    assert!(waits[0] < waits[2], "backoff did not grow: {waits:?}");
}

#[tokio::test]
async fn stale_expired_and_unknown_ack_ids_are_refused() {
    let (mut topology, topic, sub) = simple_topology("ackids-");
    topology.subscriptions[0].ack_deadline = Duration::from_millis(150);
    let bus = bus_with(&topology).await;
    bus.publish(&topic, sample_message("a")).await.unwrap();
    let first = one(&bus, &sub).await;
    bus.nack(&sub, &first.ack_id).await.unwrap();
    let second = one(&bus, &sub).await;
    assert_ne!(first.ack_id, second.ack_id);
    for stale in [first.ack_id.as_str(), "no-such-id", ""] {
        assert!(matches!(bus.ack(&sub, stale).await, Err(BusError::InvalidAckId(_))), "ack {stale:?}");
        assert!(matches!(bus.nack(&sub, stale).await, Err(BusError::InvalidAckId(_))), "nack {stale:?}");
        assert!(matches!(bus.modify_deadline(&sub, stale, 5).await, Err(BusError::InvalidAckId(_))));
    }
    // The lease (150 ms) expires: the ack id dies and the message comes back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(bus.ack(&sub, &second.ack_id).await, Err(BusError::InvalidAckId(_))), "expired ack id accepted");
    let third = one(&bus, &sub).await;
    assert_eq!(third.delivery_attempt, 3, "lease expiry must count an attempt");
    bus.ack(&sub, &third.ack_id).await.unwrap();
    assert!(matches!(bus.ack(&sub, &third.ack_id).await, Err(BusError::InvalidAckId(_))), "double ack accepted");
    // Ack ids belong to their subscription; unknown subscriptions are NotFound.
    assert!(matches!(bus.ack("ackids-other", &third.ack_id).await, Err(BusError::NotFound(_))));
}

#[tokio::test]
async fn lease_expiry_and_extension() {
    let (mut topology, topic, sub) = simple_topology("lease-");
    topology.subscriptions[0].ack_deadline = Duration::from_millis(200);
    let bus = bus_with(&topology).await;
    bus.publish(&topic, sample_message("l")).await.unwrap();
    let d = one(&bus, &sub).await;
    // Extended to 1 s: not redelivered at the original 200 ms deadline.
    bus.modify_deadline(&sub, &d.ack_id, 1).await.unwrap();
    assert!(bus.receive(&sub, 1, Duration::from_millis(400)).await.unwrap().is_empty(), "extended lease expired early");
    let start = Instant::now();
    let again = one(&bus, &sub).await;
    assert!(start.elapsed() < Duration::from_millis(900), "redelivered late");
    assert_eq!((again.message_id.as_str(), again.delivery_attempt), (d.message_id.as_str(), 2));
}

#[tokio::test]
async fn dead_letters_carry_pubsub_attributes_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let dlq_log = dir.path().join("dead-letters.jsonl");
    let topology = Topology {
        prefix: "dl-".into(),
        topics: vec![topic("dl-work"), topic("dl-dead")],
        subscriptions: vec![
            {
                let mut s = subscription("dl-sub", "dl-work", "dl-dead");
                s.max_delivery_attempts = 5;
                s
            },
            {
                let mut s = subscription("dl-dead-sub", "dl-dead", "dl-dead");
                s.dead_letter_topic = None;
                s
            },
        ],
    };
    let bus = Arc::new(EmbeddedBus::new().with_persisted_topic("dl-dead", &dlq_log).unwrap());
    bus.ensure_topology(&topology).await.unwrap();
    let sent = sample_message("poison");
    let id = bus.publish("dl-work", sent.clone()).await.unwrap();
    let mut published_at = None;
    for attempt in 1..=5 {
        let d = one(&bus, "dl-sub").await;
        assert_eq!(d.delivery_attempt, attempt);
        published_at = Some(d.publish_time);
        bus.nack("dl-sub", &d.ack_id).await.unwrap();
    }
    let letter = one(&bus, "dl-dead-sub").await;
    assert_ne!(letter.message_id, id, "a dead letter is a new message on its topic");
    assert_eq!(letter.message.data, sent.data);
    assert_eq!(letter.message.ordering_key, sent.ordering_key);
    let attrs = &letter.message.attributes;
    for (k, v) in &sent.attributes {
        assert_eq!(attrs.get(k), Some(v));
    }
    assert_eq!(attrs.get(ATTR_DEAD_LETTER_SOURCE_SUBSCRIPTION).map(String::as_str), Some("dl-sub"));
    assert_eq!(attrs.get(ATTR_DEAD_LETTER_SOURCE_DELIVERY_COUNT).map(String::as_str), Some("5"));
    let original = chrono::DateTime::parse_from_rfc3339(&attrs[ATTR_DEAD_LETTER_SOURCE_TOPIC_PUBLISH_TIME]).unwrap();
    assert_eq!(original, published_at.unwrap(), "publish time attribute is not the original's");
    // Gone from the source subscription.
    assert_eq!(bus.stats("dl-sub").unwrap(), SubscriptionStats::default());
    assert!(bus.peek("dl-sub", 10).await.unwrap().is_empty());
    // And persisted in the dead-letter topic's log.
    let logged = EventLog::read(&dlq_log).unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].message_id, letter.message_id);
    assert_eq!(logged[0].message, letter.message);
}

#[tokio::test]
async fn no_dead_letter_topic_means_unbounded_redelivery() {
    let (mut topology, topic, sub) = simple_topology("nodl-");
    topology.subscriptions[0].dead_letter_topic = None;
    topology.subscriptions[0].max_delivery_attempts = 5;
    let bus = bus_with(&topology).await;
    bus.publish(&topic, sample_message("x")).await.unwrap();
    for attempt in 1..=7 {
        let d = one(&bus, &sub).await;
        assert_eq!(d.delivery_attempt, attempt);
        bus.nack(&sub, &d.ack_id).await.unwrap();
    }
}

#[tokio::test]
async fn event_log_survives_restart_and_tolerates_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log/events.jsonl");
    let (topology, topic, sub) = simple_topology("log-");
    let mut ids = Vec::new();
    {
        let bus = Arc::new(EmbeddedBus::new().with_persisted_topic(&topic, &path).unwrap());
        assert_eq!(bus.persisted_path(&topic).as_deref(), Some(path.as_path()));
        bus.ensure_topology(&topology).await.unwrap();
        for i in 0..3 {
            ids.push(bus.publish(&topic, sample_message(&format!("m{i}"))).await.unwrap());
        }
        bus.close();
    }
    // "Restart": a new bus appends to the same file; it does not truncate it.
    {
        let bus = Arc::new(EmbeddedBus::new().with_persisted_topic(&topic, &path).unwrap());
        bus.ensure_topology(&topology).await.unwrap();
        ids.push(bus.publish(&topic, sample_message("m3")).await.unwrap());
        // Queues are in memory: the new bus does not redeliver the old messages.
        assert_eq!(bus.stats(&sub).unwrap().waiting, 1);
    }
    let logged = EventLog::read(&path).unwrap();
    assert_eq!(logged.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(logged[2].message, sample_message("m2"));
    assert!(logged.windows(2).all(|w| w[0].publish_time <= w[1].publish_time));
    // A crash mid-write leaves a torn last line: ignored, not counted as skipped.
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"messageId\":\"torn\",\"publ").unwrap();
    let contents = EventLog::read_contents(&path).unwrap();
    assert_eq!((contents.messages.len(), contents.skipped, contents.torn_tail), (4, 0, true));
    // The next writer terminates the torn line first; it becomes one skipped line.
    {
        let bus = Arc::new(EmbeddedBus::new().with_persisted_topic(&topic, &path).unwrap());
        bus.ensure_topology(&topology).await.unwrap();
        ids.push(bus.publish(&topic, sample_message("m4")).await.unwrap());
    }
    let extra =
        LoggedMessage { message_id: "by-hand".into(), publish_time: chrono::Utc::now(), message: sample_message("m5") };
    EventLog::append(&path, &extra).unwrap();
    ids.push("by-hand".into());
    let contents = EventLog::read_contents(&path).unwrap();
    assert_eq!((contents.skipped, contents.torn_tail), (1, false));
    assert_eq!(contents.messages.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(EventLog::read(&path).unwrap().len(), 6);
    // A missing log is empty.
    assert!(EventLog::read(&dir.path().join("missing.jsonl")).unwrap().is_empty());
}

#[tokio::test]
async fn event_log_line_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let (topology, topic, _) = simple_topology("fmt-");
    let bus = EmbeddedBus::new().with_persisted_topic(&topic, &path).unwrap();
    bus.ensure_topology(&topology).await.unwrap();
    let id = bus.publish(&topic, sample_message("f")).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n') && text.lines().count() == 1);
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["messageId"], id.as_str());
    assert!(chrono::DateTime::parse_from_rfc3339(v["publishTime"].as_str().unwrap()).is_ok());
    let message: Message = serde_json::from_value(v["message"].clone()).unwrap();
    assert_eq!(message, sample_message("f"));
    // Publishing to an unknown topic writes nothing.
    assert!(matches!(bus.publish("fmt-missing", sample_message("x")).await, Err(BusError::NotFound(_))));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test]
async fn publish_edge_cases() {
    let (topology, topic, sub) = simple_topology("edge-");
    let bus = Arc::new(EmbeddedBus::new());
    bus.ensure_topology(&Topology { subscriptions: vec![], ..topology.clone() }).await.unwrap();
    // No subscription yet: dropped, but the publish succeeds.
    let dropped = bus.publish(&topic, sample_message("early")).await.unwrap();
    assert!(!dropped.is_empty());
    bus.ensure_topology(&topology).await.unwrap();
    assert!(
        bus.receive(&sub, 1, Duration::from_millis(50)).await.unwrap().is_empty(),
        "a later subscription got an earlier message"
    );
    // Too large.
    let big = Message { data: vec![0; reel_runtime::embedded::MAX_MESSAGE_BYTES + 1], ..Default::default() };
    assert!(matches!(bus.publish(&topic, big).await, Err(BusError::TooLarge(_))));
    // A subscription whose topic is missing is refused and nothing is created.
    let bad = Topology {
        prefix: "edge-".into(),
        topics: vec![topic_spec("edge-new")],
        subscriptions: vec![subscription("edge-orphan", "edge-nowhere", "edge-new")],
    };
    assert!(matches!(bus.ensure_topology(&bad).await, Err(BusError::NotFound(_))));
    assert!(matches!(bus.publish("edge-new", sample_message("x")).await, Err(BusError::NotFound(_))));
    // max 0 returns at once.
    assert!(bus.receive(&sub, 0, LONG).await.unwrap().is_empty());
}

fn topic_spec(name: &str) -> reel_runtime::topology::TopicSpec {
    topic(name)
}

#[tokio::test]
async fn peek_neither_leases_nor_counts() {
    let (mut topology, topic, sub) = simple_topology("peek-");
    topology.subscriptions[0].min_backoff = Duration::from_secs(5);
    let bus = bus_with(&topology).await;
    let a = bus.publish(&topic, sample_message("a")).await.unwrap();
    let b = bus.publish(&topic, sample_message("b")).await.unwrap();
    let peeked = bus.peek(&sub, 10).await.unwrap();
    assert_eq!(peeked.iter().map(|d| d.message_id.clone()).collect::<Vec<_>>(), vec![a.clone(), b.clone()]);
    assert!(peeked.iter().all(|d| d.delivery_attempt == 1 && d.ack_id.is_empty()));
    assert!(matches!(bus.ack(&sub, "").await, Err(BusError::InvalidAckId(_))));
    assert_eq!(bus.peek(&sub, 1).await.unwrap().len(), 1);
    let d = one(&bus, &sub).await;
    assert_eq!((d.message_id.clone(), d.delivery_attempt), (a.clone(), 1));
    // Leased messages are not shown; backing-off ones are, with their next attempt.
    assert_eq!(bus.peek(&sub, 10).await.unwrap().len(), 1);
    bus.nack(&sub, &d.ack_id).await.unwrap();
    let peeked = bus.peek(&sub, 10).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!((peeked[1].message_id.clone(), peeked[1].delivery_attempt), (a, 2));
    assert_eq!(bus.stats(&sub).unwrap(), SubscriptionStats { waiting: 1, backing_off: 1, leased: 0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_both_get_work() {
    let (topology, topic, sub) = simple_topology("share-");
    let bus = bus_with(&topology).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (bus, sub) = (bus.clone(), sub.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Ok(got) = bus.receive(&sub, 1, Duration::from_millis(300)).await {
                if got.is_empty() {
                    break;
                }
                // Hold each message a little, as a handler would.
                tokio::time::sleep(Duration::from_millis(5)).await;
                for d in got {
                    bus.ack(&sub, &d.ack_id).await.unwrap();
                    mine.push(d.message_id);
                }
            }
            mine
        }));
    }
    for i in 0..20 {
        bus.publish(&topic, sample_message(&format!("w{i}"))).await.unwrap();
    }
    let mut all = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(!mine.is_empty(), "one receiver got nothing");
        all.extend(mine);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20);
}

#[tokio::test]
async fn close_stops_receivers_but_not_publishers() {
    let (topology, topic, sub) = simple_topology("close-");
    let bus = bus_with(&topology).await;
    let waiting = {
        let (bus, sub) = (bus.clone(), sub.clone());
        tokio::spawn(async move { bus.receive(&sub, 1, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    bus.close();
    assert!(bus.is_closed());
    assert!(matches!(waiting.await.unwrap(), Err(BusError::Closed)), "a waiting receive was not woken by close");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(bus.receive(&sub, 1, Duration::ZERO).await, Err(BusError::Closed)));
    assert!(matches!(bus.peek(&sub, 1).await, Err(BusError::Closed)));
    bus.publish(&topic, sample_message("late")).await.expect("publish after close");
}

async fn hop_times(bus: Arc<EmbeddedBus>, topic: &str, sub: &str) -> Vec<Duration> {
    let mut hops = Vec::new();
    for _ in 0..100 {
        let receiver = {
            let (bus, sub) = (bus.clone(), sub.to_string());
            tokio::spawn(async move {
                let got = bus.receive(&sub, 1, Duration::from_secs(10)).await.unwrap();
                (Instant::now(), got)
            })
        };
        // Let the receiver go to sleep on an empty subscription first.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let sent = Instant::now();
        bus.publish(topic, sample_message("hop")).await.unwrap();
        let (arrived, got) = receiver.await.unwrap();
        assert_eq!(got.len(), 1);
        bus.ack(sub, &got[0].ack_id).await.unwrap();
        hops.push(arrived.saturating_duration_since(sent));
    }
    hops.sort();
    hops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_wakes_a_waiting_receiver_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, topic, sub) = simple_topology("hop-");
    for persisted in [false, true] {
        let mut bus = EmbeddedBus::new();
        if persisted {
            bus = bus.with_persisted_topic(&topic, dir.path().join("events.jsonl")).unwrap();
        }
        let bus = Arc::new(bus);
        bus.ensure_topology(&topology).await.unwrap();
        let hops = hop_times(bus, &topic, &sub).await;
        let (median, p99, max) = (hops[hops.len() / 2], hops[hops.len() * 99 / 100], hops[hops.len() - 1]);
        eprintln!("publish → waiting receiver (persisted: {persisted}): median {median:?}, p99 {p99:?}, max {max:?}");
        assert!(max < Duration::from_millis(100), "a hop took {max:?}");
    }
}
