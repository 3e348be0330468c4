//! The properties that reel's fuzz targets check, in one place.
//!
//! The libFuzzer targets in `fuzz_targets/` turn their bytes into these inputs and call
//! these functions; `events/tests/hostile.rs` includes this very file (`#[path]`) and
//! calls them with proptest-made inputs, a bounded smoke run that `cargo test` runs. A
//! property that fails panics, which libFuzzer reports as a crash and proptest shrinks.
//!
//! Only `reel_events`, `serde_json` and `chrono` are used, so the file compiles both in
//! this crate and as a module of the `reel-events` tests.

#![allow(dead_code)] // each includer uses a part

use chrono::{DateTime, TimeZone, Utc};
use reel_events::fold::{fold_all, JobStatus};
use reel_events::message::PubsubMessage;
use reel_events::payload::{
    CancelRequested, ClipsDownloaded, JobCancelled, JobCompleted, JobFailed, JobProgress, JobRef, JobSpec,
    JobValidated, ReelFacts, ReelStitched, ReelUploaded, SkippedClip, StitchRequested, WorkClip,
};
use reel_events::{binding, envelope, types, AttributesReader, ClipInfo, ErrorType, Event, Stage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------
// 1. The Pub/Sub binding decoder.
// ---------------------------------------------------------------------------------

/// Whatever a Pub/Sub message holds, decoding it never panics (it is an event or a
/// [`binding::BindingError`]); a storage notification and a bare request are read the
/// same way; and an event that was accepted can be emitted again in binary mode and
/// read back with the same context attributes.
pub fn check_binding(message: &PubsubMessage, message_id: &str) {
    let _ = message.wire_size();
    if let Ok(event) = binding::decode(message) {
        check_accepted(&event);
    }
    if let Some(Ok(event)) = binding::decode_storage_notification(message, message_id) {
        assert!(event.ty().starts_with("google.cloud.storage.object.v1."), "{}", event.ty());
        // The data is a JSON object naming the object (what validate reads).
        let data = envelope::data_json(&event).expect("a storage event has JSON data");
        if data.is_object() {
            assert!(data.get("bucket").is_some() && data.get("name").is_some(), "{data}");
        }
        check_accepted(&event);
    }
    if let Ok(event) = binding::wrap_bare_request(message, message_id) {
        assert_eq!(event.ty(), types::STITCH_REQUESTED);
        assert_eq!(event.id(), format!("pubsub-{message_id}"), "a redelivery must give the same id");
        assert!(envelope::data_json(&event).expect("JSON data").is_object());
        check_accepted(&event);
    }
}

/// What the worker does with an accepted event must not panic either: read its data,
/// its job, its extensions, encode it again.
fn check_accepted(event: &Event) {
    let data = envelope::data_json(event).unwrap_or(serde_json::Value::Null);
    let _ = JobRef::from_data(&data, event.subject());
    let _ = envelope::job_id_of(event);
    let _ = envelope::extension_str(event, envelope::TRACEPARENT);
    let binary = binding::encode_binary(event);
    let structured = binding::encode_structured(event);
    if let Ok(again) = binding::decode(&binary) {
        assert_eq!(again.id(), event.id());
        assert_eq!(again.source(), event.source());
        assert_eq!(again.ty(), event.ty());
    }
    let _ = binding::decode(&structured);
}

/// A Pub/Sub message made of arbitrary parts, biased so that the interesting paths are
/// reached: attribute names are often the binding's own.
pub fn message_from_parts(data: Vec<u8>, attributes: Vec<(u8, String)>, ordering_key: String) -> PubsubMessage {
    const NAMES: [&str; 20] = [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-subject",
        "ce-time",
        "ce-dataschema",
        "ce-datacontenttype",
        "content-type",
        "ce-traceparent",
        "ce-replaycount",
        "ce-",
        "eventType",
        "bucketId",
        "objectId",
        "objectGeneration",
        "payloadFormat",
        "ce-Ünïcode",
        "reel-dl-reason",
        "x-other",
    ];
    let attributes = attributes
        .into_iter()
        .map(|(k, v)| (NAMES[k as usize % NAMES.len()].to_string(), v))
        .collect::<BTreeMap<_, _>>();
    PubsubMessage { data, attributes, ordering_key }
}

/// Read a message written like an HTTP request, the seed format of the `binding`
/// target: header lines `name: value` (the names `@id` and `@key` set the Pub/Sub
/// message id and ordering key), a blank line, then the body bytes. Without a blank
/// line the whole input is the body. Returns the message and its message id.
pub fn message_from_text(input: &[u8]) -> (PubsubMessage, String) {
    let split = input.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&input[..at], &input[at + 2..]),
        None => (&input[..0], input),
    };
    let mut message = PubsubMessage { data: body.to_vec(), ..Default::default() };
    let mut id = String::new();
    for line in String::from_utf8_lossy(head).lines() {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match name {
            "@id" => id = value,
            "@key" => message.ordering_key = value,
            _ => {
                message.attributes.insert(name.to_string(), value);
            }
        }
    }
    (message, id)
}

