#!/usr/bin/env bash
# The main job in one command: installs ffmpeg if missing, builds reel, and runs it.
#   scripts/demo.sh                          # make sample clips and stitch them (reel demo)
#   scripts/demo.sh a.mp4 b.mp4 -o reel.mp4  # stitch your own clips (reel stitch ...)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
cargo build --release --quiet -p reel --manifest-path "$root/Cargo.toml"
reel="$root/target/release/reel"
if [[ $# -eq 0 ]]; then
  exec "$reel" demo
else
  exec "$reel" stitch "$@"
fi
