//! scripts/deploy.sh --dry-run lists every image and every terraform resource, and runs
//! none of docker, gcloud or terraform; each program has a multi-stage, non-root
//! Dockerfile, and only the programs that run ffmpeg/ffprobe carry it.

use reel_events::Stage;
use reel_topology_check::module::Module;
use reel_topology_check::{repo_root, terraform_dir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Every deployed program: the five stages and reel-api.
fn programs() -> Vec<String> {
    Stage::ALL.iter().map(|s| s.as_str().to_string()).chain(["api".to_string()]).collect()
}

/// A directory of `docker`, `gcloud` and `terraform` that only record being called.
fn tripwires(dir: &Path) {
    for tool in ["docker", "gcloud", "terraform"] {
        let path = dir.join(tool);
        let script = format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\nexit 97\n", dir.join("called").display());
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn dry_run(args: &[&str]) -> String {
    let fake = tempfile::tempdir().unwrap();
    tripwires(fake.path());
    let path = format!("{}:{}", fake.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("scripts/deploy.sh")
        .arg("--dry-run")
        .args(args)
        .current_dir(repo_root())
        .env("PATH", path)
        .env_remove("GOOGLE_CLOUD_PROJECT")
        .env_remove("REEL_TF_STATE_BUCKET")
        .output()
        .expect("running bash scripts/deploy.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "deploy.sh --dry-run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let called = fake.path().join("called");
    assert!(!called.exists(), "a dry run ran: {}", std::fs::read_to_string(called).unwrap_or_default());
    stdout
}

#[test]
fn dry_run_lists_every_image_and_runs_nothing() {
    let out = dry_run(&["--project", "acme-video", "--region", "europe-west1", "--tag", "v42"]);
    for program in programs() {
        let image = format!("europe-west1-docker.pkg.dev/acme-video/reel/reel-{program}:v42");
        let build = format!("+ docker build --platform linux/amd64 -f docker/reel-{program}.Dockerfile -t {image} .");
        assert!(out.contains(&build), "no `{build}` in:\n{out}");
        assert!(out.contains(&format!("+ docker push {image}")), "{image} is not pushed:\n{out}");
    }
    assert!(out.contains("+ terraform -chdir=terraform init"), "{out}");
    assert!(
        out.contains("+ terraform -chdir=terraform apply -input=false -var project=acme-video -var region=europe-west1 -var artifact_repository=reel -var image_tag=v42"),
        "{out}"
    );
}

#[test]
fn dry_run_lists_every_terraform_resource() {
    let out = dry_run(&[]);
    let module = Module::load(&terraform_dir()).unwrap();
    let resources = module.resources();
    assert!(resources.len() > 20, "suspiciously few resources: {}", resources.len());
    for resource in resources {
        let address = format!("  {}.{}  (", resource.ty, resource.name);
        assert!(out.contains(&address), "{}.{} is not listed:\n{out}", resource.ty, resource.name);
    }
}

#[test]
fn dry_run_with_skip_build_lists_no_image() {
    let out = dry_run(&["--skip-build"]);
    assert!(!out.contains("docker build"), "{out}");
    assert!(out.contains("terraform -chdir=terraform apply"), "{out}");
}

#[test]
fn every_program_has_a_multi_stage_non_root_dockerfile() {
    let root = repo_root();
    for program in programs() {
        let path = root.join(format!("docker/reel-{program}.Dockerfile"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(froms.len(), 2, "{program}: a builder and a runtime stage");
        assert!(froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS build"), "{program}: {}", froms[0]);
        assert_eq!(froms[1], "FROM debian:bookworm-slim", "{program}");
        assert!(
            text.contains(&format!("cargo build --release --locked -p reel-{program} --bin reel-{program}")),
            "{program}"
        );
        assert!(text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/reel-{program}\"]")), "{program}");
        let user = text.lines().rfind(|l| l.starts_with("USER ")).unwrap_or_else(|| panic!("{program}: no USER"));
        assert!(!user.contains("root") && !user.starts_with("USER 0"), "{program} runs as {user}");
        // ffmpeg only where it runs: stitch joins clips; download probes them (ffprobe
        // comes in Debian's ffmpeg package).
        let wants_ffmpeg = program == "stitch" || program == "download";
        let installs_ffmpeg = text.lines().any(|l| l.contains("apt-get install") && l.contains("ffmpeg"));
        assert_eq!(installs_ffmpeg, wants_ffmpeg, "{program}: ffmpeg installed = {installs_ffmpeg}");
        let ignore = root.join(format!("docker/reel-{program}.Dockerfile.dockerignore"));
        let ignored = std::fs::read_to_string(&ignore).unwrap_or_else(|e| panic!("{}: {e}", ignore.display()));
        assert!(
            ignored.lines().any(|l| l.trim() == "target/"),
            "{program}: target/ must stay out of the build context"
        );
    }
}

#[test]
fn the_deploy_script_passes_shellcheck() {
    match Command::new("shellcheck").arg(repo_root().join("scripts/deploy.sh")).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED shellcheck: not installed")
        }
        Err(e) => panic!("running shellcheck: {e}"),
        Ok(out) => assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout)),
    }
}