/// Values that make the decoder's branches go each way, for the attribute values.
pub const INTERESTING_VALUES: [&str; 16] = [
    "1.0",
    "0.3",
    "",
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents+json; charset=utf-8",
    "text/plain",
    "application/octet-stream",
    "phoenix.reel.v1.stitch.requested",
    "2024-01-01T00:00:00Z",
    "not a time",
    "https://example.com/schema.json",
    "OBJECT_FINALIZE",
    "JSON_API_V1",
    "manifests/p1/a.json",
    "9999-12-31T23:59:59.999999999+14:00",
];

// ---------------------------------------------------------------------------------
// 2. Payload parsing.
// ---------------------------------------------------------------------------------

/// Whatever the bytes, parsing them as any payload type never panics, and a payload
/// that parses serializes to JSON that parses back to the same payload.
pub fn check_payloads(bytes: &[u8]) {
    roundtrip::<StitchRequested>(bytes);
    roundtrip::<JobSpec>(bytes);
    roundtrip::<JobValidated>(bytes);
    roundtrip::<WorkClip>(bytes);
    roundtrip::<ClipsDownloaded>(bytes);
    roundtrip::<ReelFacts>(bytes);
    roundtrip::<ReelStitched>(bytes);
    roundtrip::<ReelUploaded>(bytes);
    roundtrip::<JobProgress>(bytes);
    roundtrip::<JobCompleted>(bytes);
    roundtrip::<JobFailed>(bytes);
    roundtrip::<JobCancelled>(bytes);
    roundtrip::<CancelRequested>(bytes);
    roundtrip::<SkippedClip>(bytes);
    roundtrip::<ClipInfo>(bytes);
    roundtrip::<JobStatus>(bytes);
    roundtrip::<PubsubMessage>(bytes);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = JobRef::from_data(&value, Some("subject"));
    }
}

fn roundtrip<T: Serialize + DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(parsed) = serde_json::from_slice::<T>(bytes) else {
        return;
    };
    let text = serde_json::to_vec(&parsed).expect("a parsed payload serializes");
    let again: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "{} parsed from {:?} serialized to {:?}, which does not parse back: {e}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&text)
        )
    });
    let (a, b) = (serde_json::to_value(&parsed).unwrap(), serde_json::to_value(&again).unwrap());
    assert!(json_close(&a, &b), "{} changed in a round trip: {a} != {b}", std::any::type_name::<T>());
}

/// JSON equality with floats compared to 1e-12 relative (serde_json's default float
/// parsing is best effort: a reparsed float may differ in the last bit).
pub fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x == y => true,
            (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0),
            _ => false,
        },
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

