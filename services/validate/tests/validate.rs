//! The validate handler, called directly (no bus): each rule gives the right outcome.

use chrono::Utc;
use reel_events::payload::{JobRef, JobValidated};
use reel_events::{envelope, types, AttributesReader, ErrorType};
use reel_runtime::config::Quotas;
use reel_runtime::stage::{cancel_marker_key, Outcome};
use reel_runtime::Store;
use reel_testkit::stage::StageHarness;
use reel_validate::Validate;

fn fixture(roots: &[&str]) -> StageHarness {
    StageHarness::with_settings(|s| s.allowed_roots = roots.iter().map(|r| r.to_string()).collect())
}

async fn run(f: &StageHarness, data: serde_json::Value) -> Outcome {
    let job_id = data.get("jobId").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let event = envelope::build(types::STITCH_REQUESTED, "//test", uuid(), &job_id, Utc::now(), &data).unwrap();
    f.run::<Validate>(&event).await
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
    let many: Vec<String> = (0..=f.settings.validate.max_clips).map(|i| format!("gs://clips/{i}.mp4")).collect();
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
    let f = StageHarness::with_settings(|s| {
        s.allowed_roots = vec!["gs://clips".into()];
        s.quota = Quotas { active_jobs: 0, jobs_per_hour: 0 };
    });
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
    other["jobId"] = "job_other".into();
    other["userId"] = "user_2".into();
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

    let mut f = f;
    f.settings.allowed_roots = vec!["gs://bucket".into()];
    f.settings.work_root = Some("gs://bucket/work".into());
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
        let (got, message, job) = failure(f.run::<Validate>(&event).await);
        assert_eq!(got, ErrorType::InvalidRequest, "{bad}: {message}");
        let job = job.expect("the failure names a job");
        assert!(job.job_id.starts_with("job_") && job.job_id.len() < 40, "derived id: {}", job.job_id);
        assert!(message.contains(&job.job_id), "{message}");
        assert!(message.len() < 300, "the bad id is quoted shortened: {} bytes", message.len());
        assert!(!message.chars().any(|c| c.is_control()), "control characters quoted raw: {message:?}");
    }
}

fn as_user(mut data: serde_json::Value, job: &str, user: &str) -> serde_json::Value {
    data["jobId"] = job.into();
    data["userId"] = user.into();
    data
}

/// A job id already used by another tenant's job is refused under an id of the
/// request's own: the job that has it gets no event, and its records are unchanged.
#[tokio::test]
async fn a_job_id_of_another_tenant_is_refused_without_touching_that_job() {
    let f = fixture(&["gs://clips"]);
    let clips = ["gs://clips/a.mp4", "gs://clips/b.mp4"];
    let victim = as_user(request("p1", &clips, "gs://clips/o.mp4"), "job_v", "alice");
    assert!(matches!(run(&f, victim.clone()).await, Outcome::Emit(_)));
    for (project, user) in [("p2", "mallory"), ("p1", "mallory"), ("p2", "alice")] {
        let attack = as_user(request(project, &clips, "gs://clips/m.mp4"), "job_v", user);
        let (got, message, job) = failure(run(&f, attack).await);
        assert_eq!(got, ErrorType::PermissionDenied, "{project}/{user}: {message}");
        let job = job.expect("the refusal names a job");
        assert_ne!(job.job_id, "job_v", "the refusal must not be published under the victim's id");
        assert!(message.contains(&job.job_id), "{message}");
    }
    // Even a request that is malformed otherwise is refused as another job's, not failed
    // under the victim's id (which would end the victim's job and clean its workspace).
    let broken = as_user(request("p2", &["gs://clips/a.mp4"], "gs://clips/m.mp4"), "job_v", "mallory");
    let (got, _, job) = failure(run(&f, broken).await);
    assert_eq!(got, ErrorType::PermissionDenied);
    assert_ne!(job.unwrap().job_id, "job_v");
    let record = reel_runtime::tenancy::job_record(f.work.as_ref(), "job_v").await.unwrap().unwrap();
    assert!(record.is_of("p1", "alice"));
    // The owner's own redelivery still passes.
    assert!(matches!(run(&f, victim).await, Outcome::Emit(_)));
}

/// A project belongs to the user who first started a job in it.
#[tokio::test]
async fn only_the_projects_owner_starts_jobs_in_it() {
    let f = fixture(&["gs://clips"]);
    let clips = ["gs://clips/a.mp4", "gs://clips/b.mp4"];
    let first = as_user(request("p1", &clips, "gs://clips/o.mp4"), "job_a", "alice");
    assert!(matches!(run(&f, first).await, Outcome::Emit(_)));
    let mut attack = as_user(request("p1", &clips, "gs://clips/o.mp4"), "job_m", "mallory");
    attack["forceRestart"] = true.into();
    let (got, message, _) = failure(run(&f, attack).await);
    assert_eq!(got, ErrorType::PermissionDenied);
    assert!(message.contains("belongs to another user"), "{message}");
    let lock = reel_runtime::lock::lock_key("p1");
    let mut body = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut f.work.get(&lock).await.unwrap(), &mut body).await.unwrap();
    assert!(body.contains("job_a"), "the owner's job keeps the project: {body}");
}

