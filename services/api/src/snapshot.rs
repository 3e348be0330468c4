//! The snapshot: every job's folded state as JSON, so the API survives a restart and
//! keeps jobs older than the log's 31-day retention.
//!
//! It holds [`JobState`] field for field (the fold's joins need all of it: stamps, the
//! per-stage times, the winning terminal event), except the set of event ids already
//! folded, which only speeds up duplicates: the fold is idempotent, so an event folded
//! again after a restart changes nothing. States are stored rather than events because
//! a running job reports progress about once a second: its events would be a hundred
//! times larger than its state.
//!
//! The conversion destructures `AttemptState` completely, so a field added to the fold
//! fails to compile here until the snapshot carries it too.

use chrono::{DateTime, Utc};
use reel_events::fold::{AttemptState, JobError, JobState, Status};
use reel_events::payload::SkippedClip;
use reel_events::Stage;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The `format` field of a snapshot.
pub const FORMAT: &str = "reel-api-snapshot";
/// The `version` this code writes and reads.
pub const VERSION: u32 = 1;

type Stamp = (DateTime<Utc>, String);

/// The snapshot document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// Every job.
    pub jobs: Vec<JobSnap>,
}

/// One job.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSnap {
    job_id: String,
    project_id: String,
    user_id: String,
    attempts: Vec<AttemptSnap>,
}

/// One attempt of a job: [`AttemptState`] field for field.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttemptSnap {
    attempt: u32,
    status: Option<Status>,
    stage: Option<(Stage, Stamp)>,
    progress: f64,
    started_at: Option<DateTime<Utc>>,
    requested_at: Option<DateTime<Utc>>,
    eta: Option<(Stamp, Option<DateTime<Utc>>)>,
    terminal: Option<(Status, Stamp)>,
    error: Option<(Stamp, JobError)>,
    output_path: Option<String>,
    completed: Option<(Stamp, serde_json::Value)>,
    warnings: BTreeSet<String>,
    skipped_clips: BTreeSet<SkippedClip>,
    stage_done: Vec<(Stage, DateTime<Utc>)>,
    stage_started: Vec<(Stage, DateTime<Utc>)>,
    cancel_requested: bool,
}

/// Why a snapshot cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not JSON of the expected shape.
    #[error("snapshot is not valid: {0}")]
    Invalid(String),
    /// Written by a newer (or unknown) version.
    #[error("snapshot has format {format:?} version {version}; this build reads {FORMAT:?} version {VERSION}")]
    Version {
        /// The format found.
        format: String,
        /// The version found.
        version: u32,
    },
}

impl AttemptSnap {
    fn from_state(attempt: u32, state: &AttemptState) -> AttemptSnap {
        let AttemptState {
            status,
            stage,
            progress,
            started_at,
            requested_at,
            eta,
            terminal,
            error,
            output_path,
            completed,
            warnings,
            skipped_clips,
            stage_done,
            stage_started,
            cancel_requested,
        } = state.clone();
        AttemptSnap {
            attempt,
            status,
            stage,
            progress,
            started_at,
            requested_at,
            eta,
            terminal,
            error,
            output_path,
            completed,
            warnings,
            skipped_clips,
            stage_done: stage_done.into_iter().collect(),
            stage_started: stage_started.into_iter().collect(),
            cancel_requested,
        }
    }

    fn into_state(self) -> (u32, AttemptState) {
        let state = AttemptState {
            status: self.status,
            stage: self.stage,
            progress: self.progress,
            started_at: self.started_at,
            requested_at: self.requested_at,
            eta: self.eta,
            terminal: self.terminal,
            error: self.error,
            output_path: self.output_path,
            completed: self.completed,
            warnings: self.warnings,
            skipped_clips: self.skipped_clips,
            stage_done: self.stage_done.into_iter().collect(),
            stage_started: self.stage_started.into_iter().collect(),
            cancel_requested: self.cancel_requested,
        };
        (self.attempt, state)
    }
}

/// Serialize every job.
pub fn encode(jobs: &BTreeMap<String, JobState>, taken_at: DateTime<Utc>) -> Vec<u8> {
    let snapshot = Snapshot {
        format: FORMAT.into(),
        version: VERSION,
        taken_at,
        jobs: jobs
            .values()
            .map(|job| JobSnap {
                job_id: job.job_id.clone(),
                project_id: job.project_id.clone(),
                user_id: job.user_id.clone(),
                attempts: job.attempts.iter().map(|(n, a)| AttemptSnap::from_state(*n, a)).collect(),
            })
            .collect(),
    };
    serde_json::to_vec(&snapshot).expect("a snapshot always serializes")
}

/// Read a snapshot back: its time and every job's state (without the seen-event set).
pub fn decode(bytes: &[u8]) -> Result<(DateTime<Utc>, Vec<JobState>), SnapshotError> {
    #[derive(Deserialize)]
    struct Head {
        format: String,
        version: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    if head.format != FORMAT || head.version != VERSION {
        return Err(SnapshotError::Version { format: head.format, version: head.version });
    }
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    let states = snapshot
        .jobs
        .into_iter()
        .map(|job| {
            let mut state = JobState::new(&job.job_id);
            state.project_id = job.project_id;
            state.user_id = job.user_id;
            state.attempts = job.attempts.into_iter().map(AttemptSnap::into_state).collect();
            state
        })
        .collect();
    Ok((snapshot.taken_at, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_documents_are_refused() {
        assert!(matches!(decode(b"not json"), Err(SnapshotError::Invalid(_))));
        let other = br#"{"format":"reel-api-snapshot","version":99,"takenAt":"2024-01-01T00:00:00Z","jobs":[]}"#;
        assert!(matches!(decode(other), Err(SnapshotError::Version { version: 99, .. })));
        let empty = encode(&BTreeMap::new(), Utc::now());
        assert!(decode(&empty).unwrap().1.is_empty());
    }
}
