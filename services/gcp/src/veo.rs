//! Veo video generation on Vertex AI, over its REST API: start a generation
//! (`predictLongRunning`), then poll the long-running operation it returns
//! (`fetchPredictOperation`) until the videos are in Cloud Storage.
//!
//! The shapes are the ones of the Veo API reference ("Veo on Vertex AI API",
//! `vertex-ai/generative-ai/docs/model-reference/veo-video-generation`):
//!
//! - start: `POST {endpoint}/v1/projects/P/locations/L/publishers/google/models/M:predictLongRunning`
//!   with `{"instances":[{"prompt"}],"parameters":{"storageUri","sampleCount","durationSeconds","aspectRatio",…}}`,
//!   answered with `{"name": "projects/…/models/M/operations/ID"}`;
//! - poll: `POST …/models/M:fetchPredictOperation` with `{"operationName": NAME}`, answered
//!   with the operation: `done` false (or absent) while it runs; when done either `error`
//!   (a `google.rpc.Status`) or `response` — `raiMediaFilteredCount`,
//!   `raiMediaFilteredReasons` and `videos: [{gcsUri, mimeType}]`. Veo writes the videos
//!   under a subdirectory of `storageUri` that it chooses (`…/TIMESTAMPED_SUBDIRECTORY/sample_0.mp4`):
//!   use the URIs it returns, never a guessed path;
//! - failures: Google's JSON error envelope `{"error":{"code","message","status"}}`, sorted
//!   into [`VeoError`].
//!
//! Like the rest of this crate nothing here reads the environment: the programs build a
//! [`VeoConfig`] (`REEL_VEO_ENDPOINT` becomes [`VeoConfig::with_endpoint`]). An `http://`
//! endpoint (a local server, `reel_testkit::veo`) gets no credentials, as the emulators;
//! otherwise Application Default Credentials with the `cloud-platform` scope.
//!
//! ```no_run
//! # async fn f() -> Result<(), reel_gcp::veo::VeoError> {
//! use reel_gcp::veo::{AspectRatio, OperationState, VeoClient, VeoConfig, VideoRequest};
//! let veo = VeoClient::new(&VeoConfig::new("my-project"))?;
//! let request = VideoRequest::new("a lighthouse at dawn", 8, AspectRatio::for_orientation("portrait"),
//!     "gs://my-bucket/generated/job_1/");
//! let operation = veo.start(&request).await?;
//! loop {
//!     match veo.poll(&operation.name).await? {
//!         OperationState::Running => tokio::time::sleep(std::time::Duration::from_secs(10)).await,
//!         OperationState::Done { videos } => break println!("{videos:?}"),
//!         other => break println!("no video: {other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use serde_json::{json, Value};

/// The model used unless [`VeoConfig::with_model`] says otherwise: Veo 3, generally
/// available, 16:9 and 9:16, 4, 6 or 8 second videos (`veo-3.1-generate-001` is newer).
pub const DEFAULT_MODEL: &str = "veo-3.0-generate-001";
/// The location used unless [`VeoConfig::with_location`] says otherwise.
pub const DEFAULT_LOCATION: &str = "us-central1";
/// How long one call (a start or a poll, not the generation) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How to reach Veo: project, location, model, endpoint, credentials, timeout.
///
/// ```
/// use reel_gcp::veo::VeoConfig;
/// let prod = VeoConfig::new("my-project");
/// assert_eq!(prod.endpoint(), "https://us-central1-aiplatform.googleapis.com");
/// assert_eq!(prod.model(), "veo-3.0-generate-001");
/// let local = VeoConfig::new("local").with_endpoint("http://127.0.0.1:9099/");
/// assert_eq!(local.endpoint(), "http://127.0.0.1:9099");
/// ```
#[derive(Debug, Clone)]
pub struct VeoConfig {
    project: String,
    location: String,
    model: String,
    endpoint: Option<String>,
    credentials: Option<Credentials>,
    timeout: Duration,
}

