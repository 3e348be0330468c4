//! The commands that talk to Pub/Sub and Cloud Storage (or their emulators):
//! `reel setup`, `reel submit`, and `reel dlq` on the cloud.

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use reel_events::payload::StitchRequested;
use reel_events::{binding, envelope, types, AttributesReader, Compression, Orientation, Stage};
use reel_gcp::{CloudResolver, GcsClient, PubSubBus, UnaryPull};
use reel_runtime::bus::{Bus, Message};
use reel_runtime::location::{parse_root, Location};
use reel_runtime::topology::{Queue, Tier};
use reel_runtime::worker::dead_letter_attrs as dl;
use reel_runtime::Settings;

/// The Pub/Sub bus the settings name.
async fn connect_bus(settings: &Settings) -> Result<PubSubBus> {
    let adapters = reel_program::adapters(settings)?;
    PubSubBus::connect(adapters.pubsub).await.context("connecting to Pub/Sub")
}

/// The REST pull client `reel dlq` uses: a one-shot process must not leave a streaming
/// pull behind on the emulator (see `reel_gcp::UnaryPull`).
fn connect_pull(settings: &Settings) -> Result<UnaryPull> {
    let adapters = reel_program::adapters(settings)?;
    UnaryPull::new(&adapters.pubsub).context("connecting to Pub/Sub")
}

/// `reel setup`: topics, subscriptions, dead-letter topics; and the buckets on the emulator.
pub async fn setup(settings: &Settings, create_buckets: bool) -> Result<()> {
    let bus = connect_bus(settings).await?;
    let topology = settings.topology();
    bus.ensure_topology(&topology).await.context("creating the topology")?;
    println!("topics: {}", topology.topics.len());
    for t in &topology.topics {
        println!("  {}", t.name);
    }
    println!("subscriptions: {}", topology.subscriptions.len());
    for s in &topology.subscriptions {
        println!(
            "  {} <- {}{}",
            s.name,
            s.topic,
            s.dead_letter_topic
                .as_ref()
                .map(|d| format!(" (dead letters -> {d} after {} attempts)", s.max_delivery_attempts))
                .unwrap_or_default()
        );
    }
    let emulator = settings.storage_emulator_host.is_some();
    if create_buckets || emulator {
        let project = settings.google_cloud_project.clone().unwrap_or_else(|| "local".into());
        let storage = reel_program::adapters(settings)?.storage;
        let client = GcsClient::connect(storage).await.context("connecting to Cloud Storage")?;
        let mut buckets: Vec<String> = settings.video_storage_bucket.iter().cloned().collect();
        for root in [settings.effective_work_root()].into_iter().chain(settings.effective_allowed_roots()) {
            if let Ok(Location::Gcs { bucket, .. }) = parse_root(&root) {
                buckets.push(bucket);
            }
        }
        buckets.sort();
        buckets.dedup();
        for bucket in buckets {
            let created = client
                .store(&bucket)
                .create_bucket_if_missing(&project)
                .await
                .with_context(|| format!("creating bucket {bucket}"))?;
            println!("bucket gs://{bucket}{}", if created { " (created)" } else { "" });
        }
    }
    Ok(())
}

/// What `reel submit` sends.
#[derive(Debug, clap::Args)]
pub struct Submit {
    /// Clips, in order (gs://bucket/key).
    #[arg(required = true, value_name = "CLIP")]
    pub clips: Vec<String>,
    /// Where the reel goes (gs://bucket/key.mp4).
    #[arg(short, long)]
    pub output: String,
    /// Project id.
    #[arg(long)]
    pub project: String,
    /// User id (default: $USER).
    #[arg(long)]
    pub user: Option<String>,
    /// portrait | landscape | square.
    #[arg(long, default_value = "portrait")]
    pub orientation: Orientation,
    /// original | optimized | high_quality | small.
    #[arg(long, default_value = "optimized")]
    pub compression: Compression,
    /// Job id (default: generated).
    #[arg(long)]
    pub job_id: Option<String>,
    /// Start over even if the project has a job running or the job ran before.
    #[arg(long)]
    pub force_restart: bool,
    /// Publish in structured content mode instead of binary.
    #[arg(long)]
    pub structured: bool,
}

