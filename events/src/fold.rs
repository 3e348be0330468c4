//! A job's state is the fold of its events, and nothing else.
//!
//! Pub/Sub delivers at least once and in no guaranteed order, so the fold is built from
//! joins that do not care about order or repetition (a join-semilattice): maxima, minima
//! and set unions, with ties broken by `(time, id)`. Folding any permutation of a job's
//! events, with any duplicates, gives the same [`JobState`]; `tests/fold_props.rs`
//! checks this with proptest.
//!
//! Rules:
//! - each `retryAttempt` of a job has its own state, and the highest attempt is the job's
//!   state (a resubmitted job starts over);
//! - terminal states win over running ones, and among terminal ones completed beats
//!   cancelled beats failed (a late failure report cannot undo a finished reel);
//! - progress only grows;
//! - the owner (`projectId`, `userId`) is fixed: that of the earliest `job.validated`
//!   (validate is authoritative), else of the earliest event naming both, else of the
//!   earliest naming a project — "earliest" by `(time, id)`. An event naming another
//!   owner cannot take the job over, whatever its ids sort like or when it arrives;
//! - a replay from the dead-letter queue is a new attempt (`reel dlq replay` raises
//!   `retryAttempt` and gives the job a fresh deadline), so a replayed job reads
//!   `running`, then `completed`, and its failed attempt stays in its history;
//! - time never enters the fold: whether a job is overdue is asked of the view with an
//!   explicit `now` ([`JobState::to_status_at`]), so two folds of one log always agree.

use crate::options::JobType;
use chrono::{DateTime, Utc};
use cloudevents::event::AttributesReader;
use cloudevents::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::envelope::data_json;
use crate::payload::{JobCost, SkippedClip};
use crate::types::{self, ErrorType, Stage};

/// The contract's job status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Requested; no stage has started.
    Queued,
    /// A stage is working.
    Running,
    /// Stopped with an error.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// The reel is at its output path.
    Completed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Completed => "completed",
        }
    }

    /// Whether the job has stopped for good (for this attempt).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Failed | Status::Cancelled | Status::Completed)
    }
}

/// The error of a failed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobError {
    /// Contract `errorType`.
    pub error_type: ErrorType,
    /// What went wrong.
    pub message: String,
    /// Where.
    pub stage: Stage,
    /// Whether resubmitting may help.
    pub retryable: bool,
    /// Attempts made.
    pub attempts: u32,
}

/// Ordering key that breaks ties deterministically.
type Stamp = (DateTime<Utc>, String);

/// State of one attempt of a job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptState {
    /// Highest status seen.
    pub status: Option<Status>,
    /// Latest stage reached, with the stamp that decided it.
    pub stage: Option<(Stage, Stamp)>,
    /// Highest overall progress, 0–100.
    pub progress: f64,
    /// First time a stage reported anything.
    pub started_at: Option<DateTime<Utc>>,
    /// When the request was made (the earliest request seen).
    pub requested_at: Option<DateTime<Utc>>,
    /// Last ETA reported, by the latest progress event.
    pub eta: Option<(Stamp, Option<DateTime<Utc>>)>,
    /// The winning terminal event: (status, stamp).
    pub terminal: Option<(Status, Stamp)>,
    /// Error of the winning failure.
    pub error: Option<(Stamp, JobError)>,
    /// Output path (requested, then the actual one on completion).
    pub output_path: Option<String>,
    /// Completion facts.
    pub completed: Option<(Stamp, serde_json::Value)>,
    /// Warnings from any stage.
    pub warnings: BTreeSet<String>,
    /// Skipped clips from any stage.
    pub skipped_clips: BTreeSet<SkippedClip>,
    /// When each stage finished (earliest report).
    pub stage_done: BTreeMap<Stage, DateTime<Utc>>,
    /// When each stage first reported (earliest).
    pub stage_started: BTreeMap<Stage, DateTime<Utc>>,
    /// Whether someone asked to cancel.
    pub cancel_requested: bool,
    /// What the job cost, as the winning terminal event says.
    pub cost: Option<JobCost>,
}

