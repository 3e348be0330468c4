//! Who may write a job's output: the one rule, decided here and nowhere else.
//!
//! reel replaces an existing object at a job's `outputPath` only if reel wrote it for the
//! same project (recorded in the object's custom metadata, [`PROJECT_KEY`]) and the request
//! carries `forceRestart` (the caller has already checked that the requester owns the
//! project: the API's project ownership, or the local user of the CLI's `local` project).
//! Anything else is `permission_denied`: an object reel did not write (a user's file, an
//! object whose filesystem keeps no metadata), a reel of another project, or one of this
//! project without `forceRestart`.
//!
//! The decision names what the write must then expect ([`Expect`]), and the write carries
//! it as its precondition ([`Expect::put_mode`]: create-only, or the generation that was
//! judged), so an object replaced between the check and the write is never overwritten
//! blindly: the write fails with `AlreadyExists` / `PreconditionFailed`.
//!
//! Who checks: validate (early, before anything is downloaded or encoded) and upload
//! (again, right before writing, with the precondition); `reel stitch` checks before it
//! starts the pipeline, to refuse with the file's name at once.

use std::collections::BTreeMap;

use reel_events::ErrorType;

use crate::stage::{Failure, Outcome};
use crate::store::{ObjectMeta, PutMode, Store};

/// Custom-metadata key naming the project reel wrote an output for.
pub const PROJECT_KEY: &str = "reel-project";
/// Custom-metadata key naming the job that wrote an output.
pub const JOB_KEY: &str = "reel-job";

/// What a write of the output must expect to find, once the rule allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing is there: write create-only.
    Absent,
    /// reel's own output of this project is there at this generation, and `forceRestart`
    /// asks to replace it: replace exactly this generation.
    Generation(i64),
}

impl Expect {
    /// The put mode that makes the write fail if the output changed since the decision.
    pub fn put_mode(self) -> PutMode {
        match self {
            Expect::Absent => PutMode::CreateOnly,
            Expect::Generation(g) => PutMode::IfGeneration(g),
        }
    }
}

/// Why the rule refuses a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An object is there that reel did not write (no [`PROJECT_KEY`] metadata).
    NotWrittenByReel,
    /// A reel of another project is there.
    OtherProject,
    /// A reel of this project is there, and the request has no `forceRestart`.
    NeedsForceRestart,
}

impl Refusal {
    /// What to tell the requester about `output_path`.
    pub fn message(self, output_path: &str) -> String {
        match self {
            Refusal::NotWrittenByReel => format!(
                "{output_path} already exists and was not written by reel; reel never replaces it: \
                 remove it or choose another outputPath"
            ),
            Refusal::OtherProject => format!(
                "{output_path} already exists and is a reel of another project; reel never replaces it: \
                 choose another outputPath"
            ),
            Refusal::NeedsForceRestart => format!(
                "{output_path} already exists (a reel of this project); send forceRestart to replace your own \
                 reel, or choose another outputPath"
            ),
        }
    }

    /// The `permission_denied` failure for `output_path`.
    pub fn failure(self, output_path: &str) -> Failure {
        Failure::new(ErrorType::PermissionDenied, self.message(output_path))
    }
}

/// The custom metadata reel writes on an output of `job_id` in `project_id`.
pub fn output_metadata(project_id: &str, job_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(PROJECT_KEY.to_string(), project_id.to_string()), (JOB_KEY.to_string(), job_id.to_string())])
}

/// Whether `meta` is the output reel wrote for this very job (a redelivery finds it).
/// Remove the object at `key` if `job_id` of `project_id` wrote it (a cancelled job's
/// reel); returns whether it did. Anything else there is left alone.
pub async fn withdraw(store: &dyn Store, key: &str, project_id: &str, job_id: &str) -> Result<bool, crate::StoreError> {
    match store.head(key).await? {
        Some(meta) if written_by_job(&meta, project_id, job_id) => store.delete(key).await,
        _ => Ok(false),
    }
}

/// Whether `meta` is of the reel `job_id` of `project_id` wrote.
pub fn written_by_job(meta: &ObjectMeta, project_id: &str, job_id: &str) -> bool {
    !job_id.is_empty()
        && meta.metadata.get(PROJECT_KEY).map(String::as_str) == Some(project_id)
        && meta.metadata.get(JOB_KEY).map(String::as_str) == Some(job_id)
}

/// The rule, on what is at the output now (`None`: nothing).
pub fn decide(existing: Option<&ObjectMeta>, project_id: &str, force_restart: bool) -> Result<Expect, Refusal> {
    let Some(meta) = existing else {
        return Ok(Expect::Absent);
    };
    match meta.metadata.get(PROJECT_KEY) {
        None => Err(Refusal::NotWrittenByReel),
        Some(project) if project.is_empty() || project != project_id => Err(Refusal::OtherProject),
        Some(_) if !force_restart => Err(Refusal::NeedsForceRestart),
        Some(_) => Ok(Expect::Generation(meta.generation)),
    }
}

