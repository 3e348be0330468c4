//! The Google Cloud Pub/Sub protocol binding for CloudEvents, both content modes.
//!
//! - **Binary** (what reel emits): context attributes as `ce-{name}` message attributes,
//!   the data's media type in the `content-type` attribute (`ce-datacontenttype` is
//!   accepted too), the data as the message body. Extensions are `ce-{name}` attributes
//!   too, carried as strings.
//! - **Structured**: `content-type: application/cloudevents+json` and the whole event
//!   as JSON in the body. A body that is a JSON object with `specversion` is read as
//!   structured even without the attribute, since some clients forget it.
//!
//! The ordering key is the event's `subject` (the job id).

use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::{AttributesReader, Data, ExtensionValue};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use std::collections::BTreeMap;

use crate::message::PubsubMessage;

/// Attribute holding the data's media type.
pub const CONTENT_TYPE: &str = "content-type";
/// The structured-mode media type.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
const PREFIX: &str = "ce-";
const CONTEXT_ATTRIBUTES: [&str; 8] =
    ["specversion", "id", "source", "type", "subject", "time", "dataschema", "datacontenttype"];

/// Why a message is not a CloudEvent we can read. Every variant is permanent: the
/// message is dead-lettered with this text as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// A required context attribute is missing or empty.
    #[error("missing CloudEvent attribute {0}")]
    Missing(&'static str),
    /// `specversion` is not 1.0.
    #[error("unsupported CloudEvents specversion {0:?} (only 1.0)")]
    SpecVersion(String),
    /// `time` is not RFC 3339.
    #[error("invalid CloudEvent time {0:?}")]
    Time(String),
    /// `dataschema` is not a URI.
    #[error("invalid CloudEvent dataschema {0:?}")]
    DataSchema(String),
    /// The body claims JSON but is not.
    #[error("data is not valid JSON: {0}")]
    Json(String),
    /// A structured-mode body that is not a valid CloudEvent.
    #[error("structured CloudEvent is invalid: {0}")]
    Structured(String),
    /// The message has neither `ce-` attributes nor a structured body.
    #[error("not a CloudEvent: no ce- attributes and no structured body")]
    NotACloudEvent,
}

/// Encode in binary content mode (what the pipeline emits).
pub fn encode_binary(event: &Event) -> PubsubMessage {
    let mut attributes = BTreeMap::new();
    attributes.insert("ce-specversion".into(), "1.0".into());
    attributes.insert("ce-id".into(), event.id().to_string());
    attributes.insert("ce-source".into(), event.source().to_string());
    attributes.insert("ce-type".into(), event.ty().to_string());
    if let Some(subject) = event.subject() {
        attributes.insert("ce-subject".into(), subject.to_string());
    }
    if let Some(time) = event.time() {
        attributes.insert("ce-time".into(), format_time(time));
    }
    if let Some(schema) = event.dataschema() {
        attributes.insert("ce-dataschema".into(), schema.to_string());
    }
    for (name, value) in event.iter_extensions() {
        attributes.insert(format!("{PREFIX}{name}"), extension_text(value));
    }
    let data = match event.data() {
        None => Vec::new(),
        Some(Data::Json(value)) => serde_json::to_vec(value).expect("JSON value serializes"),
        Some(Data::String(text)) => text.as_bytes().to_vec(),
        Some(Data::Binary(bytes)) => bytes.clone(),
    };
    if event.data().is_some() {
        let content_type = event.datacontenttype().unwrap_or(match event.data() {
            Some(Data::Json(_)) => "application/json",
            Some(Data::String(_)) => "text/plain",
            _ => "application/octet-stream",
        });
        attributes.insert(CONTENT_TYPE.into(), content_type.to_string());
    }
    PubsubMessage { data, attributes, ordering_key: event.subject().unwrap_or_default().to_string() }
}

/// Encode in structured content mode (the whole event as JSON in the body).
pub fn encode_structured(event: &Event) -> PubsubMessage {
    let mut attributes = BTreeMap::new();
    attributes.insert(CONTENT_TYPE.into(), STRUCTURED_CONTENT_TYPE.into());
    PubsubMessage {
        data: serde_json::to_vec(event).expect("CloudEvent serializes"),
        attributes,
        ordering_key: event.subject().unwrap_or_default().to_string(),
    }
}

