//! The poison corpus (issue 8): malformed and hostile messages published straight to
//! validate's topic, the storage notification topic and download's work topic of a
//! running cluster (the emulators, the five stage programs). Every message must end
//! dead-lettered (on the stage's dead-letter topic, with a reason) or as a `job.failed`
//! with a clear `errorType`; no stage program dies; a valid job sent in the middle of
//! it all completes exactly once. A second test sends one request twice under the same
//! CloudEvent id, and internal events again after the job completed.
//!
//! The test prints its table (message → expected → observed); docs/RELIABILITY.md
//! keeps a copy.

use reel_events::payload::{JobSpec, JobValidated};
use reel_events::{binding, envelope, types, AttributesReader, Compression, Event, Orientation, Stage};
use reel_runtime::bus::{Bus, Message};
use reel_runtime::topology::Names;
use reel_testkit::fixtures::{check_playable, make_clip};
use reel_testkit::Cluster;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The attribute that names a poison message, so its dead letter can be told apart.
const TAG: &str = "x-poison";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Topic {
    Requests,
    Notifications,
    Download,
}

#[derive(Clone, Debug)]
enum Expect {
    /// Dead-lettered by this stage (its dead-letter topic carries the message).
    DeadLetter(Stage),
    /// A `job.failed` for this job id with one of these error types.
    Failed { job: String, error_types: Vec<&'static str> },
    /// A `job.failed` whose message contains this text (its job id is derived from a
    /// Pub/Sub message id the test does not know).
    FailedWithText { text: &'static str, error_type: &'static str },
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::DeadLetter(stage) => write!(f, "dead letter ({stage})"),
            Expect::Failed { error_types, .. } => {
                write!(f, "job.failed {}", error_types.join(" or "))
            }
            Expect::FailedWithText { error_type, .. } => {
                write!(f, "job.failed {error_type} (derived job id)")
            }
        }
    }
}

struct Poison {
    name: String,
    topic: Topic,
    message: Message,
    expect: Expect,
}

struct Corpus {
    items: Vec<Poison>,
    bucket: String,
    clips: Vec<String>,
}

impl Corpus {
    fn add(&mut self, name: &str, topic: Topic, mut message: Message, expect: Expect) {
        message.attributes.insert(TAG.into(), self.items.len().to_string());
        self.items.push(Poison { name: name.to_string(), topic, message, expect });
    }

    /// A request that validate would accept, as JSON, for job `job`.
    fn request(&self, job: &str) -> Value {
        json!({
            "jobId": job, "projectId": format!("proj-{job}"), "userId": "mallory",
            "clipPaths": self.clips, "outputPath": format!("gs://{}/reels/{job}.mp4", self.bucket),
            "orientation": "landscape", "compression": "small",
        })
    }

    /// A request with one field replaced, in binary mode, that must fail with `error_type`.
    fn bad_request(&mut self, name: &str, job: &str, field: &str, value: Value, error_type: &'static str) {
        let mut body = self.request(job);
        body[field] = value;
        let message = binary(types::STITCH_REQUESTED, &format!("ce-{job}"), Some(job), &body);
        self.add(name, Topic::Requests, message, failed(job, &[error_type]));
    }

    fn dead(&mut self, name: &str, topic: Topic, message: Message) {
        let stage = if topic == Topic::Download { Stage::Download } else { Stage::Validate };
        self.add(name, topic, message, Expect::DeadLetter(stage));
    }
}

fn failed(job: &str, error_types: &[&'static str]) -> Expect {
    Expect::Failed { job: job.to_string(), error_types: error_types.to_vec() }
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn raw(data: impl Into<Vec<u8>>, pairs: &[(&str, &str)]) -> Message {
    Message { data: data.into(), attributes: attrs(pairs), ordering_key: String::new() }
}

/// A binary-mode CloudEvent with JSON data.
fn binary(ty: &str, id: &str, subject: Option<&str>, data: &Value) -> Message {
    let mut m = raw(
        serde_json::to_vec(data).unwrap(),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "//mallory"),
            ("ce-type", ty),
            ("content-type", "application/json"),
        ],
    );
    if let Some(s) = subject {
        m.attributes.insert("ce-subject".into(), s.into());
    }
    m
}

