//! `reel-api`: settings, logs, the cloud connections, the state follower and the HTTP
//! server. SIGTERM: stop following, write the snapshot, drain requests, exit 0.

use anyhow::{Context as _, Result};
use reel_api::config::ApiConfig;
use reel_api::follower::{Follower, FollowerOptions};
use reel_api::{app, book::JobBook, AppState};
use reel_runtime::{telemetry, Settings};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "reel-api failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log_level, &settings.log_format, settings.google_cloud_project.as_deref());
    let config = ApiConfig::from_env()?;
    let port = settings.port;
    let wiring = reel_program::connect(settings).await?;
    let names = wiring.settings.topology().names();

    let book = Arc::new(JobBook::new());
    let follower = Arc::new(Follower::new(
        book.clone(),
        wiring.bus.clone(),
        wiring.work.clone(),
        FollowerOptions::new(&config, names.api_subscription()),
    ));
    let state = AppState::new(config, wiring.settings.clone(), wiring.bus.clone(), wiring.work.clone(), book)
        .context("building the HTTP client for the token signing keys")?;

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
