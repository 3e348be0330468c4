//! What the CLI shows a person: a progress bar, the result, job statuses.

use indicatif::{ProgressBar, ProgressStyle};
use reel_events::fold::{JobState, JobStatus, Status};
use reel_events::{AttributesReader, Event};
use std::io::IsTerminal;

/// A progress bar on a terminal, plain lines otherwise (or nothing when quiet).
pub struct ProgressView {
    bar: Option<ProgressBar>,
    plain: bool,
    last_stage: Option<String>,
}

impl ProgressView {
    /// A view on stderr.
    pub fn new(quiet: bool) -> ProgressView {
        if quiet {
            return ProgressView { bar: None, plain: false, last_stage: None };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(100);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos:>3}% {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar.set_message("queued");
            ProgressView { bar: Some(bar), plain: false, last_stage: None }
        } else {
            ProgressView { bar: None, plain: true, last_stage: None }
        }
    }

    /// Clear the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl crate::local::Observer for ProgressView {
    fn on_event(&mut self, event: &Event, state: &JobState) {
        let status = state.status();
        let stage = state.stage().map(|s| s.as_str().to_string()).unwrap_or_else(|| "queued".into());
        let progress = state.progress();
        if let Some(bar) = &self.bar {
            bar.set_position(progress.round() as u64);
            bar.set_message(if status.is_terminal() { status.as_str().to_string() } else { stage.clone() });
        } else if self.plain && self.last_stage.as_deref() != Some(stage.as_str()) {
            eprintln!("[{:>5.1}%] {stage} ({})", progress, event.ty().trim_start_matches("phoenix.reel.v1."));
            self.last_stage = Some(stage);
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// The end of a `reel stitch`.
pub fn print_result(status: &JobStatus) {
    match status.status {
        Status::Completed => {
            let result = status.result.clone().unwrap_or_default();
            let duration = result.get("durationSeconds").and_then(|v| v.as_f64()).unwrap_or(0.0);
            let size = result.get("sizeBytes").and_then(|v| v.as_u64()).unwrap_or(0);
            let mode = result.get("mode").and_then(|v| v.as_str()).unwrap_or("?");
            let clips = result.get("clipPaths").and_then(|v| v.as_array());
            match clips {
                // A generation job: its clips, one per prompt that gave one.
                Some(clips) => {
                    for clip in clips.iter().filter_map(|c| c.as_str()) {
                        println!("{clip}");
                    }
                    println!("  {} clips, {duration:.2} s, size {}", clips.len(), human_bytes(size));
                }
                None => {
                    println!("{}", status.output_path.clone().unwrap_or_default());
                    println!("  duration {duration:.2} s, size {}, mode {mode}", human_bytes(size));
                }
            }
            for skipped in &status.skipped_clips {
                println!("  skipped {}: {}", skipped.path, skipped.reason);
            }
            for warning in &status.warnings {
                if !status.skipped_clips.iter().any(|s| warning.contains(&s.path)) {
                    println!("  warning: {warning}");
                }
            }
        }
        Status::Failed => {
            eprintln!(
                "error: job {} failed at {}: {} ({})",
                status.job_id,
                status.stage.map(|s| s.as_str()).unwrap_or("?"),
                status.error.clone().unwrap_or_default(),
                status.error_type.map(|e| e.as_str()).unwrap_or("internal"),
            );
        }
        Status::Cancelled => eprintln!("job {} was cancelled", status.job_id),
        _ => eprintln!("job {} is {}", status.job_id, status.status.as_str()),
    }
}

/// `reel status`.
pub fn print_status(s: &JobStatus) {
    println!("job       {}", s.job_id);
    println!("project   {}", s.project_id);
    println!("status    {}", s.status.as_str());
    if let Some(stage) = s.stage {
        println!("stage     {stage}");
    }
    println!("progress  {:.1}%", s.progress);
    if let Some(t) = s.started_at {
        println!("started   {}", t.to_rfc3339());
    }
    if let Some(t) = s.estimated_completion {
        println!("eta       {}", t.to_rfc3339());
    }
    if let Some(t) = s.completed_at {
        println!("ended     {}", t.to_rfc3339());
    }
    if let Some(out) = &s.output_path {
        println!("output    {out}");
    }
    if let Some(e) = &s.error {
        println!("error     {} ({})", e, s.error_type.map(|e| e.as_str()).unwrap_or("internal"));
    }
    for w in &s.warnings {
        println!("warning   {w}");
    }
    println!("attempt   {}", s.retry_count);
}

/// `reel jobs`: one line each.
pub fn print_status_line(s: &JobStatus) {
    println!(
        "{:<24} {:<10} {:>5.1}% {:<9} {}",
        s.job_id,
        s.status.as_str(),
        s.progress,
        s.stage.map(|s| s.as_str()).unwrap_or("-"),
        s.output_path.clone().unwrap_or_default()
    );
}
