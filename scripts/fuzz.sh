#!/usr/bin/env bash
# Coverage-guided fuzzing of reel's hostile-input surfaces with cargo fuzz (libFuzzer):
#
#   binding   the Pub/Sub binding decoder (decode, decode_storage_notification,
#             wrap_bare_request) on any message
#   payload   every payload type of events/src/payload.rs from any bytes
#   fold      the job-state fold on any sequence of events, any order, any repeats
#   mp4       reel-media's native MP4/MOV header reader on any file (hostile sizes,
#             offsets, nesting, parameter sets); seeds are tiny ffmpeg-made clips
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 30 seconds each, all targets
#
# Exits non-zero when a target crashes (a panic is a crash: a property of
# fuzz/src/lib.rs failed); the input that did it is in fuzz/artifacts/TARGET/ and
# replays with `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
#
# Toolchain: with a nightly toolchain (rustup), targets run under AddressSanitizer;
# without one, on stable with `--sanitizer none` (still coverage-guided libFuzzer:
# panics, aborts, stack overflows, timeouts and out-of-memory are caught; memory errors
# in unsafe code are not, and reel's own code has no unsafe). cargo-fuzz is installed
# from crates.io when missing. The seed corpus is fuzz/seeds/TARGET (checked in); what
# the fuzzer learns goes to fuzz/corpus/TARGET (not checked in). The same properties
# run bounded on every `cargo test`: events/tests/hostile.rs (mp4: the hostile-input
# tests of services/media/src/mp4/tests.rs).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-30}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(binding payload fold mp4)
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked --quiet
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    sanitizer=address
else
    toolchain=()
    sanitizer=none
fi
echo "fuzzing with cargo ${toolchain[*]} fuzz, sanitizer $sanitizer, ${seconds}s per target" >&2

cd "$root/fuzz"
cargo "${toolchain[@]}" fuzz build -O -s "$sanitizer" >&2

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    case "$target" in
    binding | payload) args+=(-dict=dict/reel.dict -max_len=8192) ;;
    fold) args+=(-max_len=1024) ;;
    # The seeds are ~2-5 KB clips; room to grow boxes without wasting runs on huge inputs.
    mp4) args+=(-max_len=65536) ;;
    esac
    log="artifacts/$target/last-run.log"
    echo "== $target" >&2
    # libFuzzer stops itself after max_total_time; the outer timeout is a net.
    if timeout --kill-after=10 $((seconds + 120)) \
        cargo "${toolchain[@]}" fuzz run -O -s "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- "${args[@]}" \
        >"$log" 2>&1; then
        runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
        cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)"
        echo "   ok: $runs runs, $cov" >&2
    else
        echo "   CRASH (or timeout): see fuzz/$log and fuzz/artifacts/$target/" >&2
        grep -E "panicked|ERROR: |SUMMARY" "$log" | head -5 >&2 || true
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]}" >&2
    exit 1
fi
echo "all targets ran clean for ${seconds}s each" >&2