impl VeoConfig {
    /// Veo in `project`, [`DEFAULT_LOCATION`], [`DEFAULT_MODEL`], the location's
    /// endpoint, Application Default Credentials.
    pub fn new(project: impl Into<String>) -> Self {
        VeoConfig {
            project: project.into(),
            location: DEFAULT_LOCATION.to_string(),
            model: DEFAULT_MODEL.to_string(),
            endpoint: None,
            credentials: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The Vertex AI location (region) to call, e.g. `us-central1`.
    pub fn with_location(mut self, location: impl Into<String>) -> Self {
        self.location = location.into();
        self
    }

    /// The Veo model id, e.g. `veo-3.0-fast-generate-001`.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Talk to `endpoint` (`https://host[:port]`, or `http://` for a local server, which
    /// then gets no credentials) instead of `https://{location}-aiplatform.googleapis.com`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into().trim().trim_end_matches('/').to_string());
        self
    }

    /// Authenticate with `credentials` instead of Application Default Credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Send no credentials.
    pub fn with_anonymous_credentials(self) -> Self {
        self.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
    }

    /// The longest one call may take (connecting, sending, the answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Google Cloud project billed for the generations.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The Vertex AI location.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The model id.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The endpoint that will be called: the one set, or the location's
    /// (`https://aiplatform.googleapis.com` for `global`).
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None if self.location == "global" => "https://aiplatform.googleapis.com".to_string(),
            None => format!("https://{}-aiplatform.googleapis.com", self.location),
        }
    }

    /// The timeout of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `projects/P/locations/L/publishers/google/models/M`.
    fn model_resource(&self) -> String {
        format!("projects/{}/locations/{}/publishers/google/models/{}", self.project, self.location, self.model)
    }
}

/// The frame shape of generated videos. Veo makes only 16:9 and 9:16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AspectRatio {
    /// `16:9`.
    Landscape,
    /// `9:16`.
    Portrait,
}

impl AspectRatio {
    /// The ratio for a reel orientation: `portrait` → 9:16, `landscape` → 16:9, and
    /// `square` (which Veo cannot make) → 16:9: the stitch stage then fits it into the
    /// square frame like any other clip of another shape. Anything else is 16:9 too,
    /// Veo's default.
    pub fn for_orientation(orientation: &str) -> AspectRatio {
        if orientation.trim().eq_ignore_ascii_case("portrait") {
            AspectRatio::Portrait
        } else {
            AspectRatio::Landscape
        }
    }

    /// `"16:9"` or `"9:16"`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AspectRatio::Landscape => "16:9",
            AspectRatio::Portrait => "9:16",
        }
    }
}

/// One text-to-video generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRequest {
    /// What the video should show.
    pub prompt: String,
    /// Length of each video; Veo 3 models take 4, 6 or 8, Veo 2 models 5 to 8 (the
    /// service refuses others with [`VeoError::Invalid`]).
    pub duration_seconds: u32,
    /// 16:9 or 9:16.
    pub aspect_ratio: AspectRatio,
    /// `gs://bucket/prefix/` under which Veo writes the videos (in a subdirectory of its
    /// own).
    pub storage_uri: String,
    /// How many videos (1 to 4); 1 by default.
    pub sample_count: u32,
    /// Whether Veo 3 models make a soundtrack too (`generateAudio`; not sent to Veo 2
    /// models, which do not take it). Off by default: it costs more, and the stitch stage
    /// gives a clip without audio a silent track.
    pub generate_audio: bool,
}

impl VideoRequest {
    /// One video of `duration_seconds` in `aspect_ratio`, written under `storage_uri`,
    /// without audio.
    pub fn new(
        prompt: impl Into<String>,
        duration_seconds: u32,
        aspect_ratio: AspectRatio,
        storage_uri: impl Into<String>,
    ) -> Self {
        VideoRequest {
            prompt: prompt.into(),
            duration_seconds,
            aspect_ratio,
            storage_uri: storage_uri.into(),
            sample_count: 1,
            generate_audio: false,
        }
    }

