#!/usr/bin/env bash
# The benchmark of issue 7: reel against bare ffmpeg on the original workload
# (15 clips of ~50 MB, 1080x1920, 30 s, h264/aac), peak RSS at two clip sizes, and the
# embedded bus's per-hop latency. Writes docs/BENCHMARKS.md.
#
#   scripts/bench.sh                 # full run (~15-25 min on 2 cores; the clips are
#                                    # generated once and cached in target/bench-corpus)
#   scripts/bench.sh --quick         # 4 small clips, 3 runs per contender (~1-2 min)
#   scripts/bench.sh --out FILE      # write the report elsewhere
#   scripts/bench.sh --cluster       # also the emulator/cluster rows (not available yet)
# Any other option is passed to reel-bench (see `target/release/reel-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release -p reel -p reel-bench
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/reel-bench" \
  --reel "$target_dir/release/reel" \
  --corpus "$target_dir/bench-corpus" \
  --work "$target_dir/bench-run" \
  "$@"
