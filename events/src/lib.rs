//! reel's event vocabulary: CloudEvent types, payloads, the Pub/Sub binding and the
//! job-state fold. Pure code: no I/O, no async, nothing of ours imported.
//!
//! ```
//! use reel_events::{binding, envelope, types, payload::JobCancelled, Stage};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = JobCancelled { job_id: "job_1".into(), project_id: "p".into(), user_id: "u".into(), stage: Stage::Stitch, retry_attempt: None, cost: None };
//! let event = envelope::build(types::JOB_CANCELLED, "//reel/stitch", "id-1", "job_1", chrono::Utc::now(), &data)?;
//! let message = binding::encode_binary(&event);
//! assert_eq!(message.attributes["ce-type"], types::JOB_CANCELLED);
//! assert_eq!(binding::decode(&message)?, event);
//! # Ok(()) }
//! ```

pub mod binding;
pub mod clip;
pub mod envelope;
pub mod fold;
pub mod message;
pub mod options;
pub mod payload;
pub mod replay;
pub mod schema;
pub mod sweep;
pub mod types;
pub mod verdict;

pub use clip::{AudioInfo, ClipInfo, VideoInfo};
pub use cloudevents::{AttributesReader, AttributesWriter, Event};
pub use options::{Compression, JobType, Mode, Orientation};
pub use types::{ErrorType, Stage};
pub use verdict::{Classify, Verdict};
