//! When a job will complete, learned from the jobs that completed before it.
//!
//! A stage's time is its *leg*: from the event that started the stage to the stage's
//! last delivery ending. Queueing, redeliveries and a fan-out's encode items are in it,
//! as they are in what a user waits for. Each leg is modelled as `a + b·x`, where `x`
//! is what the stage's work grows with:
//!
//! | leg | x |
//! | --- | --- |
//! | validate | clips |
//! | download | MB of clips |
//! | stitch, copy | MB of clips |
//! | stitch, re-encode | seconds of video encoded |
//! | upload | MB of reel |
//! | finalize | clips |
//! | generate | prompts |
//!
//! `a` and `b` are fitted by exponentially weighted least squares over the completed
//! jobs ([`DECAY`] per job, so about the last ten count). Until a leg has seen a job, a
//! prior from the benchmarks stands in. What a stage does not know yet about its job
//! (the clips' sizes before download, the video's length before probing, the reel's size
//! before stitch, whether stitch re-encodes) comes from learned ratios too: MB per clip,
//! seconds of video per MB, reel MB per clip MB, the share of jobs that re-encode.
//!
//! The rates live in one small object of the work store, [`RATES_KEY`]. The worker that
//! publishes a `job.completed` reads the job's cost ledger ([`crate::cost`]: every
//! delivery's stage, start and end, and what it knew of the job's shape), adds the
//! job's legs to the rates and writes them back; two jobs completing at the same instant
//! may lose one of the two updates, which an estimate can afford. Every delivery reads
//! the rates (cached for 5 s) and its progress events carry
//! `now + the rest of this stage + every later stage`, the rest of this stage being
//! the model's remainder, trusted less as the stage's own progress grows and its rate
//! is known better.

use chrono::{DateTime, Utc};
use reel_events::Stage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::store::{PutMode, Store, StoreError};

/// Where the rates live in the work store (outside any job's workspace).
pub const RATES_KEY: &str = "control/eta/rates.json";

/// Weight kept by everything learned before, per job learned.
pub const DECAY: f64 = 0.85;

/// What a stage's time is modelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leg {
    /// validate: per clip.
    Validate,
    /// download: per MB of clips.
    Download,
    /// stitch when it joins the clips as they are: per MB of clips.
    StitchCopy,
    /// stitch when it re-encodes: per second of video.
    StitchReencode,
    /// upload: per MB of reel.
    Upload,
    /// finalize: per clip.
    Finalize,
    /// generate (the generation job): per prompt, the prompts generated at once.
    Generate,
}

impl Leg {
    /// `(a, b)` until a job taught better: seconds, and seconds per unit of `x`. From
    /// docs/BENCHMARKS.md (emulators, 2 cores): a copy job of 15 × 50 MB takes about
    /// 15 s, a re-encode about a second per second of 1080p video.
    fn prior(self) -> (f64, f64) {
        match self {
            Leg::Validate => (0.3, 0.02),
            Leg::Download => (0.5, 0.01),
            Leg::StitchCopy => (0.5, 0.01),
            Leg::StitchReencode => (1.5, 1.0),
            Leg::Upload => (0.3, 0.003),
            Leg::Finalize => (0.3, 0.02),
            // Veo takes one to three minutes a clip; the prompts run at once.
            Leg::Generate => (90.0, 2.0),
        }
    }

    /// The leg of `stage` for a job that re-encodes or not.
    fn of(stage: Stage, reencode: bool) -> Leg {
        match stage {
            Stage::Validate => Leg::Validate,
            Stage::Download => Leg::Download,
            Stage::Stitch if reencode => Leg::StitchReencode,
            Stage::Stitch => Leg::StitchCopy,
            Stage::Upload => Leg::Upload,
            Stage::Finalize => Leg::Finalize,
            Stage::Generate => Leg::Generate,
        }
    }
}

/// What is known of a job's size, from its events' payloads. Every field is optional:
/// each stage knows more than the one before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Shape {
    /// Clips in the request (or usable after download).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clips: Option<u32>,
    /// Bytes of the clips (from download on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    /// Seconds of video (the clips' from download on, the reel's from stitch on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_seconds: Option<f64>,
    /// Bytes of the reel (from stitch on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reel_bytes: Option<u64>,
    /// Whether stitch re-encodes (known once it decided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reencode: Option<bool>,
}

