//! Who makes a prompt's clip: Veo on Vertex AI ([`Veo`]), or, for people without
//! Vertex AI, a titled test pattern rendered with ffmpeg ([`TestPattern`]).

use async_trait::async_trait;
use reel_events::payload::GenerateSpec;
use reel_events::{ErrorType, Orientation};
use reel_gcp::veo::{AspectRatio, OperationState, VeoClient, VeoConfig, VeoError, VideoRequest};
use reel_media::{MediaConfig, SampleSpec};
use reel_runtime::config::{GenerateConfig, GeneratorKind, Settings};
use reel_runtime::output;
use reel_runtime::stage::{Context, Failure, Outcome};
use reel_runtime::store::{self, PutMode, PutOptions, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::{clip_path, parse_location};

/// What a generator made of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Generated {
    /// The clip is at `path`.
    Clip {
        /// Where (a `gs://` URI, or a local path).
        path: String,
        /// Its size in bytes (0 when the store would not say).
        size_bytes: u64,
        /// Its length, s.
        duration_seconds: f64,
    },
    /// The model refused the prompt (safety filters), or failed on it for good.
    Refused {
        /// Why, for the user.
        reason: String,
    },
}

/// Makes the clip of one prompt of a job. Errors are the delivery's outcome: `Retry`
/// for what may pass (quota, a transient error), `Reject` for what will not.
#[async_trait]
pub trait Generator: Send + Sync {
    /// The clip of `job.prompts[index]`.
    async fn generate(&self, ctx: &Context, job: &GenerateSpec, index: usize) -> Result<Generated, Outcome>;
}

/// The generator the settings name (`[generate] generator`).
pub fn from_settings(settings: &Settings) -> Arc<dyn Generator> {
    let config = &settings.generate;
    match config.generator {
        GeneratorKind::TestPattern => Arc::new(TestPattern::new(settings.media.clone())),
        GeneratorKind::Veo => {
            let project = config.veo_project.clone().or_else(|| settings.google_cloud_project.clone());
            match project {
                Some(project) => match Veo::new(&veo_config(config, &project), config) {
                    Ok(veo) => Arc::new(veo),
                    Err(e) => Arc::new(Unusable(format!("the Veo client could not be built: {e}"))),
                },
                None => Arc::new(Unusable(
                    "no project for Vertex AI: set GOOGLE_CLOUD_PROJECT or REEL_VEO_PROJECT".to_string(),
                )),
            }
        }
    }
}

fn veo_config(config: &GenerateConfig, project: &str) -> VeoConfig {
    let mut veo = VeoConfig::new(project).with_location(&config.veo_location).with_model(&config.veo_model);
    if let Some(endpoint) = &config.veo_endpoint {
        veo = veo.with_endpoint(endpoint);
    }
    veo
}

/// A generator that cannot work (misconfigured): every prompt fails with the reason.
struct Unusable(String);

#[async_trait]
impl Generator for Unusable {
    async fn generate(&self, _: &Context, _: &GenerateSpec, _: usize) -> Result<Generated, Outcome> {
        Err(Outcome::Reject(Failure::new(ErrorType::Internal, self.0.clone())))
    }
}

/// A titled test pattern per prompt (lavfi `testsrc2`, a tone, the prompt drawn in the
/// middle when ffmpeg can draw text), written where a clip of the job goes with reel's
/// output metadata, by the output rule.
pub struct TestPattern {
    media: MediaConfig,
}

impl TestPattern {
    /// A test-pattern generator running ffmpeg as `media` says.
    pub fn new(media: MediaConfig) -> TestPattern {
        TestPattern { media }
    }
}

/// The test pattern's frame: half of the reel's, to render fast.
fn pattern_size(orientation: Orientation) -> (u32, u32) {
    let (w, h) = orientation.dimensions();
    (w / 2, h / 2)
}

