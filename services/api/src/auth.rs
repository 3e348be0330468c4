//! Who is calling, and for whom.
//!
//! `Authorization: Bearer <token>` proves the caller, one of two ways:
//!
//! - **OIDC** (production): a Google-signed ID token, checked by the maintained verifier
//!   of `google-cloud-auth` (its `idtoken` feature): signature against the JWKS at the
//!   configured URL, issuer, audience and expiry (with a leeway). On top, the issuer must
//!   be one of ours, `aud` and `sub` must be present, and a token naming a key id that
//!   no token has been verified with sends the verifier to fetch the keys at most once
//!   per `REEL_API_JWKS_REFRESH_SECONDS`, so bogus tokens cannot hammer Google.
//! - **Local**: a fixed map token → user from the configuration.
//!
//! Then [`Authenticator::identify`] decides whom the request acts for: a caller in
//! `REEL_API_TRUSTED_CALLERS` acts for the user its `X-Reel-User` header names (or as
//! itself without one); anyone else acts as itself, and only if known (OIDC:
//! `REEL_API_USERS`; local: every token's user). docs/API.md, "Identity".
//!
//! A token is never logged, and no error message quotes one.

use base64::Engine as _;
use google_cloud_auth::credentials::idtoken::verifier::{Builder, Verifier};
use serde::Deserialize;
use std::collections::HashSet;
use std::time::Instant;
use tracing::{info, warn};

use crate::config::{check_jwks_url, ApiConfig, AuthMode, Callers, LocalTokens, OidcConfig, UserClaim};

/// The header in which a trusted caller names the user it acts for.
pub const ACTING_FOR_HEADER: &str = "x-reel-user";

/// The longest user id a trusted caller may name, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Whom a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id jobs are owned by (`userId` in events): the caller's own id, or the
    /// user a trusted caller named.
    pub id: String,
    /// The authenticated caller (equal to `id` unless a trusted caller acts for a user).
    pub caller: String,
}

/// Who a token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The id it acts under by default: the configured claim, or the local user name.
    pub id: String,
    /// Every name the caller is known by, matched against `REEL_API_TRUSTED_CALLERS` and
    /// `REEL_API_USERS`: the local user name, or the token's `sub` and verified `email`.
    pub names: Vec<String>,
}

/// Why a request is not let through.
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
    /// The verifier refused the token (signature, issuer, audience, expiry), in its
    /// words. Answered 401.
    #[error("invalid token: {0}")]
    Rejected(String),
    /// The signing keys could not be fetched (why: logged, not answered): our failure,
    /// not the caller's. Answered 503; retrying later may succeed.
    #[error("the token signing keys are unavailable; try again shortly")]
    KeysUnavailable(String),
    /// A valid token of a caller that is neither a known user nor trusted. Answered 403.
    #[error("this caller is not allowed to use the API (neither a known user nor a trusted caller)")]
    NotAllowed,
    /// `X-Reel-User` from a caller that may not act for others. Answered 403.
    #[error("X-Reel-User is only for trusted callers (REEL_API_TRUSTED_CALLERS); leave it out to act as yourself")]
    MayNotActFor,
    /// `X-Reel-User` names no valid user id. Answered 400.
    #[error("X-Reel-User: {0}")]
    BadUserId(String),
}

impl AuthError {
    /// Whether the failure is ours (503) rather than the caller's (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }

    /// Whether the caller is known but not permitted (403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::NotAllowed | AuthError::MayNotActFor)
    }

    /// Whether the request itself is malformed (400), not its credentials.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, AuthError::BadUserId(_))
    }
}

/// How tokens are checked.
enum Tokens {
    /// Fixed tokens.
    Local(LocalTokens),
    /// Google ID tokens.
    Oidc(Box<OidcVerifier>),
}

/// Checks bearer tokens and decides whom a request acts for.
pub struct Authenticator {
    tokens: Tokens,
    trusted: Callers,
    users: Callers,
}

impl Authenticator {
    /// The authenticator a configuration asks for (refused: a JWKS URL that is not
    /// https, see [`check_jwks_url`]).
    pub fn new(config: &ApiConfig) -> Result<Authenticator, String> {
        let tokens = match &config.auth {
            AuthMode::Local(tokens) => Tokens::Local(tokens.clone()),
            AuthMode::Oidc(oidc) => {
                check_jwks_url(&oidc.jwks_url)?;
                if config.trusted_callers.is_empty() && config.users.is_empty() {
                    warn!(
                        "OIDC mode with neither REEL_API_TRUSTED_CALLERS nor REEL_API_USERS: every caller is refused"
                    );
                }
                Tokens::Oidc(Box::new(OidcVerifier::new(oidc.clone())))
            }
        };
        Ok(Authenticator { tokens, trusted: config.trusted_callers.clone(), users: config.users.clone() })
    }

