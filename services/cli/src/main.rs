//! `reel`: stitch clips into a reel on this machine, or drive the cloud pipeline.

mod cloud;
mod cost;
mod local;
mod render;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use reel_events::fold::Status;
use reel_events::{Compression, Orientation};
use reel_runtime::config::{LogFormat, Settings};
use reel_runtime::topology::Queue;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "reel", version, about = "Stitch video clips into one reel.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stitch clips into one MP4 on this machine (every stage, embedded bus, no cloud).
    Stitch {
        /// Clips, in order (any container and codec ffmpeg reads).
        #[arg(required = true, value_name = "CLIP")]
        clips: Vec<PathBuf>,
        /// Where to write the reel (.mp4).
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// portrait (1080x1920), landscape (1920x1080) or square (1080x1080).
        /// Default: the first clip's.
        #[arg(long, value_name = "O")]
        orientation: Option<Orientation>,
        /// original | optimized | high_quality | small.
        #[arg(long, value_name = "C", default_value = "optimized")]
        compression: Compression,
        /// Replace OUT if it is reel's own earlier output (sends forceRestart). A file
        /// reel did not write is never replaced.
        #[arg(long)]
        overwrite: bool,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Generate clips from prompts on this machine (a titled test pattern per prompt:
    /// no Vertex AI needed), optionally stitched into a reel: prompts → clips → reel.
    Generate {
        /// One clip per prompt (1 to 20).
        #[arg(required = true, value_name = "PROMPT")]
        prompts: Vec<String>,
        /// Stitch the clips into a reel at -o.
        #[arg(long, requires = "output")]
        stitch: bool,
        /// Where to write the reel (.mp4), with --stitch.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Where the clips go (default: generated/JOB next to OUT, or in the current directory).
        #[arg(long, value_name = "DIR")]
        clips_dir: Option<PathBuf>,
        /// Length of each clip, s.
        #[arg(long, value_name = "S", default_value_t = 8)]
        seconds: u32,
        /// portrait, landscape or square.
        #[arg(long, value_name = "O", default_value = "portrait")]
        orientation: Orientation,
        /// The reel's preset: original | optimized | high_quality | small.
        #[arg(long, value_name = "C", default_value = "optimized")]
        compression: Compression,
        /// Replace OUT if it is reel's own earlier output.
        #[arg(long)]
        overwrite: bool,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Make sample clips and stitch them, for a first look.
    Demo {
        /// Where to put the clips and reels.
        #[arg(long, default_value = "reel-demo")]
        dir: PathBuf,
    },
    /// A job's state: from reel-api when --api/REEL_API_URL is set, else folded from the local event log.
    Status {
        /// The job id.
        job: String,
        /// Print JSON (the API's JobStatus).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// What ended jobs cost, per project and day: from reel-api (with --api and --project),
    /// else from the local event log.
    Cost {
        /// Only this project's jobs (required with --api).
        #[arg(long, value_name = "P")]
        project: Option<String>,
        /// Only jobs that ended on or after this day (YYYY-MM-DD, UTC).
        #[arg(long, value_name = "DATE")]
        since: Option<chrono::NaiveDate>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job: every stage stops its work on it, and it ends `cancelled`.
    Cancel {
        /// The job id.
        job: String,
        /// reel-api's base URL: cancel as the token's user (else, with cloud settings, as an
        /// operator through the work store; else the local pipeline's job).
        #[arg(long, env = "REEL_API_URL")]
        api: Option<String>,
        /// Bearer token for reel-api.
        #[arg(long, env = "REEL_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Create the topics, subscriptions and dead-letter topics (and, on the emulator, the buckets).
    Setup {
        /// Create the buckets named by the settings on a real project too.
        #[arg(long)]
        buckets: bool,
    },
    /// Publish a stitch.requested to the cloud pipeline (Pub/Sub or its emulator).
    Submit(cloud::Submit),
    /// Inspect and replay a stage's dead-letter queue without losing a message.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Fail the jobs of the local event log that outlived their deadline plus
    /// REEL_JOB_GRACE_MINUTES without an end (`job.failed`, `timeout`). On the cloud,
    /// reel-api's follower sweeps (reel_runtime::sweep::publish_overdue).
    Sweep {
        /// Say which jobs would be failed, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A project's jobs, folded from the local event log (local runs use project `local`).
    Jobs {
        /// The project id.
        project: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Where reel-api is, for the commands that can ask it instead of the local event log.
#[derive(clap::Args, Debug)]
struct Remote {
    /// reel-api's base URL (e.g. https://reel-api-xyz.run.app).
    #[arg(long, env = "REEL_API_URL")]
    api: Option<String>,
    /// Bearer token for reel-api.
    #[arg(long, env = "REEL_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Peek at the dead letters of STAGE: job, event type, attempts, errorType, reason, age.
    List {
        /// The stage whose dead-letter queue to read (`encode`: stitch's per-clip encodes; `generate`: generation requests and their prompts).
        #[arg(value_name = "STAGE", value_parser = queue_value())]
        stage: Queue,
        /// Show at most N letters.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print one JSON object per letter instead of a table.
        #[arg(long)]
        json: bool,
        /// The local queue ($REEL_HOME) even when cloud settings are present.
        #[arg(long)]
        local: bool,
    },
    /// Send dead letters back to STAGE; each is removed only after its republish is confirmed.
    Replay {
        /// The stage whose dead letters to send back to it (`encode`: stitch's per-clip encodes; `generate`: generation requests and their prompts).
        #[arg(value_name = "STAGE", value_parser = queue_value())]
        stage: Queue,
        /// Only the letters of this job.
        #[arg(long, value_name = "JOB_ID")]
        job: Option<String>,
        /// Only letters that died with this errorType (e.g. resource_exhausted).
        #[arg(long, value_name = "ERROR_TYPE")]
        error_type: Option<String>,
        /// Replay at most N letters (default: every one that matches).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Send them to this tier: `large` is stitch's larger-memory service (Pub/Sub only;
        /// for `stitch` and `encode`).
        #[arg(long, value_name = "TIER", default_value = "standard", value_parser = tier_value())]
        tier: reel_runtime::topology::Tier,
        /// Say what would be replayed, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The local queue ($REEL_HOME) even when cloud settings are present.
        #[arg(long)]
        local: bool,
    },
    /// Drop the dead letters of one job.
    Purge {
        /// The stage whose dead-letter queue to purge.
        #[arg(value_name = "STAGE", value_parser = queue_value())]
        stage: Queue,
        /// The job whose letters to drop.
        #[arg(long, value_name = "JOB_ID", required = true)]
        job: String,
        /// The local queue ($REEL_HOME) even when cloud settings are present.
        #[arg(long)]
        local: bool,
    },
}

/// STAGE's values, listed in `--help` and in the error for a wrong one.
fn tier_value() -> impl clap::builder::TypedValueParser<Value = reel_runtime::topology::Tier> {
    use clap::builder::TypedValueParser as _;
    use reel_runtime::topology::Tier;
    clap::builder::PossibleValuesParser::new(["standard", "large"]).map(|s| {
        if s == "large" {
            Tier::Large
        } else {
            Tier::Standard
        }
    })
}

fn queue_value() -> impl clap::builder::TypedValueParser<Value = Queue> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Queue::ALL.map(|q| q.as_str()))
        .map(|s| s.parse::<Queue>().expect("a listed queue parses"))
}

/// The settings, loaded once for the whole command.
static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get().expect("settings are loaded first in main")
}

/// Cloud mode when the settings name a project or an emulator.
fn cloud_configured() -> bool {
    settings().pubsub_emulator_host.is_some() || settings().google_cloud_project.is_some()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The CLI talks to people: only errors, readable, on stderr, unless LOG_LEVEL or
    // REEL_LOG_FORMAT ask for more.
    let defaults = Settings { log_level: "error".into(), log_format: LogFormat::Pretty, ..Settings::default() };
    let loaded = match Settings::load_over(defaults) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    reel_runtime::telemetry::init(&loaded.log_level, loaded.log_format, loaded.google_cloud_project.as_deref());
    let _ = SETTINGS.set(loaded);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Stitch { clips, output, orientation, compression, overwrite, quiet } => {
            stitch(clips, output, orientation, compression, overwrite, quiet).await
        }
        Command::Generate {
            prompts,
            stitch,
            output,
            clips_dir,
            seconds,
            orientation,
            compression,
            overwrite,
            quiet,
        } => {
            let request =
                GenerateArgs { prompts, stitch, output, clips_dir, seconds, orientation, compression, overwrite };
            generate(request, quiet).await
        }
        Command::Demo { dir } => demo(&dir).await,
        Command::Setup { buckets } => {
            cloud::setup(settings(), buckets).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(submit) => {
            let job = cloud::submit(settings(), submit).await?;
            println!("{job}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => dlq(command).await,
        Command::Sweep { dry_run } => {
            for job in local::sweep(&local::state_dir(), settings(), dry_run)? {
                let verb = if dry_run { "would fail" } else { "failed" };
                println!("{verb} {job}: it did not end within its deadline plus the grace (timeout)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job, api, token } => cancel(&job, api.as_deref(), token.as_deref()).await,
        Command::Cost { project, since, json, remote: Remote { api, token } } => {
            let statuses: Vec<reel_events::fold::JobStatus> = match (&api, &project) {
                (Some(api), Some(project)) => {
                    #[derive(serde::Deserialize)]
                    struct Jobs {
                        jobs: Vec<reel_events::fold::JobStatus>,
                    }
                    let list: Jobs = api_get(api, token.as_deref(), &format!("/api/projects/{project}/jobs")).await?;
                    list.jobs
                }
                (Some(_), None) => bail!("with --api, name the project: reel cost --project P"),
                (None, _) => local::fold_log(&local::state_dir())?
                    .values()
                    .filter(|j| project.as_ref().is_none_or(|p| &j.project_id == p))
                    .map(|j| j.to_status())
                    .collect(),
            };
            let lines = cost::table(&statuses, since);
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                cost::print(&lines);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { job, json, remote: Remote { api: Some(api), token } } => {
            let status: reel_events::fold::JobStatus =
                api_get(&api, token.as_deref(), &format!("/api/jobs/{job}/status")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                render::print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { project, json, remote: Remote { api: Some(api), token } } => {
            #[derive(serde::Deserialize)]
            struct Jobs {
                jobs: Vec<reel_events::fold::JobStatus>,
            }
            let list: Jobs = api_get(&api, token.as_deref(), &format!("/api/projects/{project}/jobs")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "jobs": list.jobs }))?);
            } else {
                list.jobs.iter().for_each(render::print_status_line);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { job, json, .. } => {
            let jobs = local::fold_log(&local::state_dir())?;
            let Some(state) = jobs.get(&job) else {
                bail!("no job {job:?} on the local event log ({})", local::log_path(&local::state_dir()).display());
            };
            let status = state.to_status();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                render::print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { project, json, .. } => {
            let jobs = local::fold_log(&local::state_dir())?;
            let statuses: Vec<_> = jobs.values().filter(|j| j.project_id == project).map(|j| j.to_status()).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "jobs": statuses }))?);
            } else if statuses.is_empty() {
                println!("no jobs for project {project:?}");
            } else {
                for s in &statuses {
                    render::print_status_line(s);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// GET a reel-api path and decode its JSON, with errors that name the status.
/// `reel cancel JOB`: through reel-api when given one (the API checks the caller owns
/// the job), else by writing the job's cancel marker in the work store the stages poll
/// (cloud settings: the pipeline's; otherwise the local pipeline's).
async fn cancel(job: &str, api: Option<&str>, token: Option<&str>) -> Result<ExitCode> {
    if !reel_runtime::stage::valid_id(job) {
        bail!("{job:?} is not a job id");
    }
    if let Some(api) = api {
        #[derive(serde::Deserialize)]
        struct Answer {
            success: bool,
            message: String,
        }
        let answer: Answer = api_call(reqwest::Method::POST, api, token, &format!("/api/jobs/{job}/cancel")).await?;
        println!("{}", answer.message);
        return Ok(if answer.success { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let work: std::sync::Arc<dyn reel_runtime::Store> = if cloud_configured() {
        cloud::work_store(settings()).await?
    } else {
        std::sync::Arc::new(reel_runtime::embedded::DirStore::new(local::state_dir().join("work"))?)
    };
    if reel_runtime::stage::job_completed(work.as_ref(), job).await? {
        println!("job {job} has already completed; there is nothing to cancel");
        return Ok(ExitCode::FAILURE);
    }
    let marker = serde_json::to_vec(&serde_json::json!({ "jobId": job, "requestedAt": chrono::Utc::now() }))?;
    let key = reel_runtime::stage::cancel_marker_key(job);
    work.put(&key, Box::pin(std::io::Cursor::new(marker)), reel_runtime::PutMode::Overwrite)
        .await
        .with_context(|| format!("writing the cancel marker of {job}"))?;
    println!("cancelling {job}: every stage stops its work on it within a few seconds");
    Ok(ExitCode::SUCCESS)
}

async fn api_get<T: serde::de::DeserializeOwned>(base: &str, token: Option<&str>, path: &str) -> Result<T> {
    api_call(reqwest::Method::GET, base, token, path).await
}

async fn api_call<T: serde::de::DeserializeOwned>(
    method: reqwest::Method,
    base: &str,
    token: Option<&str>,
    path: &str,
) -> Result<T> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("calling {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url}: HTTP {status}: {}", body.chars().take(300).collect::<String>());
    }
    serde_json::from_str(&body).with_context(|| format!("reading the answer of {url}"))
}

async fn dlq(command: DlqCommand) -> Result<ExitCode> {
    let state = local::state_dir();
    match command {
        DlqCommand::List { stage, limit, json, local } => {
            if cloud_configured() && !local {
                cloud::dlq_list(settings(), stage, limit, json).await?;
            } else {
                let letters: Vec<_> = local::dead_letters(&state, stage)?
                    .iter()
                    .take(limit)
                    .map(|m| cloud::describe(&m.message, &m.message_id, m.publish_time))
                    .collect();
                cloud::print_dead_letters(stage, &letters, json)?;
            }
        }
        DlqCommand::Replay { stage, job, error_type, limit, tier, dry_run, local } => {
            let filter = cloud::Filter { job, error_type, limit: limit.unwrap_or(usize::MAX) };
            if cloud_configured() && !local {
                cloud::dlq_replay(settings(), stage, tier, filter, dry_run, false).await?;
            } else if tier == reel_runtime::topology::Tier::Large {
                anyhow::bail!("the local pipeline has one tier; `--tier large` is for Pub/Sub");
            } else {
                let all = local::dead_letters(&state, stage)?;
                let (mut chosen, mut keep) = (Vec::new(), Vec::new());
                for m in all {
                    let letter = cloud::describe(&m.message, &m.message_id, m.publish_time);
                    let selected = chosen.len() < filter.limit
                        && filter.job.as_ref().is_none_or(|j| &letter.job_id == j)
                        && filter.error_type.as_ref().is_none_or(|t| &letter.error_type == t);
                    if selected {
                        chosen.push((letter, m));
                    } else {
                        keep.push(m);
                    }
                }
                let completed = local::fold_log(&state)?;
                let (mut replay, mut skipped) = (Vec::new(), 0);
                for (letter, m) in chosen {
                    if completed.get(&letter.job_id).is_some_and(|j| j.status() == Status::Completed) {
                        println!("skipped {}: the job already completed", letter.job_id);
                        skipped += 1;
                    } else if dry_run {
                        println!("would replay {} ({}, {})", letter.job_id, letter.event_type, letter.error_type);
                        keep.push(m);
                    } else {
                        replay.push((letter, m));
                    }
                }
                if dry_run {
                    println!("dry run: nothing changed");
                    return Ok(ExitCode::SUCCESS);
                }
                let mut pipeline = local::LocalPipeline::start(&state, settings().clone()).await?;
                let messages =
                    replay.iter().map(|(_, m)| cloud::for_replay(&m.message, settings().job_timeout())).collect();
                // The republish is confirmed (in-process) before the queue file is rewritten.
                let result = pipeline.replay(stage, messages, std::time::Duration::from_secs(900)).await;
                local::rewrite_dead_letters(&state, stage, &keep)?;
                pipeline.shutdown().await;
                for job in result? {
                    println!("replayed {}: {}", job.job_id, job.status().as_str());
                }
                println!("{} replayed, {skipped} skipped (completed), {} left", replay.len(), keep.len());
            }
        }
        DlqCommand::Purge { stage, job, local } => {
            if cloud_configured() && !local {
                cloud::dlq_replay(
                    settings(),
                    stage,
                    reel_runtime::topology::Tier::Standard,
                    cloud::Filter { job: Some(job), error_type: None, limit: usize::MAX },
                    false,
                    true,
                )
                .await?;
            } else {
                let all = local::dead_letters(&state, stage)?;
                let before = all.len();
                let keep: Vec<_> = all
                    .into_iter()
                    .filter(|m| cloud::describe(&m.message, &m.message_id, m.publish_time).job_id != job)
                    .collect();
                local::rewrite_dead_letters(&state, stage, &keep)?;
                println!("purged {} dead letter(s) of {job}", before - keep.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Check what can be checked before any work starts, with messages that name the problem.
fn prepare(clips: Vec<PathBuf>, output: PathBuf) -> Result<(Vec<PathBuf>, PathBuf)> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    if clips.len() < 2 {
        bail!("a reel needs at least 2 clips; got {}", clips.len());
    }
    let mut absolute = Vec::new();
    for clip in clips {
        let path = if clip.is_absolute() { clip.clone() } else { cwd.join(&clip) };
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("clip not found: {}", clip.display()),
            _ => anyhow::anyhow!("cannot read clip {}: {e}", clip.display()),
        })?;
        if !meta.is_file() {
            bail!("clip {} is not a file", clip.display());
        }
        absolute.push(std::fs::canonicalize(&path).unwrap_or(path));
    }
    let output = prepare_output(output)?;
    if absolute.contains(&output) {
        bail!("the output {} is one of the clips", output.display());
    }
    Ok((absolute, output))
}

/// The reel's path made absolute, checked to be an MP4 in a writable directory.
fn prepare_output(output: PathBuf) -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let output = if output.is_absolute() { output } else { cwd.join(output) };
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if !matches!(ext.as_str(), "mp4" | "m4v" | "mov") {
        bail!("output {} must end in .mp4", output.display());
    }
    let parent = output.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        bail!("cannot write {}: directory {} does not exist", output.display(), parent.display());
    }
    let probe = parent.join(format!(".reel-write-test-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => bail!("cannot write {}: {e}", output.display()),
    }
    Ok(std::fs::canonicalize(parent).unwrap_or(parent.to_path_buf()).join(output.file_name().unwrap_or_default()))
}

async fn stitch(
    clips: Vec<PathBuf>,
    output: PathBuf,
    orientation: Option<Orientation>,
    compression: Compression,
    overwrite: bool,
    quiet: bool,
) -> Result<ExitCode> {
    let (clips, output) = prepare(clips, output)?;
    check_tools()?;
    let orientation = match orientation {
        Some(o) => o,
        None => guess_orientation(&clips).await,
    };
    let job = local::StitchJob { clips, output, orientation, compression, overwrite };
    run_job(&job, quiet).await
}

/// ffmpeg and ffprobe must be installed: found on `PATH` (or where `REEL_FFMPEG` /
/// `REEL_FFPROBE` point) and executable. Checked without starting them, which would cost
/// ~60 ms of the copy path's ~2 s.
fn check_tools() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    for program in [&settings().media.ffmpeg, &settings().media.ffprobe] {
        let program = program.as_path();
        let found = if program.components().count() > 1 {
            executable(program)
        } else {
            std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
        };
        if !found {
            anyhow::bail!(
                "{} is not installed or not on PATH; install ffmpeg (apt-get install ffmpeg)",
                program.display()
            );
        }
    }
    Ok(())
}

/// The first readable clip's displayed shape decides the default orientation.
async fn guess_orientation(clips: &[PathBuf]) -> Orientation {
    for clip in clips {
        if let Ok(info) = reel_media::probe(&reel_media::MediaConfig::default(), clip).await {
            let (w, h) = info.video.display_size();
            return Orientation::closest_to(w, h);
        }
    }
    Orientation::Portrait
}

/// The local pipeline, and the token Ctrl-C fires to interrupt it.
async fn start_local() -> Result<(local::LocalPipeline, CancellationToken)> {
    let pipeline = local::LocalPipeline::start(&local::state_dir(), settings().clone()).await?;
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    Ok((pipeline, interrupt))
}

async fn run_job(job: &local::StitchJob, quiet: bool) -> Result<ExitCode> {
    let (mut pipeline, interrupt) = start_local().await?;
    let mut bar = render::ProgressView::new(quiet);
    let result = pipeline.run(job, &mut bar, interrupt.clone()).await;
    bar.finish();
    pipeline.shutdown().await;
    let result = result?;
    if let Some(stage) = result.resumed_from {
        if !quiet {
            eprintln!("resumed job {} at the {stage} stage", result.job_id);
        }
    }
    if interrupt.is_cancelled() && !result.state.status().is_terminal() {
        eprintln!("interrupted; run the same command again to resume job {}", result.job_id);
        return Ok(ExitCode::from(130));
    }
    let status = result.state.to_status();
    render::print_result(&status);
    Ok(match status.status {
        Status::Completed => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// `reel generate`'s arguments.
struct GenerateArgs {
    prompts: Vec<String>,
    stitch: bool,
    output: Option<PathBuf>,
    clips_dir: Option<PathBuf>,
    seconds: u32,
    orientation: Orientation,
    compression: Compression,
    overwrite: bool,
}

async fn generate(args: GenerateArgs, quiet: bool) -> Result<ExitCode> {
    check_tools()?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let reel = match (args.stitch, args.output) {
        (true, Some(output)) => Some((prepare_output(output)?, args.compression)),
        (false, Some(_)) => anyhow::bail!("-o names the reel: add --stitch"),
        _ => None,
    };
    let job_id = local::GenerateJob::job_id(&args.prompts, args.seconds, args.orientation);
    let clips_dir = match args.clips_dir {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => cwd.join(dir),
        None => {
            let base = reel.as_ref().and_then(|(out, _)| out.parent().map(Path::to_path_buf)).unwrap_or(cwd);
            base.join("generated").join(&job_id)
        }
    };
    std::fs::create_dir_all(&clips_dir).with_context(|| format!("creating {}", clips_dir.display()))?;
    let job = local::GenerateJob {
        prompts: args.prompts,
        clip_seconds: args.seconds,
        orientation: args.orientation,
        clips_dir,
        reel,
        overwrite: args.overwrite,
    };
    let (mut pipeline, interrupt) = start_local().await?;
    let mut bar = render::ProgressView::new(quiet);
    let result = pipeline.generate(&job, &mut bar, interrupt.clone()).await;
    bar.finish();
    pipeline.shutdown().await;
    let result = result?;
    if interrupt.is_cancelled() {
        eprintln!("interrupted; job {job_id} stopped");
        return Ok(ExitCode::from(130));
    }
    let generation = result.generation.to_status();
    render::print_result(&generation);
    let mut ok = generation.status == Status::Completed;
    if let Some(reel) = &result.reel {
        let reel = reel.to_status();
        render::print_result(&reel);
        ok &= reel.status == Status::Completed;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn demo(dir: &Path) -> Result<ExitCode> {
    use reel_media::SampleSpec;
    let media = reel_media::MediaConfig::default();
    reel_media::ffmpeg_version(&media).map_err(|e| anyhow::anyhow!("{e}; install ffmpeg (apt-get install ffmpeg)"))?;
    let clips_dir = dir.join("clips");
    std::fs::create_dir_all(&clips_dir).with_context(|| format!("creating {}", clips_dir.display()))?;
    let specs = [
        (
            "01-portrait.mp4",
            SampleSpec { width: 720, height: 1280, seconds: 3.0, fps: 30, audio: true, label: "one".into() },
        ),
        (
            "02-portrait.mp4",
            SampleSpec { width: 720, height: 1280, seconds: 3.0, fps: 30, audio: true, label: "two".into() },
        ),
        (
            "03-portrait.mp4",
            SampleSpec { width: 720, height: 1280, seconds: 3.0, fps: 30, audio: true, label: "three".into() },
        ),
        (
            "04-landscape-silent.mp4",
            SampleSpec { width: 640, height: 360, seconds: 3.0, fps: 25, audio: false, label: "four".into() },
        ),
    ];
    println!("making sample clips in {}", clips_dir.display());
    let mut paths = Vec::new();
    for (name, spec) in &specs {
        let path = clips_dir.join(name);
        if !path.exists() {
            reel_media::make_sample_clip(&media, &path, spec)
                .await
                .with_context(|| format!("making {}", path.display()))?;
        }
        paths.push(path);
    }
    println!("\n1/2: three clips of one format: joined by stream copy");
    let copy = local::StitchJob {
        clips: paths[..3].iter().map(|p| std::fs::canonicalize(p).unwrap_or(p.clone())).collect(),
        output: std::fs::canonicalize(dir)?.join("reel-copy.mp4"),
        orientation: Orientation::Portrait,
        compression: Compression::Optimized,
        overwrite: true,
    };
    let first = run_job(&copy, false).await?;
    println!("\n2/2: all four clips, of different sizes, one silent: re-encoded to 1080x1920");
    let mixed = local::StitchJob {
        clips: paths.iter().map(|p| std::fs::canonicalize(p).unwrap_or(p.clone())).collect(),
        output: std::fs::canonicalize(dir)?.join("reel-mixed.mp4"),
        orientation: Orientation::Portrait,
        compression: Compression::Optimized,
        overwrite: true,
    };
    let second = run_job(&mixed, false).await?;
    if first != ExitCode::SUCCESS {
        return Ok(first);
    }
    Ok(second)
}
