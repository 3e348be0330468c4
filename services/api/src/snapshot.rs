//! What reel-api keeps in the work store, so it survives a restart and keeps jobs older
//! than the log's 31-day retention without holding them in memory:
//!
//! | object | key | holds | written |
//! | --- | --- | --- | --- |
//! | snapshot | `control/api-snapshot.json` | the jobs in memory that are not finished, in full, plus a reference (id, end) to each finished one still in memory | every snapshot interval, when anything changed |
//! | job record | `api/jobs/{jobId}.json` | one finished job, in full | once when the job finishes (again only if a late event changes it) |
//! | project index | `api/projects/{projectId}/{rev}-{jobId}` | nothing (the key is the entry; `rev` sorts newest first) | with the job record; the oldest beyond [`PROJECT_INDEX_MAX`] are deleted |
//!
//! So a snapshot's size follows the jobs running now, not every job ever, and a start
//! reads the snapshot, the records of the jobs that finished within the retention (see
//! [`crate::follower`]) and the journal: never one object per old job.
//!
//! A state is [`JobState`] field for field (the fold's joins need all of it: stamps, the
//! per-stage times, the winning terminal event), except the set of event ids already
//! folded, which the API does not keep (see [`crate::book::fold`]): the fold is
//! idempotent, so an event folded again after a restart changes nothing. States are
//! stored rather than events because a running job reports progress about once a
//! second: its events would be a hundred times larger than its state.
//!
//! The conversion destructures `AttemptState` completely, so a field added to the fold
//! fails to compile here until the snapshot carries it too.

use chrono::{DateTime, Utc};
use reel_events::fold::{AttemptState, JobError, JobState, Status};
use reel_events::payload::JobCost;
use reel_events::payload::SkippedClip;
use reel_events::Stage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The `format` field of a snapshot.
pub const FORMAT: &str = "reel-api-snapshot";
/// The `version` this code writes. It reads 1 too (every job in full, before job
/// records existed): such a snapshot is loaded whole once, and the next snapshot moves
/// its finished jobs to records.
pub const VERSION: u32 = 2;
/// The `format` field of a job record.
pub const JOB_FORMAT: &str = "reel-api-job";
/// The `version` of job records.
pub const JOB_VERSION: u32 = 1;
/// Where job records and project indexes live in the work store: outside `control/`,
/// whose objects an age-based lifecycle rule deletes (terraform `work_control_days`),
/// since a record is written once and must outlive that; inside the work area, which
/// no request path may name (`reel_runtime::stage::Boundary`).
pub const ARCHIVE_PREFIX: &str = "api/";
/// Most index entries kept per project (the newest); older jobs still answer by id.
pub const PROJECT_INDEX_MAX: usize = 1000;

/// The key of a finished job's record.
pub fn job_key(job_id: &str) -> String {
    format!("{ARCHIVE_PREFIX}jobs/{job_id}.json")
}

/// The prefix of a project's index entries.
pub fn project_prefix(project_id: &str) -> String {
    format!("{ARCHIVE_PREFIX}projects/{project_id}/")
}

/// The key of a job's entry in its project's index: `rev` is the submission time in
/// milliseconds subtracted from 10^13, zero-padded, so keys sort newest first.
pub fn project_entry_key(project_id: &str, submitted: Option<DateTime<Utc>>, job_id: &str) -> String {
    let millis = submitted.map(|t| t.timestamp_millis()).unwrap_or(0).clamp(0, 9_999_999_999_999);
    format!("{}{:013}-{job_id}", project_prefix(project_id), 9_999_999_999_999 - millis)
}

/// The job id of a project index key.
pub fn job_of_entry(key: &str) -> Option<&str> {
    key.rsplit('/').next()?.split_once('-').map(|(_, job)| job).filter(|j| !j.is_empty())
}

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
    /// The jobs not finished, and finished ones whose record is not written yet.
    pub jobs: Vec<JobSnap>,
    /// The finished jobs in memory whose record is written (version 2).
    #[serde(default)]
    pub finished: Vec<FinishedRef>,
}

/// A finished job whose state is in its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FinishedRef {
    /// The job.
    pub job_id: String,
    /// When it ended (its terminal event's time).
    pub ended_at: Option<DateTime<Utc>>,
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Decoded {
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// The states it holds in full.
    pub states: Vec<JobState>,
    /// The finished jobs it only names.
    pub finished: Vec<FinishedRef>,
}

