//! Identity (CONTRACT §5 "Identity (1.1)"), over real HTTP: trusted callers act for the
//! user in `X-Reel-User`, nobody else may; unknown callers are refused even with a
//! Google-signed token; a project belongs to the user who first started a job in it.

mod common;

use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use common::oidc::*;
use common::*;
use reel_api::config::{ApiConfig, Callers, LocalTokens};
use reel_events::Stage;
use reel_runtime::stage::cancel_marker_key;
use reel_runtime::store::Store;
use reel_runtime::tenancy;
use serde_json::json;

const PHOENIX: &str = "phoenix-token";
const USER: &[(&str, &[u8])] = &[("x-reel-user", b"user_456")];

/// Local tokens of alice, bob and phoenix; phoenix is trusted to act for users.
fn config() -> ApiConfig {
    let mut config = ApiConfig::local(LocalTokens::new([(ALICE, "alice"), (BOB, "bob"), (PHOENIX, "phoenix")]));
    config.trusted_callers = Callers::parse("phoenix", false).unwrap();
    config
}

#[tokio::test]
async fn a_trusted_caller_sees_and_cancels_the_jobs_of_the_user_it_acts_for() {
    let api = spawn(config()).await;
    let base = serve(api.app.clone()).await;
    // Phoenix published a request on Pub/Sub for user_456; the pipeline runs it.
    api.publish_log(&job_events("job_p", "proj_p", "user_456", Utc::now() - Duration::seconds(60), End::Running)).await;
    api.drain().await;

    let status_url = format!("{base}/api/jobs/job_p/status");
    let (status, _, job) = http(Method::GET, &status_url, Some(PHOENIX), USER, None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!((job["status"].as_str(), job["progress"].as_f64()), (Some("running"), Some(60.0)));
    let (status, _, list) =
        http(Method::GET, &format!("{base}/api/projects/proj_p/jobs"), Some(PHOENIX), USER, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"][0]["jobId"], "job_p");

    // Without the header Phoenix is itself, and user_456's job is not its own; other
    // users do not see it either.
    for token in [PHOENIX, ALICE] {
        let (status, _, _) = http(Method::GET, &status_url, Some(token), &[], None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _, _) = http(Method::GET, &status_url, Some(PHOENIX), &[("x-reel-user", b"someone_else")], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "acting for another user shows that user's jobs only");

    let (status, _, answer) =
        http(Method::POST, &format!("{base}/api/jobs/job_p/cancel"), Some(PHOENIX), USER, None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["success"], true);
    assert!(api.store.head(&cancel_marker_key("job_p")).await.unwrap().is_some(), "the stages' cancel marker");

    // A stitch request made for the user is the user's job.
    let (status, _, body) =
        http(Method::POST, &format!("{base}/api/projects/proj_q/stitch"), Some(PHOENIX), USER, Some(stitch_body()))
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let requests = api.take(&api.names.subscription(Stage::Validate)).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(reel_events::envelope::data_json(&requests[0]).unwrap()["userId"], "user_456");
    let job = body["jobId"].as_str().unwrap();
    let (status, _, _) = http(Method::GET, &format!("{base}/api/jobs/{job}/status"), Some(PHOENIX), USER, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn x_reel_user_from_an_untrusted_caller_is_refused_and_a_bad_one_is_400() {
    let api = spawn(config()).await;
    let base = serve(api.app.clone()).await;
    api.publish_log(&job_events("job_b", "proj_b", "bob", Utc::now() - Duration::seconds(60), End::Running)).await;
    api.drain().await;

    // Alice naming Bob is refused, not quietly served as Alice.
    let as_bob: &[(&str, &[u8])] = &[("x-reel-user", b"bob")];
    for (method, path) in [(Method::GET, "/api/jobs/job_b/status"), (Method::POST, "/api/jobs/job_b/cancel")] {
        let (status, _, body) = http(method, &format!("{base}{path}"), Some(ALICE), as_bob, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["errorType"], "permission_denied");
        assert!(body["error"].as_str().unwrap().contains("X-Reel-User"), "{body}");
    }
    assert!(api.store.head(&cancel_marker_key("job_b")).await.unwrap().is_none(), "nothing was cancelled");

    let long = vec![b'u'; 257];
    let bad_ids: [&[u8]; 5] = [b"", b"   ", b"user\t456", b"\xff\xfe", &long];
    for bad in bad_ids {
        let (status, _, body) =
            http(Method::GET, &format!("{base}/api/projects/p/jobs"), Some(PHOENIX), &[("x-reel-user", bad)], None)
                .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(body["errorType"], "invalid_request");
    }
    let (status, _, _) = http(
        Method::GET,
        &format!("{base}/api/projects/p/jobs"),
        Some(PHOENIX),
        &[("x-reel-user", &long[..256])],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "256 bytes is the limit, not past it");
}

#[tokio::test]
async fn a_stitch_into_another_users_project_is_403_and_publishes_nothing() {
    let api = spawn(config()).await;
    let base = serve(api.app.clone()).await;
    // Validate recorded Bob as the owner when his first job in the project started.
    tenancy::claim_project(api.store.as_ref(), "proj_bob", "bob", "job_b1").await.unwrap();
    api.publish_log(&job_events("job_b1", "proj_bob", "bob", Utc::now() - Duration::seconds(100), End::Completed))
        .await;
    api.drain().await;
    let jobs_before = api.book.len();

    let stitch_url = format!("{base}/api/projects/proj_bob/stitch");
    for (token, acting_for) in [(ALICE, &[][..]), (PHOENIX, &[("x-reel-user", &b"alice"[..])][..])] {
        let (status, _, body) = http(Method::POST, &stitch_url, Some(token), acting_for, Some(stitch_body())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["errorType"], "permission_denied");
        assert!(body["error"].as_str().unwrap().contains("belongs to another user"), "{body}");
    }
    assert!(api.take(&api.names.subscription(Stage::Validate)).await.is_empty(), "no request reached validate");
    assert_eq!(api.book.len(), jobs_before, "no job was folded");

    // Alice sees none of the project's jobs; Bob (or Phoenix for him) sees his.
    let list_url = format!("{base}/api/projects/proj_bob/jobs");
    let (status, _, list) = http(Method::GET, &list_url, Some(ALICE), &[], None).await;
    assert_eq!((status, &list["jobs"]), (StatusCode::OK, &json!([])));
    let (_, _, list) = http(Method::GET, &list_url, Some(PHOENIX), &[("x-reel-user", b"bob")], None).await;
    assert_eq!(list["jobs"][0]["jobId"], "job_b1");
    // Even a request of Alice's own that validate refused stays out of the list.
    api.publish_log(&job_events("job_a1", "proj_bob", "alice", Utc::now() - Duration::seconds(50), End::Failed)).await;
    api.drain().await;
    let (_, _, list) = http(Method::GET, &list_url, Some(ALICE), &[], None).await;
    assert_eq!(list["jobs"], json!([]));

    // The owner may start jobs in it.
    let (status, _, body) = http(Method::POST, &stitch_url, Some(BOB), &[], Some(stitch_body())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn oidc_accepts_only_known_users_and_trusted_callers() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let api = spawn(oidc_config(&jwks.url, "alice@example.com, *@team.example", "phoenix@example.com")).await;
    let base = serve(api.app.clone()).await;
    api.publish_log(&job_events("job_p", "proj_p", "user_456", Utc::now() - Duration::seconds(60), End::Running)).await;
    api.drain().await;
    let list = format!("{base}/api/projects/proj_p/jobs");

    // A token Google signed for our audience, of somebody we do not know: 403.
    let (status, _, body) = http(Method::GET, &list, Some(&token_of("mallory")), &[], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errorType"], "permission_denied");
    // A known user, by email or by domain, acts as itself (user id: the `sub` claim).
    let (status, _, body) = http(Method::GET, &list, Some(&token_of("alice")), &[], None).await;
    assert_eq!((status, &body["jobs"]), (StatusCode::OK, &json!([])));
    let mut teammate = claims("112233");
    teammate["email"] = json!("Dana@Team.Example");
    let (status, _, _) = http(Method::GET, &list, Some(&sign(&teammate, KEY_A, "key-a")), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    // ...but may not act for anyone else.
    let (status, _, _) = http(Method::GET, &list, Some(&token_of("alice")), USER, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Phoenix's service account acts for user_456 and sees the job it requested.
    let (status, _, body) = http(Method::GET, &list, Some(&token_of("phoenix")), USER, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"][0]["jobId"], "job_p");
    // An email that is not verified proves nothing: the same claims, unverified, are refused.
    let mut unverified = claims("phoenix");
    unverified["email_verified"] = json!(false);
    let (status, _, _) = http(Method::GET, &list, Some(&sign(&unverified, KEY_A, "key-a")), USER, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
