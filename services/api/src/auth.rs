//! Who is calling: `Authorization: Bearer <token>`, checked one of two ways.
//!
//! - **OIDC** (production): a Google-signed ID token, RS256, verified for its signature
//!   against the JWKS at a configurable URL (cached for the response's `max-age`, and
//!   refetched when a token names an unknown key id, at most every
//!   `REEL_API_JWKS_REFRESH_SECONDS`), its issuer, its audience and its expiry (with a
//!   small leeway). The user is the `sub` (or `email`) claim.
//! - **Local**: a fixed map token → user from the configuration.
//!
//! A token is never logged, and no error message quotes one.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::config::{AuthMode, LocalTokens, OidcConfig, UserClaim};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id jobs are owned by (`userId` in events).
    pub id: String,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header. Answered 401.
    #[error("missing Authorization: Bearer token")]
    Missing,
    /// The header is not `Bearer <token>`, or the token is not a JWT. Answered 401.
    #[error("malformed bearer token: {0}")]
    Malformed(&'static str),
    /// The token is not one this service accepts. Answered 401.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token's `exp` has passed. Answered 401.
    #[error("token has expired")]
    Expired,
    /// The token was issued for another audience. Answered 401.
    #[error("token was issued for another audience")]
    WrongAudience,
    /// The token was not issued by an accepted issuer. Answered 401.
    #[error("token was not issued by an accepted issuer")]
    WrongIssuer,
    /// The signature does not verify with the key the token names. Answered 401.
    #[error("token signature is invalid")]
    BadSignature,
    /// The signing keys could not be fetched and none are cached: our failure, not the
    /// caller's. Answered 503; retrying later may succeed.
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// Whether the failure is ours (503) rather than the caller's (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }
}

/// Checks bearer tokens.
pub enum Authenticator {
    /// Fixed tokens.
    Local(LocalTokens),
    /// Google ID tokens.
    Oidc(Box<OidcVerifier>),
}

impl Authenticator {
    /// The authenticator a configuration asks for.
    pub fn new(mode: &AuthMode) -> Result<Authenticator, reqwest::Error> {
        Ok(match mode {
            AuthMode::Local(tokens) => Authenticator::Local(tokens.clone()),
            AuthMode::Oidc(config) => Authenticator::Oidc(Box::new(OidcVerifier::new(config.clone())?)),
        })
    }

    /// The user behind an `Authorization` header value (`None`: no header).
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<User, AuthError> {
        let token = bearer_token(authorization)?;
        match self {
            Authenticator::Local(tokens) => {
                tokens.user(token).map(|id| User { id: id.to_string() }).ok_or(AuthError::Invalid("unknown token"))
            }
            Authenticator::Oidc(verifier) => verifier.verify(token).await,
        }
    }
}

/// The token of `Bearer <token>`.
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let text = std::str::from_utf8(header).map_err(|_| AuthError::Malformed("the header is not text"))?.trim();
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::Malformed("expected `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("expected the Bearer scheme"));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(AuthError::Malformed("expected exactly one token after Bearer"));
    }
    Ok(token)
}

/// The claims of an ID token that we read.
#[derive(Debug, Deserialize)]
struct Claims {
    /// Required by the validation; optional here so its absence is reported as such.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// Google sends a boolean; some issuers send the string "true".
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
}

/// Verifies Google-signed OIDC ID tokens against a cached JWKS.
pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<KeyCache>,
    /// One fetch at a time; the others wait and then use its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    /// Until when the fetched keys are fresh.
    fresh_until: Option<Instant>,
    /// When the last fetch was tried (successful or not).
    last_fetch: Option<Instant>,
}

