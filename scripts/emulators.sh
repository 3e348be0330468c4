#!/usr/bin/env bash
# Start, stop or describe the local emulators (Pub/Sub emulator + fake-gcs-server).
#
#   scripts/emulators.sh start [DIR]   install what is missing, start both, print exports
#   scripts/emulators.sh stop  [DIR]   stop exactly the processes started into DIR
#   scripts/emulators.sh env   [DIR]   print the export lines for running emulators
#
#   eval "$(scripts/emulators.sh start)"
#
# DIR defaults to $REEL_EMULATOR_DIR or /tmp/reel-emulators. Ports: $PUBSUB_PORT (8085)
# and $GCS_PORT (4443). The project is $GOOGLE_CLOUD_PROJECT (default reel-local). With
# $REEL_GCS_NOTIFY_TOPIC set (e.g. reel-gcs-notifications), fake-gcs-server publishes
# OBJECT_FINALIZE notifications to that topic of the project on the Pub/Sub emulator.
#
# The work is done by `reel-cluster emulators` (services/testkit), the harness the tests
# use; this script builds it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release/reel-cluster"
cmd="${1:-}"
dir="${2:-${REEL_EMULATOR_DIR:-/tmp/reel-emulators}}"

build() {
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin reel-cluster
}

case "$cmd" in
start)
    build
    # reel-cluster installs what is missing (reel_install_emulators) before it starts them.
    exec "$bin" emulators "$dir"
    ;;
stop | env)
    [ -x "$bin" ] || build
    exec "$bin" "$cmd" "$dir"
    ;;
*)
    echo "usage: $0 start|stop|env [DIR]" >&2
    exit 2
    ;;
esac