/// `reel submit`: publish a `stitch.requested` (and put it on the event log).
pub async fn submit(settings: &Settings, s: Submit) -> Result<String> {
    let bus = connect_bus(settings).await?;
    let job_id = s.job_id.clone().unwrap_or_else(|| format!("job_{}", uuid::Uuid::new_v4().simple()));
    let request = StitchRequested {
        job_id: Some(job_id.clone()),
        project_id: s.project,
        user_id: s.user.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into()),
        clip_paths: s.clips,
        output_path: s.output,
        orientation: s.orientation,
        compression: s.compression,
        retry_attempt: None,
        force_restart: s.force_restart.then_some(true),
    };
    let id = format!("stitch.requested-{}", uuid::Uuid::new_v4().simple());
    let mut event = envelope::build(types::STITCH_REQUESTED, "//reel/cli", id, &job_id, Utc::now(), &request)?;
    // The job's trace starts here: every stage logs under it, up to job.completed.
    event.set_extension(envelope::TRACEPARENT, new_traceparent());
    // To the requests topic only, as Phoenix does: a request names a job id it may not
    // own, so it reaches the event log (and the job's status) only once validate has
    // accepted it, as job.validated.
    let names = settings.topology().names();
    let message = if s.structured { binding::encode_structured(&event) } else { binding::encode_binary(&event) };
    bus.publish(&names.requests(), message).await?;
    Ok(job_id)
}

/// One dead letter, as an operator sees it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub job_id: String,
    pub event_type: String,
    pub attempts: String,
    pub error_type: String,
    pub reason: String,
    pub age_seconds: i64,
    pub message_id: String,
}

/// Describe a dead-lettered message from its attributes and body.
pub fn describe(message: &Message, message_id: &str, published: DateTime<Utc>) -> DeadLetter {
    let attr = |k: &str| message.attributes.get(k).cloned();
    let event = binding::decode(message).ok();
    let job_id = event
        .as_ref()
        .and_then(envelope::job_id_of)
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&message.data)
                .ok()
                .and_then(|v| v.get("jobId").and_then(|j| j.as_str()).map(String::from))
        })
        .unwrap_or_else(|| "-".into());
    let event_type = event
        .as_ref()
        .map(|e| e.ty().to_string())
        .or_else(|| attr("eventType"))
        .unwrap_or_else(|| "(not a CloudEvent)".into());
    let when = attr(dl::AT)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(published);
    DeadLetter {
        job_id,
        event_type,
        attempts: attr(dl::ATTEMPTS)
            .or_else(|| attr("CloudPubSubDeadLetterSourceDeliveryCount"))
            .unwrap_or_else(|| "?".into()),
        error_type: attr(dl::ERROR_TYPE).unwrap_or_else(|| "-".into()),
        reason: attr(dl::REASON).unwrap_or_else(|| "delivery attempts exhausted (Pub/Sub dead-lettered it)".into()),
        age_seconds: (Utc::now() - when).num_seconds(),
        message_id: message_id.to_string(),
    }
}

/// Print dead letters as a table.
pub fn print_dead_letters(queue: Queue, letters: &[DeadLetter], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(letters)?);
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters for {queue}");
        return Ok(());
    }
    println!("{:<26} {:<34} {:>8} {:<20} {:>8}  reason", "job", "type", "attempts", "errorType", "age");
    for l in letters {
        println!(
            "{:<26} {:<34} {:>8} {:<20} {:>7}s  {}",
            l.job_id,
            l.event_type.trim_start_matches("phoenix.reel.v1."),
            l.attempts,
            l.error_type,
            l.age_seconds,
            l.reason.chars().take(120).collect::<String>()
        );
    }
    Ok(())
}

/// `reel dlq list STAGE` on Pub/Sub: peek (pull, then release at once), without consuming.
pub async fn dlq_list(settings: &Settings, queue: Queue, limit: usize, json: bool) -> Result<()> {
    let rest = connect_pull(settings)?;
    let sub = settings.topology().names().dead_letter_subscription(queue);
    let pulled = rest.peek(&sub, limit).await?;
    let letters: Vec<DeadLetter> = pulled.iter().map(|p| describe(&p.message, &p.message_id, p.publish_time)).collect();
    print_dead_letters(queue, &letters, json)
}

/// Filters for replay and purge.
pub struct Filter {
    pub job: Option<String>,
    pub error_type: Option<String>,
    pub limit: usize,
}

impl Filter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.job.as_ref().is_none_or(|j| &letter.job_id == j)
            && self.error_type.as_ref().is_none_or(|t| &letter.error_type == t)
    }
}

/// The message to send back to the stage: a new attempt of the job with a fresh
/// deadline of `job_timeout` from now ([`reel_events::replay`]), the original
/// attributes without the dead-letter ones, and the replay count raised.
pub fn for_replay(message: &Message, job_timeout: chrono::Duration) -> Message {
    let mut copy = reel_events::replay::renew_message(message, Utc::now(), job_timeout);
    copy.attributes.retain(|k, _| !k.starts_with("reel-dl-") && !k.starts_with("CloudPubSubDeadLetter"));
    let count = message.attributes.get("ce-replaycount").and_then(|c| c.parse::<u32>().ok()).unwrap_or(0) + 1;
    if copy.attributes.contains_key("ce-specversion") {
        copy.attributes.insert("ce-replaycount".into(), count.to_string());
    } else {
        copy.attributes.insert("reel-replay-count".into(), count.to_string());
    }
    copy
}