/// The folded state of one job.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    /// Job id.
    pub job_id: String,
    /// Project of the job's owner (see the module's rules; never changes once decided
    /// by the event that decides it, whichever order events arrive in).
    pub project_id: String,
    /// User of the job's owner.
    pub user_id: String,
    /// How the owner was decided: the claim of the event that named it, (rank, stamp,
    /// project, user), the least winning (rank 0: `job.validated`, 1: naming project and
    /// user, 2: naming a project only; the ids break a tie between two events forged with
    /// one id and time). `None` with an owner set: set from outside (a snapshot), and it
    /// stands. Bookkeeping only: not part of a state's equality.
    pub owner_claim: Option<(u8, Stamp, String, String)>,
    /// Stitching, unless an event of the job says generation (its request, its items,
    /// its stage or its completion).
    pub job_type: JobType,
    /// One state per retry attempt.
    pub attempts: BTreeMap<u32, AttemptState>,
    /// Every `(source, id)` folded, for counting and dedupe checks.
    pub seen: BTreeSet<(String, String)>,
}

/// Two states are equal when everything they show is: how the owner was decided
/// (`owner_claim`) is not compared, so a state restored from a snapshot (which keeps the
/// owner, not the claim) equals the fold of the same log.
impl PartialEq for JobState {
    fn eq(&self, other: &JobState) -> bool {
        self.job_id == other.job_id
            && self.project_id == other.project_id
            && self.user_id == other.user_id
            && self.job_type == other.job_type
            && self.attempts == other.attempts
            && self.seen == other.seen
    }
}

impl JobState {
    /// A job with no events yet.
    pub fn new(job_id: &str) -> JobState {
        JobState { job_id: job_id.to_string(), ..Default::default() }
    }

