#!/usr/bin/env bash
# Install what the tests need and run the whole suite. CI runs exactly this.
#
# Every section runs, whatever the ones before it did; the run ends with a
# summary table (section, passed/FAILED, time) and exits non-zero if any
# section did not pass. Servers are started once here, and stopped by PID in
# the EXIT trap whatever happens.
#
#   scripts/test.sh                          everything
#   TEST_SECTIONS='lint|python' scripts/test.sh   only sections whose name matches (a regex)
#
# Adding a section (scripts/sections.sh has the helpers): one line,
#
#     section "what it checks" command args...
#
# It runs in a subshell with `set -e`, so its first failing command fails it
# and the next section still runs. Several commands: put them in a function
# `s_name() { ...; }` above the list, or in a script under scripts/, and give
# that to `section`. A section that needs the S3 server takes `needs_s3`
# first: `section "x on S3" needs_s3 cargo test ...`.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
source scripts/sections.sh

# ---- servers shared by several sections: started here, stopped by PID ----

S3_DIR="$(mktemp -d)"
S3_UP=
stop_servers() {
    scripts/s3-server.sh stop "$S3_DIR"
}
trap stop_servers EXIT
start_s3() {
    local env
    env="$(scripts/s3-server.sh start "$S3_DIR")" || return 1
    eval "$env"
    S3_UP=1
}
# A section's first word: refuse at once when the S3 server is not up.
needs_s3() {
    [[ -n "$S3_UP" ]] || {
        echo "the S3 server did not start (see the section \"start the S3 server\")" >&2
        return 1
    }
    "$@"
}

# ---- sections of more than one command ----

s_python_tests() {
    # The extras: boto3 and pika (the ibm_cos / rabbitmq clients), PyYAML (Lithops config files).
    "$VENV/bin/maturin" develop --quiet --extras clients,lithops
    "$VENV/bin/python" -m pytest tests/python -q
}

s_python_s3() {
    QTEST_STORAGE=s3 "$VENV/bin/python" -m pytest tests/python/test_api.py \
        tests/python/test_partitioner.py tests/python/test_http_backend.py \
        tests/python/test_clients.py tests/python/test_executor_surface.py -q
    "$VENV/bin/python" examples/python/wordcount_s3.py
}

# aws_lambda: the cargo-lambda emulator on 127.0.0.1, SeaweedFS as its S3.
s_lambda() {
    # Without its ziglang dependency (400 MB): CARGO_LAMBDA_COMPILER=cargo builds with cargo.
    "$VENV/bin/pip" install --quiet --no-deps cargo-lambda
    cargo build -p quelea-lambda-testfn
    local port=9071 log="$S3_DIR/lambda-watch.log" pid ready=
    # The function inherits the storage settings (QUELEA_S3_* from above); it
    # builds with cargo (no zig) and is not rebuilt on file changes.
    (
        cd crates/quelea-lambda-testfn
        QUELEA_STORAGE=s3 QUELEA_BUCKET=quelea-test QUELEA_AWS_LAMBDA_PYTHON="$VENV/bin/python" \
            CARGO_LAMBDA_COMPILER=cargo exec "$VENV/bin/cargo-lambda" lambda watch \
            --invoke-address 127.0.0.1 --invoke-port "$port" --ignore-changes
    ) >"$log" 2>&1 &
    pid=$!
    # This section is a subshell: its EXIT trap stops the emulator by PID.
    trap "kill $pid 2>/dev/null; wait $pid 2>/dev/null" EXIT
    for _ in $(seq 1 150); do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
            ready=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    [[ -n "$ready" ]] || {
        echo "the Lambda emulator did not start:" >&2
        cat "$log" >&2
        return 1
    }
    QTEST_LAMBDA_ENDPOINT="http://127.0.0.1:$port" QTEST_PYTHON="$VENV/bin/python" \
        cargo test -p quelea-lambda-testfn --features emulator-tests --test emulator
}

# Push monitoring: NATS JetStream and RabbitMQ on 127.0.0.1, SeaweedFS as storage.
s_push() {
    local dir env
    dir="$(mktemp -d)"
    # This section is a subshell: its EXIT trap stops the brokers by PID.
    trap "scripts/brokers.sh stop '$dir'" EXIT
    env="$(scripts/brokers.sh start "$dir")"
    eval "$env"
    QTEST_STORAGE=s3 cargo test -p quelea-cli --features push-tests --test push_monitoring
    QTEST_STORAGE=s3 "$VENV/bin/python" -m pytest tests/python/test_clients.py -q  # `rabbitmq` client
}

# ---- the sections, in order ----

section "test.sh self-test: a failing section" bash scripts/test-sections-selftest.sh
section "cargo fmt" cargo fmt --all --check
section "clippy" cargo clippy --workspace --all-targets -- -D warnings
section "clippy s3-tests" cargo clippy -p quelea-storage --all-targets --features s3-tests -- -D warnings
section "clippy emulator-tests" cargo clippy -p quelea-lambda-testfn --all-targets --features emulator-tests -- -D warnings
section "clippy push-tests" cargo clippy -p quelea-cli --all-targets --features push-tests -- -D warnings
section "ruff check" "$VENV/bin/ruff" check python tests examples providers bench
section "ruff format" "$VENV/bin/ruff" format --check python tests examples providers bench
section "rust tests" cargo test --workspace --exclude quelea-py
section "python tests" s_python_tests
section "README blocks run as written" bash scripts/test-readme.sh
section "lithops 3.8 side by side" bash scripts/test-lithops-side-by-side.sh
section "dashboard in a real browser, plot()" bash scripts/dashboard-tests.sh
section "airflow 3.3" bash providers/airflow/scripts/test.sh -q
section "airflow 2.11" env AIRFLOW_VERSION=2.11.x bash providers/airflow/scripts/test.sh -q
section "storage: GCS and Azure Blob emulators" bash scripts/test-cloud-storage.sh

S3_SECTIONS=("storage on S3" "engine on S3" "http backend on S3" "python on S3"
    "aws_lambda emulator" "push monitoring" "faults: a frozen S3 server")
if any_section_selected "${S3_SECTIONS[@]}"; then
    TEST_SECTIONS="" section_here "start the S3 server" start_s3
fi
section "storage on S3" needs_s3 cargo test -p quelea-storage --features s3-tests
section "engine on S3" needs_s3 env QTEST_STORAGE=s3 cargo test -p quelea --test engine
section "http backend on S3" needs_s3 env QTEST_STORAGE=s3 \
    cargo test -p quelea-cli --test http_backend --test local_conformance
section "python on S3" needs_s3 s_python_s3
section "faults: a frozen S3 server" needs_s3 "$VENV/bin/python" -m pytest tests/faults -q
section "aws_lambda emulator" needs_s3 s_lambda
section "push monitoring" needs_s3 s_push

sections_summary