/// A job record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobRecord {
    format: String,
    version: u32,
    job: JobSnap,
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
    #[serde(default)]
    cost: Option<JobCost>,
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
            cost,
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
            cost,
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
            cost: self.cost,
        };
        (self.attempt, state)
    }
}

impl JobSnap {
    fn from_state(job: &JobState) -> JobSnap {
        JobSnap {
            job_id: job.job_id.clone(),
            project_id: job.project_id.clone(),
            user_id: job.user_id.clone(),
            attempts: job.attempts.iter().map(|(n, a)| AttemptSnap::from_state(*n, a)).collect(),
        }
    }

    fn into_state(self) -> JobState {
        let mut state = JobState::new(&self.job_id);
        state.project_id = self.project_id;
        state.user_id = self.user_id;
        state.attempts = self.attempts.into_iter().map(AttemptSnap::into_state).collect();
        state
    }
}

/// Serialize a snapshot: `jobs` in full, `finished` by reference.
pub fn encode<'a>(
    jobs: impl IntoIterator<Item = &'a JobState>,
    finished: Vec<FinishedRef>,
    taken_at: DateTime<Utc>,
) -> Vec<u8> {
    let snapshot = Snapshot {
        format: FORMAT.into(),
        version: VERSION,
        taken_at,
        jobs: jobs.into_iter().map(JobSnap::from_state).collect(),
        finished,
    };
    serde_json::to_vec(&snapshot).expect("a snapshot always serializes")
}

/// The `format` and `version` of a document, checked against what this build reads.
fn check_head(bytes: &[u8], format: &str, versions: &[u32]) -> Result<(), SnapshotError> {
    #[derive(Deserialize)]
    struct Head {
        format: String,
        version: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    if head.format != format || !versions.contains(&head.version) {
        return Err(SnapshotError::Version { format: head.format, version: head.version });
    }
    Ok(())
}

/// Read a snapshot back (version 1 or 2), without the seen-event sets.
pub fn decode(bytes: &[u8]) -> Result<Decoded, SnapshotError> {
    check_head(bytes, FORMAT, &[1, VERSION])?;
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    Ok(Decoded {
        taken_at: snapshot.taken_at,
        states: snapshot.jobs.into_iter().map(JobSnap::into_state).collect(),
        finished: snapshot.finished,
    })
}

/// Serialize one job's record.
pub fn encode_job(job: &JobState) -> Vec<u8> {
    let record = JobRecord { format: JOB_FORMAT.into(), version: JOB_VERSION, job: JobSnap::from_state(job) };
    serde_json::to_vec(&record).expect("a job record always serializes")
}

/// Read a job record back.
pub fn decode_job(bytes: &[u8]) -> Result<JobState, SnapshotError> {
    check_head(bytes, JOB_FORMAT, &[JOB_VERSION])?;
    let record: JobRecord = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    Ok(record.job.into_state())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_documents_are_refused() {
        assert!(matches!(decode(b"not json"), Err(SnapshotError::Invalid(_))));
        let other = br#"{"format":"reel-api-snapshot","version":99,"takenAt":"2024-01-01T00:00:00Z","jobs":[]}"#;
        assert!(matches!(decode(other), Err(SnapshotError::Version { version: 99, .. })));
        let empty = encode([], Vec::new(), Utc::now());
        assert!(decode(&empty).unwrap().states.is_empty());
        let old = br#"{"format":"reel-api-snapshot","version":1,"takenAt":"2024-01-01T00:00:00Z","jobs":[]}"#;
        assert!(decode(old).unwrap().finished.is_empty(), "version 1 is still read");
        assert!(matches!(decode_job(&empty), Err(SnapshotError::Version { .. })), "a snapshot is no job record");
    }

    #[test]
    fn project_index_keys_sort_newest_first_and_name_their_job() {
        let old = project_entry_key("proj_1", "2024-01-01T00:00:00Z".parse().ok(), "job_old");
        let new = project_entry_key("proj_1", "2025-06-01T00:00:00Z".parse().ok(), "job-new-1");
        assert!(new < old, "{new} sorts before {old}");
        assert!(new.starts_with(&project_prefix("proj_1")));
        assert_eq!(job_of_entry(&new), Some("job-new-1"));
        assert_eq!(job_of_entry(&old), Some("job_old"));
    }
}
