//! What the copy path's overheads cost in isolation, and what the obvious fixes would
//! save: reel's own ffprobe commands (taken from the profiled run) over every clip,
//! one after another, merged into one call per clip, and in parallel; and one
//! CRC32C pass over every clip's bytes (what `DirStore::head` does for each file it
//! describes).

use crate::proc::{self, ToolRun};
use crate::report::kind;
use crate::stats::{self, Summary};
use crate::Env;
use anyhow::{Context as _, Result};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One variant: what, how many clips, the summary of its wall times (s).
#[derive(Debug, Clone)]
pub struct Variant {
    /// Description.
    pub what: String,
    /// Wall time over all clips, seconds.
    pub summary: Summary,
}

/// The results, with the clip count.
#[derive(Debug, Clone, Default)]
pub struct WhatIf {
    /// Clips per batch.
    pub clips: usize,
    /// Total clip bytes.
    pub bytes: u64,
    /// The variants.
    pub variants: Vec<Variant>,
}

/// The arguments of the first wrapped run of `wanted` kind, without the input.
fn template(tools: &[ToolRun], wanted: &str) -> Option<Vec<String>> {
    let t = tools.iter().find(|t| kind(t) == wanted)?;
    let mut a = t.args.clone();
    a.pop();
    Some(a)
}

fn url(p: &Path) -> String {
    format!("file:{}", p.display())
}

/// Runs `args_for(clip)` for every clip with `parallel` at a time; wall seconds.
fn batch(
    env: &Env,
    tool: &Path,
    clips: &[PathBuf],
    parallel: usize,
    args_for: &(dyn Fn(&Path) -> Vec<String> + Sync),
) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let log = env.work.join("logs").join("whatif.stderr");
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|w| {
                let (next, log) = (&next, log.with_extension(format!("{w}.stderr")));
                s.spawn(move || -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(clip) = clips.get(i) else { return Ok(()) };
                        let mut cmd = Command::new(tool);
                        cmd.args(args_for(clip)).stdout(Stdio::null());
                        proc::run(&mut cmd, false, &log)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed().as_secs_f64())
}

fn crc_pass(clips: &[PathBuf]) -> Result<f64> {
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut crc = 0u32;
    for c in clips {
        let mut f = std::fs::File::open(c)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
        }
    }
    std::hint::black_box(crc);
    Ok(start.elapsed().as_secs_f64())
}

/// Measures the variants `reps` times each (alternating), on `clips`, with reel's
/// ffprobe commands from `tools` (a profiled copy-path run).
pub fn run(env: &Env, clips: &[PathBuf], bytes: u64, tools: &[ToolRun], reps: usize) -> Result<WhatIf> {
    let probe = template(tools, "ffprobe: probe").context("no probe in the profiled run")?;
    let fingerprint =
        template(tools, "ffprobe: codec-header fingerprint").context("no fingerprint in the profiled run")?;
    let merged: Vec<String> = {
        let mut a = probe.clone();
        a.extend(["-show_data_hash".to_string(), "CRC32".to_string()]);
        a
    };
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let with = |t: &Vec<String>| {
        let t = t.clone();
        move |c: &Path| {
            let mut a = t.clone();
            a.push(url(c));
            a
        }
    };
    let (p, f, m) = (with(&probe), with(&fingerprint), with(&merged));
    let n = clips.len();
    let labels = [
        format!("{n} × reel's probe (`-show_streams -show_format`, as download runs it), one after another"),
        format!("{n} × reel's codec-header fingerprint (`-show_data_hash CRC32 -show_entries …`, as stitch runs it), one after another"),
        format!("{n} × one ffprobe doing both (probe + `-show_data_hash CRC32`), one after another"),
        format!("{n} × reel's probe, {nproc} at a time"),
        format!("{n} × one ffprobe doing both, {nproc} at a time"),
        format!("one CRC32C pass over the {n} clips' bytes ({:.0} MB, from the page cache)", bytes as f64 / 1e6),
    ];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); labels.len()];
    for _ in 0..reps {
        walls[0].push(batch(env, &env.ffprobe, clips, 1, &p)?);
        walls[1].push(batch(env, &env.ffprobe, clips, 1, &f)?);
        walls[2].push(batch(env, &env.ffprobe, clips, 1, &m)?);
        walls[3].push(batch(env, &env.ffprobe, clips, nproc, &p)?);
        walls[4].push(batch(env, &env.ffprobe, clips, nproc, &m)?);
        walls[5].push(crc_pass(clips)?);
    }
    let variants = labels
        .into_iter()
        .zip(walls)
        .filter_map(|(what, w)| stats::Summary::of(&w).map(|summary| Variant { what, summary }))
        .collect();
    Ok(WhatIf { clips: n, bytes, variants })
}
