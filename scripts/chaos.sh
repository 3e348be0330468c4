#!/usr/bin/env bash
# Chaos run (issue 8): the local cluster on the emulators, N small jobs, and a killer
# that SIGKILLs a random stage program every few seconds (by its recorded PID) and
# starts it again. Passes when every job completed exactly once: one output object
# each, playable (ffprobe) and of the expected duration (±0.25 s); no dead letters on
# any stage; no duplicate job.completed on the event log; no temp files left in
# TEMP_DIR. Prints the figures: jobs, kills, redeliveries, total time.
#
#   scripts/chaos.sh [JOBS] [KILL_EVERY_SECONDS]      default: 20 jobs, a kill every 2 s
#
# Environment: CHAOS_PARALLEL (jobs in flight at once, default 4), CHAOS_TIMEOUT
# (seconds, default 900), CHAOS_COMPRESSION (default mixed: odd jobs re-encode
# (`small`), so stitch has work in flight long enough to be killed in it, even jobs are
# stream copies (`optimized`); or one of them for all), CHAOS_STITCH_WORKERS (default 2), CHAOS_SEED (the killer's random
# seed), CHAOS_MAX_DELIVERY_ATTEMPTS
# (the stage subscriptions' dead-letter limit, default 10 as in production),
# CHAOS_MAX_KILLS (the killer stops after that many, default 0: never), CHAOS_KEEP=1
# (keep the run directory: logs, events).
#
# It starts its own emulators on free ports with its own topic prefix and bucket, so it
# never touches a cluster started by scripts/cluster.sh, and stops exactly what it
# started (the PIDs recorded in its run directory), on success, failure or Ctrl-C.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/emulators.sh
source "$root/scripts/lib/emulators.sh"

jobs="${1:-20}"
kill_every="${2:-2}"
parallel="${CHAOS_PARALLEL:-4}"
timeout_s="${CHAOS_TIMEOUT:-900}"
compression="${CHAOS_COMPRESSION:-mixed}"
stitch_workers="${CHAOS_STITCH_WORKERS:-2}"
seed="${CHAOS_SEED:-$$}"
max_kills="${CHAOS_MAX_KILLS:-0}"
[ "$max_kills" -gt 0 ] || max_kills=1000000
clip_seconds=1.5
expected_seconds=3.0
stages=(validate download stitch upload finalize)