    /// The `predictLongRunning` body for `model`.
    fn body(&self, model: &str) -> Value {
        let mut parameters = json!({
            "storageUri": self.storage_uri,
            "sampleCount": self.sample_count,
            "durationSeconds": self.duration_seconds,
            "aspectRatio": self.aspect_ratio.as_str(),
        });
        if !model.starts_with("veo-2") {
            parameters["generateAudio"] = json!(self.generate_audio);
        }
        json!({ "instances": [{ "prompt": self.prompt }], "parameters": parameters })
    }
}

/// A started generation: the long-running operation to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// `projects/P/locations/L/publishers/google/models/M/operations/ID`, what
    /// [`VeoClient::poll`] takes.
    pub name: String,
}

/// Where a generation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationState {
    /// Still generating: poll again later.
    Running,
    /// Done: the `gs://` URIs of the videos, in order.
    Done {
        /// `gs://bucket/prefix/…/sample_N.mp4`.
        videos: Vec<String>,
    },
    /// Done without a video: Veo's responsible-AI filters held the videos back
    /// (`raiMediaFilteredCount` > 0). Asking again with the same prompt will not help.
    Filtered {
        /// `raiMediaFilteredReasons`, as Veo wrote them (they carry support codes).
        reasons: Vec<String>,
    },
    /// The operation ended with an error.
    Failed {
        /// The `google.rpc.Code` (3 invalid argument, 8 resource exhausted, 13 internal,
        /// 14 unavailable, …).
        code: i32,
        /// The service's message.
        message: String,
    },
}

impl OperationState {
    /// Whether this is a failure that may not happen again: the operation failed with
    /// `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`, `INTERNAL` or `UNAVAILABLE`,
    /// so starting the generation again is worth a try.
    pub fn failed_transiently(&self) -> bool {
        matches!(self, OperationState::Failed { code: 4 | 8 | 10 | 13 | 14, .. })
    }
}

/// Why a call to Veo failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VeoError {
    /// HTTP 429 / `RESOURCE_EXHAUSTED`: the project's quota (e.g. requests per minute)
    /// is used up. Retry later.
    #[error("Veo quota exhausted: {message}")]
    Quota {
        /// The service's message.
        message: String,
        /// How long the service asked to wait (`Retry-After`, or a `google.rpc.RetryInfo`
        /// detail), when it said.
        retry_after: Option<Duration>,
    },
    /// A 5xx answer, a timeout, a refused or broken connection, an answer that is not the
    /// API's: retry.
    #[error("Veo unavailable: {0}")]
    Transient(String),
    /// HTTP 400 (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`) and other 4xx: the request is
    /// wrong and will stay wrong.
    #[error("Veo refused the request: {0}")]
    Invalid(String),
    /// HTTP 401 / 403, or no credentials could be had.
    #[error("Veo permission denied: {0}")]
    PermissionDenied(String),
    /// HTTP 404: no such model, project or operation.
    #[error("Veo: not found: {0}")]
    NotFound(String),
}

impl VeoError {
    /// Whether the same call may succeed later ([`VeoError::Quota`],
    /// [`VeoError::Transient`]).
    pub fn retryable(&self) -> bool {
        matches!(self, VeoError::Quota { .. } | VeoError::Transient(_))
    }

    /// How long the service asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            VeoError::Quota { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A Veo client for one project, location and model. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VeoClient {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    model_resource: String,
    credentials: Credentials,
}

impl VeoClient {
    /// A client for `config`. No network call is made (Application Default Credentials
    /// are looked up here, though, unless the endpoint is `http://` or credentials were
    /// given).
    pub fn new(config: &VeoConfig) -> Result<VeoClient, VeoError> {
        for (what, value) in [("project", config.project()), ("location", config.location()), ("model", config.model())]
        {
            if value.trim().is_empty() || value.contains('/') {
                return Err(VeoError::Invalid(format!("Veo configuration: bad {what} {value:?}")));
            }
        }
        let endpoint = config.endpoint();
        let credentials = match (&config.credentials, endpoint.starts_with("http://")) {
            (Some(c), _) => c.clone(),
            (None, true) => google_cloud_auth::credentials::anonymous::Builder::new().build(),
            (None, false) => google_cloud_auth::credentials::Builder::default()
                .with_scopes([SCOPE])
                .build()
                .map_err(|e| VeoError::PermissionDenied(format!("loading Application Default Credentials: {e}")))?,
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout().min(Duration::from_secs(10)))
            .build()
            .map_err(|e| VeoError::Transient(format!("HTTP client: {e}")))?;
        Ok(VeoClient {
            http,
            endpoint,
            model: config.model().to_string(),
            model_resource: config.model_resource(),
            credentials,
        })
    }

