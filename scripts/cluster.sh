#!/usr/bin/env bash
# The whole pipeline on this machine, as it runs in the cloud: the Pub/Sub emulator,
# fake-gcs-server (with storage notifications), `reel setup`, and the five stage
# programs, each its own process.
#
#   scripts/cluster.sh start [DIR]    build, start everything, print the environment
#   scripts/cluster.sh stop  [DIR]    stop exactly what `start` started (by PID)
#   scripts/cluster.sh env   [DIR]    print the export lines to talk to it
#   scripts/cluster.sh status [DIR]   which recorded processes are alive
#
# DIR defaults to $REEL_CLUSTER_DIR or /tmp/reel-cluster; logs are DIR/*.log (one JSON
# line per log record). Ports: $PUBSUB_PORT (8085), $GCS_PORT (4443). The bucket is
# $VIDEO_STORAGE_BUCKET (default reel-local), the project $GOOGLE_CLOUD_PROJECT
# (default reel-local). Then, for example:
#
#   eval "$(scripts/cluster.sh env)"
#   reel submit --project p1 -o gs://reel-local/reels/a.mp4 gs://reel-local/clips/1.mp4 gs://reel-local/clips/2.mp4
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/emulators.sh
source "$root/scripts/lib/emulators.sh"

cmd="${1:-}"
dir="${2:-${REEL_CLUSTER_DIR:-/tmp/reel-cluster}}"
project="${GOOGLE_CLOUD_PROJECT:-reel-local}"
bucket="${VIDEO_STORAGE_BUCKET:-reel-local}"
prefix="${REEL_TOPIC_PREFIX:-reel-}"
pubsub_port="${PUBSUB_PORT:-8085}"
gcs_port="${GCS_PORT:-4443}"
stages=(validate download stitch upload finalize)

print_env() {
    echo "export PUBSUB_EMULATOR_HOST=127.0.0.1:$pubsub_port"
    echo "export STORAGE_EMULATOR_HOST=http://127.0.0.1:$gcs_port"
    echo "export GOOGLE_CLOUD_PROJECT=$project"
    echo "export VIDEO_STORAGE_BUCKET=$bucket"
    echo "export REEL_TOPIC_PREFIX=$prefix"
    echo "export PATH=$root/target/release:\$PATH"
}

case "$cmd" in
start)
    "$root/scripts/install-deps.sh" --cloud
    echo "building (release)..." >&2
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" \
        --bin reel --bin reel-validate --bin reel-download --bin reel-stitch --bin reel-upload --bin reel-finalize
    mkdir -p "$dir"
    if ls "$dir"/*.pid >/dev/null 2>&1; then
        echo "a cluster is recorded in $dir; stopping it first" >&2
        reel_stop_pids "$dir"
    fi
    eval "$(print_env)"
    reel_start_pubsub "$pubsub_port" "$dir"
    reel_start_gcs "$gcs_port" "$dir" "$project/${prefix}gcs-notifications"
    "$root/target/release/reel" setup >"$dir/setup.log"
    for stage in "${stages[@]}"; do
        pid="$(reel_spawn "$dir/$stage.log" "$root/target/release/reel-$stage")"
        echo "$pid" >"$dir/$stage.pid"
    done
    sleep 1
    for stage in "${stages[@]}"; do
        if ! kill -0 "$(cat "$dir/$stage.pid")" 2>/dev/null; then
            echo "error: reel-$stage exited; see $dir/$stage.log" >&2
            tail -5 "$dir/$stage.log" >&2
            reel_stop_pids "$dir"
            exit 1
        fi
    done
    echo "cluster up: emulators and five stages; logs in $dir/*.log" >&2
    echo "stop it with: $0 stop $dir" >&2
    print_env
    ;;
stop)
    reel_stop_pids "$dir"
    echo "stopped what was recorded in $dir" >&2
    ;;
env)
    print_env
    ;;
status)
    for file in "$dir"/*.pid; do
        [ -f "$file" ] || { echo "nothing recorded in $dir"; exit 0; }
        name="$(basename "$file" .pid)"
        if kill -0 "$(cat "$file")" 2>/dev/null; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: dead"; fi
    done
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