dir="$(mktemp -d /tmp/reel-chaos.XXXXXX)"
killer_pid=""
collector_pid=""
stop_killer() {
    # Ask, do not kill: a killer stopped between starting a worker and recording its
    # PID would leave that worker running unrecorded.
    [ -n "$killer_pid" ] || return 0
    touch "$dir/stop-killer"
    wait "$killer_pid" 2>/dev/null || true
    killer_pid=""
}
cleanup() {
    local status=$?
    # The killer and the collector are this script's children; then every recorded PID.
    stop_killer
    if [ -n "$collector_pid" ]; then
        kill "$collector_pid" 2>/dev/null || true
        wait "$collector_pid" 2>/dev/null || true
    fi
    reel_stop_pids "$dir"
    if [ "${CHAOS_KEEP:-0}" = 1 ] || [ "$status" -ne 0 ]; then
        echo "run directory kept: $dir" >&2
    else
        rm -rf "$dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[chaos $(date +%T)] $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# --- build and start ---------------------------------------------------------------
reel_install_emulators
log "building the programs (release)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" \
    --bin reel --bin reel-validate --bin reel-download --bin reel-stitch --bin reel-upload --bin reel-finalize \
    --bin reel-cluster
bin="$root/target/release"

# The emulators on free ports (the test kit's harness), their PIDs in DIR/*.pid.
eval "$(env -u REEL_GCS_NOTIFY_TOPIC GOOGLE_CLOUD_PROJECT=reel-chaos PUBSUB_PORT=0 GCS_PORT=0 "$bin/reel-cluster" emulators "$dir")"
pubsub_port="${PUBSUB_EMULATOR_HOST##*:}"
gcs_port="${STORAGE_EMULATOR_HOST##*:}"
export VIDEO_STORAGE_BUCKET="reel-chaos-$RANDOM$RANDOM"
export REEL_TOPIC_PREFIX="chaos-"
export TEMP_DIR="$dir/tmp"
export REEL_HOME="$dir/cli-home"
# Delivery at the default settings, as in production: a program pulls only what it
# works on and keeps a short lease (REEL_LEASE_SECONDS, 15) alive while it works, so a
# killed program's message is back with another program within about 15 s.
export LOG_LEVEL=info
mkdir -p "$TEMP_DIR"
bucket="$VIDEO_STORAGE_BUCKET"
prefix="$REEL_TOPIC_PREFIX"

"$bin/reel" setup >"$dir/setup.log" 2>&1 || { cat "$dir/setup.log" >&2; die "reel setup failed"; }
rest="http://$PUBSUB_EMULATOR_HOST/v1/projects/$GOOGLE_CLOUD_PROJECT"

# The dead-letter limit of the stage subscriptions: 10 (Pub/Sub's default, as
# production) unless CHAOS_MAX_DELIVERY_ATTEMPTS says otherwise. The run reports the
# highest delivery attempt at which a message was finally processed.
max_delivery="${CHAOS_MAX_DELIVERY_ATTEMPTS:-10}"
for sub in validate validate-gcs download stitch upload finalize; do
    stage="${sub%-gcs}"
    curl -sf -X PATCH -H 'content-type: application/json' "$rest/subscriptions/$prefix$sub" -d "{
        \"subscription\": {\"deadLetterPolicy\": {\"deadLetterTopic\": \"projects/$GOOGLE_CLOUD_PROJECT/topics/$prefix$stage-dead-letter\", \"maxDeliveryAttempts\": $max_delivery}},
        \"updateMask\": \"deadLetterPolicy\"}" >/dev/null || die "cannot set the dead-letter policy of $prefix$sub"
    got="$(curl -sf "$rest/subscriptions/$prefix$sub" | python3 -c 'import json,sys; print(json.load(sys.stdin)["deadLetterPolicy"]["maxDeliveryAttempts"])')"
    [ "$got" = "$max_delivery" ] || die "$prefix$sub: maxDeliveryAttempts is $got, not $max_delivery"
done

# A subscription of our own on the event log; a collector pulls it (unary REST pulls,
# so a killed collector leaves no stream behind) into events.jsonl.
curl -sf -X PUT -H 'content-type: application/json' "$rest/subscriptions/${prefix}chaos-watch" \
    -d "{\"topic\": \"projects/$GOOGLE_CLOUD_PROJECT/topics/${prefix}events\", \"ackDeadlineSeconds\": 60}" >/dev/null \
    || die "cannot create the watch subscription"
python3 - "$rest/subscriptions/${prefix}chaos-watch" "$dir/events.jsonl" >"$dir/collector.log" 2>&1 <<'PY' &
import base64, json, sys, time, urllib.request
sub, out = sys.argv[1], sys.argv[2]
def call(verb, body):
    req = urllib.request.Request(f"{sub}:{verb}", data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")
with open(out, "a") as f:
    while True:
        got = call("pull", {"maxMessages": 100, "returnImmediately": True}).get("receivedMessages", [])
        for m in got:
            msg = m["message"]
            data = base64.b64decode(msg.get("data", "")) if msg.get("data") else b""
            try:
                data = json.loads(data)
            except Exception:
                data = None
            f.write(json.dumps({"attributes": msg.get("attributes", {}), "data": data}) + "\n")
        f.flush()
        if got:
            call("acknowledge", {"ackIds": [m["ackId"] for m in got]})
        else:
            time.sleep(0.3)
PY
collector_pid=$!

start_stage() { # start_stage NAME BINARY: start it, record its PID in DIR/NAME.pid
    local name="$1" program="$2" pid
    pid="$(reel_spawn "$dir/logs/$name.$(date +%s%N).log" "$bin/$program")"
    echo "$pid" >"$dir/$name.pid"
}
mkdir -p "$dir/logs"
workers=(validate download upload finalize)
for i in $(seq 1 "$stitch_workers"); do workers+=("stitch$i"); done
for w in "${workers[@]}"; do start_stage "$w" "reel-${w%%[0-9]*}"; done
sleep 1
for w in "${workers[@]}"; do kill -0 "$(cat "$dir/$w.pid")" 2>/dev/null || die "reel-$w exited at start; see $dir/logs"; done
log "cluster up: emulators on :$pubsub_port/:$gcs_port, workers: ${workers[*]}"

# --- clips -------------------------------------------------------------------------
clips=()
for i in 0 1; do
    f="$dir/clip$i.mp4"
    ffmpeg -v error -y -f lavfi -i "testsrc2=size=320x240:rate=30:duration=$clip_seconds" \
        -f lavfi -i "sine=frequency=$((440 + 220 * i)):sample_rate=48000:duration=$clip_seconds" \
        -c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -ac 2 "$f"
    curl -sf -X POST --data-binary "@$f" -H 'content-type: video/mp4' \
        "$STORAGE_EMULATOR_HOST/upload/storage/v1/b/$bucket/o?uploadType=media&name=clips/clip$i.mp4" >/dev/null \
        || die "cannot upload clip $i"
    clips+=("gs://$bucket/clips/clip$i.mp4")
done

# --- the killer ------------------------------------------------------------------------
killer() {
    RANDOM="$seed"
    local victim pid kills=0
    while [ ! -f "$dir/stop-killer" ] && [ "$kills" -lt "$max_kills" ]; do
        sleep "$kill_every"
        [ ! -f "$dir/stop-killer" ] || break
        kills=$((kills + 1))
        victim="${workers[RANDOM % ${#workers[@]}]}"
        pid="$(cat "$dir/$victim.pid")"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        start_stage "$victim" "reel-${victim%%[0-9]*}"
        echo "$(date +%s) $victim $pid $(cat "$dir/$victim.pid")" >>"$dir/kills.log"
    done
}

# --- run ---------------------------------------------------------------------------
completed_jobs() { # ids of jobs with a job.completed on the log
    [ -f "$dir/events.jsonl" ] || return 0
    grep '"phoenix.reel.v1.job.completed"' "$dir/events.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    print(e["attributes"].get("ce-subject", ""))' | sort -u
}
failed_jobs() {
    [ -f "$dir/events.jsonl" ] || return 0
    grep '"phoenix.reel.v1.job.failed"' "$dir/events.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    d = e.get("data") or {}
    print(e["attributes"].get("ce-subject", ""), d.get("errorType"), d.get("stage"), (d.get("message") or "")[:200])' | sort -u
}

: >"$dir/kills.log"
start=$(date +%s)
killer &
killer_pid=$!
log "submitting $jobs jobs ($parallel in flight), SIGKILL of a random worker every ${kill_every}s, dead letter after $max_delivery deliveries"
job_compression() { # mixed: odd jobs re-encode, even ones are stream copies
    if [ "$compression" != mixed ]; then echo "$compression"
    elif [ $(($1 % 2)) = 1 ]; then echo small
    else echo optimized; fi
}
submitted=0
while :; do
    done_count="$(completed_jobs | grep -c . || true)"
    in_flight=$((submitted - done_count))
    while [ "$submitted" -lt "$jobs" ] && [ "$in_flight" -lt "$parallel" ]; do
        n=$((submitted + 1))
        "$bin/reel" submit --project "chaos-p$n" --user chaos --job-id "chaos_job_$n" \
            --compression "$(job_compression "$n")" --orientation landscape \
            -o "gs://$bucket/reels/job-$n.mp4" "${clips[@]}" >>"$dir/submit.log" 2>&1 \
            || die "reel submit failed; see $dir/submit.log"
        submitted=$n
        in_flight=$((in_flight + 1))
    done
    if [ -n "$(failed_jobs)" ]; then
        failed_jobs >&2
        die "a job failed"
    fi
    [ "$done_count" -ge "$jobs" ] && break
    [ $(($(date +%s) - start)) -lt "$timeout_s" ] || die "only $done_count of $jobs jobs completed within ${timeout_s}s"
    sleep 1
done
elapsed=$(($(date +%s) - start))
stop_killer
kills="$(grep -c . "$dir/kills.log" || true)"
log "all $jobs jobs completed in ${elapsed}s with $kills kills; checking"

# Let late duplicates (a redelivery finishing after the kill) reach the log.
sleep 12

# --- checks ------------------------------------------------------------------------
problems=0
fail() { log "problem: $*"; problems=$((problems + 1)); }

# One job.completed id per job (duplicates of the same event are fine: at-least-once).
python3 - "$dir/events.jsonl" "$jobs" >"$dir/completed-check.txt" <<'PY' || true
import collections, json, sys
ids = collections.defaultdict(set)
for line in open(sys.argv[1]):
    e = json.loads(line)
    a = e["attributes"]
    if a.get("ce-type") == "phoenix.reel.v1.job.completed":
        ids[a.get("ce-subject")].add(a.get("ce-id"))
bad = {job: sorted(i) for job, i in ids.items() if len(i) != 1}
missing = [f"chaos_job_{n}" for n in range(1, int(sys.argv[2]) + 1) if f"chaos_job_{n}" not in ids]
print("duplicates", json.dumps(bad))
print("missing", json.dumps(missing))
PY
grep -q '^duplicates {}$' "$dir/completed-check.txt" || fail "more than one distinct job.completed: $(cat "$dir/completed-check.txt")"
grep -q '^missing \[\]$' "$dir/completed-check.txt" || fail "jobs without job.completed: $(cat "$dir/completed-check.txt")"
[ -z "$(failed_jobs)" ] || fail "job.failed on the log: $(failed_jobs)"

# One output object per job, playable, of the expected duration; nothing else under reels/.
listing="$(curl -sf "$STORAGE_EMULATOR_HOST/storage/v1/b/$bucket/o?prefix=reels/")"
objects="$(echo "$listing" | python3 -c 'import json,sys; print("\n".join(o["name"] for o in json.load(sys.stdin).get("items", [])))')"
[ "$(echo "$objects" | grep -c .)" -eq "$jobs" ] || fail "expected $jobs objects under reels/, found: $(echo "$objects" | tr '\n' ' ')"
for n in $(seq 1 "$jobs"); do
    out="$dir/out-$n.mp4"
    if ! curl -sf -o "$out" "$STORAGE_EMULATOR_HOST/storage/v1/b/$bucket/o/reels%2Fjob-$n.mp4?alt=media"; then
        fail "job $n: no output object"
        continue
    fi
    duration="$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$out" 2>/dev/null || echo 0)"
    streams="$(ffprobe -v error -show_entries stream=codec_type -of csv=p=0 "$out" 2>/dev/null | sort | tr '\n' ' ')"
    errors="$(ffmpeg -v error -i "$out" -f null - 2>&1 | head -3)"
    python3 -c "import sys; sys.exit(0 if abs(float('$duration') - $expected_seconds) <= 0.25 else 1)" \
        || fail "job $n: duration $duration, expected $expected_seconds ± 0.25"
    [ "$streams" = "audio video " ] || fail "job $n: streams '$streams'"
    [ -z "$errors" ] || fail "job $n: decode errors: $errors"
done

# No dead letters on any stage.
for stage in "${stages[@]}"; do
    letters="$("$bin/reel" dlq list "$stage" --json 2>"$dir/dlq-$stage.err" || echo '?')"
    count="$(echo "$letters" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo '?')"
    [ "$count" = 0 ] || fail "$stage has $count dead letters: $letters"
done

# No temp files left in TEMP_DIR (programs stopped cleanly remove their scratch; a
# restarted program removes what its killed predecessor left), nor work files in the
# bucket.
left="$(find "$TEMP_DIR" -mindepth 1 -maxdepth 1 2>/dev/null | head -5)"
[ -z "$left" ] || fail "temp files left in TEMP_DIR: $left"
work="$(curl -sf "$STORAGE_EMULATOR_HOST/storage/v1/b/$bucket/o?prefix=work/jobs/" | python3 -c 'import json,sys; print(" ".join(o["name"] for o in json.load(sys.stdin).get("items", [])))')"
[ -z "$work" ] || fail "work files left in the bucket: $work"

# Redeliveries: deliveries with delivery_attempt > 1, one per (stage, event id, attempt).
redeliveries="$(cat "$dir"/logs/*.log | python3 -c '
import json, sys
seen = set()
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    labels = e.get("logging.googleapis.com/labels") or {}
    fields = {**e, **labels, **(e.get("span") or {})}
    attempt = fields.get("delivery_attempt")
    try:
        attempt = int(attempt)
    except (TypeError, ValueError):
        continue
    if attempt > 1:
        seen.add((fields.get("stage"), fields.get("ce_id"), attempt))
top = {}
for stage, ce_id, a in seen:
    top[(stage, ce_id)] = max(a, top.get((stage, ce_id), 1))
print(len(seen), max(top.values(), default=1), sum(1 for a in top.values() if a > 10))')"
read -r redeliveries max_attempt over10 <<<"$redeliveries"

echo
echo "chaos: jobs=$jobs completed=$jobs kills=$kills redeliveries=$redeliveries max_delivery_attempt=$max_attempt past_10_attempts=$over10 time=${elapsed}s problems=$problems"
echo "kills by worker: $(awk '{print $2}' "$dir/kills.log" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
[ "$problems" -eq 0 ] || die "$problems problem(s)"
log "PASS"
