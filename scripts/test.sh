#!/usr/bin/env bash
# Every check and test, from a clean clone: installs what they need (ffmpeg, the storage
# emulator; the Pub/Sub emulator comes with the gcloud CLI; rustfmt, clippy,
# cargo-machete), then runs the CI checks (formatting, clippy with warnings as errors,
# unused dependencies) and the whole workspace's tests. Tests start and stop their own
# emulators, on their own ports.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/install-deps.sh --cloud
export CARGO_TERM_COLOR=never
# A clean clone gains nothing from incremental caches; they only cost disk.
export CARGO_INCREMENTAL=0
# Every program has an integration test, so `cargo test` builds them all once; the
# end-to-end tests use those builds instead of building them again.
export REEL_E2E_PREBUILT=1
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings 2>&1
echo "== cargo machete (unused dependencies)"
cargo machete
echo "== cargo test (workspace)"
cargo test --workspace --locked --no-fail-fast 2>&1