/// Valid examples of every payload, as JSON: the seeds that mutations start from.
pub fn payload_samples() -> Vec<(&'static str, serde_json::Value)> {
    let spec = sample_spec(0);
    let facts = ReelFacts {
        size_bytes: 1234,
        duration_seconds: 4.02,
        crc32c: "AAAAAA==".into(),
        mode: reel_events::Mode::Copy,
    };
    let info: ClipInfo = serde_json::from_value(serde_json::json!({
        "durationSeconds": 2.0, "container": "mov,mp4,m4a,3gp,3g2,mj2",
        "video": {"codec": "h264", "width": 320, "height": 240, "pixFmt": "yuv420p", "frameRate": "30/1", "timeBase": "1/15360", "rotation": 0},
        "audio": {"codec": "aac", "sampleRate": 48000, "channels": 2, "channelLayout": "stereo", "timeBase": "1/48000"}
    }))
    .expect("a ClipInfo sample");
    let clip = WorkClip {
        index: 0,
        source_path: "gs://b/a.mp4".into(),
        work_key: "jobs/job_1/clips/000.mp4".into(),
        size_bytes: 10,
        info,
    };
    let skipped = SkippedClip { path: "gs://b/c.mp4".into(), reason: "corrupt".into() };
    vec![
        (types::STITCH_REQUESTED, v(&sample_request())),
        ("JobSpec", v(&spec)),
        (types::JOB_VALIDATED, v(&JobValidated { job: spec.clone() })),
        (
            types::CLIPS_DOWNLOADED,
            v(&ClipsDownloaded {
                job: spec.clone(),
                clips: vec![clip.clone()],
                skipped_clips: vec![skipped.clone()],
                warnings: vec!["w".into()],
            }),
        ),
        (
            types::REEL_STITCHED,
            v(&ReelStitched {
                job: spec.clone(),
                work_key: "jobs/job_1/reel.mp4".into(),
                reel: facts.clone(),
                skipped_clips: vec![],
                warnings: vec![],
            }),
        ),
        (
            types::REEL_UPLOADED,
            v(&ReelUploaded {
                job: spec.clone(),
                output_path: "gs://b/out.mp4".into(),
                reel: facts,
                skipped_clips: vec![skipped],
                warnings: vec![],
            }),
        ),
        (types::JOB_PROGRESS, v(&sample_progress(Stage::Stitch, 42.0, 0))),
        (types::JOB_COMPLETED, v(&sample_completed(0))),
        (types::JOB_FAILED, v(&sample_failed(Stage::Download, ErrorType::NotFound, 0))),
        (
            types::JOB_CANCELLED,
            v(&JobCancelled {
                job_id: "job_1".into(),
                project_id: "proj".into(),
                user_id: "user".into(),
                stage: Stage::Stitch,
                retry_attempt: None,
                cost: None,
            }),
        ),
        (
            types::CANCEL_REQUESTED,
            v(&CancelRequested { job_id: "job_1".into(), project_id: "proj".into(), user_id: "user".into() }),
        ),
        ("WorkClip", v(&clip)),
    ]
}

fn v<T: Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).expect("sample serializes")
}

/// Replace the value at the `pick`-th node (depth first) of `value` with `with`.
pub fn mutate(value: &mut serde_json::Value, pick: usize, with: serde_json::Value) {
    fn count(v: &serde_json::Value) -> usize {
        1 + match v {
            serde_json::Value::Array(a) => a.iter().map(count).sum(),
            serde_json::Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut serde_json::Value, n: &mut usize, with: &mut Option<serde_json::Value>) {
        if *n == 0 {
            if let Some(w) = with.take() {
                *v = w;
            }
            return;
        }
        *n -= 1;
        match v {
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, n, with)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| walk(x, n, with)),
            _ => {}
        }
    }
    let total = count(value);
    let mut n = pick % total;
    walk(value, &mut n, &mut Some(with));
}

// ---------------------------------------------------------------------------------
// 3. The fold.
// ---------------------------------------------------------------------------------

/// One event of a generated job history, described by small numbers so that any
/// fuzzer or strategy can make it.
#[derive(Debug, Clone, Default)]
pub struct EventSpec {
    /// Which type (index into [`FOLD_TYPES`]).
    pub kind: u8,
    /// Which emitter (`//reel/{stage}` or another source).
    pub source: u8,
    /// Seconds after the epoch of the history (a small range, so times tie).
    pub time: u16,
    /// The job's retry attempt (0-3).
    pub attempt: u8,
    /// A stage, an error type, a progress value: whatever the type needs.
    pub number: u16,
    /// Whether the event carries `subject` (the job id otherwise comes from the data).
    pub subject: bool,
    /// Which of two jobs.
    pub job: bool,
    /// Replace one node of the payload with this JSON (malformed payloads).
    pub junk: Option<(u16, String)>,
}

/// The types a history is made of (the fold's whole vocabulary, and one it ignores).
pub const FOLD_TYPES: [&str; 11] = [
    types::STITCH_REQUESTED,
    types::JOB_VALIDATED,
    types::CLIPS_DOWNLOADED,
    types::REEL_STITCHED,
    types::REEL_UPLOADED,
    types::JOB_PROGRESS,
    types::JOB_COMPLETED,
    types::JOB_FAILED,
    types::JOB_CANCELLED,
    types::CANCEL_REQUESTED,
    "phoenix.reel.v1.job.from_the_future",
];