    /// Fold one event in. Events of other jobs, unknown types and undecodable data are
    /// ignored (the log may carry types added by newer versions).
    pub fn apply(&mut self, event: &Event) {
        // Every copy is folded, not only the first: a stage that redoes work after a
        // redelivery re-emits the same id with a later `time`, and which copy arrives
        // first must not matter. Every field below is a join, so folding a copy twice
        // changes nothing.
        self.seen.insert((event.source().to_string(), event.id().to_string()));
        let Ok(data) = data_json(event) else { return };
        let job = data.get("job").unwrap_or(&data);
        let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let attempt_no =
            job.get("retryAttempt").or_else(|| data.get("retryAttempt")).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let time = event.time().copied().unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let stamp: Stamp = (time, event.id().to_string());
        let ty = event.ty();
        self.claim_owner(ty, &stamp, text(job, "projectId"), text(job, "userId"));
        if matches!(ty, types::GENERATE_REQUESTED | types::GENERATE_CLIP)
            || text(&data, "type") == JobType::VideoGeneration.as_str()
            || text(&data, "stage") == Stage::Generate.as_str()
        {
            self.job_type = JobType::VideoGeneration;
        }
        let state = self.attempts.entry(attempt_no).or_default();

        // A generation job's output is its clips' prefix (or its reel's path, when asked).
        let output = job.get("outputPath").or_else(|| job.get("outputPrefix"));
        if let Some(output) = output.and_then(|v| v.as_str()) {
            if ty != types::JOB_COMPLETED && state.completed.is_none() {
                max_opt(&mut state.output_path, output.to_string());
            }
        }
        for w in data.get("warnings").and_then(|v| v.as_array()).into_iter().flatten() {
            if let Some(w) = w.as_str() {
                state.warnings.insert(w.to_string());
            }
        }
        for s in data.get("skippedClips").and_then(|v| v.as_array()).into_iter().flatten() {
            if let Ok(clip) = serde_json::from_value::<SkippedClip>(s.clone()) {
                state.skipped_clips.insert(clip);
            }
        }

        let stage_of =
            |v: &serde_json::Value| v.get("stage").and_then(|s| serde_json::from_value::<Stage>(s.clone()).ok());
        match ty {
            types::STITCH_REQUESTED | types::GENERATE_REQUESTED => {
                state.raise(Status::Queued);
                min_opt(&mut state.requested_at, time);
            }
            types::CANCEL_REQUESTED => {
                state.cancel_requested = true;
            }
            types::JOB_PROGRESS => {
                let stage = stage_of(&data);
                state.raise(Status::Running);
                if let Some(stage) = stage {
                    state.reach(stage, &stamp);
                    min_map(&mut state.stage_started, stage, time);
                }
                min_opt(&mut state.started_at, time);
                if let Some(p) = data.get("progress").and_then(|v| v.as_f64()) {
                    state.progress = state.progress.max(p.clamp(0.0, 100.0));
                }
                let eta = data
                    .get("estimatedCompletion")
                    .and_then(|v| v.as_str())
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&Utc));
                if state.eta.as_ref().is_none_or(|(s, _)| stamp > *s) {
                    state.eta = Some((stamp.clone(), eta));
                }
            }
            types::JOB_COMPLETED | types::JOB_FAILED | types::JOB_CANCELLED => {
                let status = match ty {
                    types::JOB_COMPLETED => Status::Completed,
                    types::JOB_FAILED => Status::Failed,
                    _ => Status::Cancelled,
                };
                state.raise(status);
                min_opt(&mut state.started_at, time);
                let stage = stage_of(&data).unwrap_or(Stage::Finalize);
                state.reach(stage, &stamp);
                let candidate = (status, stamp.clone());
                if state.terminal.as_ref().is_none_or(|t| candidate > *t) {
                    state.terminal = Some(candidate);
                    state.cost = data.get("cost").and_then(|c| serde_json::from_value::<JobCost>(c.clone()).ok());
                }
                match status {
                    Status::Completed => {
                        state.progress = 100.0;
                        min_map(&mut state.stage_done, Stage::Finalize, time);
                        if state.completed.as_ref().is_none_or(|(s, _)| stamp > *s) {
                            state.completed = Some((stamp.clone(), data.clone()));
                            if let Some(out) = data.get("outputPath").and_then(|v| v.as_str()) {
                                state.output_path = Some(out.to_string());
                            }
                        }
                    }
                    Status::Failed => {
                        if let Ok(error) = serde_json::from_value::<FailedFields>(data.clone()) {
                            let error = JobError {
                                error_type: error.error_type,
                                message: error.message,
                                stage: error.stage,
                                retryable: error.retryable,
                                attempts: error.attempts,
                            };
                            if state.error.as_ref().is_none_or(|(s, _)| stamp > *s) {
                                state.error = Some((stamp.clone(), error));
                            }
                        }
                    }
                    _ => {}
                }
            }
            other => {
                if let Some(stage) = Stage::completed_by(other) {
                    state.raise(Status::Running);
                    min_opt(&mut state.started_at, time);
                    min_map(&mut state.stage_done, stage, time);
                    min_map(&mut state.stage_started, stage, time);
                    // The next stage is where the job now is.
                    let next = Stage::ALL.get(stage.index() + 1).copied().unwrap_or(stage);
                    state.reach(next, &stamp);
                    state.progress = state.progress.max(stage.overall_progress(100.0));
                }
            }
        }
    }

    /// Take `(project, user)` as the owner if this event's claim beats the one so far
    /// (a min over `(rank, stamp)`: order- and duplicate-free like the rest).
    fn claim_owner(&mut self, ty: &str, stamp: &Stamp, project: String, user: String) {
        // An owner set from outside (a state restored from a snapshot) stands as well.
        if project.is_empty() || (self.owner_claim.is_none() && !self.project_id.is_empty()) {
            return;
        }
        let rank = match (ty, user.is_empty()) {
            (types::JOB_VALIDATED, false) => 0,
            (_, false) => 1,
            (_, true) => 2,
        };
        let claim = (rank, stamp.clone(), project, user);
        if self.owner_claim.as_ref().is_none_or(|c| claim < *c) {
            self.project_id = claim.2.clone();
            self.user_id = claim.3.clone();
            self.owner_claim = Some(claim);
        }
    }

    /// The attempt that is the job's state: the highest one.
    pub fn current(&self) -> Option<(u32, &AttemptState)> {
        self.attempts.iter().next_back().map(|(n, s)| (*n, s))
    }

    /// The job's status (queued when nothing is known).
    pub fn status(&self) -> Status {
        self.current().and_then(|(_, s)| s.status).unwrap_or(Status::Queued)
    }

    /// The stage the job is in (or ended in).
    pub fn stage(&self) -> Option<Stage> {
        self.current().and_then(|(_, s)| s.stage.as_ref().map(|(st, _)| *st))
    }

    /// Overall progress 0–100.
    pub fn progress(&self) -> f64 {
        self.current().map(|(_, s)| s.progress).unwrap_or(0.0)
    }

    /// Which stages of the current attempt have finished.
    pub fn stages_done(&self) -> Vec<Stage> {
        self.current().map(|(_, s)| s.stage_done.keys().copied().collect()).unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FailedFields {
    stage: Stage,
    error_type: ErrorType,
    message: String,
    #[serde(default)]
    retryable: bool,
    #[serde(default)]
    attempts: u32,
}

impl AttemptState {
    fn raise(&mut self, status: Status) {
        if self.status.is_none_or(|s| status > s) {
            self.status = Some(status);
        }
    }

    fn reach(&mut self, stage: Stage, stamp: &Stamp) {
        let better = match &self.stage {
            None => true,
            Some((current, current_stamp)) => (stage, stamp) > (*current, current_stamp),
        };
        if better {
            self.stage = Some((stage, stamp.clone()));
        }
    }
}

fn max_opt(slot: &mut Option<String>, value: String) {
    if slot.as_ref().is_none_or(|v| value > *v) {
        *slot = Some(value);
    }
}

fn min_opt(slot: &mut Option<DateTime<Utc>>, value: DateTime<Utc>) {
    if slot.is_none_or(|v| value < v) {
        *slot = Some(value);
    }
}

fn min_map(map: &mut BTreeMap<Stage, DateTime<Utc>>, stage: Stage, value: DateTime<Utc>) {
    let slot = map.entry(stage).or_insert(value);
    if value < *slot {
        *slot = value;
    }
}

/// Fold a stream of events (any jobs, any order) into per-job states.
pub fn fold_all<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeMap<String, JobState> {
    let mut jobs: BTreeMap<String, JobState> = BTreeMap::new();
    for event in events {
        let Some(job_id) = crate::envelope::job_id_of(event) else {
            continue;
        };
        jobs.entry(job_id.clone()).or_insert_with(|| JobState::new(&job_id)).apply(event);
    }
    jobs
}

/// The contract's `JobStatus` (CONTRACT §5), as served by `reel-api` and printed by
/// `reel status`. Fields beyond the contract's are additions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Job.
    pub job_id: String,
    /// Project.
    pub project_id: String,
    /// Owner (addition).
    pub user_id: String,
    /// `video_stitching` | `video_generation` (CONTRACT 1.1).
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// `queued` | `running` | `completed` | `failed` | `cancelled`.
    pub status: Status,
    /// The stage the job is in or ended in.
    pub stage: Option<Stage>,
    /// Overall progress, 0–100.
    pub progress: f64,
    /// When the first stage started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job should be done (while running).
    pub estimated_completion: Option<DateTime<Utc>>,
    /// When the job ended.
    pub completed_at: Option<DateTime<Utc>>,
    /// Where the reel is (or will be).
    pub output_path: Option<String>,
    /// The error message of a failed job.
    pub error: Option<String>,
    /// The `errorType` of a failed job (addition).
    pub error_type: Option<ErrorType>,
    /// Warnings for the user.
    pub warnings: Vec<String>,
    /// Clips left out (addition).
    pub skipped_clips: Vec<SkippedClip>,
    /// The job's retry attempt (0 first).
    pub retry_count: u32,
    /// What the job cost, once it ended (CONTRACT 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<JobCost>,
    /// Completion facts (addition): size, duration, crc32c, mode; a generation job's
    /// `clipPaths`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl JobState {
    /// Project this state onto the contract's `JobStatus`.
    pub fn to_status(&self) -> JobStatus {
        let (attempt, state) = match self.current() {
            Some((n, s)) => (n, s.clone()),
            None => (0, AttemptState::default()),
        };
        let status = state.status.unwrap_or(Status::Queued);
        let terminal_time = state.terminal.as_ref().map(|(_, (t, _))| *t);
        let error = if status == Status::Failed { state.error.as_ref().map(|(_, e)| e.clone()) } else { None };
        JobStatus {
            job_id: self.job_id.clone(),
            project_id: self.project_id.clone(),
            user_id: self.user_id.clone(),
            job_type: self.job_type,
            status,
            stage: state.stage.as_ref().map(|(s, _)| *s),
            progress: (state.progress * 10.0).round() / 10.0,
            started_at: state.started_at,
            estimated_completion: if status.is_terminal() { None } else { state.eta.as_ref().and_then(|(_, e)| *e) },
            completed_at: if status.is_terminal() { terminal_time } else { None },
            output_path: state.output_path.clone(),
            error: error.as_ref().map(|e| e.message.clone()),
            error_type: error.as_ref().map(|e| e.error_type),
            warnings: state.warnings.iter().cloned().collect(),
            skipped_clips: state.skipped_clips.iter().cloned().collect(),
            retry_count: attempt,
            cost: if status.is_terminal() { state.cost.clone() } else { None },
            result: if status == Status::Completed {
                state.completed.as_ref().map(|(_, v)| {
                    let mut facts = serde_json::Map::new();
                    for key in ["sizeBytes", "durationSeconds", "crc32c", "mode", "clipPaths"] {
                        if let Some(x) = v.get(key) {
                            facts.insert(key.to_string(), x.clone());
                        }
                    }
                    serde_json::Value::Object(facts)
                })
            } else {
                None
            },
        }
    }
}

