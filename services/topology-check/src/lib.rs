//! Test-only: keeps `terraform/` equal to the topology the code creates.
//!
//! `reel setup` creates [`Topology::standard`]; production is created by `terraform/`.
//! This crate reads the terraform files with `hcl-rs`, evaluates them with the variables'
//! defaults (or given values), and turns what they declare into the same shape as the
//! code's topology, so the tests in `tests/` can compare the two field by field: topic
//! names, event-log retention, subscription names, each subscription's topic, dead-letter
//! topic, max delivery attempts, backoff, ack deadline, retention, exactly-once, and (push
//! mode) which subscriptions are pushed where. It also extracts the IAM bindings, so the
//! tests can check what the Pub/Sub service agent and each program may do.

pub mod module;

use hcl::Value;
use module::{Evaluated, Evaluator, Instance, Module};
use reel_runtime::topology::{Queue, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// The project the tests evaluate the module with.
pub const TEST_PROJECT: &str = "reel-test-project";

/// The repository's `terraform/` directory.
pub fn terraform_dir() -> PathBuf {
    repo_root().join("terraform")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// A topic as terraform declares it (or as the code would have terraform declare it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTopic {
    /// Message retention of the topic itself.
    pub retention: Option<Duration>,
}

/// A subscription as terraform declares it, in the code's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredSubscription {
    /// Topic name (not the `projects/…` path).
    pub topic: String,
    /// `ack_deadline_seconds` (terraform's default: 10 s).
    pub ack_deadline: Duration,
    /// Dead-letter topic name.
    pub dead_letter_topic: Option<String>,
    /// `max_delivery_attempts` of the dead-letter policy (only with one).
    pub max_delivery_attempts: Option<u32>,
    /// Retry policy bounds; `None` without a retry policy (immediate redelivery).
    pub backoff: Option<(Duration, Duration)>,
    /// `message_retention_duration` (terraform's default: 7 days).
    pub message_retention: Duration,
    /// `enable_exactly_once_delivery`.
    pub exactly_once: bool,
    /// The push endpoint, when it is a push subscription.
    pub push_endpoint: Option<String>,
}

/// The whole Pub/Sub topology, keyed by full name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// Topics.
    pub topics: BTreeMap<String, DeclaredTopic>,
    /// Subscriptions.
    pub subscriptions: BTreeMap<String, DeclaredSubscription>,
}

/// What terraform must declare for `topology`. In push mode the stages' subscriptions
/// (those that dead-letter to a stage's or stitch's encode topic) are push subscriptions, to the service
/// that consumes them (`Names::service_of`: the stage's, or `stitch-large`), and so go
/// without exactly-once delivery, which Pub/Sub offers on pull only. `push_endpoint_of`
/// names the endpoint of a service.
pub fn expected(topology: &Topology, push_endpoint_of: Option<&dyn Fn(&str) -> String>) -> Declared {
    let names = topology.names();
    let mut declared = Declared::default();
    for topic in &topology.topics {
        declared.topics.insert(topic.name.clone(), DeclaredTopic { retention: topic.retention });
    }
    for spec in &topology.subscriptions {
        let stage_work = Queue::ALL
            .into_iter()
            .any(|q| spec.dead_letter_topic.as_deref() == Some(names.dead_letter_topic(q).as_str()));
        let consumer = names.service_of(&spec.name).filter(|_| stage_work);
        let push_endpoint = match (push_endpoint_of, consumer) {
            (Some(endpoint), Some(service)) => Some(endpoint(&service)),
            _ => None,
        };
        declared.subscriptions.insert(
            spec.name.clone(),
            DeclaredSubscription {
                topic: spec.topic.clone(),
                ack_deadline: spec.ack_deadline,
                dead_letter_topic: spec.dead_letter_topic.clone(),
                max_delivery_attempts: spec.dead_letter_topic.as_ref().map(|_| spec.max_delivery_attempts),
                backoff: Some((spec.min_backoff, spec.max_backoff)),
                message_retention: spec.message_retention,
                exactly_once: spec.exactly_once && push_endpoint.is_none(),
                push_endpoint,
            },
        );
    }
    declared
}

