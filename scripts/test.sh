#!/usr/bin/env bash
# Install what the tests need and run the whole suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh

echo "== lint =="
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p quelea-storage --all-targets --features s3-tests -- -D warnings
cargo clippy -p quelea-lambda-testfn --all-targets --features emulator-tests -- -D warnings
cargo clippy -p quelea-cli --all-targets --features push-tests -- -D warnings
"$VENV/bin/ruff" check python tests examples providers
"$VENV/bin/ruff" format --check python tests examples providers

echo "== rust tests =="
cargo test --workspace --exclude quelea-py

echo "== python tests =="
"$VENV/bin/maturin" develop --quiet
"$VENV/bin/python" -m pytest tests/python -q
bash scripts/dashboard-tests.sh

echo "== airflow provider: a real Airflow 3.3, then 2.11 (SQLite), each in its own venv =="
bash providers/airflow/scripts/test.sh -q
AIRFLOW_VERSION=2.11.x bash providers/airflow/scripts/test.sh -q

echo "== the same against a real S3 server (SeaweedFS on 127.0.0.1) =="
S3_DIR="$(mktemp -d)"
trap 'scripts/s3-server.sh stop "$S3_DIR"' EXIT
eval "$(scripts/s3-server.sh start "$S3_DIR")"
cargo test -p quelea-storage --features s3-tests
QTEST_STORAGE=s3 cargo test -p quelea --test engine
QTEST_STORAGE=s3 cargo test -p quelea-cli --test http_backend --test local_conformance
QTEST_STORAGE=s3 "$VENV/bin/python" -m pytest tests/python/test_api.py tests/python/test_partitioner.py tests/python/test_http_backend.py -q
"$VENV/bin/python" examples/python/wordcount_s3.py

echo "== aws_lambda: the cargo-lambda emulator on 127.0.0.1, SeaweedFS as its S3 =="
# Without its ziglang dependency (400 MB): CARGO_LAMBDA_COMPILER=cargo builds with cargo.
"$VENV/bin/pip" install --quiet --no-deps cargo-lambda
cargo build -p quelea-lambda-testfn
LAMBDA_PORT=9071
LAMBDA_LOG="$S3_DIR/lambda-watch.log"
# The function inherits the storage settings (QUELEA_S3_* from above); it
# builds with cargo (no zig) and is not rebuilt on file changes.
(
    cd crates/quelea-lambda-testfn
    QUELEA_STORAGE=s3 QUELEA_BUCKET=quelea-test QUELEA_AWS_LAMBDA_PYTHON="$VENV/bin/python" \
        CARGO_LAMBDA_COMPILER=cargo exec "$VENV/bin/cargo-lambda" lambda watch \
        --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT" --ignore-changes
) >"$LAMBDA_LOG" 2>&1 &
LAMBDA_PID=$!
trap 'kill "$LAMBDA_PID" 2>/dev/null; wait "$LAMBDA_PID" 2>/dev/null; scripts/s3-server.sh stop "$S3_DIR"' EXIT
LAMBDA_READY=
for _ in $(seq 1 150); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$LAMBDA_PORT/"; then
        LAMBDA_READY=1
        break
    fi
    kill -0 "$LAMBDA_PID" 2>/dev/null || break
    sleep 0.2
done
[[ -n "$LAMBDA_READY" ]] || { echo "the Lambda emulator did not start:" >&2; cat "$LAMBDA_LOG" >&2; exit 1; }
QTEST_LAMBDA_ENDPOINT="http://127.0.0.1:$LAMBDA_PORT" QTEST_PYTHON="$VENV/bin/python" \
    cargo test -p quelea-lambda-testfn --features emulator-tests --test emulator

echo "== push monitoring: NATS JetStream and RabbitMQ on 127.0.0.1, SeaweedFS as storage =="
# A subshell of its own, so its trap stops the brokers (by PID) whatever happens.
(
    BROKER_DIR="$(mktemp -d)"
    trap 'scripts/brokers.sh stop "$BROKER_DIR"' EXIT
    BROKER_ENV="$(scripts/brokers.sh start "$BROKER_DIR")"
    eval "$BROKER_ENV"
    QTEST_STORAGE=s3 cargo test -p quelea-cli --features push-tests --test push_monitoring
)