impl Shape {
    /// What a pipeline event's payload says of the job: `job.clipPaths`, `clips[]`
    /// (`sizeBytes`, `info.durationSeconds`), `reel` (`sizeBytes`, `durationSeconds`,
    /// `mode`), `clipIndex` (an encode item). Lenient: what does not read is unknown.
    pub fn of_data(data: &serde_json::Value) -> Shape {
        let mut shape = Shape::default();
        let clips = data.get("clips").and_then(|c| c.as_array());
        if let Some(clips) = clips {
            shape.clips = u32::try_from(clips.len()).ok();
            let sizes: Option<u64> = clips.iter().map(|c| c.get("sizeBytes").and_then(|v| v.as_u64())).sum();
            shape.input_bytes = sizes;
            let seconds: Option<f64> =
                clips.iter().map(|c| c.pointer("/info/durationSeconds").and_then(|v| v.as_f64())).sum();
            shape.video_seconds = seconds;
        } else if let Some(paths) =
            data.pointer("/job/clipPaths").or_else(|| data.pointer("/job/prompts")).and_then(|p| p.as_array())
        {
            shape.clips = u32::try_from(paths.len()).ok();
        }
        if let Some(reel) = data.get("reel") {
            shape.reel_bytes = reel.get("sizeBytes").and_then(|v| v.as_u64());
            if let Some(seconds) = reel.get("durationSeconds").and_then(|v| v.as_f64()) {
                shape.video_seconds = Some(seconds);
            }
            shape.reencode = reel.get("mode").and_then(|m| m.as_str()).map(|m| m == "reencode");
        }
        if data.get("clipIndex").is_some() {
            shape.reencode = Some(true);
        }
        shape
    }

    /// Fill what this shape does not know from `other`.
    pub fn merge(&mut self, other: &Shape) {
        self.clips = self.clips.or(other.clips);
        self.input_bytes = self.input_bytes.or(other.input_bytes);
        self.video_seconds = self.video_seconds.or(other.video_seconds);
        self.reel_bytes = self.reel_bytes.or(other.reel_bytes);
        self.reencode = self.reencode.or(other.reencode);
    }
}

/// `y = a + b·x` fitted by exponentially weighted least squares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Fit {
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl Fit {
    fn add(&mut self, x: f64, y: f64) {
        for s in [&mut self.w, &mut self.sx, &mut self.sy, &mut self.sxx, &mut self.sxy] {
            *s *= DECAY;
        }
        self.w += 1.0;
        self.sx += x;
        self.sy += y;
        self.sxx += x * x;
        self.sxy += x * y;
    }

    /// The fitted line at `x`; with one size of job seen so far, the prior's fixed part
    /// (or less) and the rest of what was seen per unit of `x`; with nothing seen, the
    /// prior.
    fn predict(&self, x: f64, (prior_a, prior_b): (f64, f64)) -> f64 {
        if self.w < 0.5 {
            return prior_a + prior_b * x;
        }
        let (mx, my) = (self.sx / self.w, self.sy / self.w);
        let var = self.sxx / self.w - mx * mx;
        let (a, b) = if var > 1e-6 * mx.abs().max(1.0).powi(2) {
            let b = ((self.sxy / self.w - mx * my) / var).max(0.0);
            let a = my - b * mx;
            if a >= 0.0 {
                (a, b)
            } else {
                (0.0, (self.sxy / self.sxx).max(0.0))
            }
        } else {
            let a = prior_a.min(my);
            (a, if mx > 0.0 { (my - a) / mx } else { prior_b })
        };
        a + b * x
    }
}

/// A weighted mean that forgets as [`Fit`] does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Mean {
    w: f64,
    sum: f64,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.w = self.w * DECAY + 1.0;
        self.sum = self.sum * DECAY + v;
    }

    fn or(&self, default: f64) -> f64 {
        if self.w < 0.5 {
            default
        } else {
            self.sum / self.w
        }
    }
}

/// What the completed jobs taught.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rates {
    /// Jobs learned from.
    pub jobs: u64,
    legs: BTreeMap<Leg, Fit>,
    reencode_share: Mean,
    mb_per_clip: Mean,
    seconds_per_mb: Mean,
    reel_per_input: Mean,
}

const MB: f64 = 1e6;

impl Rates {
    fn input_mb(&self, shape: &Shape) -> f64 {
        match shape.input_bytes {
            Some(bytes) => bytes as f64 / MB,
            None => self.clips(shape) * self.mb_per_clip.or(10.0),
        }
    }

    fn clips(&self, shape: &Shape) -> f64 {
        f64::from(shape.clips.unwrap_or(2))
    }

    fn x(&self, leg: Leg, shape: &Shape) -> f64 {
        match leg {
            Leg::Validate | Leg::Finalize | Leg::Generate => self.clips(shape),
            Leg::Download | Leg::StitchCopy => self.input_mb(shape),
            Leg::StitchReencode => {
                shape.video_seconds.unwrap_or_else(|| self.input_mb(shape) * self.seconds_per_mb.or(0.5))
            }
            Leg::Upload => match shape.reel_bytes {
                Some(bytes) => bytes as f64 / MB,
                None => self.input_mb(shape) * self.reel_per_input.or(1.0),
            },
        }
    }

