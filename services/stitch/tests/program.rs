//! `reel-stitch` as an operator starts it.

use std::process::Command;

#[test]
fn help_names_the_modes() {
    let out = Command::new(env!("CARGO_BIN_EXE_reel-stitch")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--exit-when-idle", "--listen", "--push", "--grace"] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn without_a_project_it_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_reel-stitch"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("GOOGLE_CLOUD_PROJECT"), "{text}");
}
