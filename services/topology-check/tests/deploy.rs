//! scripts/deploy.sh --dry-run lists every image and every terraform resource, and runs
//! none of docker, gcloud or terraform; one multi-stage, non-root Dockerfile builds every
//! program, only the programs that run ffmpeg/ffprobe get the target that carries it, and
//! its Rust is the workspace's `rust-version`.

use reel_events::Stage;
use reel_topology_check::module::Module;
use reel_topology_check::{repo_root, terraform_dir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Every deployed program: the five stages, generate and reel-api.
fn programs() -> Vec<String> {
    Stage::EVERY.iter().map(|s| s.as_str().to_string()).chain(["api".to_string()]).collect()
}

/// The image target of a program: ffmpeg only where it runs (stitch joins clips;
/// download probes them, and ffprobe comes in Debian's ffmpeg package).
fn target_of(program: &str) -> &'static str {
    if program == "stitch" || program == "download" {
        "runtime-ffmpeg"
    } else {
        "runtime"
    }
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
        let build = format!(
            "+ docker build --platform linux/amd64 -f docker/Dockerfile --build-arg PROGRAM=reel-{program} --target {} -t {image} .",
            target_of(&program)
        );
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

/// The stages of docker/Dockerfile: name → its lines (from its `FROM` to the next).
fn dockerfile_stages(text: &str) -> Vec<(String, Vec<String>)> {
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.rsplit_once(" AS ").map(|(_, n)| n.trim().to_string()).unwrap_or_default();
            stages.push((name, Vec::new()));
        }
        if let Some((_, lines)) = stages.last_mut() {
            lines.push(line.to_string());
        }
    }
    stages
}

#[test]
fn one_multi_stage_non_root_dockerfile_builds_every_program() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("docker/Dockerfile")).expect("docker/Dockerfile");
    let stages = dockerfile_stages(&text);
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["build", "runtime-base", "runtime-ffmpeg", "runtime"], "stages of docker/Dockerfile");
    let stage = |name: &str| stages.iter().find(|(n, _)| n == name).map(|(_, l)| l.join("\n")).unwrap();
    assert!(stage("build").starts_with("FROM rust:${RUST_VERSION}-"), "{}", stage("build"));
    assert!(stage("build").contains("cargo build --release --locked -p \"$PROGRAM\" --bin \"$PROGRAM\""));
    assert!(stage("runtime-base").starts_with("FROM debian:"), "{}", stage("runtime-base"));
    let installs_ffmpeg = |s: &str| s.lines().any(|l| l.contains("apt-get install") && l.contains("ffmpeg"));
    assert!(!installs_ffmpeg(&stage("runtime-base")) && !installs_ffmpeg(&stage("runtime")));
    assert!(installs_ffmpeg(&stage("runtime-ffmpeg")));
    for target in ["runtime", "runtime-ffmpeg"] {
        let lines = stage(target);
        assert!(lines.contains("COPY --from=build /out/ /usr/local/bin/"), "{target}");
        assert!(lines.contains(r#"exec \"/usr/local/bin/$PROGRAM\""#), "{target}: runs the program by exec");
        let user = lines.lines().rfind(|l| l.starts_with("USER ")).unwrap_or_else(|| panic!("{target}: no USER"));
        assert!(!user.contains("root") && !user.starts_with("USER 0"), "{target} runs as {user}");
    }
    // Every program is a package with a binary of the same name (what `-p "$PROGRAM"
    // --bin "$PROGRAM"` builds), and deploy.sh gives it the target it needs.
    let script = std::fs::read_to_string(root.join("scripts/deploy.sh")).unwrap();
    for program in programs() {
        let manifest = root.join(if program == "api" {
            "services/api/Cargo.toml".to_string()
        } else {
            format!("services/{program}/Cargo.toml")
        });
        let manifest = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        assert!(manifest.contains(&format!("name = \"reel-{program}\"")), "{program}: package/binary reel-{program}");
        if target_of(&program) == "runtime-ffmpeg" {
            assert!(
                script.contains(&format!("{program}|")) || script.contains(&format!("|{program})")),
                "{program} needs ffmpeg"
            );
        }
    }
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore at the repository root");
    assert!(ignored.lines().any(|l| l.trim() == "target/"), "target/ must stay out of the build context");
    assert!(
        !root.join("docker").read_dir().unwrap().any(|e| e.unwrap().file_name() != "Dockerfile"),
        "docker/ holds the one Dockerfile"
    );
}

/// `ARG NAME=VALUE` of a Dockerfile.
fn dockerfile_arg(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("ARG {name}=")).map(|v| v.trim().to_string()))
}

#[test]
fn the_images_rust_is_the_workspace_rust_version() {
    let root = repo_root();
    let manifest: toml::Value = std::fs::read_to_string(root.join("Cargo.toml")).unwrap().parse().unwrap();
    let rust_version =
        manifest["workspace"]["package"]["rust-version"].as_str().expect("workspace rust-version").to_string();
    let text = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    let image = dockerfile_arg(&text, "RUST_VERSION").expect("ARG RUST_VERSION=… in docker/Dockerfile");
    // The image is pinned to an exact release (x.y.z) of the workspace's x.y.
    let parts: Vec<&str> = image.split('.').collect();
    assert_eq!(parts.len(), 3, "RUST_VERSION={image}: pin an exact release x.y.z");
    assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "RUST_VERSION={image}");
    assert_eq!(
        format!("{}.{}", parts[0], parts[1]),
        rust_version,
        "docker/Dockerfile builds with Rust {image}, the workspace's rust-version is {rust_version}: change both together"
    );
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
