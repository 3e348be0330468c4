//! Every topic and subscription of the pipeline, in one place.
//!
//! `reel setup` creates exactly this on Pub/Sub (or the emulator), the embedded bus
//! builds it in memory, and a test checks that `terraform/` declares the same set.
//! Names are `{prefix}{suffix}` with the prefix `reel-` by default.

use reel_events::{types, Stage};
use std::time::Duration;

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full topic name.
    pub name: String,
    /// How long the topic itself retains messages (the event log keeps 31 days), if set.
    pub retention: Option<Duration>,
}

/// A subscription with its delivery policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Full subscription name.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// Initial lease of a delivery; the worker extends it while a handler works.
    pub ack_deadline: Duration,
    /// Where messages go after `max_delivery_attempts`, if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Pub/Sub allows 5..=100.
    pub max_delivery_attempts: u32,
    /// Retry backoff bounds (Pub/Sub allows 0–600 s).
    pub min_backoff: Duration,
    /// Retry backoff upper bound.
    pub max_backoff: Duration,
    /// How long unacked messages are kept.
    pub message_retention: Duration,
    /// Pub/Sub exactly-once delivery (pull subscriptions of the stages).
    pub exactly_once: bool,
}

/// The whole topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic and subscription name prefix.
    pub prefix: String,
    /// Every topic, dead-letter topics included.
    pub topics: Vec<TopicSpec>,
    /// Every subscription, dead-letter subscriptions included.
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// Default prefix.
pub const DEFAULT_PREFIX: &str = "reel-";

/// The default number of deliveries before Pub/Sub dead-letters on its own. The stage
/// gives up earlier, after `MAX_RETRY_ATTEMPTS`; this is the net for crashes and poison.
pub const PUBSUB_MAX_DELIVERY_ATTEMPTS: u32 = 10;

