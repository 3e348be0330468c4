//! A local Veo server: Vertex AI's two Veo calls with the documented request and response
//! shapes, on a free loopback port, for testing a real Veo client (`reel_gcp::veo`) and
//! what is built on it without a Google Cloud project.
//!
//! - `POST /v1/projects/P/locations/L/publishers/google/models/M:predictLongRunning` takes
//!   `{"instances":[{"prompt"}],"parameters":{"storageUri","sampleCount","durationSeconds","aspectRatio",…}}`,
//!   checks it as the API reference describes (duration 4, 6 or 8 s for Veo 3 models, 5 to
//!   8 for Veo 2; ratio 16:9 or 9:16; 1 to 4 samples; a prompt) and answers
//!   `{"name": "projects/P/locations/L/publishers/google/models/M/operations/UUID"}`;
//! - `POST …/models/M:fetchPredictOperation` takes `{"operationName"}` and answers the
//!   operation: `{"name","done":false}` for [`VeoOptions::running_polls`] polls, then
//!   `done: true` with `response: {"@type", "raiMediaFilteredCount": 0, "videos":
//!   [{"gcsUri": "{storageUri}/{subdirectory}/sample_N.mp4", "mimeType": "video/mp4"}]}`
//!   (Veo writes into a subdirectory of `storageUri` of its choosing, and so does this);
//! - errors in Google's envelope `{"error":{"code","message","status"}}`: 400
//!   `INVALID_ARGUMENT` for a body that is not JSON or a request the API refuses, 404
//!   `NOT_FOUND` for an unknown path, model or operation.
//!
//! What a prompt contains scripts what happens to it, so a test can reach every shape:
//!
//! | in the prompt | start | operation |
//! | --- | --- | --- |
//! | `[quota]`, `[quota:N]` | 429 `RESOURCE_EXHAUSTED` for the first 1 (N) starts of this prompt | as usual |
//! | `[unavailable]`, `[unavailable:N]` | 503 `UNAVAILABLE` for the first 1 (N) starts | as usual |
//! | `[forbidden]` | 403 `PERMISSION_DENIED` | — |
//! | `[slow]`, `[slow:N]` | as usual | `done: false` for 3 (N) polls |
//! | `[refuse]` | as usual | done, no videos, `raiMediaFilteredCount: 1` and a reason |
//! | `[fail]` | as usual | done with `error: {code: 13, message}` |
//!
//! Every request is recorded ([`VeoServer::requests`]), headers and body, so a test can
//! check what a client sent. [`VeoOptions::on_done`] is called for each video the first
//! time its operation answers done, before the answer is sent: a test can put a real clip
//! at that `gs://` URI.
//!
//! Where it differs from Vertex AI: no `storageUri` is a 400 here (Veo would return the
//! video bytes inline), credentials are not checked (they are recorded), and there is one
//! request per connection.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use reel_testkit::veo::VeoServer;
//! let veo = VeoServer::start().await?;
//! // … a client with endpoint veo.url() …
//! assert!(veo.requests().iter().all(|r| r.header("authorization").is_none()));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Called with (`gcsUri`, prompt) for each video of an operation the first time it
/// answers done.
pub type OnDone = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How the server behaves beyond what prompts script.
#[derive(Clone)]
pub struct VeoOptions {
    /// How many polls of an operation answer `done: false` before it is done (1: the first
    /// poll says running, the second done). `[slow]` prompts override it.
    pub running_polls: u32,
    /// Put a `google.rpc.RetryInfo` with this `retryDelay` in the details of 429 answers
    /// (Vertex AI often sends none).
    pub quota_retry_delay: Option<Duration>,
    /// Called for each video when its operation first answers done (on a blocking
    /// thread).
    pub on_done: Option<OnDone>,
}

impl Default for VeoOptions {
    fn default() -> Self {
        VeoOptions { running_polls: 1, quota_retry_delay: None, on_done: None }
    }
}

