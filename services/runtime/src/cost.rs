//! What a job costs: every delivery's use of CPU, memory, storage and bytes, priced.
//!
//! The worker measures each delivery (CPU time of the program and of the ffmpeg/ffprobe
//! children it waited for, from `getrusage`; wall time × the memory the service is
//! given; the storage operations and bytes of its [`crate::meter::StorageMeter`]),
//! prices it with [`CostConfig`] (Cloud Run's and Cloud Storage's list prices unless
//! configured), logs it with the delivery's outcome, and records it in the job's cost
//! ledger: one small object per delivery under `control/cost/{jobId}/` in the work store
//! (outside the workspace, which the end of a job removes; the work bucket's lifecycle
//! rule for `control/` removes it in the end). Whoever ends the job adds the
//! ledger up ([`job_cost`]): finalize into `job.completed`, the worker into `job.failed`
//! and `job.cancelled`; the fold carries it into `JobStatus.cost`. Deliveries of every
//! attempt count, retries and fan-out items included; a delivery that arrives after the
//! job ended is logged but not in the job's total.
//!
//! CPU time comes from the process's counters, so with `REEL_CONCURRENCY` above 1 a
//! delivery is also charged what others used meanwhile; the stitch service runs one
//! delivery per instance. Memory is charged for the delivery's whole wall time at the
//! service's size, as Cloud Run bills an instance while it handles a request.

use chrono::{DateTime, Utc};
use reel_events::payload::JobCost;
use reel_events::Stage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;

use crate::eta::Shape;
use crate::meter::StorageUse;
use crate::store::{PutMode, Store, StoreError};

/// Prices and the size of the service, section `[cost]` (`REEL_COST_…` or the last part
/// alone: `REEL_INSTANCE_VCPUS`, `REEL_INSTANCE_MEMORY`; terraform sets both from each
/// service's size).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// vCPUs the service is given (Cloud Run bills them for a request's duration).
    pub instance_vcpus: f64,
    /// Memory the service is given: Cloud Run's notation (`512Mi`, `4Gi`) or GiB.
    pub instance_memory: MemorySize,
    /// USD per vCPU-second (Cloud Run, request-based billing, tier 1: $0.000024).
    pub usd_per_vcpu_second: f64,
    /// USD per GiB-second (Cloud Run, tier 1: $0.0000025).
    pub usd_per_gib_second: f64,
    /// USD per Cloud Storage operation (class A, the dearer: $0.005 per 1,000).
    pub usd_per_storage_operation: f64,
    /// USD per byte moved through a program (inside one region: free).
    pub usd_per_byte_moved: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            instance_vcpus: 1.0,
            instance_memory: MemorySize(0.5),
            usd_per_vcpu_second: 0.000024,
            usd_per_gib_second: 0.0000025,
            usd_per_storage_operation: 0.000005,
            usd_per_byte_moved: 0.0,
        }
    }
}

impl CostConfig {
    /// Checks the values once, at startup.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("instance_vcpus", self.instance_vcpus),
            ("instance_memory", self.instance_memory.0),
            ("usd_per_vcpu_second", self.usd_per_vcpu_second),
            ("usd_per_gib_second", self.usd_per_gib_second),
            ("usd_per_storage_operation", self.usd_per_storage_operation),
            ("usd_per_byte_moved", self.usd_per_byte_moved),
        ];
        match all.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            Some((name, v)) => Err(format!("cost.{name} must be a number ≥ 0, not {v}")),
            None => Ok(()),
        }
    }

    /// The cost of one delivery that ran `wall`, used `cpu_seconds` and `storage`.
    pub fn price(&self, wall: Duration, cpu_seconds: f64, storage: StorageUse) -> JobCost {
        let secs = wall.as_secs_f64();
        let memory_gib_seconds = self.instance_memory.0 * secs;
        let bytes_moved = storage.bytes_read + storage.bytes_written;
        let estimated_usd = self.instance_vcpus * secs * self.usd_per_vcpu_second
            + memory_gib_seconds * self.usd_per_gib_second
            + storage.operations as f64 * self.usd_per_storage_operation
            + bytes_moved as f64 * self.usd_per_byte_moved;
        JobCost { cpu_seconds, memory_gib_seconds, storage_operations: storage.operations, bytes_moved, estimated_usd }
    }
}

/// A memory size in GiB, read from a number of GiB or from Cloud Run's notation
/// (`512Mi`, `4Gi`, `1G`, `1000M`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct MemorySize(pub f64);