/// The topic a dead letter of `queue` goes back to, on `tier` (only stitch, and its
/// encode items, have a larger one; asking for it elsewhere is refused before anything
/// is pulled).
pub fn replay_topic(queue: Queue, tier: Tier, message: &Message, names: &reel_runtime::topology::Names) -> String {
    if let (Tier::Large, Some(topic)) = (tier, names.larger_tier(queue.stage())) {
        topic
    } else if queue == Queue::Stage(Stage::Validate)
        && message.attributes.contains_key("eventType")
        && message.attributes.contains_key("bucketId")
    {
        names.gcs_notifications()
    } else {
        names.return_topic(queue, message)
    }
}

/// The pipeline's work store (where locks, cancel markers and completion records live).
pub async fn work_store(settings: &Settings) -> Result<std::sync::Arc<dyn reel_runtime::Store>> {
    let resolver = CloudResolver::connect(reel_program::adapters(settings)?.storage)
        .await
        .context("connecting to Cloud Storage")?;
    reel_program::open_work_store(&settings.effective_work_root(), &resolver)
}

/// `reel dlq replay` (`purge == false`) or `reel dlq purge` on Pub/Sub. A dead letter is
/// acked only after its republish is confirmed; jobs already completed are skipped (and
/// acked) and reported. Everything not selected is released for redelivery.
pub async fn dlq_replay(
    settings: &Settings,
    queue: Queue,
    tier: Tier,
    filter: Filter,
    dry_run: bool,
    purge: bool,
) -> Result<()> {
    if tier == Tier::Large && settings.topology().names().larger_tier(queue.stage()).is_none() {
        anyhow::bail!(
            "only the stitch stage has a larger tier; `--tier large` is for `reel dlq replay stitch` (or `encode`)"
        );
    }
    let bus = connect_bus(settings).await?;
    let rest = connect_pull(settings)?;
    let names = settings.topology().names();
    let sub = names.dead_letter_subscription(queue);
    let work = work_store(settings).await?;
    let pulled = rest.pull_all(&sub, 10_000).await?;
    let (mut done, mut skipped) = (0usize, 0usize);
    let mut keep = Vec::new();
    let mut failure = None;
    for p in pulled {
        let letter = describe(&p.message, &p.message_id, p.publish_time);
        let selected = failure.is_none() && done < filter.limit && filter.matches(&letter);
        if !selected {
            keep.push(p.ack_id);
            continue;
        }
        if dry_run {
            println!(
                "would {} {} ({}, {})",
                if purge { "purge" } else { "replay" },
                letter.job_id,
                letter.event_type,
                letter.error_type
            );
            done += 1;
            keep.push(p.ack_id);
            continue;
        }
        if purge {
            rest.acknowledge(&sub, std::slice::from_ref(&p.ack_id)).await?;
            println!("purged {} ({})", letter.job_id, letter.event_type);
            done += 1;
            continue;
        }
        let completed = letter.job_id != "-"
            && matches!(work.head(&reel_runtime::stage::completed_marker_key(&letter.job_id)).await, Ok(Some(_)));
        if completed {
            rest.acknowledge(&sub, std::slice::from_ref(&p.ack_id)).await?;
            println!("skipped {}: the job already completed", letter.job_id);
            skipped += 1;
            continue;
        }
        let topic = replay_topic(queue, tier, &p.message, &names);
        match bus.publish(&topic, for_replay(&p.message, settings.job_timeout())).await {
            Ok(_) => {
                // Acked only once the republish is confirmed.
                rest.acknowledge(&sub, std::slice::from_ref(&p.ack_id)).await?;
                println!("replayed {} ({}) to {topic}", letter.job_id, letter.event_type);
                done += 1;
            }
            Err(e) => {
                keep.push(p.ack_id);
                failure =
                    Some(format!("republishing {} failed ({e}); it stays in the dead-letter queue", letter.job_id));
            }
        }
    }
    rest.release(&sub, &keep).await?;
    bus.shutdown().await;
    if let Some(failure) = failure {
        bail!(failure);
    }
    let verb = if purge { "purged" } else { "replayed" };
    println!(
        "{}{done} {verb}, {skipped} skipped (completed), {} left in the dead-letter queue",
        if dry_run { "dry run: " } else { "" },
        keep.len()
    );
    Ok(())
}

/// A fresh W3C `traceparent` (random trace and span ids, sampled).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}