fn without(mut m: Message, attribute: &str) -> Message {
    m.attributes.remove(attribute);
    m
}

fn with(mut m: Message, attribute: &str, value: &str) -> Message {
    m.attributes.insert(attribute.into(), value.into());
    m
}

fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

fn spec(corpus: &Corpus, job: &str) -> JobSpec {
    let sample = reel_testkit::fixtures::job_spec(job);
    JobSpec {
        project_id: format!("proj-{job}"),
        user_id: "mallory".into(),
        clip_paths: corpus.clips.clone(),
        output_path: format!("gs://{}/reels/{job}.mp4", corpus.bucket),
        orientation: Orientation::Landscape,
        compression: Compression::Small,
        deadline: sample.accepted_at + chrono::Duration::minutes(15),
        timeout_resumes: 0,
        ..sample
    }
}

/// The whole corpus. Names are what the table shows.
fn corpus(bucket: &str, clips: &[String]) -> Corpus {
    use Topic::*;
    let mut c = Corpus { items: Vec::new(), bucket: bucket.to_string(), clips: clips.to_vec() };
    let good = c.request("unused");
    let ce_good = |job: &str| binary(types::STITCH_REQUESTED, &format!("ce-{job}"), Some(job), &good);

    // --- Not a CloudEvent, or a broken one: dead-lettered by validate, unread. ---------
    c.dead("not JSON, no attributes", Requests, raw("this is not json", &[]));
    c.dead("invalid UTF-8, no attributes", Requests, raw(vec![0xff, 0xfe, 0x00, 0xc3, 0x28], &[]));
    c.dead("empty body, no attributes", Requests, raw("", &[]));
    c.dead("a JSON array, no attributes", Requests, raw("[1, 2, 3]", &[]));
    c.dead("a JSON string, no attributes", Requests, raw("\"stitch please\"", &[]));
    c.dead("binary mode without ce-specversion", Requests, without(ce_good("p_nospec"), "ce-specversion"));
    c.dead("binary mode without ce-id", Requests, without(ce_good("p_noid"), "ce-id"));
    c.dead("binary mode without ce-source", Requests, without(ce_good("p_nosource"), "ce-source"));
    c.dead("binary mode without ce-type", Requests, without(ce_good("p_notype"), "ce-type"));
    c.dead("binary mode with an empty ce-id", Requests, with(ce_good("p_emptyid"), "ce-id", ""));
    c.dead("specversion 0.3", Requests, with(ce_good("p_spec03"), "ce-specversion", "0.3"));
    c.dead("specversion 2.0, structured", Requests, {
        let event =
            json!({"specversion": "2.0", "id": "s1", "source": "//m", "type": types::STITCH_REQUESTED, "data": good});
        raw(event.to_string(), &[("content-type", "application/cloudevents+json")])
    });
    c.dead("unknown type", Requests, with(ce_good("p_unknown"), "ce-type", "phoenix.reel.v1.job.teleported"));
    c.dead(
        "another stage's type (job.validated)",
        Requests,
        with(ce_good("p_misrouted"), "ce-type", types::JOB_VALIDATED),
    );
    c.dead("binary mode, body not JSON", Requests, {
        let mut m = ce_good("p_badbody");
        m.data = b"{\"jobId\": ".to_vec();
        m
    });
    c.dead("binary mode, body invalid UTF-8", Requests, {
        let mut m = ce_good("p_badutf8");
        m.data = vec![b'{', 0xff, 0xfe, b'}'];
        m
    });
    c.dead("ce-time not RFC 3339", Requests, with(ce_good("p_badtime"), "ce-time", "yesterday at noon"));
    c.dead("ce-dataschema not a URI", Requests, with(ce_good("p_badschema"), "ce-dataschema", "not a uri"));
    c.dead(
        "structured, body not JSON",
        Requests,
        raw("{\"specversion\": \"1.0\",", &[("content-type", "application/cloudevents+json")]),
    );
    c.dead("structured, no type", Requests, {
        let event = json!({"specversion": "1.0", "id": "s2", "source": "//m", "data": good});
        raw(event.to_string(), &[("content-type", "application/cloudevents+json")])
    });
    c.dead("10,000 levels of nesting, bare", Requests, raw(nested(10_000), &[]));
    c.dead("10,000 levels of nesting, binary mode", Requests, {
        let mut m = ce_good("p_deep");
        m.data = nested(10_000).into_bytes();
        m
    });
    c.dead("10,000 levels of nesting in a structured event's data", Requests, {
        let text = format!(
            r#"{{"specversion":"1.0","id":"s3","source":"//m","type":"{}","data":{}}}"#,
            types::STITCH_REQUESTED,
            nested(10_000)
        );
        raw(text, &[("content-type", "application/cloudevents+json")])
    });
    c.dead("9.9 MB of garbage", Requests, raw(vec![b'x'; 9_900_000], &[]));
    c.dead(
        "storage notification, body not JSON",
        Notifications,
        raw(
            "not json",
            &[
                ("eventType", "OBJECT_FINALIZE"),
                ("bucketId", bucket),
                ("objectId", "manifests/p/x.json"),
                ("objectGeneration", "1"),
                ("payloadFormat", "JSON_API_V1"),
            ],
        ),
    );

    // --- A CloudEvent whose request is wrong: validate fails the job, clearly. ----------
    c.bad_request("clipPaths is a string", "p_clipstring", "clipPaths", json!("gs://b/a.mp4"), "invalid_request");
    c.bad_request(
        "clipPaths holds a number and a null",
        "p_clipnull",
        "clipPaths",
        json!([1, null]),
        "invalid_request",
    );
    c.bad_request("projectId is a number", "p_projnum", "projectId", json!(42), "invalid_request");
    c.bad_request("projectId is empty", "p_projempty", "projectId", json!(""), "invalid_request");
    c.bad_request("projectId with a slash", "p_projslash", "projectId", json!("../other-project"), "invalid_request");
    c.bad_request("userId missing (null)", "p_nouser", "userId", Value::Null, "invalid_request");
    c.bad_request("retryAttempt -1", "p_negattempt", "retryAttempt", json!(-1), "invalid_request");
    c.bad_request("retryAttempt 2^40", "p_bigattempt", "retryAttempt", json!(1u64 << 40), "invalid_request");
    c.bad_request("orientation unknown", "p_orient", "orientation", json!("diagonal"), "invalid_request");
    c.bad_request("compression unknown", "p_compress", "compression", json!("zip"), "invalid_request");
    c.bad_request("forceRestart is a string", "p_force", "forceRestart", json!("yes"), "invalid_request");
    c.bad_request("empty clip list", "p_noclips", "clipPaths", json!([]), "insufficient_clips");
    c.bad_request("one clip", "p_oneclip", "clipPaths", json!([clips[0]]), "insufficient_clips");
    let many: Vec<String> = (0..10_000).map(|i| format!("gs://{bucket}/clips/c{}.mp4", i % 2)).collect();
    c.bad_request("10,000 clips", "p_10kclips", "clipPaths", json!(many), "invalid_request");
    let huge: Vec<String> = (0..79_800).map(|i| format!("gs://{bucket}/clips/{i:0>90}.mp4")).collect();
    c.bad_request("9.9 MB request (79,800 clips)", "p_huge", "clipPaths", json!(huge), "invalid_request");
    c.bad_request(
        "http:// clip",
        "p_http",
        "clipPaths",
        json!([clips[0], "http://169.254.169.254/computeMetadata/v1/"]),
        "invalid_request",
    );
    c.bad_request(
        "https:// clip",
        "p_https",
        "clipPaths",
        json!([clips[0], "https://evil.example/a.mp4"]),
        "invalid_request",
    );
    c.bad_request(
        "concat: clip",
        "p_concat",
        "clipPaths",
        json!([clips[0], "concat:/etc/passwd|/etc/shadow"]),
        "invalid_request",
    );
    c.bad_request(
        "subfile: clip",
        "p_subfile",
        "clipPaths",
        json!([clips[0], "subfile:,,start,0,end,0,,:/etc/passwd"]),
        "invalid_request",
    );
    c.bad_request(
        "file:///etc/passwd clip",
        "p_passwd",
        "clipPaths",
        json!([clips[0], "file:///etc/passwd"]),
        "permission_denied",
    );
    c.bad_request(
        "/etc/passwd plain path",
        "p_plainpasswd",
        "clipPaths",
        json!([clips[0], "/etc/passwd"]),
        "permission_denied",
    );
    c.bad_request(
        "'..' in a gs:// clip",
        "p_dotdot",
        "clipPaths",
        json!([clips[0], format!("gs://{bucket}/clips/../control/locks/x")]),
        "invalid_request",
    );
    c.bad_request(
        "'..' percent-encoded in file://",
        "p_dotdot2",
        "clipPaths",
        json!([clips[0], "file:///srv/%2e%2e/etc/passwd"]),
        "invalid_request",
    );
    c.bad_request(
        "clip in another bucket",
        "p_otherbucket",
        "clipPaths",
        json!([clips[0], "gs://someone-elses-bucket/a.mp4"]),
        "permission_denied",
    );
    c.bad_request(
        "output in another bucket",
        "p_otherout",
        "outputPath",
        json!("gs://someone-elses-bucket/reel.mp4"),
        "permission_denied",
    );
    c.bad_request(
        "output is http://",
        "p_httpout",
        "outputPath",
        json!("http://evil.example/upload.mp4"),
        "invalid_request",
    );
    c.bad_request(
        "output is not .mp4",
        "p_outext",
        "outputPath",
        json!(format!("gs://{bucket}/reels/x.sh")),
        "invalid_request",
    );
    c.bad_request("output is one of the clips", "p_outclip", "outputPath", json!(clips[0]), "invalid_request");
    c.bad_request(
        "control character in a clip path",
        "p_ctrl",
        "clipPaths",
        json!([clips[0], format!("gs://{bucket}/clips/a\u{7}\n.mp4")]),
        "invalid_request",
    );
    // A job id that is not one fails under the id derived from the event's source and
    // id (never echoed into ce-subject or an ordering key).
    let derived = |ce_id: &str| reel_validate::derived_job_id(&["//mallory", ce_id]);
    for (name, ce_id, bad) in [
        ("jobId with '/'", "ce-slash", json!("p/slash")),
        ("jobId 10 KB long", "ce-longid", json!(format!("p_{}", "x".repeat(10 * 1024)))),
        ("control characters in jobId", "ce-ctrl", json!("p_\u{1b}[31m\r\n")),
        ("jobId is a number", "ce-number", json!(12345)),
    ] {
        let mut body = c.request("unused");
        body["jobId"] = bad;
        c.add(
            name,
            Requests,
            binary(types::STITCH_REQUESTED, ce_id, None, &body),
            failed(&derived(ce_id), &["invalid_request"]),
        );
    }
    let mut body = c.request("unused");
    body["jobId"] = json!(67890);
    c.add(
        "jobId is a number (bare JSON)",
        Requests,
        raw(body.to_string(), &[]),
        Expect::FailedWithText { text: "jobId 67890 must be a string", error_type: "invalid_request" },
    );
    let mut body = c.request("p_bare_one");
    body["clipPaths"] = json!([clips[0]]);
    c.add(
        "bare JSON request, one clip",
        Requests,
        raw(body.to_string(), &[]),
        failed("p_bare_one", &["insufficient_clips"]),
    );
    let event = json!({"specversion": "1.0", "id": "s4", "source": "//m", "type": types::STITCH_REQUESTED, "subject": "p_structbad",
        "data": {"jobId": "p_structbad", "projectId": "proj-sb", "userId": "u", "clipPaths": "nope", "outputPath": "x", "orientation": "portrait", "compression": "small"}});
    c.add(
        "structured, data of the wrong shape",
        Requests,
        raw(event.to_string(), &[("content-type", "application/cloudevents+json")]),
        failed("p_structbad", &["invalid_request"]),
    );
    // Duplicate ids: two different bad requests under one CloudEvent id.
    for (n, job) in ["p_dup_a", "p_dup_b"].into_iter().enumerate() {
        let mut body = c.request(job);
        body["clipPaths"] = json!([]);
        let m = binary(types::STITCH_REQUESTED, "ce-duplicate", Some(job), &body);
        c.add(&format!("duplicate ce-id, request {}", n + 1), Requests, m, failed(job, &["insufficient_clips"]));
    }

    // --- Straight onto download's work topic, skipping validate. -----------------------
    c.dead("not JSON on work-download", Download, raw("garbage", &[]));
    c.dead("stitch.requested on work-download", Download, ce_good("p_wrongtopic"));
    c.dead("job.validated, body not JSON", Download, {
        let mut m = binary(types::JOB_VALIDATED, "v0", Some("p_v_badjson"), &json!({}));
        m.data = b"{{{".to_vec();
        m
    });
    let mut past = spec(&c, "p_v_past");
    past.accepted_at = chrono::Utc::now() - chrono::Duration::hours(2);
    past.deadline = chrono::Utc::now() - chrono::Duration::hours(1);
    // Out of resumes: a job with one left would be resumed with a new deadline.
    past.timeout_resumes = 1;
    let m = binary(
        types::JOB_VALIDATED,
        "v1",
        Some("p_v_past"),
        &serde_json::to_value(JobValidated { job: past }).unwrap(),
    );
    c.add("job.validated, deadline in the past, no resume left", Download, m, failed("p_v_past", &["timeout"]));
    let m = binary(types::JOB_VALIDATED, "v2", Some("p_v_nojob"), &json!({"jobId": "p_v_nojob", "clips": []}));
    c.add("job.validated without its job", Download, m, failed("p_v_nojob", &["invalid_request"]));
    let mut v = serde_json::to_value(JobValidated { job: spec(&c, "p_v_neg") }).unwrap();
    v["job"]["retryAttempt"] = json!(-5);
    c.add(
        "job.validated, retryAttempt -5",
        Download,
        binary(types::JOB_VALIDATED, "v3", Some("p_v_neg"), &v),
        failed("p_v_neg", &["invalid_request"]),
    );
    // Paths validate would refuse, injected past it: download checks the roots again.
    let mut s = spec(&c, "p_v_local");
    s.clip_paths = vec!["file:///etc/passwd".into(), "/etc/hostname".into()];
    let m =
        binary(types::JOB_VALIDATED, "v4", Some("p_v_local"), &serde_json::to_value(JobValidated { job: s }).unwrap());
    c.add("job.validated with /etc/passwd clips", Download, m, failed("p_v_local", &["permission_denied"]));
    let mut s = spec(&c, "p_v_other");
    s.clip_paths = vec!["gs://someone-elses-bucket/a.mp4".into(), "gs://someone-elses-bucket/b.mp4".into()];
    let m =
        binary(types::JOB_VALIDATED, "v5", Some("p_v_other"), &serde_json::to_value(JobValidated { job: s }).unwrap());
    c.add("job.validated with another bucket's clips", Download, m, failed("p_v_other", &["permission_denied"]));
    c
}

