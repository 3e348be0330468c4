#!/usr/bin/env bash
# Deploy reel to a Google Cloud project: build the program images, push them to Artifact
# Registry, and apply terraform/. docs/OPERATIONS.md explains the whole procedure.
#
#   scripts/deploy.sh [options]
#
#   --project P        Google Cloud project (default: $GOOGLE_CLOUD_PROJECT, else gcloud's)
#   --region R         region of Cloud Run and Artifact Registry (default: $REEL_REGION or us-central1)
#   --repository NAME  Artifact Registry repository (default: reel)
#   --tag T            image tag (default: the git commit, with -dirty for uncommitted changes)
#   --state-bucket B   GCS bucket holding the terraform state (default: $REEL_TF_STATE_BUCKET)
#   --state-prefix P   path of the state in that bucket (default: reel)
#   --var-file F       more terraform variables (for example terraform/prod.tfvars)
#   --only PROGRAM     build and push only this program (repeatable: validate, download,
#                      stitch, upload, finalize, generate, api); terraform still applies everything
#   --skip-build       build and push nothing; deploy images already pushed under --tag
#   --auto-approve     apply without asking
#   --dry-run          print every command it would run and every resource terraform/
#                      declares, and run nothing (needs no docker, gcloud, terraform or login)
#
# Steps: terraform init; apply the APIs and the Artifact Registry repository alone (the
# images need somewhere to go before Cloud Run can use them); docker login to the
# registry; build and push one image per program; terraform apply with the new tag.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

programs=(validate download stitch upload finalize generate api)

# The image target of a program in docker/Dockerfile: ffmpeg only where it runs (stitch
# joins clips; download probes them with ffprobe, which Debian ships in ffmpeg).
target_of() {
    case "$1" in
        download|stitch) echo runtime-ffmpeg ;;
        *) echo runtime ;;
    esac
}

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "deploy.sh: $*" >&2; exit 2; }

project="${GOOGLE_CLOUD_PROJECT:-}"
region="${REEL_REGION:-us-central1}"
repository="reel"
tag=""
state_bucket="${REEL_TF_STATE_BUCKET:-}"
state_prefix="reel"
var_file=""
only=()
skip_build=false
auto_approve=false
dry_run=false

while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) project="${2:?--project needs a value}"; shift 2 ;;
        --region) region="${2:?--region needs a value}"; shift 2 ;;
        --repository) repository="${2:?--repository needs a value}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --state-bucket) state_bucket="${2:?--state-bucket needs a value}"; shift 2 ;;
        --state-prefix) state_prefix="${2:?--state-prefix needs a value}"; shift 2 ;;
        --var-file) var_file="${2:?--var-file needs a value}"; shift 2 ;;
        --only) only+=("${2:?--only needs a program}"); shift 2 ;;
        --skip-build) skip_build=true; shift ;;
        --auto-approve) auto_approve=true; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

for p in "${only[@]+"${only[@]}"}"; do
    [[ " ${programs[*]} " == *" $p "* ]] || die "--only $p: not a program (${programs[*]})"
done
if [[ ${#only[@]} -gt 0 ]]; then
    build=("${only[@]}")
else
    build=("${programs[@]}")
fi
if $skip_build; then
    build=()
fi

if [[ -n "$var_file" ]]; then
    [[ -f "$var_file" ]] || die "--var-file $var_file: no such file"
    var_file="$(cd "$(dirname "$var_file")" && pwd)/$(basename "$var_file")"
fi

# Everything below that changes the world goes through `run`: printed in a dry run,
# printed and executed otherwise.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if ! $dry_run; then
        "$@"
    fi
}

if $dry_run; then
    project="${project:-PROJECT}"
    state_bucket="${state_bucket:-STATE_BUCKET}"
    echo "dry run: nothing is built, pushed or applied"
else
    command -v terraform >/dev/null || die "terraform is not installed"
    if [[ ${#build[@]} -gt 0 ]]; then
        command -v docker >/dev/null || die "docker is not installed (or use --skip-build)"
        command -v gcloud >/dev/null || die "gcloud is not installed (it logs docker in to Artifact Registry)"
    fi
    if [[ -z "$project" ]] && command -v gcloud >/dev/null; then
        project="$(gcloud config get-value project 2>/dev/null || true)"
    fi
    [[ -n "$project" ]] || die "no project: pass --project or set GOOGLE_CLOUD_PROJECT"
    [[ -n "$state_bucket" ]] || die "no state bucket: pass --state-bucket or set REEL_TF_STATE_BUCKET (see docs/OPERATIONS.md)"
fi

if [[ -z "$tag" ]]; then
    if commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null)"; then
        tag="$commit"
        if [[ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]]; then
            tag="$tag-dirty"
        fi
    else
        tag="build-$(date -u +%Y%m%d%H%M%S)"
    fi
fi

registry="$region-docker.pkg.dev/$project/$repository"
tf=(terraform -chdir=terraform)
# The var file first: what this script was told (and names the images by) wins.
tf_vars=()
if [[ -n "$var_file" ]]; then
    tf_vars+=("-var-file=$var_file")
fi
tf_vars+=(-var "project=$project" -var "region=$region" -var "artifact_repository=$repository" -var "image_tag=$tag")
approve=()
if $auto_approve; then
    approve=(-auto-approve)
fi

echo "project $project, region $region, images $registry/reel-*:$tag"

echo "== terraform init"
run "${tf[@]}" init -input=false -backend-config="bucket=$state_bucket" -backend-config="prefix=$state_prefix"

echo "== the APIs and the image repository first"
run "${tf[@]}" apply -input=false "${approve[@]+"${approve[@]}"}" "${tf_vars[@]}" \
    -target=google_project_service.enabled -target=google_artifact_registry_repository.images

if [[ ${#build[@]} -gt 0 ]]; then
    echo "== images"
    run gcloud auth configure-docker "$region-docker.pkg.dev" --quiet
    for program in "${build[@]}"; do
        image="$registry/reel-$program:$tag"
        run docker build --platform linux/amd64 -f docker/Dockerfile \
            --build-arg "PROGRAM=reel-$program" --target "$(target_of "$program")" -t "$image" .
        run docker push "$image"
    done
fi

echo "== terraform apply"
run "${tf[@]}" apply -input=false "${approve[@]+"${approve[@]}"}" "${tf_vars[@]}"

if $dry_run; then
    echo "== resources terraform/ declares (for_each and count expand them per stage, topic, ...)"
    for file in terraform/*.tf; do
        # resource "TYPE" "NAME" {  ->  TYPE.NAME  (file)
        sed -n 's/^resource "\([^"]*\)" "\([^"]*\)".*/\1.\2/p' "$file" | while read -r address; do
            echo "  $address  ($(basename "$file"))"
        done
    done
    echo "dry run done: ${#build[@]} images, nothing changed"
fi
