//! The transport-neutral message every bus carries: a Pub/Sub message's three parts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message as Pub/Sub (and reel's embedded bus) carries it: opaque bytes, string
/// attributes and an ordering key. CloudEvents are mapped onto it by [`crate::binding`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PubsubMessage {
    /// The message body.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// Message attributes (for binary-mode CloudEvents, the `ce-` context attributes).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Ordering key; reel uses the job id. Empty means unordered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ordering_key: String,
}

impl PubsubMessage {
    /// Approximate size on the wire, as Pub/Sub counts it for its 10 MB limit.
    pub fn wire_size(&self) -> usize {
        self.data.len()
            + self.ordering_key.len()
            + self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}
