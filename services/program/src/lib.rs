//! What makes a stage handler a program (`reel-validate`, `reel-download`, …).
//!
//! `main.rs` of each stage is one line: `reel_program::main(Arc::new(Stage))`. This
//! crate reads the settings (CONTRACT §7), installs JSON logging, connects the Pub/Sub
//! bus and the stores (emulators when `PUBSUB_EMULATOR_HOST` / `STORAGE_EMULATOR_HOST`
//! are set), and runs the worker:
//!
//! - **pull mode** (default): streaming pull until SIGTERM; `--exit-when-idle SECS`
//!   exits once the subscriptions stayed empty that long (Cloud Run Jobs);
//! - **push mode** (`--listen ADDR`, or `--push` on `0.0.0.0:$PORT`): an HTTP endpoint
//!   for Pub/Sub push envelopes and Eventarc binary-mode CloudEvents; 2xx acks, 503
//!   asks for redelivery.
//!
//! SIGTERM (and SIGINT): stop receiving, let in-flight work finish within the grace
//! period or stop it (ffmpeg is killed, temp files removed, the message nacked so it is
//! redelivered), and exit 0.

mod adapters;
pub mod push;

pub use adapters::{adapters, Adapters};

use anyhow::{Context as _, Result};
use clap::Parser;
use reel_runtime::bus::Bus;
use reel_runtime::embedded::DirStore;
use reel_runtime::location::{parse_root, Location, StoreResolver};
use reel_runtime::prefix::PrefixStore;
use reel_runtime::stage::{FromSettings, Handler};
use reel_runtime::worker::{Worker, WorkerOptions};
use reel_runtime::{telemetry, Settings, Store};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Command-line flags every stage program takes.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A reel pipeline stage. Configuration comes from the environment and REEL_CONFIG (see docs/CONFIG.md)."
)]
pub struct Args {
    /// Pull mode: exit after the subscriptions stayed empty for SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub exit_when_idle: Option<u64>,
    /// Push mode: serve Pub/Sub push and Eventarc requests on ADDR (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Push mode on 0.0.0.0:$PORT (as Cloud Run sets it).
    #[arg(long)]
    pub push: bool,
    /// Messages handled at once (default: REEL_CONCURRENCY or 1).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds in-flight work gets to finish after SIGTERM.
    #[arg(long, default_value_t = 20)]
    pub grace: u64,
}

/// Keep glibc's allocator from holding on to freed buffers. By default it gives each
/// thread its own arena (up to 8 per core) and, once a large buffer is freed, raises the
/// size above which it maps buffers separately: the 8 MiB upload chunks that stages
/// allocate on whichever worker thread runs them then stay resident in several arenas,
/// and a stage's peak RSS grows with the size of what it uploads (the cluster
/// benchmark saw download at 98 MiB with 50 MB clips against 59 MiB with 6 MB ones).
/// Two arenas and a fixed 1 MiB mapping threshold return such buffers to the system
/// when freed. `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in the environment win.
fn bound_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use libc::{M_ARENA_MAX, M_MMAP_THRESHOLD};
        // SAFETY: mallopt only changes allocator parameters; called before any thread
        // is started.
        unsafe {
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(M_ARENA_MAX, 2);
            }
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
            }
        }
    }
}

/// The flags, under the program's own name (`reel-validate --version` names
/// `reel-validate`, not this crate).
pub fn parse_args() -> Args {
    use clap::{CommandFactory, FromArgMatches};
    let name = std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "reel-stage".into());
    let matches = Args::command().name(name.clone()).bin_name(name).get_matches();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Run a stage program; the whole of a stage's `main`: `reel_program::main::<Validate>()`.
pub fn main<H: FromSettings>() -> ExitCode {
    bound_malloc_retention();
    let args = parse_args();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            // Logging is not set up yet: its own settings may be what is wrong.
            eprintln!("error: {e}");
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
    let handler: Arc<dyn Handler> = Arc::new(H::from_settings(&settings));
    match runtime.block_on(run(handler, settings, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, in the configured format.
            error!(error = format!("{e:#}"), "stage program failed");
            ExitCode::FAILURE
        }
    }
}

/// Everything a program needs, connected.
pub struct Wiring {
    /// Settings.
    pub settings: Arc<Settings>,
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The work store.
    pub work: Arc<dyn Store>,
    /// Location resolver.
    pub resolver: Arc<dyn StoreResolver>,
}