impl MemorySize {
    /// Parse Cloud Run's notation, or a plain number of GiB.
    pub fn parse(text: &str) -> Result<MemorySize, String> {
        let text = text.trim();
        let units: [(&str, f64); 6] = [
            ("Ki", 1.0 / (1024.0 * 1024.0)),
            ("Mi", 1.0 / 1024.0),
            ("Gi", 1.0),
            ("K", 1e3 / 1073741824.0),
            ("M", 1e6 / 1073741824.0),
            ("G", 1e9 / 1073741824.0),
        ];
        let (number, scale) = units
            .iter()
            .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, *scale)))
            .unwrap_or((text, 1.0));
        number
            .trim()
            .parse::<f64>()
            .map(|n| MemorySize(n * scale))
            .map_err(|_| format!("{text:?} is not a memory size (e.g. 512Mi, 4Gi, or GiB as a number)"))
    }
}

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(MemorySize(n)),
            Raw::Text(t) => MemorySize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// CPU time so far of this process and of the children it waited for, s.
pub fn cpu_seconds_now() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF) + rusage_seconds(libc::RUSAGE_CHILDREN)
}

/// CPU time (user + system) `getrusage(who)` reports, s; 0 where it fails.
pub(crate) fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the struct we own; an all-zero rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Resident memory of process `pid` (`self` for this one), bytes; 0 where `/proc`
/// cannot tell.
pub(crate) fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Resident memory now of this process and its direct children (the ffmpeg and
/// ffprobe it runs), bytes; 0 where `/proc` cannot tell (not Linux).
pub fn rss_bytes_now() -> u64 {
    let me = std::process::id().to_string();
    let mut total = rss_of("self");
    let Ok(entries) = std::fs::read_dir("/proc") else { return total };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may hold spaces): state, then the parent's pid.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(String::from));
        if parent.as_deref() == Some(me.as_str()) {
            total += rss_of(pid);
        }
    }
    total
}

/// The ledger's prefix for a job.
fn ledger_prefix(job_id: &str) -> String {
    format!("control/cost/{job_id}/")
}

/// One delivery's line in the ledger.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// The stage (and part) that ran: `stitch`, `stitch-encode-003`.
    pub run: String,
    /// What it cost.
    #[serde(flatten)]
    pub cost: JobCost,
    /// The most memory the program and its children held during the delivery, MB.
    #[serde(default)]
    pub peak_memory_mb: f64,
    /// When the event it worked on was published (the stage's start, for [`crate::eta`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// What its event said of the job's size.
    #[serde(default)]
    pub shape: Shape,
}

impl LedgerEntry {
    /// The stage of the run.
    fn stage(&self) -> Option<Stage> {
        self.run.split('-').next()?.parse().ok()
    }
}

/// A job's use so far: its cost, the most memory one of its deliveries held, and how
/// long each stage took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUsage {
    /// The ledger added up.
    pub cost: JobCost,
    /// The largest peak memory of one delivery (program and ffmpeg together), MB.
    pub peak_memory_mb: f64,
    /// What the deliveries knew of the job's size, together.
    pub shape: Shape,
    /// Each stage's leg: from its earliest event published to its last delivery's end,
    /// seconds (the stages whose deliveries said both).
    pub legs: BTreeMap<Stage, f64>,
}

/// Record one delivery in the job's ledger.
pub async fn record(store: &dyn Store, job_id: &str, entry: &LedgerEntry) -> Result<(), StoreError> {
    let key = format!("{}{}-{}.json", ledger_prefix(job_id), entry.run, uuid::Uuid::new_v4().simple());
    let body = serde_json::to_vec(entry).expect("a cost serializes");
    store.put(&key, Box::pin(std::io::Cursor::new(body)), PutMode::CreateOnly).await.map(|_| ())
}

/// The job's cost so far: its ledger added up (entries that do not read are left out).
pub async fn job_cost(store: &dyn Store, job_id: &str) -> Result<JobCost, StoreError> {
    job_usage(store, job_id).await.map(|u| u.cost)
}

