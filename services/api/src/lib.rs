//! `reel-api`: job status from the event log, cancel, and stitch requests (CONTRACT §5).
//!
//! There is no database: the [`follower`] folds the `reel-events` log into a
//! [`book::JobBook`] (`jobId → JobState`), snapshotting it to the work store so a
//! restart loses nothing, and the handlers in [`routes`] answer from that book.
//!
//! ```no_run
//! # async fn example(state: reel_api::AppState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, reel_api::app(state)).await
//! # }
//! ```
//!
//! - [`config`]: the API's environment variables (auth mode, callers, snapshot);
//! - [`auth`]: bearer tokens, Google OIDC or local, and whom a request acts for;
//! - [`admission`]: one active job per project, project owners, per-user quotas;
//! - [`metrics`]: the Prometheus text;
//! - `openapi.json` (next to `Cargo.toml`): the OpenAPI document, kept equal to the
//!   router by `tests/openapi.rs`.

pub mod admission;
pub mod auth;
pub mod book;
pub mod config;
pub mod error;
pub mod follower;
pub mod metrics;
pub mod routes;
pub mod snapshot;

use axum::extract::{MatchedPath, Request};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use reel_runtime::bus::Bus;
use reel_runtime::store::Store;
use reel_runtime::topology::Names;
use reel_runtime::Settings;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::Authenticator;
use crate::book::JobBook;
use crate::config::ApiConfig;

/// The OpenAPI document served at `/api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ApiConfig,
    settings: Arc<Settings>,
    names: Names,
    bus: Arc<dyn Bus>,
    work: Arc<dyn Store>,
    book: Arc<JobBook>,
    auth: Authenticator,
    /// Catches the book up with the log before a request reads it (see
    /// [`follower::Follower::catch_up`]); `None` in tests that fold by hand.
    follower: Option<Arc<follower::Follower>>,
}

impl AppState {
    /// The state of an API publishing on `bus`, writing cancel markers to `work` and
    /// reading tenancy records from it, and answering from `book` (which a
    /// [`follower::Follower`] fills). Quotas are `settings.quota`, as validate's. Refused:
    /// an authentication setting that [`Authenticator::new`] refuses.
    pub fn new(
        config: ApiConfig,
        settings: Arc<Settings>,
        bus: Arc<dyn Bus>,
        work: Arc<dyn Store>,
        book: Arc<JobBook>,
    ) -> Result<AppState, String> {
        let auth = Authenticator::new(&config)?;
        let names = settings.topology().names();
        Ok(AppState { inner: Arc::new(Inner { config, settings, names, bus, work, book, auth, follower: None }) })
    }

    /// Requests catch the book up with the log through `follower` before they read it,
    /// so answers are current after a cold start or an idle spell without CPU.
    pub fn with_follower(self, follower: Arc<follower::Follower>) -> AppState {
        let mut inner =
            Arc::try_unwrap(self.inner).unwrap_or_else(|_| panic!("with_follower before the state is shared"));
        inner.follower = Some(follower);
        AppState { inner: Arc::new(inner) }
    }

    /// Fold what waits on the event log unless the book was current less than a second
    /// ago. A bus failure leaves the book as it is (the answer may be a little late).
    pub async fn catch_up(&self) {
        if let Some(follower) = &self.inner.follower {
            if let Err(e) = follower.catch_up(std::time::Duration::from_secs(1)).await {
                tracing::warn!(error = %e, "could not catch up with the event log; answering from the state as it is");
            }
        }
    }

    /// The folded state.
    pub fn book(&self) -> &Arc<JobBook> {
        &self.inner.book
    }

    /// The API's configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// After this long a queued or running job is taken as abandoned (it no longer holds
    /// its project here): the job timeout plus the five minutes by
    /// which validate's project lock outlives it.
    pub fn stale_after(&self) -> chrono::Duration {
        chrono::Duration::minutes(self.inner.settings.job_timeout_minutes as i64 + 5)
    }
}

/// One route: method, path (OpenAPI's `{name}` syntax, which axum shares), handler.
type Route = (Method, &'static str, MethodRouter<AppState>);

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    (method, path, on(filter, handler))
}

/// Every route: the router is built from this list and the OpenAPI test compares it
/// with the document, so neither can drift from the other.
fn routes() -> Vec<Route> {
    vec![
        route(Method::GET, "/api/jobs/{jobId}/status", routes::job_status),
        route(Method::POST, "/api/jobs/{jobId}/cancel", routes::cancel_job),
        route(Method::GET, "/api/projects/{projectId}/jobs", routes::project_jobs),
        route(Method::POST, "/api/projects/{projectId}/stitch", routes::stitch),
        route(Method::GET, "/api/openapi.json", routes::openapi),
        route(Method::GET, "/healthz", routes::healthz),
        route(Method::GET, "/metrics", routes::metrics),
    ]
}

/// `(method, path)` of every route of [`app`].
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|(method, path, _)| (method, path)).collect()
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, method_router) in routes() {
        router = router.route(path, method_router);
    }
    router.route_layer(axum::middleware::from_fn(log_request)).fallback(routes::not_found).with_state(state)
}

/// The caller's trace context (`traceparent` or `X-Cloud-Trace-Context`), kept in the
/// request's extensions: a job the request starts carries it, so the job reads as one
/// trace from the API call to the reel.
#[derive(Debug, Clone)]
pub struct CallerTrace(pub String);

/// One log line per request, as Cloud Logging's `httpRequest` under the caller's trace:
/// method, route (its pattern), status, latency. Never other headers.
async fn log_request(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let (trace, user_agent) = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let trace = reel_runtime::telemetry::caller_traceparent(
            header("traceparent").as_deref(),
            header("x-cloud-trace-context").as_deref(),
        );
        (trace, header("user-agent").unwrap_or_default())
    };
    if let Some(tp) = &trace {
        request.extensions_mut().insert(CallerTrace(tp.clone()));
    }
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let http_request = serde_json::json!({
        "requestMethod": method.as_str(),
        "requestUrl": route,
        "status": status,
        "latency": format!("{:.3}s", elapsed.as_secs_f64()),
        "userAgent": user_agent,
    })
    .to_string();
    let (elapsed_ms, trace) = (elapsed.as_millis() as u64, trace.unwrap_or_default());
    if route == "/healthz" || route == "/metrics" {
        tracing::debug!(%method, route, status, elapsed_ms, trace, httpRequest = http_request, "request");
    } else {
        tracing::info!(%method, route, status, elapsed_ms, trace, httpRequest = http_request, "request");
    }
    response
}
