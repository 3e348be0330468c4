//! reel-api's own settings, from the environment variables its `main` passes in.
//!
//! The shared [`reel_runtime::Settings`] cover what every program has (`PORT`, the
//! topic prefix, `JOB_TIMEOUT_MINUTES`, the work root, …); this adds what only the API
//! needs. Every variable is listed in `docs/API.md`. Bad values fail at startup with the
//! variable's name; the value of `REEL_API_TOKENS` is never echoed.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Google's JWKS: the keys that sign Google ID tokens.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers Google puts in its ID tokens.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Default key of the state snapshot in the work store.
pub const DEFAULT_SNAPSHOT_KEY: &str = "control/api-snapshot.json";
/// Default prefix of the journal objects in the work store.
pub const DEFAULT_JOURNAL_PREFIX: &str = "control/api-journal/";

/// Which claim of a verified ID token is the user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserClaim {
    /// `sub`: Google's stable account id (the default; always present).
    Sub,
    /// `email`: requires the token to carry an email that is not marked unverified.
    Email,
}

/// Production authentication: Google-signed OIDC ID tokens.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Where the signing keys are fetched (`REEL_API_JWKS_URL`; https, see [`check_jwks_url`]).
    pub jwks_url: String,
    /// Accepted `aud` values (`REEL_API_AUDIENCE`, comma-separated; required).
    pub audiences: Vec<String>,
    /// Accepted `iss` values (`REEL_API_ISSUERS`; default Google's two spellings; the
    /// verifier itself accepts Google's issuers only).
    pub issuers: Vec<String>,
    /// The claim that names the user (`REEL_API_USER_CLAIM`: `sub` or `email`).
    pub user_claim: UserClaim,
    /// Clock skew tolerated on `exp` (`REEL_API_LEEWAY_SECONDS`, default 30).
    pub leeway: Duration,
    /// After a key id turned out unknown, tokens naming key ids that never verified a
    /// token are refused without a key fetch for this long
    /// (`REEL_API_JWKS_REFRESH_SECONDS`, default 30), so bogus tokens cannot hammer Google.
    pub min_refresh: Duration,
    /// Longest a token check may take, a key fetch included (then: 503).
    pub http_timeout: Duration,
}

impl OidcConfig {
    /// Google ID tokens for `audience`, with the defaults.
    pub fn google(audience: &str) -> OidcConfig {
        OidcConfig {
            jwks_url: GOOGLE_JWKS_URL.into(),
            audiences: vec![audience.to_string()],
            issuers: GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect(),
            user_claim: UserClaim::Sub,
            leeway: Duration::from_secs(30),
            min_refresh: Duration::from_secs(30),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// Local authentication: fixed tokens mapped to users. Only SHA-256 digests of the
/// tokens are kept, so neither `Debug` nor a heap dump shows one.
#[derive(Clone, Default)]
pub struct LocalTokens {
    by_digest: HashMap<[u8; 32], String>,
}

impl LocalTokens {
    /// From `token=user` pairs.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LocalTokens {
        let by_digest = pairs.into_iter().map(|(token, user)| (digest(token), user.to_string())).collect();
        LocalTokens { by_digest }
    }

    /// Parse `tok1=alice,tok2=bob`.
    pub fn parse(text: &str) -> Result<LocalTokens, String> {
        let mut pairs = Vec::new();
        for (i, entry) in text.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            match entry.split_once('=') {
                Some((token, user)) if !token.trim().is_empty() && !user.trim().is_empty() => {
                    pairs.push((token.trim(), user.trim()))
                }
                _ => return Err(format!("entry {} is not token=user", i + 1)),
            }
        }
        if pairs.is_empty() {
            return Err("no token=user entries".into());
        }
        Ok(LocalTokens::new(pairs))
    }

    /// The user a token belongs to.
    pub fn user(&self, token: &str) -> Option<&str> {
        self.by_digest.get(&digest(token)).map(String::as_str)
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

impl fmt::Debug for LocalTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalTokens({} tokens)", self.by_digest.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// How callers prove who they are.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Google-signed OIDC ID tokens (production).
    Oidc(OidcConfig),
    /// Tokens from the configuration (local runs, tests).
    Local(LocalTokens),
}

/// A list of callers (`REEL_API_TRUSTED_CALLERS`, `REEL_API_USERS`): user names, OIDC
/// subjects and emails, and (where allowed) `*@domain` for every verified email of a
/// domain. Emails and domains match whatever their case; names and subjects exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callers {
    names: Vec<String>,
    domains: Vec<String>,
}

impl Callers {
    /// Parse `a@x.com, 1234567890, *@example.com`; `*@domain` only `with_domains`.
    pub fn parse(text: &str, with_domains: bool) -> Result<Callers, String> {
        let mut callers = Callers::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(domain) = entry.strip_prefix("*@") {
                if !with_domains {
                    return Err(format!("{entry:?}: patterns are not allowed here, name each caller"));
                }
                if domain.is_empty() || domain.contains(['*', '@']) {
                    return Err(format!("{entry:?} is not *@domain"));
                }
                callers.domains.push(domain.to_ascii_lowercase());
            } else if entry.contains('*') {
                return Err(format!("{entry:?}: the only pattern is *@domain"));
            } else if entry.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!("{entry:?} holds a space or a control character"));
            } else {
                callers.names.push(entry.to_string());
            }
        }
        Ok(callers)
    }

    /// Whether a caller known by `names` (its user name, or its OIDC subject and verified
    /// email) is on the list.
    pub fn contains<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        names.into_iter().any(|name| {
            let email_domain = name.rsplit_once('@').map(|(_, d)| d);
            self.names.iter().any(|n| if email_domain.is_some() { n.eq_ignore_ascii_case(name) } else { n == name })
                || email_domain.is_some_and(|d| self.domains.iter().any(|domain| domain.eq_ignore_ascii_case(d)))
        })
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.domains.is_empty()
    }
}

