//! Google-style ID tokens for the tests: a JWKS served over HTTP on 127.0.0.1 (the
//! verifier fetches it like Google's), and tokens signed by the RSA keys checked in under
//! `tests/keys/` (test-only keys, used nowhere else).

use axum::routing::get;
use axum::Router;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reel_api::config::{ApiConfig, AuthMode, Callers, OidcConfig};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const KEY_A: &[u8] = include_bytes!("../keys/test-only-rsa-a.pem");
pub const KEY_B: &[u8] = include_bytes!("../keys/test-only-rsa-b.pem");
pub const AUDIENCE: &str = "https://reel-api.test";

pub fn encoding_key(pem: &[u8]) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem).expect("test key")
}

pub fn jwk(pem: &[u8], kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(pem), Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk
}

/// A JWKS endpoint whose key set the test can change; counts its fetches.
pub struct Jwks {
    pub url: String,
    pub keys: Arc<Mutex<JwkSet>>,
    pub fetches: Arc<AtomicUsize>,
}

impl Jwks {
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

pub async fn serve_jwks(keys: Vec<Jwk>) -> Jwks {
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

/// OIDC mode against `jwks_url`, accepting the end users `users` (`REEL_API_USERS`)
/// and the trusted callers `trusted` (`REEL_API_TRUSTED_CALLERS`).
pub fn oidc_config(jwks_url: &str, users: &str, trusted: &str) -> ApiConfig {
    let mut oidc = OidcConfig::google(AUDIENCE);
    oidc.jwks_url = jwks_url.to_string();
    let mut config = super::local_config();
    config.auth = AuthMode::Oidc(oidc);
    config.users = Callers::parse(users, true).expect("users");
    config.trusted_callers = Callers::parse(trusted, false).expect("trusted callers");
    config
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a good Google ID token for `sub`, whose verified email is `{sub}@example.com`.
pub fn claims(sub: &str) -> Value {
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

pub fn sign(claims: &Value, pem: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &encoding_key(pem)).expect("sign")
}

/// A good token of `sub`, signed with key A as `key-a`.
pub fn token_of(sub: &str) -> String {
    sign(&claims(sub), KEY_A, "key-a")
}