/// Decode a message in either content mode.
pub fn decode(message: &PubsubMessage) -> Result<Event, BindingError> {
    let attrs = &message.attributes;
    let content_type = attrs.get(CONTENT_TYPE).or_else(|| attrs.get("ce-datacontenttype"));
    let is_structured_type = content_type.map(|ct| media_type(ct) == STRUCTURED_CONTENT_TYPE).unwrap_or(false);
    if is_structured_type || (!attrs.contains_key("ce-specversion") && looks_structured(&message.data)) {
        return decode_structured(&message.data);
    }
    if !attrs.keys().any(|k| k.starts_with(PREFIX)) {
        return Err(BindingError::NotACloudEvent);
    }
    decode_binary(message, content_type.map(String::as_str))
}

fn decode_binary(message: &PubsubMessage, content_type: Option<&str>) -> Result<Event, BindingError> {
    let attrs = &message.attributes;
    let required = |name: &'static str| -> Result<&String, BindingError> {
        attrs.get(name).filter(|v| !v.is_empty()).ok_or(BindingError::Missing(name))
    };
    let spec = required("ce-specversion")?;
    if spec != "1.0" {
        return Err(BindingError::SpecVersion(spec.clone()));
    }
    let mut builder = EventBuilderV10::new()
        .id(required("ce-id")?.clone())
        .source(required("ce-source")?.clone())
        .ty(required("ce-type")?.clone());
    if let Some(subject) = attrs.get("ce-subject") {
        builder = builder.subject(subject.clone());
    }
    if let Some(time) = attrs.get("ce-time") {
        let parsed = DateTime::parse_from_rfc3339(time).map_err(|_| BindingError::Time(time.clone()))?;
        builder = builder.time(parsed.with_timezone(&Utc));
    }
    for (key, value) in attrs {
        if let Some(name) = key.strip_prefix(PREFIX) {
            if !CONTEXT_ATTRIBUTES.contains(&name) && !name.is_empty() {
                builder = builder.extension(name, value.clone());
            }
        }
    }
    if !message.data.is_empty() || content_type.is_some() {
        let ct = content_type.map(String::from).unwrap_or_else(|| "application/json".into());
        let data = if is_json(&ct) {
            let value: serde_json::Value =
                serde_json::from_slice(&message.data).map_err(|e| BindingError::Json(e.to_string()))?;
            Data::Json(value)
        } else if media_type(&ct).starts_with("text/") {
            match String::from_utf8(message.data.clone()) {
                Ok(text) => Data::String(text),
                Err(e) => Data::Binary(e.into_bytes()),
            }
        } else {
            Data::Binary(message.data.clone())
        };
        match attrs.get("ce-dataschema") {
            Some(schema) => {
                let url = url::Url::parse(schema).map_err(|_| BindingError::DataSchema(schema.clone()))?;
                builder = builder.data_with_schema(ct, url, data);
            }
            None => builder = builder.data(ct, data),
        }
    } else if let Some(schema) = attrs.get("ce-dataschema") {
        return Err(BindingError::DataSchema(format!("{schema} (dataschema without data)")));
    }
    builder.build().map_err(|e| BindingError::Structured(e.to_string()))
}

fn decode_structured(body: &[u8]) -> Result<Event, BindingError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| BindingError::Json(e.to_string()))?;
    match value.get("specversion").and_then(|v| v.as_str()) {
        Some("1.0") => {}
        Some(other) => return Err(BindingError::SpecVersion(other.to_string())),
        None => return Err(BindingError::Missing("specversion")),
    }
    for name in ["id", "source", "type"] {
        let present = value.get(name).and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty());
        if !present {
            return Err(BindingError::Missing(match name {
                "id" => "id",
                "source" => "source",
                _ => "type",
            }));
        }
    }
    serde_json::from_value(value).map_err(|e| BindingError::Structured(e.to_string()))
}