/// [`job_cost`], and the job's peak memory.
pub async fn job_usage(store: &dyn Store, job_id: &str) -> Result<JobUsage, StoreError> {
    let mut total = JobUsage::default();
    let mut spans: BTreeMap<Stage, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for key in store.list_keys(&ledger_prefix(job_id)).await? {
        let mut bytes = Vec::new();
        match store.get(&key).await {
            Ok(mut reader) => {
                if reader.read_to_end(&mut bytes).await.is_err() {
                    continue;
                }
            }
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        }
        if let Ok(entry) = serde_json::from_slice::<LedgerEntry>(&bytes) {
            total.cost.add(&entry.cost);
            total.peak_memory_mb = total.peak_memory_mb.max(entry.peak_memory_mb);
            total.shape.merge(&entry.shape);
            if let (Some(stage), Some(from), Some(to)) = (entry.stage(), entry.queued_at, entry.ended_at) {
                let span = spans.entry(stage).or_insert((from, to));
                *span = (span.0.min(from), span.1.max(to));
            }
        }
    }
    total.legs =
        spans.into_iter().map(|(stage, (from, to))| (stage, (to - from).num_milliseconds() as f64 / 1000.0)).collect();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::DirStore;

    #[tokio::test]
    async fn a_job_costs_what_its_deliveries_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        let prices = CostConfig { instance_vcpus: 2.0, instance_memory: MemorySize(4.0), ..CostConfig::default() };
        let use_ = StorageUse { operations: 10, bytes_read: 1000, bytes_written: 500 };
        let one = prices.price(Duration::from_secs(10), 15.0, use_);
        assert_eq!((one.memory_gib_seconds, one.bytes_moved, one.storage_operations), (40.0, 1500, 10));
        let usd = 2.0 * 10.0 * 0.000024 + 40.0 * 0.0000025 + 10.0 * 0.000005;
        assert!((one.estimated_usd - usd).abs() < 1e-12, "{}", one.estimated_usd);
        let t = |s: i64| Some(DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap());
        let entry = |run: &str, peak: f64, from: i64, to: i64, shape: Shape| LedgerEntry {
            run: run.into(),
            cost: one.clone(),
            peak_memory_mb: peak,
            queued_at: t(from),
            ended_at: t(to),
            shape,
        };
        let downloaded = Shape { clips: Some(2), input_bytes: Some(7), ..Shape::default() };
        let item = Shape { reencode: Some(true), ..downloaded.clone() };
        record(&store, "job_1", &entry("download", 100.0, 0, 3, Shape { clips: Some(2), ..Shape::default() }))
            .await
            .unwrap();
        record(&store, "job_1", &entry("stitch", 300.0, 3, 4, downloaded)).await.unwrap();
        record(&store, "job_1", &entry("stitch-encode-001", 500.0, 4, 9, item.clone())).await.unwrap();
        record(&store, "job_2", &entry("stitch", 100.0, 0, 1, Shape::default())).await.unwrap();
        let usage = job_usage(&store, "job_1").await.unwrap();
        assert_eq!(usage.peak_memory_mb, 500.0);
        assert_eq!(usage.shape, item, "what the deliveries knew, together");
        assert_eq!(
            usage.legs,
            BTreeMap::from([(Stage::Download, 3.0), (Stage::Stitch, 6.0)]),
            "the fan-out is stitch's"
        );
        let total = job_cost(&store, "job_1").await.unwrap();
        assert_eq!(total.cpu_seconds, 45.0);
        assert_eq!(total.storage_operations, 30);
        assert_eq!(job_cost(&store, "job_2").await.unwrap().storage_operations, 10);
        assert_eq!(job_cost(&store, "job_3").await.unwrap(), JobCost::default(), "no ledger, no cost");
    }

    #[test]
    fn memory_sizes_read_as_cloud_run_writes_them() {
        for (text, gib) in [("512Mi", 0.5), ("4Gi", 4.0), ("2", 2.0), ("1024Ki", 1.0 / 1024.0)] {
            assert_eq!(MemorySize::parse(text), Ok(MemorySize(gib)), "{text}");
        }
        assert!((MemorySize::parse("1G").unwrap().0 - 0.931).abs() < 0.001);
        assert!(MemorySize::parse("lots").is_err());
    }

    #[test]
    fn memory_counts_this_process_and_its_children() {
        let alone = rss_bytes_now();
        assert!(alone > 1_000_000, "{alone}");
        // A child holding 200 MB (written, so resident).
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import time; x = bytearray(200 * 1000 * 1000); time.sleep(10)"])
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let mut with_child = 0;
        while start.elapsed() < Duration::from_secs(8) {
            with_child = rss_bytes_now();
            if with_child > alone + 150_000_000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(with_child > alone + 150_000_000, "{with_child} vs {alone}: the child's memory is not counted");
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let start = cpu_seconds_now();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let used = cpu_seconds_now() - start;
        assert!(x > 0 && used > 0.02, "100 ms of spinning counted {used} s of CPU");
    }
}
