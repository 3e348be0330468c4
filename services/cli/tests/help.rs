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

fn reel_local(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(args)
        .env("REEL_HOME", home)
        .env_remove("PUBSUB_EMULATOR_HOST")
        .env_remove("GOOGLE_CLOUD_PROJECT")
        .env_remove("REEL_API_URL")
        .output()
        .unwrap()
}

/// `reel cancel JOB` on this machine writes the cancel marker the local pipeline's stages
/// poll; a finished job is not "cancelled"; a bad id is refused.
#[test]
fn cancel_writes_the_marker_the_stages_poll() {
    let home = tempfile::tempdir().unwrap();
    let out = reel_local(home.path(), &["cancel", "job_local1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(home.path().join("work/control/cancel/job_local1").exists(), "no marker written");

    std::fs::create_dir_all(home.path().join("work/control/completed")).unwrap();
    std::fs::write(home.path().join("work/control/completed/job_done"), b"{}").unwrap();
    let out = reel_local(home.path(), &["cancel", "job_done"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already completed"));
    assert!(!home.path().join("work/control/cancel/job_done").exists());

    let out = reel_local(home.path(), &["cancel", "../etc"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `reel sweep` ends a job that outlived its deadline plus the grace with no end event
/// (a `reel stitch` killed mid-job): `job.failed` with `timeout` on the log, so
/// `reel status` says so; a second sweep changes nothing.
#[test]
fn sweep_fails_a_job_that_outlived_its_deadline() {
    use reel_events::{binding, envelope, types};
    let home = tempfile::tempdir().unwrap();
    let accepted = chrono::Utc::now() - chrono::Duration::hours(1);
    let spec = serde_json::json!({"job": {"jobId": "job_stuck", "projectId": "local", "userId": "me",
        "deadline": (accepted + chrono::Duration::minutes(15)).to_rfc3339()}});
    let validated =
        envelope::build(types::JOB_VALIDATED, "//reel/validate", "v-stuck", "job_stuck", accepted, &spec).unwrap();
    let logged = reel_runtime::embedded::LoggedMessage {
        message_id: "1".into(),
        publish_time: accepted,
        message: binding::encode_binary(&validated),
    };
    reel_runtime::embedded::EventLog::append(&home.path().join("events.jsonl"), &logged).unwrap();

    let out = reel_local(home.path(), &["sweep", "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("would fail job_stuck"));
    let out = reel_local(home.path(), &["sweep"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed job_stuck"), "{out:?}");
    let out = reel_local(home.path(), &["status", "job_stuck", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((status["status"].as_str(), status["errorType"].as_str()), (Some("failed"), Some("timeout")));
    let out = reel_local(home.path(), &["sweep"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}
