//! The validate handler, called directly (no bus): each rule gives the right outcome.

use chrono::Utc;
use reel_events::payload::{JobRef, JobValidated};
use reel_events::{envelope, types, AttributesReader, ErrorType, Stage};
use reel_runtime::embedded::DirStore;
use reel_runtime::local::LocalResolver;
use reel_runtime::stage::{Context, Handler, Outcome};
use reel_runtime::Settings;
use std::sync::Arc;

struct Fixture {
    _dir: tempfile::TempDir,
    work: Arc<DirStore>,
    settings: Arc<Settings>,
}

fn fixture(roots: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let work = Arc::new(DirStore::new(dir.path().join("work")).unwrap());
    let settings = Settings {
        allowed_roots: roots.iter().map(|r| r.to_string()).collect(),
        temp_dir: dir.path().join("tmp"),
        ..Settings::default()
    };
    Fixture { _dir: dir, work, settings: Arc::new(settings) }
}

async fn run(f: &Fixture, data: serde_json::Value) -> Outcome {
    let job_id = data.get("jobId").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let event = envelope::build(types::STITCH_REQUESTED, "//test", uuid(), &job_id, Utc::now(), &data).unwrap();
    let ctx = Context::standalone(
        Stage::Validate,
        f.settings.clone(),
        f.work.clone(),
        Arc::new(LocalResolver::new()),
        JobRef::from_data(&data, None),
    );
    reel_validate::Validate.handle(&ctx, &event).await
}

fn uuid() -> String {
    format!("id-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

fn request(project: &str, clips: &[&str], output: &str) -> serde_json::Value {
    serde_json::json!({
        "projectId": project, "userId": "u1", "clipPaths": clips, "outputPath": output,
        "orientation": "portrait", "compression": "optimized"
    })
}

fn failure(outcome: Outcome) -> (ErrorType, String, Option<JobRef>) {
    match outcome {
        Outcome::Reject(f) => (f.error_type, f.message, f.job),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_good_request_is_accepted_with_a_deadline_and_a_trace() {
    let f = fixture(&["gs://clips"]);
    let outcome = run(&f, request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/out.mp4")).await;
    let Outcome::Emit(events) = outcome else { panic!("{outcome:?}") };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ty(), types::JOB_VALIDATED);
    let validated: JobValidated = envelope::decode(&events[0]).unwrap();
    assert!(validated.job.job_id.starts_with("job_"), "a job id is generated: {}", validated.job.job_id);
    assert_eq!(events[0].subject(), Some(validated.job.job_id.as_str()));
    let minutes = (validated.job.deadline - validated.job.accepted_at).num_minutes();
    assert_eq!(minutes, 15);
    assert!(envelope::extension_str(&events[0], envelope::TRACEPARENT).is_some());
}

#[tokio::test]
async fn each_rule_names_its_error_type() {
    let f = fixture(&["gs://clips"]);
    let cases = [
        (request("p1", &["gs://clips/a.mp4"], "gs://clips/o.mp4"), ErrorType::InsufficientClips),
        (request("p1", &[], "gs://clips/o.mp4"), ErrorType::InsufficientClips),
        (request("p1", &["gs://clips/a.mp4", "http://evil/b.mp4"], "gs://clips/o.mp4"), ErrorType::InvalidRequest),
        (request("p1", &["gs://clips/a.mp4", "concat:gs://clips/a.mp4|x"], "gs://clips/o.mp4"), ErrorType::InvalidRequest),
        (request("p1", &["gs://clips/a.mp4", "gs://clips/../etc/b.mp4"], "gs://clips/o.mp4"), ErrorType::InvalidRequest),
        (request("p1", &["gs://clips/a.mp4", "gs://other/b.mp4"], "gs://clips/o.mp4"), ErrorType::PermissionDenied),
        (request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://other/o.mp4"), ErrorType::PermissionDenied),
        (request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o.gif"), ErrorType::InvalidRequest),
        (request("", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o.mp4"), ErrorType::InvalidRequest),
    ];
    for (data, expected) in cases {
        let (got, message, job) = failure(run(&f, data.clone()).await);
        assert_eq!(got, expected, "{data}: {message}");
        assert!(!message.is_empty());
        assert!(job.is_some_and(|j| j.job_id.starts_with("job_")), "failure is attributed to a job");
    }
    let mut bad = request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o.mp4");
    bad["orientation"] = "diagonal".into();
    let (got, message, _) = failure(run(&f, bad).await);
    assert_eq!(got, ErrorType::InvalidRequest);
    assert!(message.contains("diagonal"), "{message}");
    let mut bad = request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o.mp4");
    bad["clipPaths"] = serde_json::json!("gs://clips/a.mp4");
    assert_eq!(failure(run(&f, bad).await).0, ErrorType::InvalidRequest);
}

#[tokio::test]
async fn one_active_job_per_project() {
    let f = fixture(&["gs://clips"]);
    let mut first = request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o.mp4");
    first["jobId"] = "job_first".into();
    assert!(matches!(run(&f, first.clone()).await, Outcome::Emit(_)));
    // A redelivery of the same request is not a second job.
    assert!(matches!(run(&f, first).await, Outcome::Emit(_)));
    let mut second = request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o2.mp4");
    second["jobId"] = "job_second".into();
    let (got, message, _) = failure(run(&f, second.clone()).await);
    assert_eq!(got, ErrorType::JobAlreadyRunning);
    assert!(message.contains("job_first"), "{message}");
    // Another project is not blocked.
    let mut other = second.clone();
    other["projectId"] = "p2".into();
    assert!(matches!(run(&f, other).await, Outcome::Emit(_)));
    // forceRestart takes the project over.
    second["forceRestart"] = true.into();
    assert!(matches!(run(&f, second).await, Outcome::Emit(_)));
    // Once released, the project is free again.
    assert!(reel_runtime::lock::release(f.work.as_ref(), "p1", "job_second").await.unwrap());
    let mut third = request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o3.mp4");
    third["jobId"] = "job_third".into();
    assert!(matches!(run(&f, third).await, Outcome::Emit(_)));
}
