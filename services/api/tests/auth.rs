//! OIDC mode against a JWKS served by the test on 127.0.0.1, with tokens signed by
//! RSA keys checked in under `tests/keys/` (test-only keys, used nowhere else).

mod common;

use axum::http::{Method, StatusCode};
use axum::routing::get;
use axum::Router;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reel_api::config::{ApiConfig, AuthMode, OidcConfig, UserClaim};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const KEY_A: &[u8] = include_bytes!("keys/test-only-rsa-a.pem");
const KEY_B: &[u8] = include_bytes!("keys/test-only-rsa-b.pem");
const AUDIENCE: &str = "https://reel-api.test";

fn encoding_key(pem: &[u8]) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem).expect("test key")
}

fn jwk(pem: &[u8], kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(pem), Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk
}

/// A JWKS endpoint whose key set the test can change; counts its fetches.
struct Jwks {
    url: String,
    keys: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(keys: Vec<Jwk>) -> Jwks {
    let set = Arc::new(Mutex::new(JwkSet { keys }));
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/certs",
        get({
            let (set, fetches) = (set.clone(), fetches.clone());
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::to_string(&*set.lock().unwrap()).unwrap();
                ([("content-type", "application/json"), ("cache-control", "public, max-age=3600")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Jwks { url, keys: set, fetches }
}

fn oidc_config(jwks_url: &str) -> ApiConfig {
    let mut oidc = OidcConfig::google(AUDIENCE);
    oidc.jwks_url = jwks_url.to_string();
    let mut config = local_config();
    config.auth = AuthMode::Oidc(oidc);
    config
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a good Google ID token for `sub`.
fn claims(sub: &str) -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "email_verified": true,
        "iat": now() - 10,
        "exp": now() + 3600,
    })
}

fn sign(claims: &Value, pem: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &encoding_key(pem)).expect("sign")
}

async fn status_of(api: &TestApi, authorization: Option<&str>) -> (StatusCode, Value) {
    let (status, _, body) = call(&api.app, Method::GET, "/api/projects/p/jobs", authorization, None).await;
    (status, body)
}

#[tokio::test]
async fn google_id_tokens_are_verified_for_signature_issuer_audience_and_expiry() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let api = spawn(oidc_config(&jwks.url)).await;
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
        ("no sub", Some(bearer(&sign(&no_sub, KEY_A, "key-a"))), "claim"),
        ("HS256", Some(bearer(&hs256)), "RS256"),
        ("tampered claims", Some(bearer(&tamper(&good))), "signature"),
    ];
    for (name, header, mentioned) in cases {
        let (status, body) = status_of(&api, header.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(mentioned), "{name}: {message:?} should mention {mentioned:?}");
        if let Some(h) = &header {
            if let Some(token) = h.strip_prefix("Bearer ").filter(|t| !t.is_empty()) {
                assert!(!message.contains(token), "{name}: the answer quotes the token");
            }
        }
    }
    // The keys were fetched once and cached (the unknown kid was within the refresh
    // cool-down, so it did not refetch either).
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
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
    let mut config = oidc_config(&jwks.url);
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
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(status_of(&api, Some(&a)).await.0, StatusCode::OK);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "cached again");
}

#[tokio::test]
async fn unreachable_keys_answer_503_not_401() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    drop(listener);
    let api = spawn(oidc_config(&url)).await;
    let token = format!("Bearer {}", sign(&claims("alice"), KEY_A, "key-a"));
    let (status, _) = status_of(&api, Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_user_is_the_configured_claim_and_isolation_follows_it() {
    let jwks = serve_jwks(vec![jwk(KEY_A, "key-a")]).await;
    let mut config = oidc_config(&jwks.url);
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