/// Every difference between what the code wants and what terraform declares, one line
/// each; empty when they agree.
pub fn differences(code: &Declared, terraform: &Declared) -> Vec<String> {
    fn keys<V>(m: &BTreeMap<String, V>) -> BTreeSet<String> {
        m.keys().cloned().collect()
    }
    let mut out = Vec::new();
    for missing in keys(&code.topics).difference(&keys(&terraform.topics)) {
        out.push(format!("topic {missing}: in the code, not in terraform"));
    }
    for extra in keys(&terraform.topics).difference(&keys(&code.topics)) {
        out.push(format!("topic {extra}: in terraform, not in the code"));
    }
    for (name, want) in &code.topics {
        if let Some(have) = terraform.topics.get(name) {
            if want != have {
                out.push(format!(
                    "topic {name}: code has retention {:?}, terraform {:?}",
                    want.retention, have.retention
                ));
            }
        }
    }
    for missing in keys(&code.subscriptions).difference(&keys(&terraform.subscriptions)) {
        out.push(format!("subscription {missing}: in the code, not in terraform"));
    }
    for extra in keys(&terraform.subscriptions).difference(&keys(&code.subscriptions)) {
        out.push(format!("subscription {extra}: in terraform, not in the code"));
    }
    for (name, want) in &code.subscriptions {
        let Some(have) = terraform.subscriptions.get(name) else {
            continue;
        };
        let mut field = |what: &str, w: String, h: String| {
            if w != h {
                out.push(format!("subscription {name}: {what} is {w} in the code, {h} in terraform"));
            }
        };
        field("topic", want.topic.clone(), have.topic.clone());
        field("ack deadline", format!("{:?}", want.ack_deadline), format!("{:?}", have.ack_deadline));
        field("dead-letter topic", format!("{:?}", want.dead_letter_topic), format!("{:?}", have.dead_letter_topic));
        field(
            "max delivery attempts",
            format!("{:?}", want.max_delivery_attempts),
            format!("{:?}", have.max_delivery_attempts),
        );
        field("retry backoff (min, max)", format!("{:?}", want.backoff), format!("{:?}", have.backoff));
        field("message retention", format!("{:?}", want.message_retention), format!("{:?}", have.message_retention));
        field("exactly-once delivery", want.exactly_once.to_string(), have.exactly_once.to_string());
        field("push endpoint", format!("{:?}", want.push_endpoint), format!("{:?}", have.push_endpoint));
    }
    out
}

/// Parse a terraform duration (`"604800s"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds = text.strip_suffix('s').ok_or_else(|| format!("duration {text:?} does not end in s"))?;
    let seconds: f64 = seconds.parse().map_err(|_| format!("bad duration {text:?}"))?;
    Ok(Duration::from_secs_f64(seconds))
}

/// The last path segment: `projects/P/topics/reel-events` → `reel-events`.
pub fn short_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A module evaluated for the checks.
pub struct Deployment<'m> {
    /// The evaluator, with service accounts, topics, services and subscriptions declared.
    pub evaluator: Evaluator<'m>,
    /// The Pub/Sub topology it declares.
    pub declared: Declared,
    /// The prefix it was evaluated with.
    pub prefix: String,
    /// Whether the stages run in push mode.
    pub push: bool,
    /// Service account instances.
    pub service_accounts: Vec<Instance>,
    /// Every `google_pubsub_subscription` instance, with its evaluated body.
    pub subscription_instances: Vec<Instance>,
}

fn need<T>(what: &str, value: Result<Option<T>, String>) -> Result<T, String> {
    value?.ok_or_else(|| format!("{what} is not set"))
}

