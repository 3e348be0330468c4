//! Building and reading reel's CloudEvents (CloudEvents 1.0 via `cloudevents-sdk`).

use chrono::{DateTime, Utc};
use cloudevents::event::{AttributesReader, Data, ExtensionValue};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `traceparent` extension (W3C trace context) that makes one job one trace.
pub const TRACEPARENT: &str = "traceparent";
/// Extension counting how often an operator replayed the message from a dead-letter queue.
pub const REPLAY_COUNT: &str = "replaycount";

/// Why an event could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The event has no data.
    #[error("event {0} has no data")]
    NoData(String),
    /// The data is not the JSON the type requires.
    #[error("event data does not match {ty}: {source}")]
    BadData {
        /// The event type.
        ty: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The builder refused the attributes.
    #[error("invalid event: {0}")]
    Invalid(String),
}

/// The CloudEvent `source` of events a stage emits: `//reel/{stage}`.
pub fn source_for(component: &str) -> String {
    format!("//reel/{component}")
}

/// A deterministic event id: the same job, attempt and type always give the same id,
/// so a stage that redoes work after a redelivery re-emits *the same* event and the
/// fold (and downstream stages) see a duplicate, not a second event.
pub fn deterministic_id(job_id: &str, retry_attempt: u32, ty: &str, discriminator: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [job_id, &retry_attempt.to_string(), ty, discriminator] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let suffix = ty.strip_prefix(crate::types::TYPE_PREFIX).unwrap_or(ty);
    format!("{suffix}-{hex}")
}

/// Build a reel event: JSON data, `subject` = job id.
pub fn build<T: Serialize>(
    ty: &str,
    source: &str,
    id: impl Into<String>,
    job_id: &str,
    time: DateTime<Utc>,
    data: &T,
) -> Result<Event, EnvelopeError> {
    let value = serde_json::to_value(data).map_err(|e| EnvelopeError::Invalid(e.to_string()))?;
    let mut builder = EventBuilderV10::new()
        .id(id.into())
        .source(source.to_string())
        .ty(ty.to_string())
        .time(time)
        .data("application/json", value);
    if !job_id.is_empty() {
        builder = builder.subject(job_id.to_string());
    }
    builder.build().map_err(|e| EnvelopeError::Invalid(e.to_string()))
}

/// The event's data as JSON, whichever way it arrived (JSON, or bytes/text holding JSON).
pub fn data_json(event: &Event) -> Result<serde_json::Value, EnvelopeError> {
    let bad = |e| EnvelopeError::BadData { ty: event.ty().to_string(), source: e };
    match event.data() {
        None => Err(EnvelopeError::NoData(event.id().to_string())),
        Some(Data::Json(value)) => Ok(value.clone()),
        Some(Data::String(text)) => serde_json::from_str(text).map_err(bad),
        Some(Data::Binary(bytes)) => serde_json::from_slice(bytes).map_err(bad),
    }
}

/// Decode the event's data as `T`.
pub fn decode<T: DeserializeOwned>(event: &Event) -> Result<T, EnvelopeError> {
    let value = data_json(event)?;
    serde_json::from_value(value).map_err(|e| EnvelopeError::BadData { ty: event.ty().to_string(), source: e })
}

/// A string extension's value.
pub fn extension_str<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    match event.extension(name) {
        Some(ExtensionValue::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The job id of an event: its `subject`, or the `jobId` in its data.
pub fn job_id_of(event: &Event) -> Option<String> {
    if let Some(subject) = event.subject() {
        if !subject.is_empty() {
            return Some(subject.to_string());
        }
    }
    let data = data_json(event).ok()?;
    crate::payload::JobRef::from_data(&data, None).job_id.into_nonempty()
}

trait NonEmpty {
    fn into_nonempty(self) -> Option<String>;
}
impl NonEmpty for String {
    fn into_nonempty(self) -> Option<String> {
        if self.is_empty() {
            None
        } else {
            Some(self)
        }
    }
}

/// Copy the trace context of `from` onto `to` (so a job stays one trace).
pub fn carry_trace(from: &Event, to: &mut Event) {
    if let Some(tp) = extension_str(from, TRACEPARENT) {
        to.set_extension(TRACEPARENT, tp.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = deterministic_id("job_1", 0, crate::types::JOB_VALIDATED, "");
        assert_eq!(a, deterministic_id("job_1", 0, crate::types::JOB_VALIDATED, ""));
        assert!(a.starts_with("job.validated-"));
        assert_ne!(a, deterministic_id("job_1", 1, crate::types::JOB_VALIDATED, ""));
        assert_ne!(a, deterministic_id("job_2", 0, crate::types::JOB_VALIDATED, ""));
        assert_ne!(a, deterministic_id("job_1", 0, crate::types::CLIPS_DOWNLOADED, ""));
    }
}