fn looks_structured(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get("specversion").cloned()).is_some()
}

fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    let mt = media_type(content_type);
    mt == "application/json" || mt == "text/json" || mt.ends_with("+json")
}

fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn extension_text(value: &ExtensionValue) -> String {
    match value {
        ExtensionValue::String(s) => s.clone(),
        ExtensionValue::Boolean(b) => b.to_string(),
        ExtensionValue::Integer(i) => i.to_string(),
    }
}

/// The CloudEvent type of a Cloud Storage object-finalized notification (as Eventarc
/// names it). Pub/Sub notifications (JSON_API_V1) are converted to it.
pub const STORAGE_OBJECT_FINALIZED: &str = "google.cloud.storage.object.v1.finalized";

/// If `message` is a Cloud Storage Pub/Sub notification (attributes `eventType`,
/// `bucketId`, `objectId`, `payloadFormat`), convert it into the equivalent Eventarc
/// CloudEvent: type [`STORAGE_OBJECT_FINALIZED`] (or `…object.v1.{kind}` for other
/// event types), source `//storage.googleapis.com/projects/_/buckets/{bucket}`, subject
/// `objects/{name}`, data = the object resource JSON. `None` when it is not one.
pub fn decode_storage_notification(message: &PubsubMessage, message_id: &str) -> Option<Result<Event, BindingError>> {
    let attrs = &message.attributes;
    let event_type = attrs.get("eventType")?;
    let bucket = attrs.get("bucketId")?;
    let object = attrs.get("objectId")?;
    let kind = match event_type.as_str() {
        "OBJECT_FINALIZE" => "finalized",
        "OBJECT_DELETE" => "deleted",
        "OBJECT_ARCHIVE" => "archived",
        "OBJECT_METADATA_UPDATE" => "metadataUpdated",
        _ => "unknown",
    };
    let generation = attrs.get("objectGeneration").cloned().unwrap_or_default();
    let mut data: serde_json::Value = if attrs.get("payloadFormat").map(String::as_str) == Some("JSON_API_V1") {
        match serde_json::from_slice(&message.data) {
            Ok(v) => v,
            Err(e) => return Some(Err(BindingError::Json(e.to_string()))),
        }
    } else {
        serde_json::json!({})
    };
    if let Some(map) = data.as_object_mut() {
        map.entry("bucket").or_insert_with(|| bucket.clone().into());
        map.entry("name").or_insert_with(|| object.clone().into());
        map.entry("generation").or_insert_with(|| generation.clone().into());
    }
    let id = if message_id.is_empty() { format!("{bucket}/{object}#{generation}") } else { message_id.to_string() };
    let event = EventBuilderV10::new()
        .id(id)
        .source(format!("//storage.googleapis.com/projects/_/buckets/{bucket}"))
        .ty(format!("google.cloud.storage.object.v1.{kind}"))
        .subject(format!("objects/{object}"))
        .data("application/json", data)
        .build()
        .map_err(|e| BindingError::Structured(e.to_string()));
    Some(event)
}

/// Wrap a bare JSON `stitch.requested` payload (a message with no CloudEvent
/// attributes, as the simplest Pub/Sub client would publish) into a CloudEvent. Its id
/// is derived from the Pub/Sub message id, so a redelivery is the same event.
pub fn wrap_bare_request(message: &PubsubMessage, message_id: &str) -> Result<Event, BindingError> {
    let value: serde_json::Value =
        serde_json::from_slice(&message.data).map_err(|e| BindingError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(BindingError::NotACloudEvent);
    }
    let mut builder = EventBuilderV10::new()
        .id(format!("pubsub-{message_id}"))
        .source("//pubsub.googleapis.com/bare-request".to_string())
        .ty(crate::types::STITCH_REQUESTED.to_string())
        .time(Utc::now());
    if let Some(job_id) = value.get("jobId").and_then(|v| v.as_str()) {
        builder = builder.subject(job_id.to_string());
    }
    builder.data("application/json", value).build().map_err(|e| BindingError::Structured(e.to_string()))
}
