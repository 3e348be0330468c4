//! The OpenAPI document and the router describe the same API, and its `JobStatus` is
//! the one in `schemas/JobStatus.json` (generated from `reel_events::fold::JobStatus`).

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;

fn document() -> Value {
    serde_json::from_str(reel_api::OPENAPI_JSON).expect("openapi.json is JSON")
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented = documented_routes(&doc);
    let routed: BTreeSet<(String, String)> =
        reel_api::route_table().into_iter().map(|(m, p)| (m.as_str().to_string(), p.to_string())).collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
    assert!(unrouted.is_empty(), "openapi.json documents routes the router lacks: {unrouted:?}");

    // And the router really answers them (not its 404 fallback, not 405).
    let api = spawn(local_config()).await;
    for (method, path) in &documented {
        let uri = path.replace("{jobId}", "job_x").replace("{projectId}", "proj_x");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = (method == Method::POST).then(stitch_body);
        let (status, _, answer) = api.call(method.clone(), &uri, Some(ALICE), body).await;
        let fallback =
            status == StatusCode::NOT_FOUND && answer["error"].as_str().is_some_and(|e| e.contains("no such route"));
        assert!(!fallback && status != StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}: {status} {answer}");
    }
    let (status, _, answer) = api.call(Method::GET, "/api/nothing", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"].as_str().unwrap().contains("no such route"));
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let api = spawn(local_config()).await;
    let (status, headers, body) = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, document());
}

#[test]
fn job_status_schema_matches_the_generated_one() {
    let doc = document();
    let ours = &doc["components"]["schemas"]["JobStatus"];
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/JobStatus.json");
    let generated: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schemas/JobStatus.json")).unwrap();
    let keys = |v: &Value| v["properties"].as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(ours), keys(&generated), "JobStatus properties differ from schemas/JobStatus.json");
    let required = |v: &Value| {
        v["required"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect::<BTreeSet<_>>()
    };
    assert_eq!(required(ours), required(&generated), "JobStatus required fields differ");
    // The enums agree too.
    let consts = |v: &Value, def: &str| -> BTreeSet<String> {
        v["$defs"][def]["oneOf"].as_array().unwrap().iter().map(|x| x["const"].as_str().unwrap().to_string()).collect()
    };
    let enum_of = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    for def in ["Status", "Stage", "ErrorType", "JobType"] {
        assert_eq!(enum_of(def), consts(&generated, def), "{def} values differ");
    }
    // Every contract field of CONTRACT §5 is there.
    for field in [
        "jobId",
        "projectId",
        "status",
        "stage",
        "progress",
        "startedAt",
        "estimatedCompletion",
        "completedAt",
        "outputPath",
        "error",
        "warnings",
        "retryCount",
        "type",
    ] {
        assert!(ours["properties"].get(field).is_some(), "{field}");
    }
    // And a real JobStatus serializes to exactly those properties.
    let status = reel_events::fold::JobState::new("job_1").to_status();
    let serialized = serde_json::to_value(status).unwrap();
    assert_eq!(serialized["type"], "video_stitching", "CONTRACT 1.1: JobStatus.type");
    let produced: BTreeSet<String> = serialized.as_object().unwrap().keys().cloned().collect();
    assert!(produced.is_subset(&keys(ours)), "{produced:?}");
}
