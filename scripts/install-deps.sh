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

if $want_cloud && [[ -f scripts/lib/emulators.sh ]]; then
  # shellcheck source=lib/emulators.sh
  source scripts/lib/emulators.sh
  reel_install_emulators
fi