#[derive(Debug, Default, Clone)]
struct Seen {
    dead_letters: Vec<(Stage, String)>,
    failures: Vec<(String, String)>,
}

fn observed(p: &Poison, index: usize, dead: &[(Stage, BTreeMap<String, String>)], failures: &[Value]) -> Seen {
    let mut seen = Seen::default();
    for (stage, attributes) in dead {
        if attributes.get(TAG) == Some(&index.to_string()) {
            let reason = attributes
                .get("reel-dl-reason")
                .cloned()
                .unwrap_or_else(|| "(Pub/Sub dead-lettered it: no reason)".into());
            seen.dead_letters.push((*stage, reason));
        }
    }
    for f in failures {
        let matches = match &p.expect {
            Expect::Failed { job, .. } => f["jobId"].as_str() == Some(job.as_str()),
            Expect::FailedWithText { text, .. } => f["message"].as_str().is_some_and(|m| m.contains(text)),
            Expect::DeadLetter(_) => false,
        };
        if matches {
            seen.failures.push((
                f["errorType"].as_str().unwrap_or("?").to_string(),
                f["message"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    seen
}

fn satisfied(p: &Poison, seen: &Seen) -> bool {
    match &p.expect {
        Expect::DeadLetter(stage) => seen.dead_letters.iter().any(|(s, _)| s == stage) && seen.failures.is_empty(),
        Expect::Failed { error_types, .. } => {
            !seen.failures.is_empty()
                && seen.failures.iter().all(|(t, _)| error_types.contains(&t.as_str()))
                && seen.dead_letters.is_empty()
        }
        Expect::FailedWithText { error_type, .. } => {
            !seen.failures.is_empty()
                && seen.failures.iter().all(|(t, _)| t == error_type)
                && seen.dead_letters.is_empty()
        }
    }
}

fn describe(seen: &Seen) -> String {
    let mut parts = Vec::new();
    for (stage, reason) in &seen.dead_letters {
        parts.push(format!("dead letter ({stage}): {}", reason.chars().take(90).collect::<String>()));
    }
    for (error_type, message) in &seen.failures {
        parts.push(format!("job.failed {error_type}: {}", message.chars().take(90).collect::<String>()));
    }
    if parts.is_empty() {
        "nothing yet".into()
    } else {
        parts.join(" / ").replace('\n', "\\n").replace('\r', "\\r").replace('\u{1b}', "\\e").replace('|', "\\|")
    }
}

async fn drain(cluster: &Cluster, stage: Stage, into: &mut Vec<(Stage, BTreeMap<String, String>)>) {
    let sub = Names::new(&cluster.prefix).dead_letter_subscription(stage);
    loop {
        let batch = cluster.bus().receive(&sub, 50, Duration::from_millis(300)).await.expect("pull dead letters");
        if batch.is_empty() {
            return;
        }
        for d in batch {
            let _ = cluster.bus().ack(&sub, &d.ack_id).await;
            into.push((stage, d.message.attributes));
        }
    }
}

fn topic(cluster: &Cluster, t: Topic) -> String {
    let names = Names::new(&cluster.prefix);
    match t {
        Topic::Requests => names.requests(),
        Topic::Notifications => names.gcs_notifications(),
        Topic::Download => names.work_topic(Stage::Download),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_poison_message_is_dead_lettered_or_fails_its_job_and_nothing_dies() {
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let mut clips = Vec::new();
    for i in 0..2 {
        let local = cluster.dir().join(format!("c{i}.mp4"));
        make_clip(&local, 320, 240, 1.0);
        cluster.upload(&local, &format!("clips/c{i}.mp4")).await;
        clips.push(format!("gs://{}/clips/c{i}.mp4", cluster.bucket));
    }
    let corpus = corpus(&cluster.bucket, &clips);
    assert!(corpus.items.len() >= 30, "only {} poison messages", corpus.items.len());

    // The valid job, in the middle of the poison. (Sent twice under one CloudEvent id it
    // can also get a job.failed: see `a_duplicate_request_does_not_fail_a_completed_job`.)
    let valid_job = "poison_valid_job";
    let request = corpus.request(valid_job);
    let valid: Event =
        envelope::build(types::STITCH_REQUESTED, "//phoenix", "ce-valid-1", valid_job, chrono::Utc::now(), &request)
            .unwrap();
    let half = corpus.items.len() / 2;

    // Publish a few at a time: the next message goes out when an earlier one has an
    // outcome. (On the emulator, a backlog deeper than the stage's flow-control limit is
    // bounced back by the bus, and every bounce counts as a delivery attempt, so a burst
    // of dozens would reach Pub/Sub's own dead-lettering unread: see RELIABILITY.md.)
    const WINDOW: usize = 3;
    let mut dead = Vec::new();
    let mut failures: Vec<Value>;
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(170);
    loop {
        drain(&cluster, Stage::Validate, &mut dead).await;
        drain(&cluster, Stage::Download, &mut dead).await;
        failures =
            cluster.events_of_any(types::JOB_FAILED).await.iter().filter_map(|e| envelope::data_json(e).ok()).collect();
        let answered = |i: usize| {
            let seen = observed(&corpus.items[i], i, &dead, &failures);
            !seen.dead_letters.is_empty() || !seen.failures.is_empty()
        };
        let mut open = (0..next).filter(|i| !answered(*i)).count();
        while next < corpus.items.len() && open < WINDOW {
            if next == half {
                cluster
                    .bus()
                    .publish(&Names::new(&cluster.prefix).requests(), binding::encode_binary(&valid))
                    .await
                    .expect("publish the valid job");
            }
            let p = &corpus.items[next];
            cluster
                .bus()
                .publish(&topic(&cluster, p.topic), p.message.clone())
                .await
                .unwrap_or_else(|e| panic!("publish {:?}: {e}", p.name));
            next += 1;
            open += 1;
        }
        let done = cluster.events_of(valid_job).await.iter().any(|e| e.ty() == types::JOB_COMPLETED);
        let pending =
            corpus.items.iter().enumerate().filter(|(i, p)| !satisfied(p, &observed(p, *i, &dead, &failures))).count();
        if (next == corpus.items.len() && pending == 0 && done) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A moment more, so that a late second outcome (a message both failed and
    // dead-lettered, say) would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drain(&cluster, Stage::Validate, &mut dead).await;
    drain(&cluster, Stage::Download, &mut dead).await;
    failures =
        cluster.events_of_any(types::JOB_FAILED).await.iter().filter_map(|e| envelope::data_json(e).ok()).collect();

    // The table.
    println!("\n| # | message | topic | expected | observed | ok |\n| --- | --- | --- | --- | --- | --- |");
    let mut bad = Vec::new();
    for (i, p) in corpus.items.iter().enumerate() {
        let seen = observed(p, i, &dead, &failures);
        let ok = satisfied(p, &seen);
        let topic = match p.topic {
            Topic::Requests => "stitch-requests",
            Topic::Notifications => "gcs-notifications",
            Topic::Download => "work-download",
        };
        println!(
            "| {} | {} | {topic} | {} | {} | {} |",
            i + 1,
            p.name,
            p.expect,
            describe(&seen),
            if ok { "yes" } else { "**NO**" }
        );
        if !ok {
            bad.push(format!("{} ({}): expected {}, observed {}", i + 1, p.name, p.expect, describe(&seen)));
        }
    }

    // Nothing on a dead-letter topic that the corpus did not send.
    let unaccounted: Vec<_> = dead
        .iter()
        .filter(|(_, a)| a.get(TAG).and_then(|t| t.parse::<usize>().ok()).is_none_or(|t| t >= corpus.items.len()))
        .map(|(s, a)| format!("{s}: {a:?}"))
        .collect();

    // The valid job: completed exactly once, one playable reel of 2 s, never failed.
    let events = cluster.events_of(valid_job).await;
    let completed: std::collections::BTreeSet<String> =
        events.iter().filter(|e| e.ty() == types::JOB_COMPLETED).map(|e| e.id().to_string()).collect();
    let valid_failures: Vec<Value> =
        events.iter().filter(|e| e.ty() == types::JOB_FAILED).filter_map(|e| envelope::data_json(e).ok()).collect();
    let local = cluster.dir().join("valid.mp4");
    let reel_ok = cluster.download(&format!("reels/{valid_job}.mp4"), &local).await;

    // The programs' logs stay for a look afterwards.
    let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("poison-logs");
    let _ = std::fs::create_dir_all(&logs);
    for p in &cluster.programs {
        let _ = std::fs::copy(&p.log, logs.join(p.log.file_name().unwrap()));
    }

    // No stage program died, and none panicked.
    let mut dead_programs = Vec::new();
    for p in &mut cluster.programs {
        if let Some(status) = p.child.try_wait().unwrap() {
            dead_programs.push(format!("{} exited with {status}", p.name));
        }
        if p.log_text().contains("panicked") {
            dead_programs.push(format!("{} panicked", p.name));
        }
    }
    println!(
        "\n{} poison messages: {} dead-lettered, {} failed their job; valid job completed {} time(s); {:.0} s",
        corpus.items.len(),
        corpus.items.iter().filter(|p| matches!(p.expect, Expect::DeadLetter(_))).count(),
        corpus.items.iter().filter(|p| !matches!(p.expect, Expect::DeadLetter(_))).count(),
        completed.len(),
        started.elapsed().as_secs_f64()
    );

    assert!(bad.is_empty(), "poison messages not accounted for as expected:\n{}", bad.join("\n"));
    assert!(unaccounted.is_empty(), "dead letters the corpus did not send: {unaccounted:#?}");
    assert!(dead_programs.is_empty(), "stage programs died: {dead_programs:?}");
    assert_eq!(completed.len(), 1, "the valid job did not complete exactly once");
    assert!(valid_failures.is_empty(), "the valid job failed: {valid_failures:?}");
    assert!(reel_ok, "no reel for the valid job");
    let (duration, video, audio) = check_playable(&local);
    assert_eq!((video, audio), (1, 1));
    assert!((duration - 2.0).abs() <= 0.25, "duration {duration}");
}

/// At-least-once delivery: a request delivered twice (the same CloudEvent id), and the
/// internal events of a finished job delivered again late (a redelivery after a lost
/// ack), must leave one completed job: one `job.completed` id, the reel in place, and no
/// `job.failed` (Phoenix listens for it).
/// (Before the worker checked the completion record, a late `job.downloaded` reached
/// stitch after finalize had removed the workspace and failed the job with
/// `not_found`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_does_not_fail_a_completed_job() {
    let mut cluster = Cluster::start().await;
    cluster.start_all();
    let mut clips = Vec::new();
    for i in 0..2 {
        let local = cluster.dir().join(format!("c{i}.mp4"));
        make_clip(&local, 320, 240, 1.0);
        cluster.upload(&local, &format!("clips/c{i}.mp4")).await;
        clips.push(format!("gs://{}/clips/c{i}.mp4", cluster.bucket));
    }
    let corpus = Corpus { items: Vec::new(), bucket: cluster.bucket.clone(), clips };
    let names = Names::new(&cluster.prefix);
    // The second copy right behind the first, and once the first has reached each
    // later stage (the window in which the first copy's finalize removes the workspace
    // under the second copy's feet).
    let lags = [None, Some(types::JOB_VALIDATED), Some(types::REEL_STITCHED), Some(types::REEL_UPLOADED)];
    let mut early_failures: Vec<(String, Value)> = Vec::new();
    for (n, lag) in lags.iter().enumerate() {
        let job = format!("dup_job_{n}");
        let request: Event = envelope::build(
            types::STITCH_REQUESTED,
            "//phoenix",
            format!("ce-dup-{n}"),
            &job,
            chrono::Utc::now(),
            &corpus.request(&job),
        )
        .unwrap();
        cluster.bus().publish(&names.requests(), binding::encode_binary(&request)).await.unwrap();
        if let Some(ty) = lag {
            cluster.wait_for(Some(&job), ty, Duration::from_secs(120)).await;
        }
        cluster.bus().publish(&names.requests(), binding::encode_binary(&request)).await.unwrap();
        cluster.wait_for(Some(&job), types::JOB_COMPLETED, Duration::from_secs(150)).await;
    }
    // Let the second copies run their course.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for n in 0..lags.len() {
        let job = format!("dup_job_{n}");
        for e in cluster.events_of(&job).await.iter().filter(|e| e.ty() == types::JOB_FAILED) {
            early_failures.push((job.clone(), envelope::data_json(e).unwrap_or_default()));
        }
    }
    let job = "dup_job_0";

    // Late redeliveries of every internal event of the finished job.
    let events = cluster.events_of(job).await;
    for ty in [types::JOB_VALIDATED, types::CLIPS_DOWNLOADED, types::REEL_STITCHED, types::REEL_UPLOADED] {
        let event = events.iter().find(|e| e.ty() == ty).unwrap_or_else(|| panic!("no {ty} on the log"));
        reel_runtime::worker::publish_event(cluster.bus(), &names, event).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(25)).await;
    let events = cluster.events_of(job).await;
    let failures: Vec<Value> =
        events.iter().filter(|e| e.ty() == types::JOB_FAILED).filter_map(|e| envelope::data_json(e).ok()).collect();
    let completed: std::collections::BTreeSet<String> =
        events.iter().filter(|e| e.ty() == types::JOB_COMPLETED).map(|e| e.id().to_string()).collect();
    let local = cluster.dir().join("dup.mp4");
    let reel_ok = cluster.download(&format!("reels/{job}.mp4"), &local).await;
    println!("duplicate request: failures after the duplicate request {early_failures:?}; after late redeliveries {failures:?}; job.completed ids {completed:?}");
    assert!(early_failures.is_empty(), "the duplicate request failed the completed job: {early_failures:?}");
    assert!(failures.is_empty(), "late redeliveries failed the completed job: {failures:?}");
    assert_eq!(completed.len(), 1);
    assert!(reel_ok, "the reel is gone");
}