impl Topology {
    /// The standard topology with the given prefix.
    pub fn standard(prefix: &str) -> Topology {
        let names = Names::new(prefix);
        let day = Duration::from_secs(24 * 3600);
        let mut topics = vec![
            TopicSpec { name: names.requests(), retention: None },
            TopicSpec { name: names.gcs_notifications(), retention: None },
            TopicSpec { name: names.events(), retention: Some(31 * day) },
        ];
        let mut subscriptions = Vec::new();
        let sub = |name: String, topic: String, dlq: Option<String>, ack: u64, exactly_once: bool| SubscriptionSpec {
            name,
            topic,
            ack_deadline: Duration::from_secs(ack),
            dead_letter_topic: dlq,
            max_delivery_attempts: PUBSUB_MAX_DELIVERY_ATTEMPTS,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            message_retention: 7 * day,
            exactly_once,
        };
        for stage in Stage::ALL {
            if stage != Stage::Validate {
                topics.push(TopicSpec { name: names.work_topic(stage), retention: None });
            }
            topics.push(TopicSpec { name: names.dead_letter_topic(stage), retention: None });
        }
        // The larger stitch tier: work that ran out of memory or disk on the standard one.
        topics.push(TopicSpec { name: names.large_work_topic(), retention: None });
        // Stitch's fan-out: one item per clip to re-encode, with dead letters of its own.
        topics.push(TopicSpec { name: names.encode_topic(), retention: None });
        topics.push(TopicSpec { name: names.dead_letter_topic(Queue::Encode), retention: None });
        // The generation job: its requests, its per-prompt items, one dead-letter topic.
        topics.push(TopicSpec { name: names.work_topic(Stage::Generate), retention: None });
        topics.push(TopicSpec { name: names.generate_clips_topic(), retention: None });
        topics.push(TopicSpec { name: names.dead_letter_topic(Stage::Generate), retention: None });
        for stage in Stage::ALL {
            let dlq = Some(names.dead_letter_topic(stage));
            let ack = if stage == Stage::Stitch { 120 } else { 60 };
            if stage == Stage::Validate {
                subscriptions.push(sub(names.subscription(stage), names.requests(), dlq.clone(), ack, true));
                subscriptions.push(sub(names.gcs_subscription(), names.gcs_notifications(), dlq.clone(), ack, true));
            } else {
                subscriptions.push(sub(names.subscription(stage), names.work_topic(stage), dlq.clone(), ack, true));
            }
            if stage == Stage::Stitch {
                subscriptions.push(sub(names.large_subscription(), names.large_work_topic(), dlq, ack, true));
                // One clip's encode is the longest delivery there is: up to
                // `REEL_MAX_CLIP_SECONDS` (600) of video, about 300 s on 2 vCPU. Push mode
                // cannot extend a deadline, so it gets Pub/Sub's longest; pull mode renews
                // a short lease while it works (`REEL_LEASE_SECONDS`), so this costs no
                // recovery time there.
                let encode_dlq = Some(names.dead_letter_topic(Queue::Encode));
                subscriptions.push(sub(names.encode_subscription(), names.encode_topic(), encode_dlq, 600, true));
            }
        }
        let generate_dlq = Some(names.dead_letter_topic(Stage::Generate));
        subscriptions.push(sub(
            names.subscription(Stage::Generate),
            names.work_topic(Stage::Generate),
            generate_dlq.clone(),
            60,
            true,
        ));
        // One prompt's generation: Veo takes minutes, and push mode cannot extend a
        // deadline: Pub/Sub's longest, within which a delivery polls
        // (`[generate] delivery_budget_seconds`) before handing the item back.
        subscriptions.push(sub(
            names.generate_clips_subscription(),
            names.generate_clips_topic(),
            generate_dlq,
            600,
            true,
        ));
        // The state service reads the log; its dead letters would mean a poison event on
        // the log, which it skips instead, so it has no dead-letter topic.
        let mut api = sub(names.api_subscription(), names.events(), None, 60, false);
        api.message_retention = 7 * day;
        subscriptions.push(api);
        for queue in Queue::ALL {
            let mut dl = sub(names.dead_letter_subscription(queue), names.dead_letter_topic(queue), None, 60, false);
            dl.message_retention = 7 * day;
            // Operators peek (pull, then release) repeatedly: keep the redelivery delay flat
            // so a peeked dead letter is back within a second, not after a growing backoff.
            dl.max_backoff = dl.min_backoff;
            subscriptions.push(dl);
        }
        Topology { prefix: prefix.to_string(), topics, subscriptions }
    }

    /// The subscription spec named `name`.
    pub fn subscription(&self, name: &str) -> Option<&SubscriptionSpec> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    /// The naming helper for this topology's prefix.
    pub fn names(&self) -> Names {
        Names::new(&self.prefix)
    }
}

/// A queue of work with its own dead letters, which operators list and replay: one per
/// stage, and stitch's per-clip encodes (`reel dlq list encode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// A stage's work.
    Stage(Stage),
    /// The clips a stitch fans out to re-encode, one item each (consumed by stitch).
    Encode,
}

impl Queue {
    /// Every queue: the stages in pipeline order, encode, then generate (its requests
    /// and its per-prompt items share its dead letters).
    pub const ALL: [Queue; 7] = [
        Queue::Stage(Stage::Validate),
        Queue::Stage(Stage::Download),
        Queue::Stage(Stage::Stitch),
        Queue::Stage(Stage::Upload),
        Queue::Stage(Stage::Finalize),
        Queue::Encode,
        Queue::Stage(Stage::Generate),
    ];

    /// The name operators type (`stitch`, `encode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Stage(stage) => stage.as_str(),
            Queue::Encode => "encode",
        }
    }

    /// The stage whose program does this queue's work.
    pub fn stage(self) -> Stage {
        match self {
            Queue::Stage(stage) => stage,
            Queue::Encode => Stage::Stitch,
        }
    }

    /// The queue where events of type `ty` are work, if any.
    pub fn of_event_type(ty: &str) -> Option<Queue> {
        if ty == types::CLIP_ENCODE {
            return Some(Queue::Encode);
        }
        Stage::consuming(ty).map(Queue::Stage)
    }
}