/// Whether a job of `project_id` may write `key` of `store` (its `outputPath`, named
/// `output_path` in messages), with or without `forceRestart`: what the write must
/// expect, or the outcome to end the delivery with — `Reject(permission_denied)` when the
/// rule refuses, the storage error matrix's verdict when the store cannot say.
pub async fn check(
    store: &dyn Store,
    key: &str,
    output_path: &str,
    project_id: &str,
    force_restart: bool,
) -> Result<Expect, Outcome> {
    let existing = store.head(key).await.map_err(|e| Outcome::failed("checking the output location", &e))?;
    decide(existing.as_ref(), project_id, force_restart).map_err(|r| Outcome::Reject(r.failure(output_path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::DirStore;
    use crate::store::{PutOptions, StoreError};

    fn body(bytes: &[u8]) -> crate::store::ByteReader {
        Box::pin(std::io::Cursor::new(bytes.to_vec()))
    }

    fn refused(result: Result<Expect, Outcome>) -> Failure {
        match result {
            Err(Outcome::Reject(f)) => f,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    async fn reel_of(store: &DirStore, key: &str, project: &str, job: &str) -> ObjectMeta {
        let options = PutOptions::new(PutMode::Overwrite).with_metadata(output_metadata(project, job));
        store.put_with(key, body(b"a reel"), &options).await.unwrap()
    }

    #[tokio::test]
    async fn nothing_there_means_create_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        let expect = check(&store, "out/reel.mp4", "/out/reel.mp4", "p1", false).await.unwrap();
        assert_eq!(expect, Expect::Absent);
        assert_eq!(expect.put_mode(), PutMode::CreateOnly);
    }

    #[tokio::test]
    async fn a_file_reel_did_not_write_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        store.put("holiday.mp4", body(b"the user's own video"), PutMode::CreateOnly).await.unwrap();
        for force in [false, true] {
            let failure = refused(check(&store, "holiday.mp4", "/videos/holiday.mp4", "p1", force).await);
            assert_eq!(failure.error_type, ErrorType::PermissionDenied);
            assert!(failure.message.contains("/videos/holiday.mp4"), "{}", failure.message);
            assert!(failure.message.contains("not written by reel"), "{}", failure.message);
        }
    }

    #[tokio::test]
    async fn another_projects_reel_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        reel_of(&store, "reel.mp4", "p_other", "job_x").await;
        for force in [false, true] {
            let failure = refused(check(&store, "reel.mp4", "gs://b/reel.mp4", "p1", force).await);
            assert_eq!(failure.error_type, ErrorType::PermissionDenied);
            assert!(failure.message.contains("another project"), "{}", failure.message);
            assert!(!failure.message.contains("p_other"), "names the other project: {}", failure.message);
        }
    }

    #[tokio::test]
    async fn the_projects_own_reel_needs_force_restart_and_is_replaced_at_its_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        let first = reel_of(&store, "reel.mp4", "p1", "job_1").await;
        let failure = refused(check(&store, "reel.mp4", "gs://b/reel.mp4", "p1", false).await);
        assert_eq!(failure.error_type, ErrorType::PermissionDenied);
        assert!(failure.message.contains("send forceRestart to replace your own reel"), "{}", failure.message);

        let expect = check(&store, "reel.mp4", "gs://b/reel.mp4", "p1", true).await.unwrap();
        assert_eq!(expect, Expect::Generation(first.generation));
        // The write carries the judged generation: it replaces exactly what was judged...
        let options = PutOptions::new(expect.put_mode()).with_metadata(output_metadata("p1", "job_2"));
        let second = store.put_with("reel.mp4", body(b"the new reel"), &options).await.unwrap();
        assert!(written_by_job(&store.head("reel.mp4").await.unwrap().unwrap(), "p1", "job_2"));
        // ...and a decision made before someone else's write cannot overwrite it.
        match store.put_with("reel.mp4", body(b"stale"), &options).await {
            Err(StoreError::PreconditionFailed(_)) => {}
            other => panic!("a stale generation must fail the write, got {other:?}"),
        }
        assert_eq!(store.head("reel.mp4").await.unwrap().unwrap().generation, second.generation);
    }

    #[tokio::test]
    async fn store_errors_follow_the_storage_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        let failure = refused(check(&store, "a/../b.mp4", "/b.mp4", "p1", true).await);
        assert_eq!(failure.error_type, ErrorType::InvalidRequest);
        assert!(failure.message.starts_with("checking the output location: "), "{}", failure.message);
    }

    #[test]
    fn a_redelivery_recognises_its_own_output() {
        let meta = ObjectMeta {
            key: "k".into(),
            size: 1,
            crc32c: 0,
            generation: 1,
            updated: chrono::Utc::now(),
            metadata: output_metadata("p1", "job_1"),
        };
        assert!(written_by_job(&meta, "p1", "job_1"));
        assert!(!written_by_job(&meta, "p1", "job_2"));
        assert!(!written_by_job(&meta, "p2", "job_1"));
        assert!(!written_by_job(&ObjectMeta { metadata: BTreeMap::new(), ..meta }, "p1", "job_1"));
    }
}