    /// Who an `Authorization` header value proves (`None`: no header).
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let token = bearer_token(authorization)?;
        match &self.tokens {
            Tokens::Local(tokens) => tokens
                .user(token)
                .map(|id| Caller { id: id.to_string(), names: vec![id.to_string()] })
                .ok_or(AuthError::Invalid("unknown token")),
            Tokens::Oidc(verifier) => verifier.verify(token).await,
        }
    }

    /// Whom a request of `caller` acts for, given its `X-Reel-User` values.
    pub fn identify(&self, caller: Caller, acting_for: &[&[u8]]) -> Result<User, AuthError> {
        let names = || caller.names.iter().map(String::as_str);
        let trusted = self.trusted.contains(names());
        let known = match self.tokens {
            Tokens::Local(_) => true,
            Tokens::Oidc(_) => self.users.contains(names()),
        };
        if !(trusted || known) {
            return Err(AuthError::NotAllowed);
        }
        match acting_for {
            [] => Ok(User { id: caller.id.clone(), caller: caller.id }),
            _ if !trusted => Err(AuthError::MayNotActFor),
            [one] => Ok(User { id: user_id(one)?.to_string(), caller: caller.id }),
            _ => Err(AuthError::BadUserId("sent more than once".into())),
        }
    }
}

/// A user id a trusted caller names: text of 1 to [`MAX_USER_ID_BYTES`] bytes, not all
/// blank, with no control characters.
pub fn user_id(value: &[u8]) -> Result<&str, AuthError> {
    let bad = |m: String| AuthError::BadUserId(m);
    let id = std::str::from_utf8(value).map_err(|_| bad("the user id is not UTF-8 text".into()))?;
    if id.trim().is_empty() {
        return Err(bad("the user id is empty".into()));
    }
    if id.len() > MAX_USER_ID_BYTES {
        return Err(bad(format!("the user id is {} bytes; the limit is {MAX_USER_ID_BYTES}", id.len())));
    }
    if id.chars().any(char::is_control) {
        return Err(bad("the user id holds a control character".into()));
    }
    Ok(id)
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

/// The fields of a token's header read before verification, to refuse early what the
/// verifier would refuse anyway and to decide whether it may fetch keys.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The key id of an RS256 token (nothing is trusted from it: it only routes).
fn key_id(token: &str) -> Result<String, AuthError> {
    let not_jwt = AuthError::Malformed("not a JWT");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(not_jwt);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| not_jwt.clone())?;
    let header: TokenHeader = serde_json::from_slice(&bytes).map_err(|_| not_jwt)?;
    if header.alg != "RS256" {
        return Err(AuthError::Invalid("the token must be signed with RS256"));
    }
    header.kid.filter(|k| !k.is_empty()).ok_or(AuthError::Invalid("the token names no key (kid)"))
}

/// Verifies Google-signed OIDC ID tokens with `google-cloud-auth`'s verifier.
pub struct OidcVerifier {
    config: OidcConfig,
    /// One verification at a time: the verifier's key cache refuses (rather than waits
    /// for) a second caller while the first holds it, fetching or not
    /// (googleapis/google-cloud-rust#6696; `simultaneous_first_requests_share_one_key_fetch`
    /// in tests/auth.rs answers 503s without this). A verification whose keys are cached
    /// takes well under a millisecond.
    verifier: tokio::sync::Mutex<Verifier>,
    /// Key ids that verified a token, and when a key id last turned out unknown.
    keys: std::sync::Mutex<KeyIds>,
}

#[derive(Default)]
struct KeyIds {
    verified: HashSet<String>,
    last_unknown: Option<Instant>,
}

/// The verifier's message for a key id its JWKS does not hold (the one load failure that
/// is the caller's: every other is the key server's).
const UNKNOWN_KID: &str = "did not contain a matching `kid`";

impl OidcVerifier {
    /// A verifier with an empty cache; keys are fetched on first use.
    pub fn new(config: OidcConfig) -> OidcVerifier {
        let verifier = Builder::new(config.audiences.clone())
            .with_jwks_url(config.jwks_url.clone())
            .with_clock_skew(config.leeway)
            .build();
        OidcVerifier { config, verifier: tokio::sync::Mutex::new(verifier), keys: Default::default() }
    }