/// Build the event `spec` describes; `n` makes its id unique.
pub fn build_event(spec: &EventSpec, n: usize) -> Event {
    let ty = FOLD_TYPES[spec.kind as usize % FOLD_TYPES.len()];
    let job = if spec.job { "job_2" } else { "job_1" };
    let attempt = u32::from(spec.attempt % 4);
    let stage = Stage::ALL[spec.number as usize % 5];
    let mut data = match ty {
        types::STITCH_REQUESTED => {
            serde_json::to_value(StitchRequested { retry_attempt: Some(attempt), ..sample_request() })
        }
        types::JOB_VALIDATED => serde_json::to_value(JobValidated { job: sample_spec(attempt) }),
        types::CLIPS_DOWNLOADED | types::REEL_STITCHED | types::REEL_UPLOADED => {
            let mut v = payload_samples().into_iter().find(|(t, _)| *t == ty).map(|(_, v)| v).expect("sample");
            v["job"] = serde_json::to_value(sample_spec(attempt)).expect("spec");
            v["warnings"] = serde_json::json!([format!("w{}", spec.number % 3)]);
            Ok(v)
        }
        types::JOB_PROGRESS => serde_json::to_value(sample_progress(stage, f64::from(spec.number % 101), attempt)),
        types::JOB_COMPLETED => {
            let mut c = sample_completed(attempt);
            c.output_path = format!("gs://b/out-{}.mp4", spec.number % 2);
            c.duration_seconds = f64::from(spec.number % 7);
            serde_json::to_value(c)
        }
        types::JOB_FAILED => {
            let error = ErrorType::ALL[spec.number as usize % ErrorType::ALL.len()];
            serde_json::to_value(sample_failed(stage, error, attempt))
        }
        types::JOB_CANCELLED => serde_json::to_value(JobCancelled {
            job_id: "job_1".into(),
            project_id: "proj".into(),
            user_id: "user".into(),
            stage,
            retry_attempt: Some(attempt),
            cost: None,
        }),
        types::CANCEL_REQUESTED => serde_json::to_value(CancelRequested {
            job_id: "job_1".into(),
            project_id: "proj".into(),
            user_id: "user".into(),
        }),
        _ => Ok(serde_json::json!({"jobId": "job_1", "something": spec.number})),
    }
    .expect("payload serializes");
    set_job(&mut data, job);
    if let Some((pick, junk)) = &spec.junk {
        let with = serde_json::from_str(junk).unwrap_or_else(|_| serde_json::Value::String(junk.clone()));
        mutate(&mut data, usize::from(*pick), with);
    }
    let sources = [
        "//reel/validate",
        "//reel/download",
        "//reel/stitch",
        "//reel/upload",
        "//reel/finalize",
        "//reel/api",
        "//reel/cli",
    ];
    let source = sources[spec.source as usize % sources.len()];
    let time = Utc.timestamp_opt(1_700_000_000 + i64::from(spec.time % 64), 0).single().expect("time");
    let id = format!("{}-{n}", ty.rsplit('.').next().unwrap_or("e"));
    let subject = if spec.subject { job } else { "" };
    envelope::build(ty, source, id, subject, time, &data).expect("event builds")
}

fn set_job(data: &mut serde_json::Value, job: &str) {
    if let Some(inner) = data.get_mut("job").and_then(|j| j.as_object_mut()) {
        inner.insert("jobId".into(), job.into());
    }
    if let Some(map) = data.as_object_mut() {
        if map.contains_key("jobId") {
            map.insert("jobId".into(), job.into());
        }
    }
}

/// Whether the event's data is the payload its type promises (what the pipeline emits).
pub fn well_typed(event: &Event) -> bool {
    fn is<T: DeserializeOwned>(event: &Event) -> bool {
        envelope::decode::<T>(event).is_ok()
    }
    match event.ty() {
        types::STITCH_REQUESTED => is::<StitchRequested>(event),
        types::JOB_VALIDATED => is::<JobValidated>(event),
        types::CLIPS_DOWNLOADED => is::<ClipsDownloaded>(event),
        types::REEL_STITCHED => is::<ReelStitched>(event),
        types::REEL_UPLOADED => is::<ReelUploaded>(event),
        types::JOB_PROGRESS => is::<JobProgress>(event),
        types::JOB_COMPLETED => is::<JobCompleted>(event),
        types::JOB_FAILED => is::<JobFailed>(event),
        types::JOB_CANCELLED => is::<JobCancelled>(event),
        types::CANCEL_REQUESTED => is::<CancelRequested>(event),
        _ => envelope::data_json(event).is_ok(),
    }
}