/// Evaluate `module` with `values` (the project is [`TEST_PROJECT`] unless given) and read
/// back the topology it declares.
pub fn evaluate<'m>(module: &'m Module, values: &[(&str, Value)]) -> Result<Deployment<'m>, String> {
    let mut all: Vec<(&str, Value)> = values.to_vec();
    if !all.iter().any(|(n, _)| *n == "project") {
        all.push(("project", Value::from(TEST_PROJECT)));
    }
    let mut evaluator = Evaluator::new(module, &all)?;
    let prefix =
        evaluator.var("topic_prefix").and_then(|v| v.as_str()).ok_or("var.topic_prefix is missing")?.to_string();
    let push = evaluator.var("delivery_mode").and_then(|v| v.as_str()) == Some("push");
    let service_accounts = evaluator.instances("google_service_account")?;
    let topics = evaluator.instances("google_pubsub_topic")?;
    // Push endpoints point at the services, so they are needed before the subscriptions.
    evaluator.instances("google_cloud_run_v2_service")?;
    evaluator.instances("google_storage_bucket")?;
    let subscription_instances = evaluator.instances("google_pubsub_subscription")?;

    let mut declared = Declared::default();
    for topic in &topics {
        let at = |e: String| format!("{}: {e}", topic.address);
        let name = need("name", topic.body.string("name")).map_err(at)?;
        let retention = topic
            .body
            .string("message_retention_duration")
            .map_err(at)?
            .map(|d| parse_duration(&d))
            .transpose()
            .map_err(at)?;
        if declared.topics.insert(name.clone(), DeclaredTopic { retention }).is_some() {
            return Err(format!("topic {name} is declared twice"));
        }
    }
    for sub in &subscription_instances {
        let at = |e: String| format!("{}: {e}", sub.address);
        let body = &sub.body;
        let name = need("name", body.string("name")).map_err(at)?;
        let topic = short_name(&need("topic", body.string("topic")).map_err(at)?);
        let ack_deadline = Duration::from_secs(body.number("ack_deadline_seconds").map_err(at)?.unwrap_or(10.0) as u64);
        let message_retention =
            parse_duration(&body.string("message_retention_duration").map_err(at)?.unwrap_or_else(|| "604800s".into()))
                .map_err(at)?;
        let exactly_once = match body.attr("enable_exactly_once_delivery").map_err(at)? {
            Value::Null => false,
            Value::Bool(b) => b,
            other => return Err(at(format!("enable_exactly_once_delivery is {other}"))),
        };
        let backoff = match body.block("retry_policy").map_err(at)? {
            None => None,
            Some(policy) => {
                let min = policy.string("minimum_backoff").map_err(at)?.unwrap_or_else(|| "10s".into());
                let max = policy.string("maximum_backoff").map_err(at)?.unwrap_or_else(|| "600s".into());
                Some((parse_duration(&min).map_err(at)?, parse_duration(&max).map_err(at)?))
            }
        };
        let (dead_letter_topic, max_delivery_attempts) = match body.block("dead_letter_policy").map_err(at)? {
            None => (None, None),
            Some(policy) => {
                let topic =
                    need("dead_letter_policy.dead_letter_topic", policy.string("dead_letter_topic")).map_err(at)?;
                let attempts = policy.number("max_delivery_attempts").map_err(at)?.unwrap_or(5.0) as u32;
                (Some(short_name(&topic)), Some(attempts))
            }
        };
        let push_endpoint = match body.block("push_config").map_err(at)? {
            None => None,
            Some(config) => Some(need("push_config.push_endpoint", config.string("push_endpoint")).map_err(at)?),
        };
        let spec = DeclaredSubscription {
            topic,
            ack_deadline,
            dead_letter_topic,
            max_delivery_attempts,
            backoff,
            message_retention,
            exactly_once,
            push_endpoint,
        };
        if declared.subscriptions.insert(name.clone(), spec).is_some() {
            return Err(format!("subscription {name} is declared twice"));
        }
    }
    Ok(Deployment { evaluator, declared, prefix, push, service_accounts, subscription_instances })
}

/// One IAM grant: `member` has `role` on the topic, subscription or bucket `on`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// Resource kind: `topic`, `subscription`, `bucket`.
    pub kind: &'static str,
    /// Topic, subscription or bucket name.
    pub on: String,
    /// Role.
    pub role: String,
    /// Member (`serviceAccount:…`).
    pub member: String,
}

/// Every `*_iam_member` grant on topics, subscriptions and buckets.
pub fn grants(evaluator: &mut Evaluator) -> Result<Vec<Grant>, String> {
    let mut out = Vec::new();
    for (ty, kind, key) in [
        ("google_pubsub_topic_iam_member", "topic", "topic"),
        ("google_pubsub_subscription_iam_member", "subscription", "subscription"),
        ("google_storage_bucket_iam_member", "bucket", "bucket"),
    ] {
        for instance in evaluator.instances(ty)? {
            let at = |e: String| format!("{}: {e}", instance.address);
            out.push(Grant {
                kind,
                on: short_name(&need(key, instance.body.string(key)).map_err(at)?),
                role: need("role", instance.body.string("role")).map_err(at)?,
                member: need("member", instance.body.string("member")).map_err(at)?,
            });
        }
    }
    Ok(out)
}

/// The environment a container block sets, by name.
pub fn container_env(container: &Evaluated) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for var in container.blocks("env")? {
        let name = need("env.name", var.string("name"))?;
        let value = var.string("value")?.unwrap_or_default();
        env.insert(name, value);
    }
    Ok(env)
}

/// A container block's `args`.
pub fn container_args(container: &Evaluated) -> Result<Vec<String>, String> {
    match container.attr("args")? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(|| format!("arg {v} is not a string")))
            .collect(),
        other => Err(format!("args is {other}")),
    }
}
