//! OIDC mode against a JWKS served by the test on 127.0.0.1 (`common::oidc`): the
//! verifier's checks, its key fetching, and the 401/503 split.

mod common;

use axum::http::{Method, StatusCode};
use common::oidc::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reel_api::config::{ApiConfig, AuthMode, UserClaim};
use serde_json::{json, Value};

/// End users in these tests: every verified example.com email.
const USERS: &str = "*@example.com";

fn config_for(jwks_url: &str) -> ApiConfig {
    oidc_config(jwks_url, USERS, "")
}

async fn status_of(api: &TestApi, authorization: Option<&str>) -> (StatusCode, Value) {
    let (status, _, body) = call(&api.app, Method::GET, "/api/projects/p/jobs", authorization, None).await;
    (status, body)
}

#[tokio::test]
async fn google_id_tokens_are_verified_for_signature_issuer_audience_and_expiry() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let api = spawn(config_for(&jwks.url)).await;
    let bearer = |t: &str| format!("Bearer {t}");

    // A good token works, for either spelling of Google's issuer.
    let good = sign(&claims("alice"), KEY_A, "key-a");
    assert_eq!(status_of(&api, Some(&bearer(&good))).await.0, StatusCode::OK);
    let mut short_iss = claims("alice");
    short_iss["iss"] = json!("accounts.google.com");
    assert_eq!(status_of(&api, Some(&bearer(&sign(&short_iss, KEY_A, "key-a")))).await.0, StatusCode::OK);

    let mut expired = claims("alice");
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("https://someone-else.test");
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("https://evil.example");
    let mut no_sub = claims("alice");
    no_sub.as_object_mut().unwrap().remove("sub");
    let hs256 = jsonwebtoken::encode(
        &Header { kid: Some("key-a".into()), ..Header::new(Algorithm::HS256) },
        &claims("alice"),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing"),
        ("not bearer", Some(format!("Basic {good}")), "Bearer"),
        ("empty", Some("Bearer ".into()), "malformed"),
        ("not a JWT", Some(bearer("abc.def")), "malformed"),
        ("garbage segments", Some(bearer("a.b.c")), "malformed"),
        ("expired", Some(bearer(&sign(&expired, KEY_A, "key-a"))), "expired"),
        ("wrong audience", Some(bearer(&sign(&wrong_aud, KEY_A, "key-a"))), "audience"),
        ("wrong issuer", Some(bearer(&sign(&wrong_iss, KEY_A, "key-a"))), "issuer"),
        ("signed by another key", Some(bearer(&sign(&claims("alice"), KEY_B, "key-a"))), "signature"),
        ("unknown key", Some(bearer(&sign(&claims("alice"), KEY_B, "key-b"))), "unknown key"),
        ("unknown key again", Some(bearer(&sign(&claims("alice"), KEY_B, "key-c"))), "unknown key"),
        ("no sub", Some(bearer(&sign(&no_sub, KEY_A, "key-a"))), "claim"),
        ("HS256", Some(bearer(&hs256)), "RS256"),
        ("tampered claims", Some(bearer(&tamper(&good))), "signature"),
    ];
    for (name, header, mentioned) in cases {
        let (status, body) = status_of(&api, header.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        let message = body["error"].as_str().unwrap();
        let lower = message.to_lowercase();
        assert!(lower.contains(&mentioned.to_lowercase()), "{name}: {message:?} should mention {mentioned:?}");
        if let Some(h) = &header {
            if let Some(token) = h.strip_prefix("Bearer ").filter(|t| !t.is_empty()) {
                assert!(!message.contains(token), "{name}: the answer quotes the token");
            }
        }
    }
    // The keys were fetched once and cached; the first unknown key id fetched them again,
    // and the second, within the refresh cool-down, did not.
    assert_eq!(jwks.fetches(), 2);
}