    fn leg_seconds(&self, leg: Leg, shape: &Shape) -> f64 {
        let fit = self.legs.get(&leg).cloned().unwrap_or_default();
        fit.predict(self.x(leg, shape), leg.prior()).max(0.0)
    }

    /// The seconds `stage` is expected to take for a job of `shape`; for stitch before it
    /// decided, weighed by the share of jobs that re-encode.
    pub fn stage_seconds(&self, stage: Stage, shape: &Shape) -> f64 {
        match (stage, shape.reencode) {
            (Stage::Stitch, None) => {
                let share = self.reencode_share.or(0.5);
                share * self.leg_seconds(Leg::StitchReencode, shape)
                    + (1.0 - share) * self.leg_seconds(Leg::StitchCopy, shape)
            }
            (stage, reencode) => self.leg_seconds(Leg::of(stage, reencode.unwrap_or(false)), shape),
        }
    }

    /// Seconds from now until a job of `shape` completes, when `stage` has run
    /// `elapsed` seconds and reports `stage_progress` (0–100).
    pub fn remaining_seconds(&self, shape: &Shape, stage: Stage, stage_progress: f64, elapsed: f64) -> f64 {
        let predicted = self.stage_seconds(stage, shape);
        let by_model = (predicted - elapsed).max(0.0);
        let p = (stage_progress / 100.0).clamp(0.0, 1.0);
        let here = if p > 0.0 && elapsed > 0.0 {
            let by_rate = elapsed * (1.0 - p) / p;
            (1.0 - p) * by_model + p * by_rate
        } else {
            by_model
        };
        let later: f64 = stage.later().iter().map(|s| self.stage_seconds(*s, shape)).sum();
        here + later
    }

    /// [`Rates::remaining_seconds`] as an instant.
    pub fn completion(
        &self,
        shape: &Shape,
        stage: Stage,
        stage_progress: f64,
        stage_started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let elapsed = (now - stage_started).num_milliseconds().max(0) as f64 / 1000.0;
        let remaining = self.remaining_seconds(shape, stage, stage_progress, elapsed);
        now + chrono::Duration::milliseconds((remaining * 1000.0).min(86_400_000.0) as i64)
    }

    /// Learn from one completed job: its shape, and how long each stage took.
    pub fn learn(&mut self, shape: &Shape, legs: &BTreeMap<Stage, f64>) {
        let reencode = shape.reencode.unwrap_or(false);
        for (stage, seconds) in legs {
            if seconds.is_finite() && *seconds >= 0.0 {
                let leg = Leg::of(*stage, reencode);
                let x = self.x(leg, shape);
                self.legs.entry(leg).or_default().add(x, *seconds);
            }
        }
        self.reencode_share.add(if reencode { 1.0 } else { 0.0 });
        if let (Some(clips), Some(bytes)) = (shape.clips.filter(|c| *c > 0), shape.input_bytes) {
            self.mb_per_clip.add(bytes as f64 / MB / f64::from(clips));
        }
        if let Some(mb) = shape.input_bytes.map(|b| b as f64 / MB).filter(|mb| *mb > 0.0) {
            if let Some(seconds) = shape.video_seconds {
                self.seconds_per_mb.add(seconds / mb);
            }
            if let Some(reel) = shape.reel_bytes {
                self.reel_per_input.add(reel as f64 / MB / mb);
            }
        }
        self.jobs += 1;
    }
}

/// The rates in the work store, or none learned yet (also when the object does not read
/// as rates); a store error is the caller's to judge.
pub async fn load(store: &dyn Store) -> Result<Rates, StoreError> {
    let bytes = crate::store::read_all(store, RATES_KEY).await?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default())
}

