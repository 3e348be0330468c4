//! `reel-cluster start|emulators|stop|env|status [DIR]`: the whole pipeline on this
//! machine, as it runs in the cloud — the Pub/Sub emulator, fake-gcs-server (with storage
//! notifications to `{prefix}gcs-notifications`), `reel setup`, and the five stage
//! programs, each its own process, left running after this command exits; or
//! (`emulators`) only the two emulators, with notifications to `$REEL_GCS_NOTIFY_TOPIC`
//! when that is set. `scripts/cluster.sh`, `scripts/emulators.sh` and `scripts/chaos.sh`
//! run it. `start` and `emulators` print the export lines and keep them in `DIR/env`,
//! which `env` prints.
//!
//! DIR defaults to `$REEL_CLUSTER_DIR` or `/tmp/reel-cluster`; logs are `DIR/*.log` and
//! every started process's PID is in `DIR/NAME.pid`; `stop` stops exactly those (its
//! process group: SIGTERM, SIGKILL after 5 s). Ports: `$PUBSUB_PORT` (8085), `$GCS_PORT`
//! (4443), `0` for a free one; bucket `$VIDEO_STORAGE_BUCKET` (reel-local), project `$GOOGLE_CLOUD_PROJECT`
//! (reel-local), prefix `$REEL_TOPIC_PREFIX` (reel-). The programs are the ones next to
//! this binary (`$REEL_BIN_DIR` to choose others).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use reel_testkit::cluster::{Cluster, ClusterOptions};
use reel_testkit::emulators::{EmulatorOptions, Emulators};
use reel_testkit::process::{self, Lifetime};

/// What the cluster is: from the environment, with the documented defaults.
struct Config {
    dir: PathBuf,
    bin_dir: PathBuf,
    project: String,
    bucket: String,
    prefix: String,
    /// `None`: a free port.
    pubsub_port: Option<u16>,
    gcs_port: Option<u16>,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

fn config(dir: Option<&String>) -> Result<Config> {
    let own_dir = std::env::current_exe()?.parent().context("reel-cluster has no directory")?.to_path_buf();
    let port = |name: &str, default: &str| {
        var(name, default)
            .parse::<u16>()
            .map(|port| Some(port).filter(|p| *p != 0))
            .with_context(|| format!("{name} is not a port"))
    };
    Ok(Config {
        dir: dir.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(var("REEL_CLUSTER_DIR", "/tmp/reel-cluster"))),
        bin_dir: std::env::var_os("REEL_BIN_DIR").map(PathBuf::from).unwrap_or(own_dir),
        project: var("GOOGLE_CLOUD_PROJECT", "reel-local"),
        bucket: var("VIDEO_STORAGE_BUCKET", "reel-local"),
        prefix: var("REEL_TOPIC_PREFIX", "reel-"),
        pubsub_port: port("PUBSUB_PORT", "8085")?,
        gcs_port: port("GCS_PORT", "4443")?,
    })
}

/// The export lines for the running emulators (and, with `programs`, the cluster).
fn env_lines(c: &Config, emulators: &Emulators, programs: bool) -> String {
    let mut lines = vec![
        format!("export PUBSUB_EMULATOR_HOST={}", emulators.pubsub_host()),
        format!("export STORAGE_EMULATOR_HOST={}", emulators.storage_url()),
        format!("export GOOGLE_CLOUD_PROJECT={}", c.project),
    ];
    if programs {
        lines.push(format!("export VIDEO_STORAGE_BUCKET={}", c.bucket));
        lines.push(format!("export REEL_TOPIC_PREFIX={}", c.prefix));
        lines.push(format!("export PATH={}:$PATH", c.bin_dir.display()));
    }
    lines.join("\n") + "\n"
}

/// Leave the emulators running and say how to reach them (stdout and `DIR/env`).
fn detach_emulators(c: &Config, emulators: Arc<Emulators>, programs: bool) -> Result<()> {
    let Ok(emulators) = Arc::try_unwrap(emulators) else { bail!("the emulators are still shared") };
    let env = env_lines(c, &emulators, programs);
    std::fs::write(c.dir.join("env"), &env)?;
    emulators.detach()?;
    print!("{env}");
    Ok(())
}

