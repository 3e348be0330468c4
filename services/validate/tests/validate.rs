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
        (
            request("p1", &["gs://clips/a.mp4", "concat:gs://clips/a.mp4|x"], "gs://clips/o.mp4"),
            ErrorType::InvalidRequest,
        ),
        (
            request("p1", &["gs://clips/a.mp4", "gs://clips/../etc/b.mp4"], "gs://clips/o.mp4"),
            ErrorType::InvalidRequest,
        ),
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
    // The clip count limit (REEL_MAX_CLIPS, 100 by default): one more is refused.
    let many: Vec<String> = (0..=f.settings.max_clips).map(|i| format!("gs://clips/{i}.mp4")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (got, message, _) = failure(run(&f, request("p1", &many, "gs://clips/o.mp4")).await);
    assert_eq!(got, ErrorType::InvalidRequest);
    assert!(message.contains("limit is 100"), "{message}");
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

/// `{projectId}` in an allowed root confines each project to its own prefix, and the
/// work area (locks, completion records, other jobs' workspaces) is never a clip or an
/// output, even inside an allowed root.
#[tokio::test]
async fn paths_stay_in_the_projects_own_prefix_and_out_of_the_work_area() {
    let f = fixture(&["gs://uploads/projects/{projectId}"]);
    let own = request(
        "p1",
        &["gs://uploads/projects/p1/a.mp4", "gs://uploads/projects/p1/b.mp4"],
        "gs://uploads/projects/p1/out.mp4",
    );
    assert!(matches!(run(&f, own).await, Outcome::Emit(_)));
    for (clips, output) in [
        (["gs://uploads/projects/p1/a.mp4", "gs://uploads/projects/p2/b.mp4"], "gs://uploads/projects/p1/out.mp4"),
        (["gs://uploads/projects/p1/a.mp4", "gs://uploads/projects/p1/b.mp4"], "gs://uploads/projects/p2/out.mp4"),
        (["gs://uploads/projects/p1/a.mp4", "gs://uploads/projects/p10/b.mp4"], "gs://uploads/projects/p1/out.mp4"),
        (["gs://uploads/projects/p1/a.mp4", "gs://uploads/projects/b.mp4"], "gs://uploads/projects/p1/out.mp4"),
    ] {
        let (got, message, _) = failure(run(&f, request("p1", &clips, output)).await);
        assert_eq!(got, ErrorType::PermissionDenied, "{clips:?} -> {output}: {message}");
        assert!(message.contains("gs://uploads/projects/p1"), "the message names the project's root: {message}");
    }

    let mut settings = (*f.settings).clone();
    settings.allowed_roots = vec!["gs://bucket".into()];
    settings.work_root = Some("gs://bucket/work".into());
    let f = Fixture { settings: Arc::new(settings), ..f };
    for (clip, output) in [
        ("gs://bucket/work/control/api-snapshot.json", "gs://bucket/out.mp4"),
        ("gs://bucket/work/jobs/other_job/clips/000.mp4", "gs://bucket/out.mp4"),
        ("gs://bucket/a.mp4", "gs://bucket/work/jobs/other_job/reel.mp4"),
    ] {
        let (got, message, _) = failure(run(&f, request("p1", &["gs://bucket/b.mp4", clip], output)).await);
        assert_eq!(got, ErrorType::PermissionDenied, "{clip} -> {output}: {message}");
        assert!(message.contains("work area"), "{message}");
    }
    // (Another project: p1 holds its project lock from the first request above.)
    let fine = request("p2", &["gs://bucket/a.mp4", "gs://bucket/workshop/b.mp4"], "gs://bucket/out.mp4");
    let outcome = run(&f, fine).await;
    assert!(matches!(outcome, Outcome::Emit(_)), "a prefix that only starts like the work root is fine: {outcome:?}");
}

/// A jobId that is not a valid id (not a string, too long, control characters) fails
/// under an id derived from the event, never echoed into attributes or ordering keys.
#[tokio::test]
async fn an_invalid_job_id_fails_under_a_derived_id() {
    let f = fixture(&["gs://clips"]);
    for bad in [
        serde_json::json!(12345),
        serde_json::json!("p/slash"),
        serde_json::json!("x".repeat(10_000)),
        serde_json::json!("p_\u{1b}[31m\r\n"),
    ] {
        let mut data = request("p1", &["gs://clips/a.mp4", "gs://clips/b.mp4"], "gs://clips/o.mp4");
        data["jobId"] = bad.clone();
        let event = envelope::build(types::STITCH_REQUESTED, "//test", uuid(), "subject", Utc::now(), &data).unwrap();
        let ctx = Context::standalone(
            Stage::Validate,
            f.settings.clone(),
            f.work.clone(),
            Arc::new(LocalResolver::new()),
            JobRef::default(),
        );
        let (got, message, job) = failure(reel_validate::Validate.handle(&ctx, &event).await);
        assert_eq!(got, ErrorType::InvalidRequest, "{bad}: {message}");
        let job = job.expect("the failure names a job");
        assert!(job.job_id.starts_with("job_") && job.job_id.len() < 40, "derived id: {}", job.job_id);
        assert!(message.contains(&job.job_id), "{message}");
        assert!(message.len() < 300, "the bad id is quoted shortened: {} bytes", message.len());
        assert!(!message.chars().any(|c| c.is_control()), "control characters quoted raw: {message:?}");
    }
}