/// Add a completed job to the rates in the work store.
pub async fn learn(store: &dyn Store, shape: &Shape, legs: &BTreeMap<Stage, f64>) -> Result<Rates, StoreError> {
    let mut rates = load(store).await?;
    rates.learn(shape, legs);
    let body = serde_json::to_vec(&rates).expect("rates serialize");
    store.put(RATES_KEY, Box::pin(std::io::Cursor::new(body)), PutMode::Overwrite).await?;
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_job(clips: u32, mb: f64) -> Shape {
        Shape {
            clips: Some(clips),
            input_bytes: Some((mb * MB) as u64),
            video_seconds: Some(mb / 2.0),
            reel_bytes: Some((mb * MB) as u64),
            reencode: Some(false),
        }
    }

    fn legs(download: f64, stitch: f64) -> BTreeMap<Stage, f64> {
        BTreeMap::from([
            (Stage::Validate, 0.2),
            (Stage::Download, download),
            (Stage::Stitch, stitch),
            (Stage::Upload, 0.5),
            (Stage::Finalize, 0.2),
        ])
    }

    #[test]
    fn the_rates_learn_a_stage_that_grows_with_the_clips() {
        let mut rates = Rates::default();
        // Download takes 1 s + 0.1 s per MB on this deployment, ten times the prior.
        for mb in [10.0, 100.0, 50.0, 200.0, 20.0, 80.0] {
            rates.learn(&copy_job(4, mb), &legs(1.0 + 0.1 * mb, 2.0));
        }
        let job = copy_job(4, 150.0);
        let download = rates.stage_seconds(Stage::Download, &job);
        assert!((download - 16.0).abs() < 0.01, "{download}");
        let stitch = rates.stage_seconds(Stage::Stitch, &job);
        assert!((stitch - 2.0).abs() < 0.01, "{stitch}");
        // Before download the clips' size comes from MB per clip learned (≈ 18.25 MB).
        let sizeless = Shape { clips: Some(4), ..Shape::default() };
        let guess = rates.stage_seconds(Stage::Download, &sizeless);
        assert!(guess > 5.0 && guess < 12.0, "{guess}");
    }

    #[test]
    fn recent_jobs_count_more_than_old_ones() {
        let mut rates = Rates::default();
        for _ in 0..10 {
            rates.learn(&copy_job(2, 10.0), &legs(1.0, 1.0));
        }
        for _ in 0..10 {
            rates.learn(&copy_job(2, 10.0), &legs(5.0, 1.0));
        }
        let download = rates.stage_seconds(Stage::Download, &copy_job(2, 10.0));
        assert!(download > 4.0 && download < 5.0, "{download}");
    }

    #[test]
    fn with_nothing_learned_the_priors_give_an_estimate() {
        let rates = Rates::default();
        let shape = Shape { clips: Some(3), ..Shape::default() };
        let seconds = rates.remaining_seconds(&shape, Stage::Validate, 0.0, 0.0);
        assert!(seconds > 1.0 && seconds < 60.0, "{seconds}");
    }

    #[test]
    fn the_remainder_follows_the_stage_progress_as_it_grows() {
        let mut rates = Rates::default();
        rates.learn(&copy_job(2, 10.0), &legs(1.0, 10.0));
        let job = copy_job(2, 10.0);
        let later = rates.stage_seconds(Stage::Upload, &job) + rates.stage_seconds(Stage::Finalize, &job);
        // On time: the model and the rate agree.
        let on_time = rates.remaining_seconds(&job, Stage::Stitch, 50.0, 5.0) - later;
        assert!((on_time - 5.0).abs() < 0.01, "{on_time}");
        // Slower than learned: at 90 % after 36 s, the rate (4 s more) weighs most.
        let slow = rates.remaining_seconds(&job, Stage::Stitch, 90.0, 36.0) - later;
        assert!((slow - 3.6).abs() < 0.01, "{slow}");
        // Over time with no progress reported: nothing is left of this stage.
        assert!((rates.remaining_seconds(&job, Stage::Stitch, 0.0, 30.0) - later).abs() < 0.01);
    }

    #[test]
    fn shapes_read_from_the_pipelines_payloads() {
        let downloaded = serde_json::json!({
            "job": {"clipPaths": ["a", "b", "c"]},
            "clips": [
                {"sizeBytes": 1_000_000, "info": {"durationSeconds": 2.0}},
                {"sizeBytes": 3_000_000, "info": {"durationSeconds": 4.5}},
            ],
        });
        let shape = Shape::of_data(&downloaded);
        assert_eq!((shape.clips, shape.input_bytes, shape.video_seconds), (Some(2), Some(4_000_000), Some(6.5)));
        assert_eq!(shape.reencode, None);
        let validated = serde_json::json!({"job": {"clipPaths": ["a", "b", "c"]}});
        assert_eq!(Shape::of_data(&validated).clips, Some(3));
        let stitched = serde_json::json!({"reel": {"sizeBytes": 9, "durationSeconds": 6.0, "mode": "reencode"}});
        let mut merged = Shape::of_data(&stitched);
        merged.merge(&shape);
        assert_eq!(
            merged,
            Shape {
                clips: Some(2),
                input_bytes: Some(4_000_000),
                video_seconds: Some(6.0),
                reel_bytes: Some(9),
                reencode: Some(true)
            }
        );
    }
}
