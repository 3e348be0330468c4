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
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/emulators.sh
source "$here/lib/emulators.sh"

cmd="${1:-}"
dir="${2:-${REEL_EMULATOR_DIR:-/tmp/reel-emulators}}"
project="${GOOGLE_CLOUD_PROJECT:-reel-local}"

print_env() {
    if [ ! -f "$dir/pubsub.addr" ] || [ ! -f "$dir/gcs.addr" ]; then
        echo "error: no emulators recorded in $dir (run: $0 start $dir)" >&2
        return 1
    fi
    echo "export PUBSUB_EMULATOR_HOST=$(cat "$dir/pubsub.addr")"
    echo "export STORAGE_EMULATOR_HOST=$(cat "$dir/gcs.addr")"
    echo "export GOOGLE_CLOUD_PROJECT=$project"
}

case "$cmd" in
start)
    reel_install_emulators
    mkdir -p "$dir"
    if ls "$dir"/*.pid >/dev/null 2>&1; then
        echo "emulators already recorded in $dir; stopping them first" >&2
        reel_stop_pids "$dir"
    fi
    pubsub_port="${PUBSUB_PORT:-8085}"
    gcs_port="${GCS_PORT:-4443}"
    reel_start_pubsub "$pubsub_port" "$dir" || { reel_stop_pids "$dir"; exit 1; }
    export PUBSUB_EMULATOR_HOST="127.0.0.1:$pubsub_port"
    notify=""
    if [ -n "${REEL_GCS_NOTIFY_TOPIC:-}" ]; then
        notify="$project/$REEL_GCS_NOTIFY_TOPIC"
    fi
    reel_start_gcs "$gcs_port" "$dir" "$notify" || { reel_stop_pids "$dir"; exit 1; }
    echo "emulators running (pids: $(cat "$dir"/*.pid | tr '\n' ' '); logs in $dir)" >&2
    print_env
    ;;
stop)
    reel_stop_pids "$dir"
    rm -f "$dir/pubsub.addr" "$dir/gcs.addr"
    echo "emulators in $dir stopped" >&2
    ;;
env)
    print_env
    ;;
*)
    echo "usage: $0 start|stop|env [DIR]" >&2
    exit 2
    ;;
esac