/// When a job that never said it ended counts as ended: `grace` after its deadline (the
/// stage that holds it stops its work at the deadline and reports `timeout`; the grace
/// covers that report's way to the log). The deadline is taken as the attempt's first
/// report (`startedAt`: validate accepts a job and reports it at once; a replay's first
/// report is the replay) plus `job_timeout` — never earlier than the deadline the stages
/// enforce, and made of what every fold (and `reel-api`'s snapshot) keeps. An attempt no
/// stage has reported on uses its request time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overdue {
    /// `JOB_TIMEOUT_MINUTES`.
    pub job_timeout: chrono::Duration,
    /// `REEL_JOB_GRACE_MINUTES` (default 5).
    pub grace: chrono::Duration,
}

impl Overdue {
    /// The policy of a `JOB_TIMEOUT_MINUTES` and a grace, in minutes.
    pub fn minutes(job_timeout: u64, grace: u64) -> Overdue {
        Overdue {
            job_timeout: chrono::Duration::minutes(job_timeout as i64),
            grace: chrono::Duration::minutes(grace as i64),
        }
    }
}

impl JobState {
    /// The instant after which the current attempt, still without an end event, counts
    /// as failed with `timeout`; `None` when it has ended or names no time at all.
    pub fn overdue_after(&self, policy: &Overdue) -> Option<DateTime<Utc>> {
        let (_, state) = self.current()?;
        if state.status.is_some_and(Status::is_terminal) {
            return None;
        }
        let start = state.started_at.or(state.requested_at)?;
        Some(start + policy.job_timeout + policy.grace)
    }

