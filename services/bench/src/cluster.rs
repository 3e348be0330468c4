//! The measurements of issue 7 that need the local cluster (the stage programs on the
//! Pub/Sub emulator and fake-gcs-server): per-hop latency on the emulator, one job end
//! to end, and 50 small jobs submitted at once.
//!
//! The cluster is being built elsewhere; until it exists every row is reported as
//! "not run". To add them: start the cluster here (or require it running, as the e2e
//! tests do), measure, and return rows with `status: Status::Measured(..)` — the report
//! already renders them with their targets.

/// What happened to one cluster measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not run, and why.
    NotRun(String),
    /// Measured: the figure as text, and whether the target (if any) was met.
    Measured { figure: String, met: Option<bool> },
}

/// One row of the cluster table.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRow {
    /// What is measured.
    pub what: &'static str,
    /// The target, if any.
    pub target: &'static str,
    /// The outcome.
    pub status: Status,
}

/// The cluster measurements (`requested`: `--cluster` was given).
pub fn run(requested: bool) -> Vec<ClusterRow> {
    let why = if requested {
        "not run: the local cluster (stage programs on the Pub/Sub emulator + fake-gcs-server) is not available to the benchmark yet".to_string()
    } else {
        "not run: pass --cluster (needs the local cluster, not available yet)".to_string()
    };
    [
        ("per-hop latency on the Pub/Sub emulator (publish → handler start), p50 / p95", "p50 ≤ 50 ms"),
        ("one job end to end on the emulators (15 × 50 MB, copy path)", "—"),
        ("peak RSS of each stage process (cluster mode), two clip sizes", "≤ 50 MiB, flat"),
        ("throughput: 50 jobs of 2 clips × 2 s submitted at once: jobs/min, all completed", "all 50 completed"),
    ]
    .into_iter()
    .map(|(what, target)| ClusterRow { what, target, status: Status::NotRun(why.clone()) })
    .collect()
}