    /// Start generating `request`'s videos; the operation to [`VeoClient::poll`].
    pub async fn start(&self, request: &VideoRequest) -> Result<Operation, VeoError> {
        let reply = self.call(&self.model_resource, "predictLongRunning", request.body(&self.model)).await?;
        match reply.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => Ok(Operation { name: name.to_string() }),
            _ => Err(VeoError::Transient(format!(
                "predictLongRunning: an answer without an operation name: {}",
                excerpt(&reply.to_string())
            ))),
        }
    }

    /// Where the generation `operation` (an [`Operation::name`]) is. Polled on the model
    /// the operation belongs to (read from its name), so an operation started with another
    /// model can still be polled.
    pub async fn poll(&self, operation: &str) -> Result<OperationState, VeoError> {
        let operation = operation.trim();
        if operation.is_empty() {
            return Err(VeoError::Invalid("fetchPredictOperation: empty operation name".into()));
        }
        let resource = match operation.rsplit_once("/operations/") {
            Some((model, _)) if model.starts_with("projects/") && model.contains("/models/") => model,
            _ => self.model_resource.as_str(),
        };
        let reply = self.call(resource, "fetchPredictOperation", json!({ "operationName": operation })).await?;
        parse_operation(&reply).map_err(|e| VeoError::Transient(format!("fetchPredictOperation {operation}: {e}")))
    }

    /// `POST {endpoint}/v1/{resource}:{verb}` with `body`, authorised; the JSON answer.
    async fn call(&self, resource: &str, verb: &str, body: Value) -> Result<Value, VeoError> {
        let url = format!("{}/v1/{resource}:{verb}", self.endpoint);
        let mut request = self.http.post(&url).header("content-type", "application/json").body(body.to_string());
        match self.credentials.headers(Default::default()).await {
            Ok(CacheableResource::New { data, .. }) => {
                for (name, value) in data.iter() {
                    request = request.header(name, value);
                }
            }
            Ok(CacheableResource::NotModified) => {}
            Err(e) => {
                let text = format!("{verb}: getting an access token: {e}");
                return Err(if e.is_transient() {
                    VeoError::Transient(text)
                } else {
                    VeoError::PermissionDenied(text)
                });
            }
        }
        let response = request.send().await.map_err(|e| VeoError::Transient(format!("{verb} {url}: {e}")))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| VeoError::Transient(format!("{verb} {url}: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(error_from_answer(verb, status, retry_after, &text));
        }
        serde_json::from_str(&text)
            .map_err(|e| VeoError::Transient(format!("{verb}: HTTP {status} but not JSON ({e}): {}", excerpt(&text))))
    }
}

/// An error answer (Google's envelope `{"error":{"code","message","status","details"}}`,
/// or anything else) as a [`VeoError`].
fn error_from_answer(verb: &str, http: u16, retry_after: Option<Duration>, body: &str) -> VeoError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let status = error.and_then(|e| e.get("status")).and_then(Value::as_str).unwrap_or_default();
    let message = match error.and_then(|e| e.get("message")).and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => excerpt(body),
    };
    let text = if status.is_empty() {
        format!("{verb}: HTTP {http}: {message}")
    } else {
        format!("{verb}: HTTP {http} {status}: {message}")
    };
    match (http, status) {
        (429, _) | (_, "RESOURCE_EXHAUSTED") => {
            VeoError::Quota { message: text, retry_after: retry_after.or_else(|| error.and_then(retry_delay)) }
        }
        (401 | 403, _) => VeoError::PermissionDenied(text),
        (404, _) => VeoError::NotFound(text),
        (408 | 499 | 500..=599, _) | (409, "ABORTED") => VeoError::Transient(text),
        _ => VeoError::Invalid(text),
    }
}

