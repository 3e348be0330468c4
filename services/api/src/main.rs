//! `reel-api`: settings, logs, the cloud connections, the state follower and the HTTP
//! server. SIGTERM: stop following, write the snapshot, drain requests, exit 0.

use anyhow::{Context as _, Result};
use reel_api::config::ApiConfig;
use reel_api::follower::{Follower, FollowerOptions, Sweep};
use reel_api::{app, book::JobBook, AppState};
use reel_runtime::{telemetry, Settings};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The status API of reel: job status folded from the event log, cancel, and stitch
/// requests, for Phoenix and operators.
///
/// Configuration comes from the environment (docs/CONFIG.md and docs/API.md): the
/// shared settings (PORT, GOOGLE_CLOUD_PROJECT, PUBSUB_EMULATOR_HOST, REEL_QUOTA_*, …,
/// or a file in REEL_CONFIG) and the API's own, of which one is required:
/// REEL_API_AUDIENCE (Google ID tokens) or REEL_API_TOKENS (token=user,… for local use).
/// Who may call: REEL_API_TRUSTED_CALLERS (act for the user in X-Reel-User) and, with
/// Google ID tokens, REEL_API_USERS (emails, subjects, *@domain).
#[derive(Debug, clap::Parser)]
#[command(name = "reel-api", version)]
struct Args {}

fn main() -> ExitCode {
    let _args = <Args as clap::Parser>::parse();
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let (settings, config) =
        match Settings::load().map_err(anyhow::Error::from).and_then(|s| Ok((s, ApiConfig::from_vars(&vars)?))) {
            Ok(loaded) => loaded,
            Err(e) => {
                // Logging is not set up yet: its own settings may be what is wrong.
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
    telemetry::init(&settings.log_level, settings.log_format, settings.google_cloud_project.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, in the configured format.
            error!(error = format!("{e:#}"), "reel-api failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, config: ApiConfig) -> Result<()> {
    let port = settings.listen_port();
    let wiring = reel_program::connect(settings).await?;
    let names = wiring.settings.topology().names();

    let overdue = wiring.settings.overdue();
    let book = Arc::new(JobBook::with_archive(wiring.work.clone()).with_overdue(overdue));
    let mut options = FollowerOptions::new(&config, names.api_subscription());
    options.sweep = Some(Sweep { every: Duration::from_secs(60), policy: overdue, names: names.clone() });
    let follower = Arc::new(Follower::new(book.clone(), wiring.bus.clone(), wiring.work.clone(), options));
    let state = AppState::new(config, wiring.settings.clone(), wiring.bus.clone(), wiring.work.clone(), book)
        .map_err(anyhow::Error::msg)
        .context("setting up token checks")?
        .with_follower(follower.clone());

    let shutdown = CancellationToken::new();
    reel_program::spawn_signal_handler(shutdown.clone());
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    info!(%addr, subscription = %names.api_subscription(), store = %wiring.work.describe(), "reel-api listening");

    let following = {
        let (follower, shutdown) = (follower.clone(), shutdown.clone());
        tokio::spawn(async move { follower.run(shutdown).await })
    };
    let serving = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
        })
    };

    // The follower ends on shutdown (after its last snapshot) or on a fatal error.
    let followed = following.await.context("the state follower panicked")?;
    shutdown.cancel();
    serving.await.context("the HTTP server panicked")?.context("serving HTTP")?;
    followed.context("following the event log")?;
    info!("reel-api exited cleanly");
    Ok(())
}