/// Quotas count each user's jobs from the records validate keeps, on every entry path.
#[tokio::test]
async fn quotas_hold_per_user_and_free_when_a_job_ends() {
    let f = StageHarness::with_settings(|s| {
        s.allowed_roots = vec!["gs://clips".into()];
        s.quota = Quotas { active_jobs: 2, jobs_per_hour: 3 };
    });
    let clips = ["gs://clips/a.mp4", "gs://clips/b.mp4"];
    let job =
        |n: usize, user: &str| as_user(request(&format!("p{n}"), &clips, "gs://clips/o.mp4"), &format!("j{n}"), user);
    assert!(matches!(run(&f, job(1, "alice")).await, Outcome::Emit(_)));
    assert!(matches!(run(&f, job(2, "alice")).await, Outcome::Emit(_)));
    let (got, message, _) = failure(run(&f, job(3, "alice")).await);
    assert_eq!(got, ErrorType::QuotaExceeded);
    assert!(message.contains("limit is 2 at once"), "{message}");
    // Another user is not held by alice's quota.
    assert!(matches!(run(&f, job(4, "bob")).await, Outcome::Emit(_)));
    // A job that ends gives its slot back; the hourly count remains.
    reel_runtime::tenancy::release(
        f.work.as_ref(),
        &JobRef { job_id: "j1".into(), project_id: "p1".into(), user_id: "alice".into() },
    )
    .await;
    assert!(matches!(run(&f, job(5, "alice")).await, Outcome::Emit(_)));
    reel_runtime::tenancy::release(
        f.work.as_ref(),
        &JobRef { job_id: "j2".into(), project_id: "p2".into(), user_id: "alice".into() },
    )
    .await;
    let (got, message, _) = failure(run(&f, job(6, "alice")).await);
    assert_eq!(got, ErrorType::QuotaExceeded);
    assert!(message.contains("limit is 3 an hour"), "{message}");
}

/// A cancel requested before validate ran ends the job cancelled, not started.
#[tokio::test]
async fn a_job_cancelled_before_it_started_is_not_started() {
    let f = fixture(&["gs://clips"]);
    let clips = ["gs://clips/a.mp4", "gs://clips/b.mp4"];
    let marker = cancel_marker_key("job_c");
    f.work
        .put(&marker, Box::pin(std::io::Cursor::new(b"{}".to_vec())), reel_runtime::PutMode::Overwrite)
        .await
        .unwrap();
    let outcome = run(&f, as_user(request("p1", &clips, "gs://clips/o.mp4"), "job_c", "alice")).await;
    assert!(matches!(outcome, Outcome::Cancel), "{outcome:?}");
}

/// The output rule, decided before any paid work: an existing object is replaced only if
/// reel wrote it for this project and the (owner's) request says forceRestart.
#[tokio::test]
async fn an_output_reel_may_not_replace_fails_at_validate() {
    let f = fixture(&["gs://clips"]);
    let clips = ["gs://clips/a.mp4", "gs://clips/b.mp4"];
    let bucket = reel_runtime::embedded::DirStore::new(f.bucket_dir("clips")).unwrap();
    let put = |key: &'static str, metadata: Vec<(&str, &str)>| {
        let options = reel_runtime::store::PutOptions::new(reel_runtime::PutMode::Overwrite)
            .with_metadata(metadata.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let bucket = &bucket;
        async move { bucket.put_with(key, Box::pin(std::io::Cursor::new(b"reel".to_vec())), &options).await.unwrap() }
    };
    put("foreign.mp4", vec![]).await;
    put("theirs.mp4", vec![(reel_runtime::output::PROJECT_KEY, "p9"), (reel_runtime::output::JOB_KEY, "j9")]).await;
    put("mine.mp4", vec![(reel_runtime::output::PROJECT_KEY, "p1"), (reel_runtime::output::JOB_KEY, "j0")]).await;
    for (n, (output, force, accepted)) in [
        ("foreign", true, false),
        ("theirs", true, false),
        ("mine", false, false),
        ("mine", true, true),
        ("new", false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = as_user(request("p1", &clips, &format!("gs://clips/{output}.mp4")), &format!("j{n}x"), "alice");
        req["forceRestart"] = force.into();
        let outcome = run(&f, req).await;
        if accepted {
            assert!(matches!(outcome, Outcome::Emit(_)), "{output} force={force}: {outcome:?}");
            reel_runtime::lock::release(f.work.as_ref(), "p1", &format!("j{n}x")).await.unwrap();
        } else {
            let (got, message, _) = failure(outcome);
            assert_eq!(got, ErrorType::PermissionDenied, "{output} force={force}: {message}");
        }
    }
}
