//! JSON Schemas of every payload, generated from the Rust types. `schemas/` holds the
//! checked-in copies; `tests/schemas.rs` fails when they are stale
//! (regenerate with `REEL_UPDATE_SCHEMAS=1 cargo test -p reel-events --test schemas`).

use schemars::{schema_for, Schema};

use crate::payload::*;
use crate::types;

/// `(file name, event type, schema)` for every payload.
pub fn all() -> Vec<(&'static str, &'static str, Schema)> {
    vec![
        ("stitch.requested.json", types::STITCH_REQUESTED, schema_for!(StitchRequested)),
        ("job.progress.json", types::JOB_PROGRESS, schema_for!(JobProgress)),
        ("job.completed.json", types::JOB_COMPLETED, schema_for!(JobCompleted)),
        ("job.failed.json", types::JOB_FAILED, schema_for!(JobFailed)),
        ("job.cancelled.json", types::JOB_CANCELLED, schema_for!(JobCancelled)),
        ("job.validated.json", types::JOB_VALIDATED, schema_for!(JobValidated)),
        ("job.downloaded.json", types::CLIPS_DOWNLOADED, schema_for!(ClipsDownloaded)),
        ("job.encode.json", types::CLIP_ENCODE, schema_for!(ClipEncode)),
        ("job.stitched.json", types::REEL_STITCHED, schema_for!(ReelStitched)),
        ("job.uploaded.json", types::REEL_UPLOADED, schema_for!(ReelUploaded)),
        ("job.cancel_requested.json", types::CANCEL_REQUESTED, schema_for!(CancelRequested)),
        ("generate.requested.json", types::GENERATE_REQUESTED, schema_for!(GenerateRequested)),
        ("generate.clip.json", types::GENERATE_CLIP, schema_for!(GenerateClip)),
        ("JobStatus.json", "", schema_for!(crate::fold::JobStatus)),
    ]
}

/// A schema rendered as the checked-in file's text.
pub fn render(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("schema serializes");
    text.push('\n');
    text
}