    /// [`JobState::to_status`] as of `now`: a job past its deadline plus the grace
    /// without an end event reads `failed` with `timeout`. `now` is a parameter, never
    /// the clock, so the same log and the same `now` always give the same answer.
    pub fn to_status_at(&self, now: DateTime<Utc>, policy: &Overdue) -> JobStatus {
        let mut status = self.to_status();
        if let Some(after) = self.overdue_after(policy).filter(|after| now > *after) {
            let error = self.overdue_error(policy);
            status.status = Status::Failed;
            status.completed_at = Some(after);
            status.estimated_completion = None;
            status.error = Some(error.message);
            status.error_type = Some(ErrorType::Timeout);
        }
        status
    }

    /// The error an overdue job ends with.
    pub(crate) fn overdue_error(&self, policy: &Overdue) -> JobError {
        JobError {
            error_type: ErrorType::Timeout,
            message: format!(
                "the job did not end within its deadline plus {} minutes of grace (JOB_TIMEOUT_MINUTES={}); \
                 no stage reported an end, so it is failed by the sweeper",
                policy.grace.num_minutes(),
                policy.job_timeout.num_minutes()
            ),
            stage: self.stage().unwrap_or(Stage::Validate),
            retryable: true,
            attempts: 0,
        }
    }
}