/// Connect the bus and stores from the settings.
pub async fn connect(settings: Settings) -> Result<Wiring> {
    let settings = Arc::new(settings);
    let Adapters { pubsub, storage } = adapters(&settings)?;
    let bus: Arc<dyn Bus> = Arc::new(reel_gcp::PubSubBus::connect(pubsub).await.context("connecting to Pub/Sub")?);
    let resolver: Arc<dyn StoreResolver> =
        Arc::new(reel_gcp::CloudResolver::connect(storage).await.context("connecting to Cloud Storage")?);
    let work = open_work_store(&settings.effective_work_root(), resolver.as_ref())?;
    Ok(Wiring { settings, bus, work, resolver })
}

/// The work store for a root: `gs://bucket/prefix` or a local directory.
pub fn open_work_store(root: &str, resolver: &dyn StoreResolver) -> Result<Arc<dyn Store>> {
    let location = parse_root(root).map_err(|e| anyhow::anyhow!("work root: {e}"))?;
    Ok(match location {
        Location::Gcs { bucket, key } => {
            let (store, _) = resolver
                .resolve(&Location::Gcs { bucket: bucket.clone(), key: "x".into() })
                .map_err(|e| anyhow::anyhow!("work bucket gs://{bucket}: {e}"))?;
            Arc::new(PrefixStore::new(store, &key))
        }
        Location::Local(path) => {
            Arc::new(DirStore::new(&path).with_context(|| format!("work dir {}", path.display()))?)
        }
    })
}

async fn run(handler: Arc<dyn Handler>, mut settings: Settings, args: Args) -> Result<()> {
    if let Some(c) = args.concurrency {
        settings.concurrency = c.max(1);
    }
    let stage = handler.stage();
    let wiring = connect(settings).await?;
    let mut options = WorkerOptions::for_stage(stage, &wiring.settings);
    options.exit_when_idle = args.exit_when_idle.map(Duration::from_secs);
    options.shutdown_grace = Duration::from_secs(args.grace);
    let worker = Arc::new(Worker::new(
        wiring.bus.clone(),
        handler,
        &wiring.settings,
        wiring.work.clone(),
        wiring.resolver.clone(),
        options,
    ));
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let listen =
        args.listen.or_else(|| args.push.then(|| SocketAddr::from(([0, 0, 0, 0], wiring.settings.listen_port()))));
    info!(stage = %stage, mode = if listen.is_some() { "push" } else { "pull" }, "starting");
    match listen {
        Some(addr) => push::serve(worker, addr, shutdown, Duration::from_secs(args.grace)).await?,
        None => {
            // Pull mode serves /healthz and /metrics only where a port is given (Cloud Run
            // and GKE set PORT); several local workers would otherwise fight over 8080.
            if let (true, Some(port)) = (wiring.settings.metrics_enabled, wiring.settings.port) {
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let app = push::metrics_router(worker.clone());
                        tokio::spawn(async move {
                            let _ = axum::serve(listener, app).await;
                        });
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "cannot serve /metrics"),
                }
            }
            worker.run(shutdown).await?
        }
    }
    info!(stage = %stage, "exited cleanly");
    Ok(())
}

/// Cancel `token` on SIGTERM or SIGINT.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}

/// Checks shared by every stage program's own test (`tests/program.rs` in each stage
/// crate, which also makes `cargo test` build the binary the end-to-end tests run).
pub mod testing {
    use std::path::Path;
    use std::process::{Command, Output};

    fn run_clean(exe: &Path, vars: &[(&str, &str)]) -> Output {
        let mut command = Command::new(exe);
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (name, value) in vars {
            command.env(name, value);
        }
        command.output().expect("run the program")
    }

    /// The program at `exe`, as an operator starts it: `--help` names the modes,
    /// `--version` names the program itself, a bad setting is refused with its name,
    /// and without a project it says once what is missing and exits non-zero.
    pub fn assert_operator_surface(exe: &Path) {
        let name = exe.file_stem().expect("a program name").to_string_lossy().to_string();
        let out = Command::new(exe).arg("--help").output().expect("run --help");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in ["--exit-when-idle", "--listen", "--push", "--grace"] {
            assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
        }
        let out = Command::new(exe).arg("--version").output().expect("run --version");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.starts_with(&format!("{name} ")), "--version: {text}");

        for (var, value) in [("LOG_LEVEL", "verbose"), ("REEL_LOG_FORMAT", "xml"), ("REEL_CONCURRENCY", "0")] {
            let out = run_clean(exe, &[(var, value)]);
            let text = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{var}={value}: {text}");
            assert!(text.contains(var), "{var}={value} is not named: {text}");
        }

        let out = run_clean(exe, &[]);
        assert!(!out.status.success());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.matches("GOOGLE_CLOUD_PROJECT").count(), 1, "the fatal error is logged exactly once:\n{text}");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not one JSON record: {line}"));
            assert!(record.get("severity").is_some(), "{line}");
        }
    }
}