/// The same header and signature with a different payload.
fn tamper(token: &str) -> String {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = claims("alice");
    claims["sub"] = json!("bob");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

#[tokio::test]
async fn an_unknown_key_id_refreshes_the_keys() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let mut config = config_for(&jwks.url);
    if let AuthMode::Oidc(oidc) = &mut config.auth {
        oidc.min_refresh = std::time::Duration::ZERO;
    }
    let api = spawn(config).await;
    let a = format!("Bearer {}", sign(&claims("alice"), KEY_A, "key-a"));
    assert_eq!(status_of(&api, Some(&a)).await.0, StatusCode::OK);
    // Google rotates: key-b appears. A token signed with it triggers one refetch.
    jwks.keys.lock().unwrap().keys.push(jwk(KEY_B, "key-b"));
    let b = format!("Bearer {}", sign(&claims("alice"), KEY_B, "key-b"));
    assert_eq!(status_of(&api, Some(&b)).await.0, StatusCode::OK);
    assert_eq!(jwks.fetches(), 2);
    assert_eq!(status_of(&api, Some(&a)).await.0, StatusCode::OK);
    assert_eq!(jwks.fetches(), 2, "cached again");
}

#[tokio::test]
async fn unreachable_keys_answer_503_not_401() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    drop(listener);
    let api = spawn(config_for(&url)).await;
    let token = format!("Bearer {}", sign(&claims("alice"), KEY_A, "key-a"));
    let (status, body) = status_of(&api, Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // A key server that answers, but not with keys, is our failure too.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    let broken =
        axum::Router::new().route("/certs", axum::routing::get(|| async { (StatusCode::BAD_GATEWAY, "down") }));
    tokio::spawn(async move { axum::serve(listener, broken).await });
    let api = spawn(config_for(&url)).await;
    let (status, body) = status_of(&api, Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn the_user_is_the_configured_claim_and_isolation_follows_it() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let mut config = config_for(&jwks.url);
    if let AuthMode::Oidc(oidc) = &mut config.auth {
        oidc.user_claim = UserClaim::Email;
    }
    let api = spawn(config).await;
    let alice = format!("Bearer {}", sign(&claims("alice"), KEY_A, "key-a"));
    let bob = format!("Bearer {}", sign(&claims("bob"), KEY_A, "key-a"));
    let (status, _, body) =
        call(&api.app, Method::POST, "/api/projects/p/stitch", Some(&alice), Some(stitch_body())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = body["jobId"].as_str().unwrap();
    let (_, _, mine) = call(&api.app, Method::GET, &format!("/api/jobs/{job}/status"), Some(&alice), None).await;
    assert_eq!(mine["userId"], "alice@example.com");
    let (status, _, _) = call(&api.app, Method::GET, &format!("/api/jobs/{job}/status"), Some(&bob), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut unverified = claims("carol");
    unverified["email_verified"] = json!(false);
    let carol = format!("Bearer {}", sign(&unverified, KEY_A, "key-a"));
    assert_eq!(status_of(&api, Some(&carol)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn local_tokens_map_to_users() {
    let api = spawn(local_config()).await;
    assert_eq!(status_of(&api, Some(&format!("Bearer {ALICE}"))).await.0, StatusCode::OK);
    assert_eq!(status_of(&api, Some(&format!("Bearer {BOB}"))).await.0, StatusCode::OK);
    let (status, body) = status_of(&api, Some("Bearer mallory-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.to_string().contains("mallory-token"));
}

/// The verifier's key cache refuses a second caller while a first holds it (fetching or
/// not) instead of waiting; the API queues them, so simultaneous first requests all pass
/// on one fetch and none is answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_requests_share_one_key_fetch() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let api = spawn(config_for(&jwks.url)).await;
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let app = api.app.clone();
            let bearer = format!("Bearer {}", token_of(&format!("user{i}")));
            tokio::spawn(async move { call(&app, Method::GET, "/api/projects/p/jobs", Some(&bearer), None).await.0 })
        })
        .collect();
    let answers: Vec<StatusCode> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");
    assert_eq!(jwks.fetches(), 1);
}
