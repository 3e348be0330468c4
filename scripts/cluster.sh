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
#
# The work is done by `reel-cluster` (services/testkit), the same harness the
# end-to-end tests and the bench use; this script installs and builds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release/reel-cluster"
cmd="${1:-}"

build() {
    echo "building (release)..." >&2
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" \
        --bin reel --bin reel-validate --bin reel-download --bin reel-stitch --bin reel-upload --bin reel-finalize \
        --bin reel-cluster
}

case "$cmd" in
start)
    "$root/scripts/install-deps.sh" --cloud
    build
    exec "$bin" "$@"
    ;;
stop | env | status)
    [ -x "$bin" ] || build
    exec "$bin" "$@"
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