/// Whether a JWKS URL may be used: `https://`, or `http://` on the loopback interface
/// (`127.0.0.1`, `localhost`, `[::1]`: a test's own key server). Anything else would let
/// whoever sits on the network path choose which tokens verify.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    if url.strip_prefix("https://").is_some_and(|rest| !rest.is_empty()) {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} is not an https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if !authority.contains('@') && matches!(host, "127.0.0.1" | "localhost" | "::1") {
        Ok(())
    } else {
        Err(format!("{url:?} must be https:// (plain http:// is only for 127.0.0.1 and localhost, in tests)"))
    }
}

/// Everything reel-api reads beyond the shared settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Authentication (`REEL_API_AUTH`: `oidc` or `local`).
    pub auth: AuthMode,
    /// Callers that act for the user named in their `X-Reel-User` header
    /// (`REEL_API_TRUSTED_CALLERS`): OIDC emails or subjects, or local user names.
    pub trusted_callers: Callers,
    /// OIDC mode: the end users who may call as themselves (`REEL_API_USERS`: emails,
    /// subjects, `*@domain`). Any other Google-signed token is refused with 403. Local mode
    /// has none: its token map is the set of known users.
    pub users: Callers,
    /// Key of the state snapshot in the work store (`REEL_API_SNAPSHOT_KEY`).
    pub snapshot_key: String,
    /// Seconds between snapshots (`REEL_API_SNAPSHOT_SECONDS`, default 30).
    pub snapshot_interval: Duration,
    /// Prefix of the journal objects (`REEL_API_JOURNAL_PREFIX`); `None` when
    /// `REEL_API_JOURNAL=false`: events acked since the last snapshot are then lost if
    /// the process dies without its SIGTERM snapshot.
    pub journal_prefix: Option<String>,
    /// Journal objects covered by a snapshot are deleted once this old
    /// (`REEL_API_JOURNAL_RETENTION_SECONDS`, default 300): long enough for an instance
    /// that overlaps this one during a rollout to fold them too.
    pub journal_retention: Duration,
    /// How long the follower gathers a batch after its first message (milliseconds in
    /// `REEL_API_BATCH_MILLIS`, default 500): one journal object per batch.
    pub batch_window: Duration,
    /// Most messages in one batch.
    pub batch_max: usize,
    /// Finished jobs leave memory this long after they ended and are then read from
    /// their job records (`REEL_API_RETAIN_FINISHED_SECONDS`, default 3600).
    pub retain_finished: Duration,
}

/// A variable with a bad value.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {message}")]
pub struct ApiConfigError {
    /// The variable.
    pub name: String,
    /// What is wrong (never the value of a secret).
    pub message: String,
}

impl ApiConfig {
    /// Local tokens, no trusted callers, default snapshot and journal: what tests and local
    /// runs use.
    pub fn local(tokens: LocalTokens) -> ApiConfig {
        ApiConfig {
            auth: AuthMode::Local(tokens),
            trusted_callers: Callers::default(),
            users: Callers::default(),
            snapshot_key: DEFAULT_SNAPSHOT_KEY.into(),
            snapshot_interval: Duration::from_secs(30),
            journal_prefix: Some(DEFAULT_JOURNAL_PREFIX.into()),
            journal_retention: Duration::from_secs(300),
            batch_window: Duration::from_millis(500),
            batch_max: 100,
            retain_finished: Duration::from_secs(3600),
        }
    }