/// The `retryDelay` of a `google.rpc.RetryInfo` among an error's `details` (`"30s"`,
/// `"1.5s"`).
fn retry_delay(error: &Value) -> Option<Duration> {
    error.get("details")?.as_array()?.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?.trim().strip_suffix('s')?;
        let seconds: f64 = delay.parse().ok()?;
        (0.0..86_400.0).contains(&seconds).then(|| Duration::from_secs_f64(seconds))
    })
}

/// An operation as returned by `fetchPredictOperation`.
fn parse_operation(operation: &Value) -> Result<OperationState, String> {
    let Some(op) = operation.as_object() else {
        return Err(format!("not an operation: {}", excerpt(&operation.to_string())));
    };
    // Proto3 JSON leaves `done: false` out.
    if !op.get("done").and_then(Value::as_bool).unwrap_or(false) {
        return Ok(OperationState::Running);
    }
    if let Some(error) = op.get("error") {
        let code = error.get("code").and_then(Value::as_i64).and_then(|c| i32::try_from(c).ok()).unwrap_or(2);
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
        return Ok(OperationState::Failed { code, message });
    }
    let response = op.get("response").cloned().unwrap_or(Value::Null);
    let videos = video_uris(&response);
    if !videos.is_empty() {
        return Ok(OperationState::Done { videos });
    }
    let filtered = response.get("raiMediaFilteredCount").and_then(Value::as_u64).unwrap_or(0);
    let reasons: Vec<String> = response
        .get("raiMediaFilteredReasons")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if filtered > 0 || !reasons.is_empty() {
        return Ok(OperationState::Filtered { reasons });
    }
    let inline = response.get("videos").and_then(Value::as_array).is_some_and(|v| !v.is_empty());
    let message = if inline {
        "the videos came back inline, not in Cloud Storage (was storageUri set?)".to_string()
    } else {
        format!("the operation finished without a video or a filter reason: {}", excerpt(&response.to_string()))
    };
    // 2: google.rpc.Code UNKNOWN.
    Ok(OperationState::Failed { code: 2, message })
}

