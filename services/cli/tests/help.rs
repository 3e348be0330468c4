//! What an operator reads before running anything: every `reel dlq` flag is described,
//! STAGE lists its values, and no default is a machine number.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_reel")).args(args).arg("--help").output().expect("run reel");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn dlq_help_describes_every_flag_and_lists_the_stages() {
    for command in ["list", "replay", "purge"] {
        let text = help(&["dlq", command]);
        assert!(text.contains("possible values: validate, download, stitch, upload, finalize"), "{command}:\n{text}");
        assert!(!text.contains(&usize::MAX.to_string()), "{command} shows usize::MAX:\n{text}");
        // Every option line has a description after its flag.
        for line in text.lines().filter(|l| l.trim_start().starts_with("--")) {
            let described = line.trim_start().split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(described, "{command}: undescribed flag {line:?}");
        }
    }
}

#[test]
fn a_wrong_stage_is_refused_with_the_list() {
    let out = Command::new(env!("CARGO_BIN_EXE_reel")).args(["dlq", "list", "stich"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
