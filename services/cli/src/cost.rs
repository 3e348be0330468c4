//! `reel cost`: what ended jobs cost, per project and day (the day a job ended, UTC),
//! from their `JobStatus.cost` (docs/OPERATIONS.md, "What a job costs").

use chrono::NaiveDate;
use reel_events::fold::{JobStatus, Status};
use reel_events::payload::JobCost;
use serde::Serialize;
use std::collections::BTreeMap;

/// One line of the table: a project's jobs that ended on one day.
#[derive(Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// The project.
    pub project_id: String,
    /// The day the jobs ended (UTC), `YYYY-MM-DD`.
    pub day: String,
    /// Jobs that ended that day.
    pub jobs: usize,
    /// Of which completed.
    pub completed: usize,
    /// Of which failed or cancelled.
    pub not_completed: usize,
    /// What they cost together.
    #[serde(flatten)]
    pub cost: JobCost,
}

/// Lines per (project, day) of the ended jobs in `statuses` that ended on or after
/// `since`; jobs without a cost (ended before costs were recorded) count with none.
pub fn table(statuses: &[JobStatus], since: Option<NaiveDate>) -> Vec<Line> {
    let mut lines: BTreeMap<(String, String), Line> = BTreeMap::new();
    for s in statuses.iter().filter(|s| s.status.is_terminal()) {
        let Some(ended) = s.completed_at else { continue };
        if since.is_some_and(|d| ended.date_naive() < d) {
            continue;
        }
        let day = ended.format("%Y-%m-%d").to_string();
        let line = lines.entry((s.project_id.clone(), day.clone())).or_insert_with(|| Line {
            project_id: s.project_id.clone(),
            day,
            ..Line::default()
        });
        line.jobs += 1;
        if s.status == Status::Completed {
            line.completed += 1;
        } else {
            line.not_completed += 1;
        }
        if let Some(cost) = &s.cost {
            line.cost.add(cost);
        }
    }
    lines.into_values().collect()
}

/// The table as text, with a total.
pub fn print(lines: &[Line]) {
    if lines.is_empty() {
        println!("no ended jobs");
        return;
    }
    println!(
        "{:<24} {:<10} {:>5} {:>9} {:>10} {:>10} {:>12} {:>10} {:>12}",
        "project", "day", "jobs", "completed", "cpu s", "GiB·s", "storage ops", "MB moved", "USD"
    );
    let mut total = Line { project_id: "total".into(), ..Line::default() };
    for l in lines {
        print_line(l);
        total.jobs += l.jobs;
        total.completed += l.completed;
        total.not_completed += l.not_completed;
        total.cost.add(&l.cost);
    }
    print_line(&total);
}

fn print_line(l: &Line) {
    println!(
        "{:<24} {:<10} {:>5} {:>9} {:>10.1} {:>10.1} {:>12} {:>10.1} {:>12.6}",
        l.project_id,
        l.day,
        l.jobs,
        l.completed,
        l.cost.cpu_seconds,
        l.cost.memory_gib_seconds,
        l.cost.storage_operations,
        l.cost.bytes_moved as f64 / 1e6,
        l.cost.estimated_usd
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_events::fold::JobState;

    fn ended(job: &str, project: &str, day: &str, status: Status, usd: f64) -> JobStatus {
        let mut s = JobState::new(job).to_status();
        s.project_id = project.into();
        s.status = status;
        s.completed_at = Some(format!("{day}T12:00:00Z").parse().unwrap());
        s.cost = Some(JobCost { estimated_usd: usd, storage_operations: 10, ..JobCost::default() });
        s
    }

    #[test]
    fn ended_jobs_add_up_per_project_and_day() {
        let mut running = JobState::new("job_r").to_status();
        running.project_id = "a".into();
        let statuses = vec![
            ended("j1", "a", "2026-12-01", Status::Completed, 0.01),
            ended("j2", "a", "2026-12-01", Status::Failed, 0.002),
            ended("j3", "a", "2026-12-02", Status::Completed, 0.01),
            ended("j4", "b", "2026-12-01", Status::Cancelled, 0.001),
            running,
        ];
        let lines = table(&statuses, None);
        assert_eq!(lines.len(), 3);
        let first = &lines[0];
        assert_eq!((first.project_id.as_str(), first.day.as_str()), ("a", "2026-12-01"));
        assert_eq!((first.jobs, first.completed, first.not_completed), (2, 1, 1));
        assert!((first.cost.estimated_usd - 0.012).abs() < 1e-12);
        assert_eq!(first.cost.storage_operations, 20);
        let since = table(&statuses, Some("2026-12-02".parse().unwrap()));
        assert_eq!(since.len(), 1);
        assert_eq!(since[0].day, "2026-12-02");
    }
}