    /// From the program's environment variables (`reel-api`'s main passes them in; no
    /// library code reads the environment).
    pub fn from_vars(vars: &[(String, String)]) -> Result<ApiConfig, ApiConfigError> {
        let get = |name: &str| {
            vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty())
        };
        let bad = |name: &str, message: String| ApiConfigError { name: name.into(), message };
        let number = |name: &str, default: u64| -> Result<u64, ApiConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().map_err(|_| bad(name, format!("{v:?} is not a non-negative integer"))),
            }
        };
        let list = |name: &str| -> Option<Vec<String>> {
            get(name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        };

        let tokens = match get("REEL_API_TOKENS") {
            // The message never includes the value: it holds secrets.
            Some(text) => Some(LocalTokens::parse(&text).map_err(|m| bad("REEL_API_TOKENS", m))?),
            None => None,
        };
        let mode = match get("REEL_API_AUTH").map(|m| m.to_ascii_lowercase()) {
            Some(m) if m == "oidc" => "oidc",
            Some(m) if m == "local" => "local",
            Some(m) => return Err(bad("REEL_API_AUTH", format!("{m:?} is neither oidc nor local"))),
            None if tokens.is_some() => "local",
            None => "oidc",
        };
        let auth = if mode == "local" {
            AuthMode::Local(tokens.ok_or_else(|| bad("REEL_API_TOKENS", "local auth needs token=user pairs".into()))?)
        } else {
            let audiences = list("REEL_API_AUDIENCE").filter(|a| !a.is_empty()).ok_or_else(|| {
                bad(
                    "REEL_API_AUDIENCE",
                    "OIDC auth needs the audience tokens must be issued for (e.g. the service URL)".into(),
                )
            })?;
            let mut oidc = OidcConfig::google(&audiences[0]);
            oidc.audiences = audiences;
            if let Some(url) = get("REEL_API_JWKS_URL") {
                check_jwks_url(&url).map_err(|m| bad("REEL_API_JWKS_URL", m))?;
                oidc.jwks_url = url;
            }
            if let Some(issuers) = list("REEL_API_ISSUERS").filter(|i| !i.is_empty()) {
                oidc.issuers = issuers;
            }
            oidc.user_claim = match get("REEL_API_USER_CLAIM").as_deref() {
                None | Some("sub") => UserClaim::Sub,
                Some("email") => UserClaim::Email,
                Some(other) => return Err(bad("REEL_API_USER_CLAIM", format!("{other:?} is neither sub nor email"))),
            };
            oidc.leeway = Duration::from_secs(number("REEL_API_LEEWAY_SECONDS", 30)?);
            oidc.min_refresh = Duration::from_secs(number("REEL_API_JWKS_REFRESH_SECONDS", 30)?);
            AuthMode::Oidc(oidc)
        };
        let trusted_callers = Callers::parse(&get("REEL_API_TRUSTED_CALLERS").unwrap_or_default(), false)
            .map_err(|m| bad("REEL_API_TRUSTED_CALLERS", m))?;
        let users = match get("REEL_API_USERS") {
            Some(_) if mode == "local" => {
                return Err(bad(
                    "REEL_API_USERS",
                    "applies to OIDC mode only; in local mode REEL_API_TOKENS names the users".into(),
                ))
            }
            Some(text) => Callers::parse(&text, true).map_err(|m| bad("REEL_API_USERS", m))?,
            None => Callers::default(),
        };

        let journal_on = match get("REEL_API_JOURNAL").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => return Err(bad("REEL_API_JOURNAL", format!("{other:?} is not true or false"))),
        };
        let journal_prefix = get("REEL_API_JOURNAL_PREFIX").unwrap_or_else(|| DEFAULT_JOURNAL_PREFIX.into());
        let snapshot_key = get("REEL_API_SNAPSHOT_KEY").unwrap_or_else(|| DEFAULT_SNAPSHOT_KEY.into());
        for (name, key) in [
            ("REEL_API_SNAPSHOT_KEY", snapshot_key.as_str()),
            ("REEL_API_JOURNAL_PREFIX", journal_prefix.trim_end_matches('/')),
        ] {
            reel_runtime::store::check_key(key).map_err(|e| bad(name, e.to_string()))?;
        }
        if journal_on && snapshot_key.starts_with(&journal_prefix) {
            return Err(bad("REEL_API_SNAPSHOT_KEY", "the snapshot must not live under the journal prefix".into()));
        }
        let snapshot_seconds = number("REEL_API_SNAPSHOT_SECONDS", 30)?;
        if snapshot_seconds == 0 {
            return Err(bad("REEL_API_SNAPSHOT_SECONDS", "must be at least 1".into()));
        }
        Ok(ApiConfig {
            auth,
            trusted_callers,
            users,
            snapshot_key,
            snapshot_interval: Duration::from_secs(snapshot_seconds),
            journal_prefix: journal_on.then(|| {
                if journal_prefix.ends_with('/') {
                    journal_prefix
                } else {
                    format!("{journal_prefix}/")
                }
            }),
            journal_retention: Duration::from_secs(number("REEL_API_JOURNAL_RETENTION_SECONDS", 300)?),
            batch_window: Duration::from_millis(number("REEL_API_BATCH_MILLIS", 500)?),
            batch_max: 100,
            retain_finished: Duration::from_secs(number("REEL_API_RETAIN_FINISHED_SECONDS", 3600)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn tokens_select_local_mode_and_never_print() {
        let config = ApiConfig::from_vars(&vars(&[("REEL_API_TOKENS", "s3cret=alice, other=bob")])).unwrap();
        let AuthMode::Local(tokens) = &config.auth else { panic!("expected local mode") };
        assert_eq!(tokens.user("s3cret"), Some("alice"));
        assert_eq!(tokens.user("other"), Some("bob"));
        assert_eq!(tokens.user("nope"), None);
        assert!(!format!("{config:?}").contains("s3cret"));
        let err = ApiConfig::from_vars(&vars(&[("REEL_API_TOKENS", "s3cret")])).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn oidc_needs_an_audience_and_has_google_defaults() {
        let err = ApiConfig::from_vars(&[]).unwrap_err();
        assert_eq!(err.name, "REEL_API_AUDIENCE");
        let config = ApiConfig::from_vars(&vars(&[
            ("REEL_API_AUDIENCE", "https://reel-api.example"),
            ("REEL_API_TRUSTED_CALLERS", "phoenix@p.iam.gserviceaccount.com"),
            ("REEL_API_USERS", "ops@example.com, *@Example.org"),
        ]))
        .unwrap();
        let AuthMode::Oidc(oidc) = &config.auth else { panic!("expected oidc") };
        assert_eq!(oidc.jwks_url, GOOGLE_JWKS_URL);
        assert_eq!(oidc.issuers, vec!["https://accounts.google.com", "accounts.google.com"]);
        assert_eq!(oidc.user_claim, UserClaim::Sub);
        assert!(config.trusted_callers.contains(["1234", "Phoenix@p.iam.gserviceaccount.com"]));
        assert!(!config.trusted_callers.contains(["ops@example.com"]));
        assert!(config.users.contains(["ops@example.com"]));
        assert!(config.users.contains(["anyone@example.ORG"]));
        assert!(!config.users.contains(["anyone@example.org.evil.com", "example.org"]));
        assert_eq!(config.snapshot_key, DEFAULT_SNAPSHOT_KEY);
        assert_eq!(config.journal_prefix.as_deref(), Some(DEFAULT_JOURNAL_PREFIX));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("REEL_API_AUTH", "basic"),
            ("REEL_API_TRUSTED_CALLERS", "*@example.com"),
            ("REEL_API_USERS", "alice"),
            ("REEL_API_SNAPSHOT_KEY", "/abs"),
            ("REEL_API_SNAPSHOT_SECONDS", "0"),
            ("REEL_API_JOURNAL", "maybe"),
        ] {
            let err = ApiConfig::from_vars(&vars(&[("REEL_API_TOKENS", "t=u"), (name, value)])).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }

    #[test]
    fn caller_lists_refuse_what_they_cannot_mean() {
        for (text, domains) in [("*", true), ("*@", true), ("a*@x.com", true), ("*@x.com", false), ("a b", true)] {
            assert!(Callers::parse(text, domains).is_err(), "{text:?}");
        }
        let oidc = |users: &str| {
            ApiConfig::from_vars(&vars(&[("REEL_API_AUDIENCE", "https://a"), ("REEL_API_USERS", users)]))
                .map(|c| c.users)
                .map_err(|e| e.name)
        };
        assert_eq!(oidc("*"), Err("REEL_API_USERS".to_string()));
        assert!(oidc("*@example.com").unwrap().contains(["x@example.com"]));
    }

    #[test]
    fn jwks_urls_are_https_except_on_loopback() {
        for good in [
            "https://www.googleapis.com/oauth2/v3/certs",
            "http://127.0.0.1:4321/certs",
            "http://localhost/c",
            "http://[::1]:80/c",
        ] {
            assert_eq!(check_jwks_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://keys.example.com/certs",
            "http://127.0.0.1@evil.example/certs",
            "http://127.0.0.1.evil.example/",
            "ftp://x",
            "https://",
        ] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
        let err = ApiConfig::from_vars(&vars(&[
            ("REEL_API_AUDIENCE", "https://a"),
            ("REEL_API_JWKS_URL", "http://keys.example.com/certs"),
        ]))
        .unwrap_err();
        assert_eq!(err.name, "REEL_API_JWKS_URL");
    }
}