impl OidcVerifier {
    /// A verifier with an empty cache; keys are fetched on first use.
    pub fn new(config: OidcConfig) -> Result<OidcVerifier, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(config.http_timeout).build()?;
        Ok(OidcVerifier { config, http, keys: RwLock::default(), fetching: tokio::sync::Mutex::new(()) })
    }

    /// The user a token proves, or why it does not.
    pub async fn verify(&self, token: &str) -> Result<User, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed("not a JWT"))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid("the token must be signed with RS256"));
        }
        let kid = header.kid.ok_or(AuthError::Invalid("the token names no key (kid)"))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&self.config.audiences);
        validation.set_issuer(&self.config.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ImmatureSignature => AuthError::Invalid("the token is not valid yet"),
            ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("the token lacks a required claim"),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("the token's algorithm does not match its key"),
            _ => AuthError::Malformed("the token cannot be decoded"),
        })?;
        let claims = data.claims;
        let id = match self.config.user_claim {
            UserClaim::Sub => claims.sub.unwrap_or_default(),
            UserClaim::Email => {
                let unverified = matches!(&claims.email_verified, Some(serde_json::Value::Bool(false)))
                    || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s != "true");
                if unverified {
                    return Err(AuthError::Invalid("the token's email is not verified"));
                }
                claims.email.filter(|e| !e.is_empty()).ok_or(AuthError::Invalid("the token carries no email"))?
            }
        };
        if id.is_empty() {
            return Err(AuthError::Invalid("the token names no user"));
        }
        Ok(User { id })
    }

    fn cached(&self, kid: &str, need_fresh: bool) -> Option<DecodingKey> {
        let cache = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let fresh = cache.fresh_until.is_some_and(|t| Instant::now() < t);
        if need_fresh && !fresh {
            return None;
        }
        cache.keys.get(kid).cloned()
    }

    /// The key `kid`: from the cache while fresh, else after a (rate-limited) fetch;
    /// stale keys are used when a fetch fails.
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        let _one_fetch = self.fetching.lock().await;
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        let (may_fetch, have_keys) = {
            let cache = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let stale = cache.fresh_until.is_none_or(|t| Instant::now() >= t);
            let cooled = cache.last_fetch.is_none_or(|t| t.elapsed() >= self.config.min_refresh);
            (stale || cooled, !cache.keys.is_empty())
        };
        if may_fetch {
            match self.fetch().await {
                Ok((keys, ttl)) => {
                    info!(keys = keys.len(), ttl_secs = ttl.as_secs(), "fetched the token signing keys");
                    let mut cache = self.keys.write().unwrap_or_else(|p| p.into_inner());
                    cache.keys = keys;
                    cache.fresh_until = Some(Instant::now() + ttl);
                    cache.last_fetch = Some(Instant::now());
                }
                Err(e) => {
                    warn!(url = %self.config.jwks_url, error = %e, "could not fetch the token signing keys");
                    self.keys.write().unwrap_or_else(|p| p.into_inner()).last_fetch = Some(Instant::now());
                    if !have_keys {
                        return Err(AuthError::KeysUnavailable(e));
                    }
                }
            }
        }
        self.cached(kid, false).ok_or(AuthError::Invalid("the token is signed by an unknown key"))
    }

    async fn fetch(&self) -> Result<(HashMap<String, DecodingKey>, Duration), String> {
        let response = self.http.get(&self.config.jwks_url).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let ttl = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(self.config.default_ttl);
        let set: JwkSet = response.json().await.map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let rsa = matches!(jwk.algorithm, AlgorithmParameters::RSA(_));
            let alg_ok = jwk.common.key_algorithm.is_none_or(|a| a == KeyAlgorithm::RS256);
            let use_ok = jwk.common.public_key_use.as_ref().is_none_or(|u| *u == PublicKeyUse::Signature);
            if !(rsa && alg_ok && use_ok) {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                Err(e) => warn!(kid = %kid, error = %e, "skipping an unusable signing key"),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS holds no RS256 signing key".into());
        }
        Ok((keys, ttl))
    }
}

/// `max-age` of a `Cache-Control` value.
fn max_age(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_is_parsed_strictly() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert!(matches!(bearer_token(Some(b"Basic abc")), Err(AuthError::Malformed(_))));
        assert!(matches!(bearer_token(Some(b"Bearer")), Err(AuthError::Malformed(_))));
        assert!(matches!(bearer_token(Some(b"Bearer a b")), Err(AuthError::Malformed(_))));
        assert!(matches!(bearer_token(Some(b"Bearer ")), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=19274, must-revalidate, no-transform"), Some(Duration::from_secs(19274)));
        assert_eq!(max_age("no-cache"), None);
    }
}
