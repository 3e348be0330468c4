//! `reel-api` as an operator starts it: `--help` says what it is and what it needs,
//! `--version` names it, and a missing or bad setting is refused with its name.

use std::process::Command;

fn reel_api(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reel-api"));
    command.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("run reel-api")
}

#[test]
fn help_version_and_bad_settings() {
    let out = reel_api(&["--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("REEL_API_AUDIENCE") && text.contains("REEL_API_TOKENS"), "{text}");

    let out = reel_api(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("reel-api "));

    let out = reel_api(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REEL_API_AUDIENCE"));

    let out = reel_api(&[], &[("REEL_API_TOKENS", "t=alice"), ("LOG_LEVEL", "loud")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOG_LEVEL"));

    // The key set decides which tokens verify: it is fetched over https only (plain http
    // is for a test's own server on 127.0.0.1).
    let audience = ("REEL_API_AUDIENCE", "https://reel-api.test");
    let out = reel_api(&[], &[audience, ("REEL_API_JWKS_URL", "http://keys.example.com/certs")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REEL_API_JWKS_URL"));
}
