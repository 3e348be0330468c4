//! Per-hop latency of the embedded bus: publish → the subscriber's `receive` returns
//! (where the worker would start the handler), measured directly on
//! `reel_runtime::embedded::EmbeddedBus` with one topic and one subscription.
//!
//! * **idle hop**: one message at a time (the next is published once the previous was
//!   received and acked), the receiver asking for one message at a time as the worker
//!   does: the latency a stage-to-stage hop adds to a job;
//! * the same on a **persisted** topic (every publish appended to a JSON-lines event
//!   log first, as `reel-events` is in embedded mode);
//! * **burst**: all messages published at once: queueing included, and throughput.

use anyhow::{Context as _, Result};
use reel_runtime::bus::{Bus, BusError, Message};
use reel_runtime::embedded::EmbeddedBus;
use reel_runtime::topology::{SubscriptionSpec, TopicSpec, Topology};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const TOPIC: &str = "bench-hop";
const SUB: &str = "bench-hop-sub";

/// One latency experiment.
#[derive(Debug, Clone)]
pub struct HopResult {
    /// What was measured.
    pub label: String,
    /// Latencies, microseconds (warm-up excluded).
    pub latencies_us: Vec<f64>,
    /// Messages per second received (burst only).
    pub throughput_per_s: Option<f64>,
}

fn topology() -> Topology {
    Topology {
        prefix: "bench-".into(),
        topics: vec![TopicSpec { name: TOPIC.into(), retention: None }],
        subscriptions: vec![SubscriptionSpec {
            name: SUB.into(),
            topic: TOPIC.into(),
            ack_deadline: Duration::from_secs(60),
            dead_letter_topic: None,
            max_delivery_attempts: 0,
            min_backoff: Duration::ZERO,
            max_backoff: Duration::from_secs(1),
            message_retention: Duration::from_secs(3600),
            exactly_once: false,
        }],
    }
}

/// A message shaped like a reel event: ~1 KB JSON body, binary-mode CloudEvent attributes.
fn message(seq: usize) -> Message {
    let mut attributes = BTreeMap::new();
    for (k, v) in [
        ("ce-id", format!("job.downloaded-{seq:024x}")),
        ("ce-source", "//reel/download".to_string()),
        ("ce-specversion", "1.0".to_string()),
        ("ce-subject", "local_0123456789abcdef".to_string()),
        ("ce-time", "2026-01-01T00:00:00.000000000Z".to_string()),
        ("ce-type", "phoenix.reel.v1.job.downloaded".to_string()),
        ("content-type", "application/json".to_string()),
        ("seq", seq.to_string()),
    ] {
        attributes.insert(k.to_string(), v);
    }
    let mut data = br#"{"job":{"jobId":"local_0123456789abcdef","clips":["#.to_vec();
    while data.len() < 1000 {
        data.extend_from_slice(br#""/clips/clip.mp4","#);
    }
    data.extend_from_slice(br#""/x"]}}"#);
    Message { data, attributes, ordering_key: "local_0123456789abcdef".into() }
}

async fn new_bus(log: Option<&Path>) -> Result<Arc<EmbeddedBus>> {
    let mut bus = EmbeddedBus::new();
    if let Some(path) = log {
        bus = bus.with_persisted_topic(TOPIC, path).context("opening the bench event log")?;
    }
    let bus = Arc::new(bus);
    bus.ensure_topology(&topology()).await?;
    Ok(bus)
}

/// Idle hops: `n` messages one at a time (plus `warmup` not counted).
pub async fn idle_hops(label: &str, n: usize, warmup: usize, log: Option<&Path>) -> Result<HopResult> {
    let bus = new_bus(log).await?;
    let result = idle_hops_on(bus.clone(), TOPIC, SUB, label, n, warmup).await;
    bus.close();
    result
}

/// Idle hops on any bus whose `topic` feeds `sub` (both existing): `n` messages one at
/// a time (plus `warmup` not counted), latency = `publish` called → `receive(sub, 1, …)`
/// returned in a receiver task, as the worker calls it. Used for the embedded bus and for
/// `reel_gcp::PubSubBus` on the Pub/Sub emulator.
pub async fn idle_hops_on(
    bus: Arc<dyn Bus>,
    topic: &str,
    sub: &str,
    label: &str,
    n: usize,
    warmup: usize,
) -> Result<HopResult> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let receiver = {
        let bus = bus.clone();
        let sub = sub.to_string();
        tokio::spawn(async move {
            loop {
                match bus.receive(&sub, 1, Duration::from_secs(5)).await {
                    Ok(deliveries) => {
                        let now = Instant::now();
                        for d in deliveries {
                            let _ = bus.ack(&sub, &d.ack_id).await;
                            if tx.send(now).is_err() {
                                return;
                            }
                        }
                    }
                    Err(BusError::Closed) => return,
                    Err(e) => {
                        eprintln!("bench receiver: {e}");
                        return;
                    }
                }
            }
        })
    };
    let mut latencies_us = Vec::with_capacity(n);
    let result: Result<()> = async {
        for seq in 0..warmup + n {
            let msg = message(seq);
            let t0 = Instant::now();
            bus.publish(topic, msg).await?;
            let t1 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .context("no delivery within 5 s")?
                .context("receiver stopped")?;
            if seq >= warmup {
                latencies_us.push((t1 - t0).as_secs_f64() * 1e6);
            }
        }
        Ok(())
    }
    .await;
    receiver.abort();
    let _ = receiver.await;
    result?;
    Ok(HopResult { label: label.to_string(), latencies_us, throughput_per_s: None })
}

/// Burst: `n` messages published back to back while one receiver takes them one at a time.
pub async fn burst(label: &str, n: usize) -> Result<HopResult> {
    let bus = new_bus(None).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let receiver = {
        let bus = bus.clone();
        tokio::spawn(async move {
            loop {
                match bus.receive(SUB, 1, Duration::from_secs(5)).await {
                    Ok(deliveries) => {
                        let now = Instant::now();
                        for d in deliveries {
                            let _ = bus.ack(SUB, &d.ack_id).await;
                            let seq =
                                d.message.attributes.get("seq").and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
                            if tx.send((seq, now)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        })
    };
    let messages: Vec<Message> = (0..n).map(message).collect();
    let mut sent = Vec::with_capacity(n);
    let start = Instant::now();
    for msg in messages {
        sent.push(Instant::now());
        bus.publish(TOPIC, msg).await?;
    }
    let mut got = vec![None; n];
    let mut last = start;
    for _ in 0..n {
        let (seq, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("burst: no delivery within 10 s")?
            .context("receiver stopped")?;
        if let Some(slot) = got.get_mut(seq) {
            *slot = Some(at);
        }
        last = last.max(at);
    }
    bus.close();
    let _ = receiver.await;
    let latencies_us = sent.iter().zip(&got).filter_map(|(s, g)| g.map(|g| (g - *s).as_secs_f64() * 1e6)).collect();
    let secs = (last - start).as_secs_f64();
    Ok(HopResult { label: label.to_string(), latencies_us, throughput_per_s: (secs > 0.0).then(|| n as f64 / secs) })
}
