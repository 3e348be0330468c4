//! CloudEvent type names and the pipeline's stages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every reel event type starts with this.
pub const TYPE_PREFIX: &str = "phoenix.reel.v1.";

/// External: a request for a reel (CONTRACT §2).
pub const STITCH_REQUESTED: &str = "phoenix.reel.v1.stitch.requested";
/// External: progress of a working stage, at least every 5 s.
pub const JOB_PROGRESS: &str = "phoenix.reel.v1.job.progress";
/// External: the reel is at `outputPath`.
pub const JOB_COMPLETED: &str = "phoenix.reel.v1.job.completed";
/// External: the job stopped with an error.
pub const JOB_FAILED: &str = "phoenix.reel.v1.job.failed";
/// External: the job was cancelled.
pub const JOB_CANCELLED: &str = "phoenix.reel.v1.job.cancelled";

/// Internal: validate accepted the request (validate → download).
pub const JOB_VALIDATED: &str = "phoenix.reel.v1.job.validated";
/// Internal: every usable clip is in the workspace (download → stitch).
pub const CLIPS_DOWNLOADED: &str = "phoenix.reel.v1.job.downloaded";
/// Internal: re-encode one clip of the job (stitch → stitch, one per clip: the
/// fan-out; consumed from its own topic, `reel-encode`).
pub const CLIP_ENCODE: &str = "phoenix.reel.v1.job.encode";
/// Internal: the reel is in the workspace (stitch → upload).
pub const REEL_STITCHED: &str = "phoenix.reel.v1.job.stitched";
/// Internal: the reel is at its output path (upload → finalize).
pub const REEL_UPLOADED: &str = "phoenix.reel.v1.job.uploaded";
/// Internal: someone asked to cancel the job (API, CLI); stages watch for it.
pub const CANCEL_REQUESTED: &str = "phoenix.reel.v1.job.cancel_requested";
/// External: a request for clips generated from prompts, optionally stitched (CONTRACT §2).
pub const GENERATE_REQUESTED: &str = "phoenix.reel.v1.generate.requested";
/// Internal: generate the clip of one prompt of a generation job (generate → generate,
/// one per prompt: the fan-out; consumed from its own topic, `reel-generate-clips`).
pub const GENERATE_CLIP: &str = "phoenix.reel.v1.generate.clip";

/// Every event type reel knows, external and internal.
pub const ALL_TYPES: [&str; 13] = [
    STITCH_REQUESTED,
    JOB_PROGRESS,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_VALIDATED,
    CLIPS_DOWNLOADED,
    CLIP_ENCODE,
    REEL_STITCHED,
    REEL_UPLOADED,
    CANCEL_REQUESTED,
    GENERATE_REQUESTED,
    GENERATE_CLIP,
];

/// One of the five stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Checks the request; consumes `stitch.requested` and storage notifications.
    Validate,
    /// Brings clips into the workspace and probes them.
    Download,
    /// Joins the clips with ffmpeg.
    Stitch,
    /// Puts the reel at its output path.
    Upload,
    /// Emits `job.completed` and cleans the workspace.
    Finalize,
    /// The generation job's only stage (`reel-generate`): one clip per prompt, then
    /// `job.completed` with the clips (and the `stitch.requested` for them, if asked).
    /// Not one of the stitching pipeline's five ([`Stage::ALL`]).
    Generate,
}

impl Stage {
    /// In pipeline order.
    pub const ALL: [Stage; 5] = [Stage::Validate, Stage::Download, Stage::Stitch, Stage::Upload, Stage::Finalize];

