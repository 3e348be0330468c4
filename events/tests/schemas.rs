//! `schemas/` is generated from the Rust types and must not go stale; example events
//! validate against it.

use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[test]
fn checked_in_schemas_are_current() {
    let update = std::env::var_os("REEL_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (file, _ty, schema) in reel_events::schema::all() {
        let path = schema_dir().join(file);
        let fresh = reel_events::schema::render(&schema);
        if update {
            std::fs::create_dir_all(schema_dir()).unwrap();
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(current) if current == fresh => {}
            _ => stale.push(file),
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas {stale:?}; regenerate with REEL_UPDATE_SCHEMAS=1 cargo test -p reel-events --test schemas"
    );
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_dir().join(file)).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn example_events_validate() {
    let request = serde_json::json!({
        "jobId": "job_abc123",
        "projectId": "proj_xyz789",
        "userId": "user_456",
        "clipPaths": ["gs://bucket/clip1.mp4", "gs://bucket/clip2.mp4"],
        "outputPath": "gs://bucket/stitched/reel_final.mp4",
        "orientation": "portrait",
        "compression": "optimized",
        "retryAttempt": 0,
        "forceRestart": false
    });
    let v = validator("stitch.requested.json");
    assert!(v.is_valid(&request), "{:?}", v.iter_errors(&request).map(|e| e.to_string()).collect::<Vec<_>>());
    let mut bad = request.clone();
    bad["orientation"] = "diagonal".into();
    assert!(!v.is_valid(&bad));
    let mut missing = request.clone();
    missing.as_object_mut().unwrap().remove("outputPath");
    assert!(!v.is_valid(&missing));

    let completed = serde_json::json!({
        "jobId": "job_abc123", "projectId": "proj_xyz789", "userId": "user_456",
        "outputPath": "gs://bucket/stitched/reel_final.mp4", "sizeBytes": 123456, "durationSeconds": 30.5,
        "crc32c": "yZRlqg==", "skippedClips": [{"path": "gs://bucket/bad.mp4", "reason": "not a readable video"}],
        "warnings": [], "mode": "copy"
    });
    let v = validator("job.completed.json");
    assert!(v.is_valid(&completed), "{:?}", v.iter_errors(&completed).map(|e| e.to_string()).collect::<Vec<_>>());

    let failed = serde_json::json!({
        "jobId": "job_abc123", "projectId": "p", "userId": "u", "stage": "download",
        "errorType": "insufficient_clips", "message": "1 usable clip", "retryable": false, "attempts": 1
    });
    assert!(validator("job.failed.json").is_valid(&failed));
    let mut wrong = failed.clone();
    wrong["errorType"] = "oops".into();
    assert!(!validator("job.failed.json").is_valid(&wrong));

    let progress = serde_json::json!({"jobId": "j", "projectId": "p", "stage": "stitch", "progress": 42.5, "stageProgress": 60.0, "estimatedCompletion": "2026-01-01T00:00:00Z"});
    assert!(validator("job.progress.json").is_valid(&progress));
    let cancelled = serde_json::json!({"jobId": "j", "projectId": "p", "userId": "u", "stage": "stitch"});
    assert!(validator("job.cancelled.json").is_valid(&cancelled));
}

#[test]
fn the_rust_types_produce_valid_examples() {
    use reel_events::payload::*;
    let failed = JobFailed {
        job_id: "j".into(),
        project_id: "p".into(),
        user_id: "u".into(),
        stage: reel_events::Stage::Validate,
        error_type: reel_events::ErrorType::InvalidRequest,
        message: "m".into(),
        retryable: false,
        attempts: 1,
        retry_attempt: None,
        cost: None,
    };
    assert!(validator("job.failed.json").is_valid(&serde_json::to_value(&failed).unwrap()));
}
