//! reel's test kit: what tests (and the bench) need to run reel against real services.
//!
//! - [`ports`]: free ports, and whether a process holds one;
//! - [`process`]: children in their own process group, stopped by PID, dying with the
//!   test (or detached and recorded in pid files, for `reel-cluster`);
//! - [`emulators`]: the Pub/Sub emulator and fake-gcs-server on free ports (with a retry
//!   when another process takes the port first), and clients for them;
//! - [`cluster`]: one isolated deployment on the emulators — `reel setup`, the stage
//!   programs and `reel-api` as processes with logs, start / stop / kill / restart one,
//!   and the event log seen through a subscription of its own;
//! - [`http`]: a bare HTTP client, as an outside caller of `reel-api` would be;
//! - [`proxy`]: a TCP proxy in front of an emulator that resets connections or answers
//!   `403` on demand (network faults and missing permissions, for real clients);
//! - [`fixtures`]: sample values (a subscription, a job, unique names) and clips made
//!   with ffmpeg.
//! - [`stage`]: one stage handler in process — a `Settings`, a directory store and a
//!   `Context`, no bus — for the stage crates' tests.
//! - [`veo`]: a local Veo server (Vertex AI's `predictLongRunning` and
//!   `fetchPredictOperation` with the documented shapes), every outcome scripted by
//!   markers in the prompt (`[quota]`, `[refuse]`, `[fail]`, `[slow]`, …), requests
//!   recorded.
//!
//! A dev-dependency only: no production program links it (the bench is not one). The
//! binary `reel-cluster` (`start|stop|env|status`) is what `scripts/cluster.sh` runs.
//!
//! ```no_run
//! # async fn example() {
//! use reel_testkit::cluster::Cluster;
//! use std::time::Duration;
//! let mut cluster = Cluster::start().await;
//! cluster.start_all();
//! let done = cluster.wait_for(Some("job_1"), reel_events::types::JOB_COMPLETED, Duration::from_secs(60)).await;
//! # }
//! ```

pub mod cluster;
pub mod emulators;
pub mod fixtures;
pub mod http;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod stage;
pub mod veo;

pub use cluster::{Cluster, ClusterOptions, Program};
pub use emulators::{EmulatorOptions, Emulators, PROJECT};
pub use fixtures::unique;