impl VeoOptions {
    /// These options with [`VeoOptions::on_done`] set to `hook`.
    pub fn with_on_done(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_done = Some(Arc::new(hook));
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `POST`, …
    pub method: String,
    /// The path (and query), e.g. `/v1/projects/p/…/models/m:predictLongRunning`.
    pub path: String,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl RecordedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The method called: `predictLongRunning`, `fetchPredictOperation`, … (what follows
    /// the last `:` of the path).
    pub fn verb(&self) -> &str {
        let path = self.path.split('?').next().unwrap_or_default();
        path.rsplit_once(':').map(|(_, v)| v).unwrap_or_default()
    }
}

/// What a prompt's markers ask for.
#[derive(Debug, Clone, Copy, Default)]
struct Script {
    quota: u32,
    unavailable: u32,
    forbidden: bool,
    slow: Option<u32>,
    refuse: bool,
    fail: bool,
}

impl Script {
    fn of(prompt: &str) -> Script {
        // `[name]` or `[name:N]`; `default` when there is no `:N`.
        let marker = |name: &str, default: u32| -> Option<u32> {
            if prompt.contains(&format!("[{name}]")) {
                return Some(default);
            }
            let start = prompt.find(&format!("[{name}:"))? + name.len() + 2;
            prompt[start..].split(']').next()?.trim().parse().ok()
        };
        Script {
            quota: marker("quota", 1).unwrap_or(0),
            unavailable: marker("unavailable", 1).unwrap_or(0),
            forbidden: marker("forbidden", 1).is_some(),
            slow: marker("slow", 3),
            refuse: marker("refuse", 1).is_some(),
            fail: marker("fail", 1).is_some(),
        }
    }
}

struct Op {
    prompt: String,
    script: Script,
    /// `gs://…/` with a trailing slash.
    storage_uri: String,
    subdirectory: String,
    samples: u32,
    polls: u32,
    done_reported: bool,
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    operations: HashMap<String, Op>,
    /// Starts seen per prompt (for `[quota:N]`, `[unavailable:N]`).
    starts: HashMap<String, u32>,
    next: u64,
}

struct Shared {
    options: VeoOptions,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server; it stops when dropped.
pub struct VeoServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VeoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl VeoServer {
    /// Listen on a free loopback port with the default options.
    pub async fn start() -> std::io::Result<VeoServer> {
        VeoServer::start_with(VeoOptions::default()).await
    }

    /// Listen on a free loopback port (bound here, so no other process can take it first).
    pub async fn start_with(options: VeoOptions) -> std::io::Result<VeoServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { options, state: Mutex::new(State::default()) });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        Ok(VeoServer { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`, the endpoint for a client (`REEL_VEO_ENDPOINT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// The requests so far to `verb` (`predictLongRunning`, `fetchPredictOperation`).
    pub fn requests_to(&self, verb: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.verb() == verb).collect()
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let Ok(Some(request)) = tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await else {
        return;
    };
    let (status, body, hooks) = handle(&shared, request);
    if let Some(hook) = shared.options.on_done.clone() {
        for (uri, prompt) in hooks {
            let hook = hook.clone();
            let _ = tokio::task::spawn_blocking(move || hook(&uri, &prompt)).await;
        }
    }
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One HTTP/1.1 request with a `content-length` body (or none); `None` if the connection
/// closed or sent something else.
async fn read_request(stream: &mut TcpStream) -> Option<RecordedRequest> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if data.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    if length > 16 * 1024 * 1024 {
        return None;
    }
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Some(RecordedRequest { method, path, headers, body: String::from_utf8_lossy(&body).to_string() })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Google's error envelope.
fn error(code: u16, status: &str, message: impl Into<String>) -> (u16, Value) {
    (code, json!({"error": {"code": code, "message": message.into(), "status": status}}))
}

type Answer = (u16, Value, Vec<(String, String)>);

/// The answer to `request`, and the (`gcsUri`, prompt) pairs to pass to the `on_done`
/// hook first.
fn handle(shared: &Shared, request: RecordedRequest) -> Answer {
    let mut state = shared.state();
    state.requests.push(request.clone());
    let no_hooks = |(code, body): (u16, Value)| (code, body, Vec::new());
    let path = request.path.split('?').next().unwrap_or_default();
    let Some((resource, verb)) = path.strip_prefix("/v1/").and_then(|p| p.rsplit_once(':')) else {
        return no_hooks(error(404, "NOT_FOUND", format!("The requested URL {path} was not found on this server.")));
    };
    let parts: Vec<&str> = resource.split('/').collect();
    let ["projects", _, "locations", _, "publishers", "google", "models", model] = parts.as_slice() else {
        return no_hooks(error(404, "NOT_FOUND", format!("The requested URL {path} was not found on this server.")));
    };
    if !model.starts_with("veo-") {
        return no_hooks(error(404, "NOT_FOUND", format!("Publisher Model `{resource}` was not found.")));
    }
    if !matches!(verb, "predictLongRunning" | "fetchPredictOperation") {
        return no_hooks(error(404, "NOT_FOUND", format!("The requested URL {path} was not found on this server.")));
    }
    if request.method != "POST" {
        return no_hooks(error(405, "INVALID_ARGUMENT", format!("{} is not allowed on {path}.", request.method)));
    }
    let Ok(body) = serde_json::from_str::<Value>(&request.body) else {
        return no_hooks(error(
            400,
            "INVALID_ARGUMENT",
            format!(
                "Invalid JSON payload received. Unexpected token: {}",
                request.body.chars().take(40).collect::<String>()
            ),
        ));
    };
    if verb == "predictLongRunning" {
        no_hooks(start(shared, &mut state, resource, model, &body))
    } else {
        poll(shared, &mut state, &body)
    }
}

fn start(shared: &Shared, state: &mut State, resource: &str, model: &str, body: &Value) -> (u16, Value) {
    let invalid = |message: String| error(400, "INVALID_ARGUMENT", message);
    let instance = body.get("instances").and_then(Value::as_array).and_then(|i| i.first());
    let Some(instance) = instance else {
        return invalid("instances: at least one instance is required.".into());
    };
    let prompt = instance.get("prompt").and_then(Value::as_str).unwrap_or_default().to_string();
    let script = Script::of(&prompt);
    let seen = {
        let n = state.starts.entry(prompt.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if script.forbidden {
        return error(
            403,
            "PERMISSION_DENIED",
            format!("Permission 'aiplatform.endpoints.predict' denied on resource '//aiplatform.googleapis.com/{resource}'."),
        );
    }
    if seen <= script.quota {
        let (code, mut answer) = error(
            429,
            "RESOURCE_EXHAUSTED",
            format!("Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: {model}. Please submit a quota increase request."),
        );
        if let Some(delay) = shared.options.quota_retry_delay {
            answer["error"]["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{}s", delay.as_secs_f64()),
            }]);
        }
        return (code, answer);
    }
    if seen <= script.unavailable {
        return error(503, "UNAVAILABLE", "The service is currently unavailable.");
    }
    if prompt.trim().is_empty() {
        return invalid("A text prompt is required for text-to-video generation.".into());
    }
    let parameters = body.get("parameters").cloned().unwrap_or(Value::Null);
    let Some(duration) = parameters.get("durationSeconds").and_then(Value::as_u64) else {
        return invalid("parameters.durationSeconds is required and must be an integer.".into());
    };
    let durations: &[u64] = if model.starts_with("veo-2") {
        &[5, 6, 7, 8]
    } else if model.starts_with("veo-3") {
        &[4, 6, 8]
    } else {
        &[4, 5, 6, 7, 8]
    };
    if !durations.contains(&duration) {
        return invalid(format!(
            "Unsupported output video duration {duration} seconds, supported durations are {durations:?} for {model}."
        ));
    }
    match parameters.get("aspectRatio") {
        None => {}
        Some(r) if matches!(r.as_str(), Some("16:9" | "9:16")) => {}
        Some(r) => return invalid(format!("Unsupported aspect ratio {r}; supported: 16:9, 9:16.")),
    }
    let samples = match parameters.get("sampleCount") {
        None => 1,
        Some(n) => match n.as_u64() {
            Some(n @ 1..=4) => n as u32,
            _ => return invalid(format!("sampleCount must be between 1 and 4, got {n}.")),
        },
    };
    let storage_uri = parameters.get("storageUri").and_then(Value::as_str).unwrap_or_default();
    let Some(bucket_path) = storage_uri.strip_prefix("gs://").filter(|p| !p.is_empty() && !p.starts_with('/')) else {
        return invalid(format!("storageUri must be a gs://BUCKET/PREFIX URI (this local server does not return inline videos), got {storage_uri:?}."));
    };
    state.next += 1;
    let id = uuid::Uuid::new_v4();
    let name = format!("{resource}/operations/{id}");
    let subdirectory = format!("{}{:04}", chrono::Utc::now().timestamp_millis(), state.next % 10_000);
    let op = Op {
        prompt,
        script,
        storage_uri: format!("gs://{}/", bucket_path.trim_end_matches('/')),
        subdirectory,
        samples,
        polls: 0,
        done_reported: false,
    };
    state.operations.insert(name.clone(), op);
    (200, json!({ "name": name }))
}

fn poll(shared: &Shared, state: &mut State, body: &Value) -> Answer {
    let Some(name) = body.get("operationName").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        let (code, answer) = error(400, "INVALID_ARGUMENT", "operationName is required.");
        return (code, answer, Vec::new());
    };
    let Some(op) = state.operations.get_mut(name) else {
        let (code, answer) = error(404, "NOT_FOUND", format!("Operation {name} not found."));
        return (code, answer, Vec::new());
    };
    op.polls += 1;
    if op.polls <= op.script.slow.unwrap_or(shared.options.running_polls) {
        return (200, json!({ "name": name, "done": false }), Vec::new());
    }
    const RESPONSE_TYPE: &str = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse";
    if op.script.fail {
        let error =
            json!({"code": 13, "message": "Video generation failed: an internal error occurred (scripted by [fail])."});
        return (200, json!({ "name": name, "done": true, "error": error }), Vec::new());
    }
    if op.script.refuse {
        let response = json!({
            "@type": RESPONSE_TYPE,
            "raiMediaFilteredCount": 1,
            "raiMediaFilteredReasons": ["Unable to generate videos because the prompt violates the usage guidelines (scripted by [refuse]). Support codes: 58061214"],
        });
        return (200, json!({ "name": name, "done": true, "response": response }), Vec::new());
    }
    let uris: Vec<String> =
        (0..op.samples).map(|i| format!("{}{}/sample_{i}.mp4", op.storage_uri, op.subdirectory)).collect();
    let hooks =
        if op.done_reported { Vec::new() } else { uris.iter().map(|u| (u.clone(), op.prompt.clone())).collect() };
    op.done_reported = true;
    let videos: Vec<Value> = uris.iter().map(|u| json!({"gcsUri": u, "mimeType": "video/mp4"})).collect();
    let response = json!({ "@type": RESPONSE_TYPE, "raiMediaFilteredCount": 0, "videos": videos });
    (200, json!({ "name": name, "done": true, "response": response }), hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_with_and_without_counts() {
        let s = Script::of("a cat [quota:3] [slow] [refuse]");
        assert_eq!(
            (s.quota, s.unavailable, s.slow, s.refuse, s.fail, s.forbidden),
            (3, 0, Some(3), true, false, false)
        );
        let s = Script::of("[unavailable] [slow:0] [fail] [forbidden] [quota]");
        assert_eq!((s.quota, s.unavailable, s.slow, s.refuse, s.fail, s.forbidden), (1, 1, Some(0), false, true, true));
        let s = Script::of("a plain prompt [quota:x]");
        assert_eq!((s.quota, s.slow), (0, None));
    }
}