    /// Every stage of both job types: the stitching pipeline's, then generate.
    pub const EVERY: [Stage; 6] =
        [Stage::Validate, Stage::Download, Stage::Stitch, Stage::Upload, Stage::Finalize, Stage::Generate];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Download => "download",
            Stage::Stitch => "stitch",
            Stage::Upload => "upload",
            Stage::Finalize => "finalize",
            Stage::Generate => "generate",
        }
    }

    /// 0-based position in its job's pipeline (generate is alone in its own).
    pub fn index(self) -> usize {
        match self {
            Stage::Generate => 0,
            other => other as usize,
        }
    }

    /// The stages after this one in its job's pipeline.
    pub fn later(self) -> &'static [Stage] {
        match self {
            Stage::Generate => &[],
            other => &Stage::ALL[other.index() + 1..],
        }
    }

    /// The kind of job the stage works for.
    pub fn job_type(self) -> crate::options::JobType {
        match self {
            Stage::Generate => crate::options::JobType::VideoGeneration,
            _ => crate::options::JobType::VideoStitching,
        }
    }

    /// The event type that a stage consumes as its work.
    pub fn input_type(self) -> &'static str {
        match self {
            Stage::Validate => STITCH_REQUESTED,
            Stage::Download => JOB_VALIDATED,
            Stage::Stitch => CLIPS_DOWNLOADED,
            Stage::Upload => REEL_STITCHED,
            Stage::Finalize => REEL_UPLOADED,
            Stage::Generate => GENERATE_REQUESTED,
        }
    }

    /// The event type a stage emits when its work is done.
    pub fn output_type(self) -> &'static str {
        match self {
            Stage::Validate => JOB_VALIDATED,
            Stage::Download => CLIPS_DOWNLOADED,
            Stage::Stitch => REEL_STITCHED,
            Stage::Upload => REEL_UPLOADED,
            Stage::Finalize | Stage::Generate => JOB_COMPLETED,
        }
    }

    /// The stage that consumes events of type `ty`, if any.
    pub fn consuming(ty: &str) -> Option<Stage> {
        if ty == GENERATE_CLIP {
            return Some(Stage::Generate);
        }
        Stage::EVERY.into_iter().find(|s| s.input_type() == ty)
    }

    /// The stage whose completion event has type `ty`, if any.
    pub fn completed_by(ty: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.output_type() == ty)
    }

    /// Typical share of a job's wall time spent in this stage, in percent; the job's
    /// overall progress weighs stages by it. Stitching dominates.
    pub fn weight(self) -> f64 {
        match self {
            Stage::Validate => 2.0,
            Stage::Download => 13.0,
            Stage::Stitch => 70.0,
            Stage::Upload => 13.0,
            Stage::Finalize => 2.0,
            Stage::Generate => 100.0,
        }
    }

    /// Overall job progress (0–100) when this stage is `stage_progress` percent done.
    pub fn overall_progress(self, stage_progress: f64) -> f64 {
        let before: f64 = Stage::ALL[..self.index()].iter().map(|s| s.weight()).sum();
        (before + self.weight() * stage_progress.clamp(0.0, 100.0) / 100.0).clamp(0.0, 100.0)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::EVERY.into_iter().find(|stage| stage.as_str() == s).ok_or_else(|| {
            format!("unknown stage {s:?}; expected validate, download, stitch, upload, finalize or generate")
        })
    }
}

/// The contract's `errorType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Fewer than two usable clips.
    InsufficientClips,
    /// The request is malformed or asks for something not allowed.
    InvalidRequest,
    /// Storage refused our credentials.
    PermissionDenied,
    /// A clip or object does not exist.
    NotFound,
    /// A clip cannot be read as video.
    CorruptInput,
    /// A per-user quota was hit.
    QuotaExceeded,
    /// The project already has a job running.
    JobAlreadyRunning,
    /// The job ran past its deadline.
    Timeout,
    /// Out of memory or disk.
    ResourceExhausted,
    /// Anything else.
    Internal,
}

impl ErrorType {
    /// Whether the same request may succeed later without changing it (the quota frees,
    /// the project's running job ends): `retryable` of a `job.failed` that refuses it.
    pub fn passes_later(self) -> bool {
        matches!(self, ErrorType::QuotaExceeded | ErrorType::JobAlreadyRunning)
    }

    /// All values.
    pub const ALL: [ErrorType; 10] = [
        ErrorType::InsufficientClips,
        ErrorType::InvalidRequest,
        ErrorType::PermissionDenied,
        ErrorType::NotFound,
        ErrorType::CorruptInput,
        ErrorType::QuotaExceeded,
        ErrorType::JobAlreadyRunning,
        ErrorType::Timeout,
        ErrorType::ResourceExhausted,
        ErrorType::Internal,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InsufficientClips => "insufficient_clips",
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::PermissionDenied => "permission_denied",
            ErrorType::NotFound => "not_found",
            ErrorType::CorruptInput => "corrupt_input",
            ErrorType::QuotaExceeded => "quota_exceeded",
            ErrorType::JobAlreadyRunning => "job_already_running",
            ErrorType::Timeout => "timeout",
            ErrorType::ResourceExhausted => "resource_exhausted",
            ErrorType::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorType::ALL.into_iter().find(|e| e.as_str() == s).ok_or_else(|| format!("unknown errorType {s:?}"))
    }
}