    fn key_ids(&self) -> std::sync::MutexGuard<'_, KeyIds> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who a token proves, or why it does not.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let kid = key_id(token)?;
        let verified = tokio::time::timeout(self.config.http_timeout, async {
            let verifier = self.verifier.lock().await;
            {
                let keys = self.key_ids();
                let cooling = keys.last_unknown.is_some_and(|t| t.elapsed() < self.config.min_refresh);
                if cooling && !keys.verified.contains(&kid) {
                    return Err(AuthError::Invalid("the token is signed by an unknown key"));
                }
            }
            verifier.verify(token).await.map_err(|e| {
                if e.is_load_cert() && e.to_string().contains(UNKNOWN_KID) {
                    let mut keys = self.key_ids();
                    keys.verified.remove(&kid);
                    keys.last_unknown = Some(Instant::now());
                    AuthError::Invalid("the token is signed by an unknown key")
                } else if e.is_load_cert() {
                    warn!(url = %self.config.jwks_url, error = %e, "could not fetch the token signing keys");
                    AuthError::KeysUnavailable(e.to_string())
                } else if e.is_decode() {
                    AuthError::Malformed("the token cannot be decoded")
                } else {
                    AuthError::Rejected(e.to_string())
                }
            })
        })
        .await
        .map_err(|_| {
            warn!(url = %self.config.jwks_url, "timed out fetching the token signing keys");
            AuthError::KeysUnavailable("timed out fetching the signing keys".into())
        })??;
        if self.key_ids().verified.insert(kid) {
            info!("a new token signing key verified a token");
        }
        self.caller(&verified)
    }

    /// The caller a verified token's claims name, after our own checks on them.
    fn caller(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Caller, AuthError> {
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
        let issuer = text("iss").ok_or(AuthError::Invalid("the token lacks a required claim (iss)"))?;
        if !self.config.issuers.iter().any(|i| i == issuer) {
            return Err(AuthError::Invalid("the token was not issued by an accepted issuer"));
        }
        if claims.get("aud").is_none() {
            return Err(AuthError::Invalid("the token lacks a required claim (aud)"));
        }
        let sub = text("sub").ok_or(AuthError::Invalid("the token lacks a required claim (sub)"))?;
        // Google sends a boolean; some issuers send the string "true".
        let email_verified = match claims.get("email_verified") {
            Some(serde_json::Value::Bool(verified)) => *verified,
            Some(serde_json::Value::String(verified)) => verified == "true",
            _ => false,
        };
        let email = text("email").filter(|_| email_verified);
        let id = match self.config.user_claim {
            UserClaim::Sub => sub,
            UserClaim::Email => match (text("email"), email) {
                (Some(_), None) => return Err(AuthError::Invalid("the token's email is not verified")),
                (_, Some(email)) => email,
                (None, None) => return Err(AuthError::Invalid("the token carries no email")),
            },
        };
        let mut names = vec![sub.to_string()];
        names.extend(email.map(String::from));
        Ok(Caller { id: id.to_string(), names })
    }
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
    fn named_user_ids_are_checked() {
        assert_eq!(user_id(b"user_456"), Ok("user_456"));
        assert_eq!(user_id("ünïcode@example.com".as_bytes()), Ok("ünïcode@example.com"));
        assert_eq!(user_id(&[b'a'; MAX_USER_ID_BYTES]).map(str::len), Ok(MAX_USER_ID_BYTES));
        let too_long = [b'a'; MAX_USER_ID_BYTES + 1];
        let bad_ids: [&[u8]; 6] = [b"", b"  ", b"a\nb", b"a\x00", b"\xff\xfe", &too_long];
        for bad in bad_ids {
            assert!(matches!(user_id(bad), Err(AuthError::BadUserId(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_rs256_tokens_with_a_key_id_reach_the_verifier() {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = |header: &str| format!("{}.e30.c2ln", b64(header));
        assert_eq!(key_id(&token(r#"{"alg":"RS256","kid":"k1"}"#)), Ok("k1".into()));
        assert!(
            matches!(key_id(&token(r#"{"alg":"HS256","kid":"k1"}"#)), Err(AuthError::Invalid(m)) if m.contains("RS256"))
        );
        assert!(matches!(key_id(&token(r#"{"alg":"none","kid":"k1"}"#)), Err(AuthError::Invalid(_))));
        assert!(matches!(key_id(&token(r#"{"alg":"RS256"}"#)), Err(AuthError::Invalid(m)) if m.contains("kid")));
        assert_eq!(key_id("a.b"), Err(AuthError::Malformed("not a JWT")));
        assert_eq!(key_id("a.b.c"), Err(AuthError::Malformed("not a JWT")));
    }
}