/// `DIR/env` of what was started; without one, the lines for the configured ports.
fn print_env(c: &Config) {
    match std::fs::read_to_string(c.dir.join("env")) {
        Ok(text) => print!("{text}"),
        Err(_) => {
            let port = |p: Option<u16>, default: u16| p.unwrap_or(default);
            println!("export PUBSUB_EMULATOR_HOST=127.0.0.1:{}", port(c.pubsub_port, 8085));
            println!("export STORAGE_EMULATOR_HOST=http://127.0.0.1:{}", port(c.gcs_port, 4443));
            println!("export GOOGLE_CLOUD_PROJECT={}", c.project);
            println!("export VIDEO_STORAGE_BUCKET={}", c.bucket);
            println!("export REEL_TOPIC_PREFIX={}", c.prefix);
            println!("export PATH={}:$PATH", c.bin_dir.display());
        }
    }
}

/// The emulators, detached, on the configured ports, logs and pid files in DIR.
async fn start_emulators(c: &Config, notification_topic: Option<String>) -> Result<Arc<Emulators>> {
    if has_pid_files(&c.dir) {
        eprintln!("processes are recorded in {}; stopping them first", c.dir.display());
        process::stop_recorded(&c.dir, Duration::from_secs(5))?;
    }
    let emulators = Emulators::start_with(EmulatorOptions {
        gcs_notification_topic: notification_topic,
        project: c.project.clone(),
        pubsub_port: c.pubsub_port,
        gcs_port: c.gcs_port,
        log_dir: Some(c.dir.clone()),
        lifetime: Lifetime::Detached,
        ..EmulatorOptions::default()
    })
    .await
    .context("starting the emulators")?;
    Ok(Arc::new(emulators))
}

fn has_pid_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "pid")))
        .unwrap_or(false)
}

async fn start(c: &Config) -> Result<()> {
    let emulators = start_emulators(c, Some(format!("{}gcs-notifications", c.prefix))).await?;
    let options = ClusterOptions {
        emulators: Some(emulators.clone()),
        prefix: c.prefix.clone(),
        bucket: c.bucket.clone(),
        dir: Some(c.dir.clone()),
        bin_dir: Some(c.bin_dir.clone()),
        // The programs' own defaults: this is the cluster as deployed, not a test.
        settings: Vec::new(),
        watch: false,
        lifetime: Lifetime::Detached,
    };
    // On any failure below, dropping the cluster and the emulators kills what started.
    let mut cluster = Cluster::start_with(options).await?;
    let stages = cluster.start_stages(1)?;
    cluster.wait_started(&stages, Duration::from_secs(60)).await?;
    cluster.detach()?;
    eprintln!("cluster up: emulators and five stages; logs in {}/*.log", c.dir.display());
    eprintln!("stop it with: scripts/cluster.sh stop {}", c.dir.display());
    detach_emulators(c, emulators, true)?;
    Ok(())
}

fn status(c: &Config) -> Result<()> {
    let mut any = false;
    for entry in std::fs::read_dir(&c.dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "pid") {
            continue;
        }
        any = true;
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        match std::fs::read_to_string(&path)?.trim().parse::<u32>() {
            Ok(pid) if !process::exited(pid) => println!("{name}: running (pid {pid})"),
            _ => println!("{name}: dead"),
        }
    }
    if !any {
        println!("nothing recorded in {}", c.dir.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let c = config(args.get(1))?;
    match args.first().map(String::as_str) {
        Some("start") => start(&c).await,
        Some("emulators") => {
            let topic = std::env::var("REEL_GCS_NOTIFY_TOPIC").ok().filter(|t| !t.is_empty());
            let emulators = start_emulators(&c, topic).await?;
            eprintln!("emulators running (logs in {})", c.dir.display());
            detach_emulators(&c, emulators, false)
        }
        Some("stop") => {
            process::stop_recorded(&c.dir, Duration::from_secs(5))?;
            let _ = std::fs::remove_file(c.dir.join("env"));
            eprintln!("stopped what was recorded in {}", c.dir.display());
            Ok(())
        }
        Some("env") => {
            print_env(&c);
            Ok(())
        }
        Some("status") => status(&c),
        _ => {
            eprintln!("usage: reel-cluster start|emulators|stop|env|status [DIR]");
            std::process::exit(2);
        }
    }
}