impl From<Stage> for Queue {
    fn from(stage: Stage) -> Queue {
        Queue::Stage(stage)
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Queue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Queue::ALL.into_iter().find(|q| q.as_str() == s).ok_or_else(|| {
            format!("unknown queue {s:?}; expected validate, download, stitch, encode, upload, finalize or generate")
        })
    }
}

/// Which machines a stage program runs on. Only stitch has a larger tier: a second
/// service with more memory (and so more scratch: on Cloud Run `/tmp` is memory), fed by
/// its own subscription with the work that ran out of memory or disk on the standard one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The stage's own subscription.
    #[default]
    Standard,
    /// The larger tier's subscription (`reel-stitch-large`).
    Large,
}

/// Name builder for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names with `prefix` (e.g. `reel-`).
    pub fn new(prefix: &str) -> Names {
        Names { prefix: prefix.to_string() }
    }
    /// `reel-stitch-requests`: where jobs are requested.
    pub fn requests(&self) -> String {
        format!("{}stitch-requests", self.prefix)
    }
    /// `reel-gcs-notifications`: Cloud Storage notifications of the uploads bucket.
    pub fn gcs_notifications(&self) -> String {
        format!("{}gcs-notifications", self.prefix)
    }
    /// `reel-events`: the event log.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
    /// The work topic a stage consumes (`reel-work-download`, …); validate consumes
    /// the requests topic instead.
    pub fn work_topic(&self, stage: Stage) -> String {
        match stage {
            Stage::Validate => self.requests(),
            Stage::Generate => format!("{}generate-requests", self.prefix),
            other => format!("{}work-{}", self.prefix, other.as_str()),
        }
    }
    /// The subscription a stage pulls (`reel-validate`, `reel-download`, …).
    pub fn subscription(&self, stage: Stage) -> String {
        format!("{}{}", self.prefix, stage.as_str())
    }
    /// Every subscription `stage` consumes: its work subscription, for validate the one
    /// on storage notifications too, and for stitch the one of its per-clip encodes.
    pub fn consumed_by(&self, stage: Stage) -> Vec<String> {
        let mut subscriptions = vec![self.subscription(stage)];
        match stage {
            Stage::Validate => subscriptions.push(self.gcs_subscription()),
            Stage::Stitch => subscriptions.push(self.encode_subscription()),
            Stage::Generate => subscriptions.push(self.generate_clips_subscription()),
            _ => {}
        }
        subscriptions
    }
    /// The topic where events of type `ty` are work, if they are work anywhere: the
    /// consuming stage's work topic, or the encode topic for a clip to re-encode.
    pub fn work_topic_for(&self, ty: &str) -> Option<String> {
        if ty == types::GENERATE_CLIP {
            return Some(self.generate_clips_topic());
        }
        Queue::of_event_type(ty).map(|queue| self.queue_topic(queue))
    }
    /// `reel-generate-clips`: one item per prompt of a generation job.
    pub fn generate_clips_topic(&self) -> String {
        format!("{}generate-clips", self.prefix)
    }
    /// The subscription generate programs pull prompt items from (`reel-generate-clips`).
    pub fn generate_clips_subscription(&self) -> String {
        format!("{}generate-clips", self.prefix)
    }
    /// The topic a message of `queue` goes back to (a resumed attempt, a replayed dead
    /// letter): its event type's ([`Names::work_topic_for`]: generate's items go to their
    /// own topic, not to the requests' one that shares their dead letters), else the
    /// queue's.
    pub fn return_topic(&self, queue: Queue, message: &crate::bus::Message) -> String {
        reel_events::binding::decode(message)
            .ok()
            .and_then(|event| {
                use reel_events::AttributesReader;
                self.work_topic_for(event.ty())
            })
            .unwrap_or_else(|| self.queue_topic(queue))
    }
    /// The topic a queue's work is published to.
    pub fn queue_topic(&self, queue: Queue) -> String {
        match queue {
            Queue::Stage(stage) => self.work_topic(stage),
            Queue::Encode => self.encode_topic(),
        }
    }
    /// `reel-encode`: one item per clip a stitch re-encodes.
    pub fn encode_topic(&self) -> String {
        format!("{}encode", self.prefix)
    }
    /// The subscription stitch programs pull encode items from (`reel-encode`).
    pub fn encode_subscription(&self) -> String {
        format!("{}encode", self.prefix)
    }
    /// The subscriptions a program of `stage` consumes on `tier` (a stage without a
    /// larger tier consumes its own on either).
    pub fn consumed_by_tier(&self, stage: Stage, tier: Tier) -> Vec<String> {
        match (tier, self.larger_tier(stage)) {
            (Tier::Large, Some(_)) => vec![self.large_subscription()],
            _ => self.consumed_by(stage),
        }
    }
    /// Where work of `stage` that ran out of memory or disk goes, if the stage has a
    /// larger tier: stitch's, `reel-work-stitch-large`.
    pub fn larger_tier(&self, stage: Stage) -> Option<String> {
        (stage == Stage::Stitch).then(|| self.large_work_topic())
    }
    /// The larger stitch tier's work topic.
    pub fn large_work_topic(&self) -> String {
        format!("{}work-stitch-large", self.prefix)
    }
    /// The larger stitch tier's subscription, read by the `stitch-large` service.
    pub fn large_subscription(&self) -> String {
        format!("{}stitch-large", self.prefix)
    }
    /// The service (program deployment) that consumes `subscription`: a stage's name,
    /// `stitch-large`, `api`; `None` for dead-letter subscriptions (operators read them).
    pub fn service_of(&self, subscription: &str) -> Option<String> {
        if subscription == self.large_subscription() {
            return Some("stitch-large".into());
        }
        if subscription == self.api_subscription() {
            return Some("api".into());
        }
        Stage::EVERY.into_iter().find(|s| self.consumed_by(*s).iter().any(|c| c == subscription)).map(|s| s.to_string())
    }
    /// Validate's second subscription, on storage notifications.
    pub fn gcs_subscription(&self) -> String {
        format!("{}validate-gcs", self.prefix)
    }
    /// The state service's subscription on the event log.
    pub fn api_subscription(&self) -> String {
        format!("{}api", self.prefix)
    }
    /// A queue's dead-letter topic (`reel-validate-dead-letter`, …, `reel-encode-dead-letter`).
    pub fn dead_letter_topic(&self, queue: impl Into<Queue>) -> String {
        format!("{}{}-dead-letter", self.prefix, queue.into().as_str())
    }
    /// The subscription operators list and replay (`reel-validate-dead-letter`).
    pub fn dead_letter_subscription(&self, queue: impl Into<Queue>) -> String {
        self.dead_letter_topic(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_subscription_dead_letters_to_its_own_topic() {
        let topology = Topology::standard(DEFAULT_PREFIX);
        let topic_names: Vec<&str> = topology.topics.iter().map(|t| t.name.as_str()).collect();
        for stage in Stage::ALL {
            let sub = topology.subscription(&topology.names().subscription(stage)).unwrap();
            let dlq = sub.dead_letter_topic.as_deref().unwrap();
            assert!(topic_names.contains(&dlq));
            assert!(topic_names.contains(&sub.topic.as_str()));
            assert!((5..=100).contains(&sub.max_delivery_attempts));
        }
        assert!(topic_names.contains(&"reel-stitch-requests"));
        assert!(topic_names.contains(&"reel-gcs-notifications"));
        assert!(topic_names.contains(&"reel-events"));
        let mut all: Vec<&str> = topology.subscriptions.iter().map(|s| s.name.as_str()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), topology.subscriptions.len(), "duplicate subscription names");
    }

    #[test]
    fn the_larger_stitch_tier_has_its_own_topic_and_subscription_and_shares_the_dead_letters() {
        let topology = Topology::standard(DEFAULT_PREFIX);
        let names = topology.names();
        let large = topology.subscription("reel-stitch-large").expect("the large tier's subscription");
        assert_eq!(large.topic, "reel-work-stitch-large");
        assert_eq!(large.dead_letter_topic.as_deref(), Some("reel-stitch-dead-letter"));
        assert!(topology.topics.iter().any(|t| t.name == "reel-work-stitch-large"));
        assert_eq!(names.larger_tier(Stage::Stitch).as_deref(), Some("reel-work-stitch-large"));
        assert_eq!(names.larger_tier(Stage::Download), None);
        assert_eq!(names.consumed_by_tier(Stage::Stitch, Tier::Large), ["reel-stitch-large"]);
        assert_eq!(names.consumed_by_tier(Stage::Stitch, Tier::Standard), ["reel-stitch", "reel-encode"]);
        assert_eq!(names.consumed_by_tier(Stage::Upload, Tier::Large), ["reel-upload"]);
        assert_eq!(names.service_of("reel-stitch-large").as_deref(), Some("stitch-large"));
        assert_eq!(names.service_of("reel-validate-gcs").as_deref(), Some("validate"));
        assert_eq!(names.service_of("reel-api").as_deref(), Some("api"));
        assert_eq!(names.service_of("reel-stitch-dead-letter"), None);
    }

    #[test]
    fn stitch_consumes_its_encode_items_from_their_own_topic_with_their_own_dead_letters() {
        let topology = Topology::standard(DEFAULT_PREFIX);
        let names = topology.names();
        let encode = topology.subscription("reel-encode").expect("the encode subscription");
        assert_eq!(encode.topic, "reel-encode");
        assert_eq!(encode.dead_letter_topic.as_deref(), Some("reel-encode-dead-letter"));
        assert!(topology.subscription("reel-encode-dead-letter").is_some());
        assert_eq!(names.consumed_by(Stage::Stitch), ["reel-stitch", "reel-encode"]);
        assert_eq!(names.service_of("reel-encode").as_deref(), Some("stitch"));
        assert_eq!(names.work_topic_for(types::CLIP_ENCODE).as_deref(), Some("reel-encode"));
        assert_eq!(names.work_topic_for(types::REEL_STITCHED).as_deref(), Some("reel-work-upload"));
        assert_eq!(names.work_topic_for(types::JOB_COMPLETED), None);
        assert_eq!("encode".parse::<Queue>(), Ok(Queue::Encode));
        assert_eq!("stitch".parse::<Queue>(), Ok(Queue::Stage(Stage::Stitch)));
        assert!("join".parse::<Queue>().is_err());
    }

    #[test]
    fn generate_has_its_requests_topic_and_its_per_prompt_items_with_one_dead_letter_topic() {
        let topology = Topology::standard(DEFAULT_PREFIX);
        let names = topology.names();
        let requests = topology.subscription("reel-generate").expect("the generate subscription");
        assert_eq!(requests.topic, "reel-generate-requests");
        let items = topology.subscription("reel-generate-clips").expect("the items' subscription");
        assert_eq!(items.ack_deadline, Duration::from_secs(600));
        for sub in [requests, items] {
            assert_eq!(sub.dead_letter_topic.as_deref(), Some("reel-generate-dead-letter"));
        }
        assert!(topology.subscription("reel-generate-dead-letter").is_some());
        assert_eq!(names.consumed_by(Stage::Generate), ["reel-generate", "reel-generate-clips"]);
        assert_eq!(names.service_of("reel-generate-clips").as_deref(), Some("generate"));
        assert_eq!(names.work_topic_for(types::GENERATE_REQUESTED).as_deref(), Some("reel-generate-requests"));
        assert_eq!(names.work_topic_for(types::GENERATE_CLIP).as_deref(), Some("reel-generate-clips"));
        assert_eq!("generate".parse::<Queue>(), Ok(Queue::Stage(Stage::Generate)));
    }
}