/// Fold `order` (indices into `pool`, repeats are duplicate deliveries) forwards,
/// backwards, sorted, and twice over. It never panics; and when every event is well
/// typed (as the pipeline emits them), each way gives the same `JobStatus` for every
/// job. Events of the pool that share a CloudEvent id but differ are given distinct ids
/// first: the fold dedupes on `(source, id)` and relies on ids naming one event.
pub fn check_fold(pool: Vec<Event>, order: &[usize]) {
    if pool.is_empty() {
        return;
    }
    let pool = distinct_ids(pool);
    let events: Vec<&Event> = order.iter().map(|i| &pool[i % pool.len()]).collect();
    let forwards = statuses(events.iter().copied());
    for status in forwards.values() {
        assert!((0.0..=100.0).contains(&status.progress), "progress {}", status.progress);
        serde_json::to_string(status).expect("JobStatus serializes");
    }
    if !events.iter().all(|e| well_typed(e)) {
        // Malformed events on the log: the fold must survive them, nothing more.
        let _ = statuses(events.iter().rev().copied());
        return;
    }
    let backwards = statuses(events.iter().rev().copied());
    assert_eq!(forwards, backwards, "folding the reversed events changed the state");
    let mut sorted = events.clone();
    sorted.sort_by(|a, b| (a.id(), a.source().to_string()).cmp(&(b.id(), b.source().to_string())));
    assert_eq!(forwards, statuses(sorted.into_iter()), "folding the events sorted by id changed the state");
    assert_eq!(
        forwards,
        statuses(events.iter().chain(events.iter()).copied()),
        "folding every event twice changed the state"
    );
    for (job, status) in &forwards {
        assert_eq!(&status.job_id, job);
    }
}

fn statuses<'a>(events: impl Iterator<Item = &'a Event>) -> BTreeMap<String, JobStatus> {
    fold_all(events).into_iter().map(|(job, state)| (job, state.to_status())).collect()
}

fn distinct_ids(pool: Vec<Event>) -> Vec<Event> {
    let mut first: BTreeMap<String, Event> = BTreeMap::new();
    let mut used: BTreeSet<String> = pool.iter().map(|e| e.id().to_string()).collect();
    pool.into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            let id = event.id().to_string();
            match first.get(&id) {
                None => {
                    first.insert(id, event.clone());
                }
                Some(seen) if *seen == event => {}
                Some(_) => {
                    let mut fresh = format!("{id}~{i}");
                    while used.contains(&fresh) {
                        fresh.push('~');
                    }
                    used.insert(fresh.clone());
                    reel_events::AttributesWriter::set_id(&mut event, fresh);
                }
            }
            event
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Samples.
// ---------------------------------------------------------------------------------

/// A valid request.
pub fn sample_request() -> StitchRequested {
    StitchRequested {
        job_id: Some("job_1".into()),
        project_id: "proj".into(),
        user_id: "user".into(),
        clip_paths: vec!["gs://b/a.mp4".into(), "gs://b/b.mp4".into()],
        output_path: "gs://b/out.mp4".into(),
        orientation: reel_events::Orientation::Portrait,
        compression: reel_events::Compression::Optimized,
        retry_attempt: None,
        force_restart: None,
    }
}

/// A valid job spec of `attempt`.
pub fn sample_spec(attempt: u32) -> JobSpec {
    JobSpec {
        job_id: "job_1".into(),
        project_id: "proj".into(),
        user_id: "user".into(),
        clip_paths: vec!["gs://b/a.mp4".into(), "gs://b/b.mp4".into()],
        output_path: "gs://b/out.mp4".into(),
        orientation: reel_events::Orientation::Portrait,
        compression: reel_events::Compression::Optimized,
        retry_attempt: attempt,
        force_restart: false,
        accepted_at: at(1_000),
        deadline: at(2_000),
        timeout_resumes: 0,
    }
}

fn sample_progress(stage: Stage, progress: f64, attempt: u32) -> JobProgress {
    JobProgress {
        job_id: "job_1".into(),
        project_id: "proj".into(),
        stage,
        progress,
        stage_progress: progress,
        estimated_completion: Some(at(5_000 + progress as i64)),
        retry_attempt: Some(attempt),
    }
}

fn sample_completed(attempt: u32) -> JobCompleted {
    JobCompleted {
        job_id: "job_1".into(),
        project_id: "proj".into(),
        user_id: "user".into(),
        output_path: "gs://b/out.mp4".into(),
        size_bytes: 10,
        duration_seconds: 2.0,
        crc32c: "AAAAAA==".into(),
        skipped_clips: vec![],
        warnings: vec![],
        mode: Some(reel_events::Mode::Copy),
        clip_paths: None,
        job_type: reel_events::JobType::VideoStitching,
        retry_attempt: Some(attempt),
        cost: None,
    }
}

fn sample_failed(stage: Stage, error_type: ErrorType, attempt: u32) -> JobFailed {
    JobFailed {
        job_id: "job_1".into(),
        project_id: "proj".into(),
        user_id: "user".into(),
        stage,
        error_type,
        message: format!("{} at {stage}", error_type.as_str()),
        retryable: false,
        attempts: 1,
        retry_attempt: Some(attempt),
        cost: None,
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).single().expect("time")
}
