//! The Pub/Sub binding: lossless round trips in both content modes, and clear errors
//! for what is not a CloudEvent.

use chrono::{DateTime, TimeZone, Utc};
use cloudevents::{EventBuilder, EventBuilderV10};
use proptest::prelude::*;
use reel_events::binding::{self, BindingError};
use reel_events::message::PubsubMessage;
use reel_events::{AttributesReader, Event};
use std::collections::BTreeMap;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9 _./:é✓-]{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z][a-zA-Z0-9]{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
}

prop_compose! {
    fn event()(
        id in "[a-zA-Z0-9._-]{1,40}",
        source in "//reel/[a-z]{1,10}",
        ty in "phoenix\\.reel\\.v1\\.[a-z.]{1,20}",
        subject in proptest::option::of("job_[a-z0-9]{1,12}"),
        time in proptest::option::of(time()),
        data in proptest::option::of(json_value()),
        extensions in prop::collection::btree_map("[a-z][a-z0-9]{0,10}", "[ -~]{0,30}", 0..3),
    ) -> Event {
        let mut b = EventBuilderV10::new().id(id).source(source).ty(ty);
        if let Some(s) = subject { b = b.subject(s); }
        if let Some(t) = time { b = b.time(t); }
        if let Some(d) = data { b = b.data("application/json", d); }
        for (k, v) in extensions {
            // Names that collide with context attributes are not extensions.
            if !["specversion", "id", "source", "type", "subject", "time", "dataschema", "datacontenttype", "data"].contains(&k.as_str()) {
                b = b.extension(&k, v);
            }
        }
        b.build().unwrap()
    }
}

proptest! {
    #[test]
    fn binary_round_trip_is_lossless(e in event()) {
        let message = binding::encode_binary(&e);
        prop_assert_eq!(binding::decode(&message).unwrap(), e.clone());
        prop_assert_eq!(message.ordering_key, e.subject().unwrap_or_default().to_string());
    }

    #[test]
    fn structured_round_trip_is_lossless(e in event()) {
        let message = binding::encode_structured(&e);
        prop_assert_eq!(binding::decode(&message).unwrap(), e);
    }

    #[test]
    fn decoding_never_panics(data in prop::collection::vec(any::<u8>(), 0..200),
                             attrs in prop::collection::btree_map("(ce-)?[a-z-]{0,12}", "[ -~]{0,20}", 0..6)) {
        let _ = binding::decode(&PubsubMessage { data, attributes: attrs, ordering_key: String::new() });
    }
}

fn binary(attrs: &[(&str, &str)], data: &str) -> PubsubMessage {
    PubsubMessage {
        data: data.as_bytes().to_vec(),
        attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ordering_key: String::new(),
    }
}

#[test]
fn accepts_ce_datacontenttype_instead_of_content_type() {
    let m = binary(
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "//x"),
            ("ce-type", "t"),
            ("ce-datacontenttype", "application/json"),
        ],
        r#"{"a":1}"#,
    );
    let e = binding::decode(&m).unwrap();
    assert_eq!(e.datacontenttype(), Some("application/json"));
    assert_eq!(reel_events::envelope::data_json(&e).unwrap()["a"], 1);
}

#[test]
fn structured_mode_is_recognised_with_or_without_the_content_type() {
    let body = r#"{"specversion":"1.0","id":"x","source":"//py","type":"phoenix.reel.v1.stitch.requested","data":{"projectId":"p"}}"#;
    for attrs in [vec![("content-type", "application/cloudevents+json; charset=utf-8")], vec![]] {
        let e = binding::decode(&binary(&attrs, body)).unwrap();
        assert_eq!(e.ty(), "phoenix.reel.v1.stitch.requested");
        assert_eq!(reel_events::envelope::data_json(&e).unwrap()["projectId"], "p");
    }
}

#[test]
fn broken_messages_get_specific_errors() {
    let base = [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "//x"), ("ce-type", "t")];
    let without = |name: &str| base.iter().copied().filter(|(k, _)| *k != name).collect::<Vec<_>>();
    assert_eq!(binding::decode(&binary(&without("ce-id"), "{}")), Err(BindingError::Missing("ce-id")));
    assert_eq!(binding::decode(&binary(&without("ce-type"), "{}")), Err(BindingError::Missing("ce-type")));
    let mut v03 = without("ce-specversion");
    v03.push(("ce-specversion", "0.3"));
    assert!(matches!(binding::decode(&binary(&v03, "{}")), Err(BindingError::SpecVersion(_))));
    let mut bad_time = base.to_vec();
    bad_time.push(("ce-time", "yesterday"));
    assert!(matches!(binding::decode(&binary(&bad_time, "{}")), Err(BindingError::Time(_))));
    let mut json = base.to_vec();
    json.push(("content-type", "application/json"));
    assert!(matches!(binding::decode(&binary(&json, "{not json")), Err(BindingError::Json(_))));
    assert_eq!(binding::decode(&binary(&[], "hello")), Err(BindingError::NotACloudEvent));
    assert!(matches!(
        binding::decode(&binary(
            &[("content-type", "application/cloudevents+json")],
            r#"{"specversion":"2.0","id":"1","source":"s","type":"t"}"#
        )),
        Err(BindingError::SpecVersion(_))
    ));
}

#[test]
fn storage_notifications_become_eventarc_events() {
    let m = PubsubMessage {
        data: br#"{"bucket":"b","name":"manifests/p1/r.json","generation":"17","size":"42"}"#.to_vec(),
        attributes: [
            ("eventType", "OBJECT_FINALIZE"),
            ("bucketId", "b"),
            ("objectId", "manifests/p1/r.json"),
            ("objectGeneration", "17"),
            ("payloadFormat", "JSON_API_V1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ordering_key: String::new(),
    };
    let e = binding::decode_storage_notification(&m, "42").unwrap().unwrap();
    assert_eq!(e.ty(), binding::STORAGE_OBJECT_FINALIZED);
    assert_eq!(e.subject(), Some("objects/manifests/p1/r.json"));
    let data = reel_events::envelope::data_json(&e).unwrap();
    assert_eq!(data["generation"], "17");
    assert!(binding::decode_storage_notification(&binary(&[("ce-id", "1")], "{}"), "1").is_none());
}