#[async_trait]
impl Generator for TestPattern {
    async fn generate(&self, ctx: &Context, job: &GenerateSpec, index: usize) -> Result<Generated, Outcome> {
        let path = clip_path(&job.output_prefix, index);
        let location = parse_location(&path)?;
        let (store, key) =
            ctx.resolver.resolve(&location).map_err(|e| Outcome::failed("opening the clips' store", &e))?;
        let seconds = f64::from(job.clip_seconds);
        // A redelivery after the clip was written finds it (this job's, by its metadata).
        if let Ok(Some(meta)) = store.head(&key).await {
            if output::written_by_job(&meta, &job.project_id, &job.job_id) {
                return Ok(Generated::Clip { path, size_bytes: meta.size, duration_seconds: seconds });
            }
        }
        let expect = output::check(store.as_ref(), &key, &path, &job.project_id, job.force_restart).await?;
        let (width, height) = pattern_size(job.orientation);
        let local = ctx.scratch.join(format!("clip-{index:03}.mp4"));
        let spec = SampleSpec { width, height, seconds, fps: 30, audio: true, label: job.prompts[index].clone() };
        reel_media::make_sample_clip(&self.media, &local, &spec)
            .await
            .map_err(|e| Outcome::failed("rendering the test pattern", &e))?;
        let options =
            PutOptions::new(expect.put_mode()).with_metadata(output::output_metadata(&job.project_id, &job.job_id));
        let meta = store
            .put_file_with(&key, &local, &options)
            .await
            .map_err(|e| Outcome::failed(&format!("writing {path}"), &e))?;
        Ok(Generated::Clip { path, size_bytes: meta.size, duration_seconds: seconds })
    }
}

/// Veo on Vertex AI. The operation a delivery starts is recorded in the job's workspace
/// (`gen/NNN.op`) before it is polled, so a redelivery (the program died, or the
/// generation outlasted one delivery) polls the same operation instead of paying for a
/// second one.
pub struct Veo {
    client: VeoClient,
    /// Between two polls of an operation.
    poll: Duration,
    /// How long one delivery polls before it hands the item back (within the
    /// subscription's ack deadline; push mode cannot extend it).
    budget: Duration,
}

impl Veo {
    /// A Veo generator for `veo`, polling as `config` says.
    pub fn new(veo: &VeoConfig, config: &GenerateConfig) -> Result<Veo, VeoError> {
        Ok(Veo {
            client: VeoClient::new(veo)?,
            poll: Duration::from_millis(config.veo_poll_millis),
            budget: Duration::from_secs(config.delivery_budget_seconds),
        })
    }

