//! One stage handler in process: a [`Settings`], a directory store as the work area and a
//! [`Context`] — no bus, no worker. What the stage crates' own tests call.
//!
//! ```no_run
//! # use reel_runtime::stage::FromSettings;
//! # async fn example<Download: FromSettings>() {
//! use reel_testkit::{fixtures, stage::StageHarness};
//! let harness = StageHarness::new();
//! let job = fixtures::job_spec("job_1");
//! let outcome = harness.run::<Download>(&fixtures::job_validated(&job)).await;
//! # }
//! ```

use chrono::Utc;
use reel_events::payload::{JobEnvelope, JobRef};
use reel_events::{envelope, AttributesReader, Event};
use reel_runtime::embedded::DirStore;
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, FromSettings, Handler, Outcome};
use reel_runtime::Settings;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A temporary directory holding the allowed root (`files/`), the work area (`work/`)
/// and scratch space (`tmp/`), and the settings that name them.
pub struct StageHarness {
    dir: tempfile::TempDir,
    /// The work store, as the stages see it.
    pub work: Arc<DirStore>,
    /// The settings handlers are built from.
    pub settings: Settings,
}

impl Default for StageHarness {
    fn default() -> Self {
        StageHarness::new()
    }
}

impl StageHarness {
    /// A harness with the default settings, confined to its own directory.
    pub fn new() -> StageHarness {
        StageHarness::with_settings(|_| {})
    }

    /// A harness whose settings `adjust` changes after the harness has set its paths.
    pub fn with_settings(adjust: impl FnOnce(&mut Settings)) -> StageHarness {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).expect("files dir");
        let work = Arc::new(DirStore::new(dir.path().join("work")).expect("work store"));
        let mut settings = Settings {
            allowed_roots: vec![files.display().to_string()],
            work_root: Some(work.root().display().to_string()),
            temp_dir: dir.path().join("tmp"),
            ..Settings::default()
        };
        adjust(&mut settings);
        StageHarness { dir, work, settings }
    }

    /// The harness's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The allowed root: clips and outputs of the harness's jobs go here.
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// A context for a handler of `H`'s stage working on `job`.
    pub fn context(&self, handler: &dyn Handler, job: JobRef) -> Context {
        Context::standalone(
            handler.stage(),
            self.settings.boundary(),
            self.work.clone(),
            Arc::new(BucketDirs { local: LocalResolver::new(), root: self.dir.path().join("buckets") }),
            job,
        )
    }

    /// The directory that stands for `gs://{bucket}` in this harness's jobs.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.dir.path().join("buckets").join(bucket)
    }

    /// Build `H` from the settings and hand it `event`, as one delivery.
    pub async fn run<H: FromSettings>(&self, event: &Event) -> Outcome {
        let handler = H::from_settings(&self.settings);
        let data = envelope::data_json(event).unwrap_or_default();
        let job = JobEnvelope::from_data(&data, event.subject()).job;
        let ctx = self.context(&handler, job);
        handler.handle(&ctx, event).await
    }

    /// An event of `ty` about `job_id` carrying `data` (source `//test`).
    pub fn event<T: Serialize>(ty: &str, job_id: &str, data: &T) -> Event {
        envelope::build(ty, "//test", format!("{ty}-{job_id}-{}", crate::unique("e")), job_id, Utc::now(), data)
            .expect("build the event")
    }
}

/// The events of an `Emit`, or a panic naming what came instead.
pub fn emitted(outcome: Outcome) -> Vec<Event> {
    match outcome {
        Outcome::Emit(events) => events,
        other => panic!("expected the stage to emit, got {other:?}"),
    }
}

/// The harness's resolver: local paths as the embedded pipeline resolves them, and each
/// `gs://{bucket}` a directory store under the harness (`buckets/{bucket}`), so handlers
/// that look at a request's Cloud Storage output run without the storage emulator.
struct BucketDirs {
    local: LocalResolver,
    root: PathBuf,
}

impl reel_runtime::location::StoreResolver for BucketDirs {
    fn resolve(
        &self,
        location: &reel_runtime::location::Location,
    ) -> Result<(Arc<dyn reel_runtime::Store>, String), reel_runtime::StoreError> {
        match location {
            reel_runtime::location::Location::Gcs { bucket, key } => {
                let dir = self.root.join(bucket);
                std::fs::create_dir_all(&dir).map_err(|e| reel_runtime::StoreError::from_io("bucket dir", e))?;
                let store = DirStore::new(&dir).map_err(|e| reel_runtime::StoreError::from_io("bucket dir", e))?;
                Ok((Arc::new(store), key.clone()))
            }
            local => self.local.resolve(local),
        }
    }
}
