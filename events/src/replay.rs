//! What `reel dlq replay` does to a dead letter before sending it back: a replay is a new
//! attempt of the job, with a fresh deadline.
//!
//! The message's job gets `retryAttempt + 1` (so the fold shows the job `running`, then
//! `completed`, as a new attempt over the failed one, and the events it emits get new
//! ids) and, for work events, `deadline = now + JOB_TIMEOUT_MINUTES` (every stage carries
//! the job forward, so the stages after it see the fresh deadline too). The attribute
//! [`REPLAYED_AT`] records when. Only someone who may publish to a stage's input topic
//! can do this — the `operators` group, through `reel dlq replay` — and they could
//! publish any work message anyway; the stages trust what their topics carry.

use chrono::{DateTime, Utc};

use crate::binding;
use crate::envelope;
use crate::message::PubsubMessage;

/// Attribute set on a replayed message: when it was replayed (RFC 3339).
pub const REPLAYED_AT: &str = "reel-replayed-at";

/// Make `data` (a request or a work payload) a new attempt: `retryAttempt + 1`, and a
/// deadline of `now + job_timeout` where the payload carries one. Returns the attempt.
///
/// ```
/// # use reel_events::replay::renew;
/// let mut data = serde_json::json!({"job": {"jobId": "j", "retryAttempt": 1, "deadline": "2020-01-01T00:00:00Z"}});
/// let now = "2030-01-01T00:00:00Z".parse().unwrap();
/// assert_eq!(renew(&mut data, now, chrono::Duration::minutes(15)), 2);
/// assert_eq!(data["job"]["deadline"], "2030-01-01T00:15:00Z");
/// ```
pub fn renew(data: &mut serde_json::Value, now: DateTime<Utc>, job_timeout: chrono::Duration) -> u32 {
    let has_job = data.get("job").is_some_and(|j| j.is_object());
    let fields = if has_job { &mut data["job"] } else { data };
    let Some(fields) = fields.as_object_mut() else {
        return 0;
    };
    let attempt = fields.get("retryAttempt").and_then(|v| v.as_u64()).unwrap_or(0) as u32 + 1;
    fields.insert("retryAttempt".into(), attempt.into());
    if fields.contains_key("deadline") {
        let deadline = (now + job_timeout).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        fields.insert("deadline".into(), deadline.into());
    }
    attempt
}

/// [`renew`] for a job that passed its deadline and is resumed from its checkpoint (the
/// matrix's "job timeout → save progress, schedule retry"): a new attempt with a fresh
/// deadline, `timeoutResumes + 1`, and `warning` added to the payload's `warnings`, so
/// the job's status says why it took longer.
///
/// ```
/// # use reel_events::replay::resume;
/// let mut data = serde_json::json!({"job": {"jobId": "j", "deadline": "2020-01-01T00:00:00Z"}, "warnings": []});
/// let now = "2030-01-01T00:00:00Z".parse().unwrap();
/// resume(&mut data, now, chrono::Duration::minutes(15), "resumed");
/// assert_eq!((data["job"]["retryAttempt"].as_u64(), data["job"]["timeoutResumes"].as_u64()), (Some(1), Some(1)));
/// assert_eq!(data["warnings"], serde_json::json!(["resumed"]));
/// ```
pub fn resume(data: &mut serde_json::Value, now: DateTime<Utc>, job_timeout: chrono::Duration, warning: &str) {
    renew(data, now, job_timeout);
    let has_job = data.get("job").is_some_and(|j| j.is_object());
    let fields = if has_job { &mut data["job"] } else { &mut *data };
    if let Some(fields) = fields.as_object_mut() {
        let resumes = fields.get("timeoutResumes").and_then(|v| v.as_u64()).unwrap_or(0) + 1;
        fields.insert("timeoutResumes".into(), resumes.into());
    }
    warn(data, warning);
}

/// Add `warning` to the event's `warnings` (which the job's status shows).
fn warn(data: &mut serde_json::Value, warning: &str) {
    if let Some(map) = data.as_object_mut() {
        let warnings = map.entry("warnings").or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let Some(list) = warnings.as_array_mut() {
            list.push(warning.into());
        }
    }
}