/// The `gs://` URIs of a `GenerateVideoResponse`: `videos[].gcsUri` (what Veo returns),
/// or the older `generatedSamples` (URIs, or `{video: {uri}}`).
fn video_uris(response: &Value) -> Vec<String> {
    let list = |key: &str| response.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut uris: Vec<String> =
        list("videos").iter().filter_map(|v| v.get("gcsUri").and_then(Value::as_str)).map(str::to_string).collect();
    if uris.is_empty() {
        uris = list("generatedSamples")
            .iter()
            .filter_map(|s| s.as_str().or_else(|| s.get("video").and_then(|v| v.get("uri")).and_then(Value::as_str)))
            .map(str::to_string)
            .collect();
    }
    uris.retain(|u| u.starts_with("gs://"));
    uris
}

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_location_unless_set() {
        assert_eq!(VeoConfig::new("p").endpoint(), "https://us-central1-aiplatform.googleapis.com");
        assert_eq!(
            VeoConfig::new("p").with_location("europe-west4").endpoint(),
            "https://europe-west4-aiplatform.googleapis.com"
        );
        assert_eq!(VeoConfig::new("p").with_location("global").endpoint(), "https://aiplatform.googleapis.com");
        assert_eq!(VeoConfig::new("p").with_endpoint(" http://localhost:1/ ").endpoint(), "http://localhost:1");
    }

    #[test]
    fn a_bad_config_is_refused_before_any_call() {
        assert!(matches!(VeoClient::new(&VeoConfig::new(" ")), Err(VeoError::Invalid(_))));
        let local = VeoConfig::new("p").with_endpoint("http://127.0.0.1:1");
        assert!(matches!(VeoClient::new(&local.clone().with_model("a/b")), Err(VeoError::Invalid(_))));
        assert!(VeoClient::new(&local).is_ok());
    }

    #[test]
    fn orientations_map_to_the_two_ratios_veo_makes() {
        assert_eq!(AspectRatio::for_orientation("portrait").as_str(), "9:16");
        assert_eq!(AspectRatio::for_orientation("landscape").as_str(), "16:9");
        assert_eq!(AspectRatio::for_orientation("square").as_str(), "16:9");
    }

    #[test]
    fn generate_audio_is_sent_to_veo_3_only() {
        let r = VideoRequest::new("p", 8, AspectRatio::Portrait, "gs://b/x/");
        assert_eq!(r.body("veo-3.0-generate-001")["parameters"]["generateAudio"], json!(false));
        assert!(r.body("veo-2.0-generate-001")["parameters"].get("generateAudio").is_none());
    }

    #[test]
    fn operations_of_every_documented_shape() {
        let state = |v: Value| parse_operation(&v).unwrap();
        assert_eq!(state(json!({"name": "x"})), OperationState::Running);
        assert_eq!(state(json!({"name": "x", "done": false})), OperationState::Running);
        assert_eq!(
            state(json!({"done": true, "response": {"raiMediaFilteredCount": 0,
                "videos": [{"gcsUri": "gs://b/p/1/sample_0.mp4", "mimeType": "video/mp4"}]}})),
            OperationState::Done { videos: vec!["gs://b/p/1/sample_0.mp4".into()] }
        );
        assert_eq!(
            state(json!({"done": true, "response": {"generatedSamples": [{"video": {"uri": "gs://b/s.mp4"}}]}})),
            OperationState::Done { videos: vec!["gs://b/s.mp4".into()] }
        );
        assert_eq!(
            state(json!({"done": true, "response": {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["r"]}})),
            OperationState::Filtered { reasons: vec!["r".into()] }
        );
        assert_eq!(
            state(json!({"done": true, "error": {"code": 3, "message": "m"}})),
            OperationState::Failed { code: 3, message: "m".into() }
        );
        assert!(matches!(state(json!({"done": true, "response": {}})), OperationState::Failed { code: 2, .. }));
        assert!(matches!(
            state(json!({"done": true, "response": {"videos": [{"bytesBase64Encoded": "AAAA"}]}})),
            OperationState::Failed { code: 2, message } if message.contains("storageUri")
        ));
        assert!(parse_operation(&json!([1])).is_err());
        assert!(OperationState::Failed { code: 13, message: String::new() }.failed_transiently());
        assert!(!OperationState::Failed { code: 3, message: String::new() }.failed_transiently());
    }

    #[test]
    fn error_answers_are_sorted_by_status() {
        let envelope = |code: u16, status: &str| {
            json!({"error": {"code": code, "message": "the message", "status": status}}).to_string()
        };
        let quota = error_from_answer("v", 429, None, &envelope(429, "RESOURCE_EXHAUSTED"));
        assert!(matches!(&quota, VeoError::Quota { message, retry_after: None } if message.contains("the message")));
        assert!(quota.retryable());
        let with_delay = json!({"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}});
        assert_eq!(
            error_from_answer("v", 429, None, &with_delay.to_string()).retry_after(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            error_from_answer("v", 429, Some(Duration::from_secs(7)), "").retry_after(),
            Some(Duration::from_secs(7))
        );
        assert!(matches!(error_from_answer("v", 400, None, &envelope(400, "INVALID_ARGUMENT")), VeoError::Invalid(_)));
        assert!(matches!(
            error_from_answer("v", 403, None, &envelope(403, "PERMISSION_DENIED")),
            VeoError::PermissionDenied(_)
        ));
        assert!(
            matches!(error_from_answer("v", 401, None, "nope"), VeoError::PermissionDenied(m) if m.contains("nope"))
        );
        assert!(matches!(error_from_answer("v", 404, None, &envelope(404, "NOT_FOUND")), VeoError::NotFound(_)));
        assert!(matches!(error_from_answer("v", 503, None, "<html>"), VeoError::Transient(_)));
        assert!(!error_from_answer("v", 413, None, "").retryable());
    }
}