    /// The operation of prompt `index`: the one recorded, or a new one.
    async fn operation(&self, ctx: &Context, job: &GenerateSpec, index: usize) -> Result<String, Outcome> {
        let key = op_key(ctx, index);
        if let Some(name) = read_text(ctx, &key).await? {
            return Ok(name);
        }
        let request = VideoRequest::new(
            job.prompts[index].clone(),
            job.clip_seconds,
            AspectRatio::for_orientation(job.orientation.as_str()),
            format!("{}{:03}/", job.output_prefix, index + 1),
        );
        let started = Instant::now();
        let mut wait = Duration::from_secs(2);
        let operation = loop {
            match self.client.start(&request).await {
                Ok(operation) => break operation,
                // Quota is per minute: wait within the delivery (as Veo says, or doubling)
                // while the budget lasts, then hand the item back to be retried later.
                Err(VeoError::Quota { retry_after, message }) if started.elapsed() < self.budget / 2 => {
                    let pause = retry_after.unwrap_or(wait).min(Duration::from_secs(60));
                    info!(prompt = index, wait_s = pause.as_secs_f64(), %message, "Veo quota; waiting");
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Err(stopped()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
                Err(e) => return Err(veo_outcome(e)),
            }
        };
        let body = Box::pin(std::io::Cursor::new(operation.name.clone().into_bytes()));
        match ctx.work.put(&key, body, PutMode::CreateOnly).await {
            Ok(_) => Ok(operation.name),
            // A concurrent duplicate started one too: poll the recorded one.
            Err(StoreError::AlreadyExists(_)) => Ok(read_text(ctx, &key).await?.unwrap_or(operation.name)),
            Err(e) => Err(Outcome::failed("recording the Veo operation", &e)),
        }
    }
}

#[async_trait]
impl Generator for Veo {
    async fn generate(&self, ctx: &Context, job: &GenerateSpec, index: usize) -> Result<Generated, Outcome> {
        let operation = self.operation(ctx, job, index).await?;
        let started = Instant::now();
        loop {
            let state = match self.client.poll(&operation).await {
                Ok(state) => state,
                Err(VeoError::NotFound(message)) => {
                    // The operation is gone (expired): the next delivery starts anew.
                    forget(ctx, index).await;
                    return Err(Outcome::Retry(Failure::new(
                        ErrorType::Internal,
                        format!("the Veo operation {operation} is gone ({message}); generating again"),
                    )));
                }
                Err(e) => return Err(veo_outcome(e)),
            };
            match state {
                OperationState::Running => {}
                OperationState::Done { videos } => {
                    let Some(path) = videos.into_iter().next() else {
                        return Ok(Generated::Refused { reason: "the model returned no video".into() });
                    };
                    let size_bytes = size_of(ctx, &path).await;
                    let duration_seconds = f64::from(job.clip_seconds);
                    return Ok(Generated::Clip { path, size_bytes, duration_seconds });
                }
                OperationState::Filtered { reasons } => {
                    let reason = if reasons.is_empty() { "no reason given".to_string() } else { reasons.join("; ") };
                    return Ok(Generated::Refused {
                        reason: format!("refused by the model's safety filters: {reason}"),
                    });
                }
                ref failed @ OperationState::Failed { code, ref message } => {
                    if failed.failed_transiently() {
                        forget(ctx, index).await;
                        return Err(Outcome::Retry(Failure::new(
                            ErrorType::Internal,
                            format!("Veo failed on the prompt for now (code {code}: {message}); generating again"),
                        )));
                    }
                    return Ok(Generated::Refused {
                        reason: format!("the model failed on it (code {code}): {message}"),
                    });
                }
            }
            if started.elapsed() >= self.budget {
                return Err(Outcome::Retry(Failure::new(
                    ErrorType::Internal,
                    format!(
                        "Veo is still generating after {} s; the next delivery polls the same operation",
                        started.elapsed().as_secs()
                    ),
                )));
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(stopped()),
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}

fn op_key(ctx: &Context, index: usize) -> String {
    format!("{}gen/{index:03}.op", ctx.work_prefix())
}

/// Drop prompt `index`'s recorded operation, so the next delivery starts a new one.
async fn forget(ctx: &Context, index: usize) {
    if let Err(e) = ctx.work.delete(&op_key(ctx, index)).await {
        warn!(error = %e, "could not drop the failed Veo operation's record");
    }
}

async fn read_text(ctx: &Context, key: &str) -> Result<Option<String>, Outcome> {
    match store::read_all(ctx.work.as_ref(), key).await {
        Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) => Err(Outcome::failed("reading the Veo operation's record", &e)),
    }
}

/// The size of the clip at `path`, or 0 when the store would not say.
async fn size_of(ctx: &Context, path: &str) -> u64 {
    let Ok(location) = parse_location(path) else { return 0 };
    let Ok((store, key)) = ctx.resolver.resolve(&location) else { return 0 };
    match store.head(&key).await {
        Ok(Some(meta)) => meta.size,
        _ => 0,
    }
}

fn stopped() -> Outcome {
    Outcome::Retry(Failure::new(ErrorType::Internal, "stopped while generating"))
}

/// A Veo error as the delivery's outcome.
fn veo_outcome(e: VeoError) -> Outcome {
    let (error_type, retry) = match &e {
        VeoError::Quota { .. } => (ErrorType::QuotaExceeded, true),
        VeoError::Transient(_) => (ErrorType::Internal, true),
        VeoError::Invalid(_) => (ErrorType::InvalidRequest, false),
        VeoError::PermissionDenied(_) => (ErrorType::PermissionDenied, false),
        VeoError::NotFound(_) => (ErrorType::NotFound, false),
    };
    let failure = Failure::new(error_type, format!("Veo: {e}"));
    if retry {
        Outcome::Retry(failure)
    } else {
        Outcome::Reject(failure)
    }
}