/// The message to send back: a CloudEvent with JSON data is [`renew`]ed and re-encoded
/// in binary mode, keeping every attribute that is not a CloudEvent one; anything else
/// (a storage notification, an unreadable message) goes back as it was. Both get
/// [`REPLAYED_AT`].
pub fn renew_message(message: &PubsubMessage, now: DateTime<Utc>, job_timeout: chrono::Duration) -> PubsubMessage {
    rewrite_message(message, now, |data| {
        renew(data, now, job_timeout);
    })
}

/// [`renew_message`] with a warning: the message of a job sent to a larger tier after it
/// ran out of memory or disk (a new attempt with a fresh deadline, like a replay).
pub fn escalate_message(
    message: &PubsubMessage,
    now: DateTime<Utc>,
    job_timeout: chrono::Duration,
    warning: &str,
) -> PubsubMessage {
    rewrite_message(message, now, |data| {
        renew(data, now, job_timeout);
        warn(data, warning);
    })
}

/// [`renew_message`] with [`resume`]: the message of a job resumed after its deadline.
pub fn resume_message(
    message: &PubsubMessage,
    now: DateTime<Utc>,
    job_timeout: chrono::Duration,
    warning: &str,
) -> PubsubMessage {
    rewrite_message(message, now, |data| resume(data, now, job_timeout, warning))
}

fn rewrite_message(
    message: &PubsubMessage,
    now: DateTime<Utc>,
    rewrite: impl FnOnce(&mut serde_json::Value),
) -> PubsubMessage {
    let renewed = binding::decode(message).ok().and_then(|mut event| {
        let mut data = envelope::data_json(&event).ok()?;
        rewrite(&mut data);
        event.set_data("application/json", data);
        let mut copy = binding::encode_binary(&event);
        for (key, value) in &message.attributes {
            if !key.starts_with("ce-") && key != "content-type" {
                copy.attributes.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        copy.ordering_key = message.ordering_key.clone();
        Some(copy)
    });
    let mut copy = renewed.unwrap_or_else(|| message.clone());
    copy.attributes.insert(REPLAYED_AT.into(), now.to_rfc3339());
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{types, AttributesReader};

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_structured_request_becomes_the_next_attempt_in_binary_mode_keeping_its_attributes() {
        let request = serde_json::json!({"jobId": "j", "projectId": "p", "userId": "u", "retryAttempt": 2});
        let event =
            envelope::build(types::STITCH_REQUESTED, "//x", "id-1", "j", at("2030-01-01T00:00:00Z"), &request).unwrap();
        let mut message = binding::encode_structured(&event);
        message.attributes.insert("origin".into(), "phoenix".into());
        let renewed = renew_message(&message, at("2030-02-01T00:00:00Z"), chrono::Duration::minutes(15));
        let back = binding::decode(&renewed).unwrap();
        assert_eq!((back.id(), back.ty()), ("id-1", types::STITCH_REQUESTED));
        let data = envelope::data_json(&back).unwrap();
        assert_eq!(data["retryAttempt"], 3);
        assert!(data.get("deadline").is_none(), "a request gets its deadline from validate");
        assert_eq!(renewed.attributes["origin"], "phoenix");
        assert_eq!(renewed.attributes[REPLAYED_AT], "2030-02-01T00:00:00+00:00");
        assert_eq!(renewed.ordering_key, message.ordering_key);
    }

    #[test]
    fn a_message_that_is_no_cloud_event_goes_back_as_it_was() {
        let mut message = PubsubMessage { data: b"{\"name\":\"manifests/p/m.json\"}".to_vec(), ..Default::default() };
        message.attributes.insert("eventType".into(), "OBJECT_FINALIZE".into());
        let renewed = renew_message(&message, at("2030-02-01T00:00:00Z"), chrono::Duration::minutes(15));
        assert_eq!(renewed.data, message.data);
        assert_eq!(renewed.attributes["eventType"], "OBJECT_FINALIZE");
        assert!(renewed.attributes.contains_key(REPLAYED_AT));
    }
}
