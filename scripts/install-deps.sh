#!/usr/bin/env bash
# Installs what reel needs on a fresh Debian machine with Rust: ffmpeg (apt) and, for the
# cloud tests, the storage emulator (pip) next to the gcloud Pub/Sub emulator.
# Idempotent: installs only what is missing.
#   scripts/install-deps.sh            # ffmpeg only (enough for `reel stitch`)
#   scripts/install-deps.sh --cloud    # also the emulators the tests use
set -euo pipefail
cd "$(dirname "$0")/.."

want_cloud=false
[[ "${1:-}" == "--cloud" ]] && want_cloud=true

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "installing ffmpeg (apt)..." >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq ffmpeg >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# The checks scripts/test.sh runs before the tests: rustfmt and clippy (rustup
# components) and cargo-machete (unused dependencies).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "installing rustfmt and clippy (rustup)..." >&2
  rustup component add rustfmt clippy >&2
fi
if ! command -v cargo-machete >/dev/null; then
  echo "installing cargo-machete (cargo install)..." >&2
  cargo install cargo-machete --locked >&2
fi

if $want_cloud; then
  # The emulator tests need java (the Pub/Sub emulator is a jar), curl (tests and
  # scripts talk to the emulators' REST ports) and the emulator itself, which comes
  # with the gcloud CLI (its Debian package, or a component of an SDK install).
  missing=()
  command -v java >/dev/null || missing+=(default-jre-headless)
  command -v curl >/dev/null || missing+=(curl)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]} (apt)..." >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if command -v gcloud >/dev/null \
    && ! ls "$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)"/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar >/dev/null 2>&1; then
    echo "installing the Pub/Sub emulator..." >&2
    if dpkg -s google-cloud-cli >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq google-cloud-cli-pubsub-emulator >/dev/null \
        || { as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq google-cloud-cli-pubsub-emulator >/dev/null; }
    else
      gcloud components install pubsub-emulator --quiet >&2
    fi
  fi
fi

if $want_cloud && [[ -f scripts/lib/emulators.sh ]]; then
  # shellcheck source=lib/emulators.sh
  source scripts/lib/emulators.sh
  reel_install_emulators
fi
