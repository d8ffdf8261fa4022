#!/usr/bin/env bash
# Install what the tests need and run the whole suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh

echo "== lint =="
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p quelea-storage --all-targets --features s3-tests -- -D warnings
"$VENV/bin/ruff" check python tests examples providers
"$VENV/bin/ruff" format --check python tests examples providers

echo "== rust tests =="
cargo test --workspace --exclude quelea-py

echo "== python tests =="
"$VENV/bin/maturin" develop --quiet
"$VENV/bin/python" -m pytest tests/python -q

echo "== airflow provider: a real Airflow 3.3, then 2.11 (SQLite), each in its own venv =="
bash providers/airflow/scripts/test.sh -q
AIRFLOW_VERSION=2.11.x bash providers/airflow/scripts/test.sh -q

echo "== the same against a real S3 server (SeaweedFS on 127.0.0.1) =="
S3_DIR="$(mktemp -d)"
trap 'scripts/s3-server.sh stop "$S3_DIR"' EXIT
eval "$(scripts/s3-server.sh start "$S3_DIR")"
cargo test -p quelea-storage --features s3-tests
QTEST_STORAGE=s3 cargo test -p quelea --test engine
QTEST_STORAGE=s3 cargo test -p quelea-cli --test http_backend
QTEST_STORAGE=s3 "$VENV/bin/python" -m pytest tests/python/test_api.py tests/python/test_partitioner.py -q
"$VENV/bin/python" examples/python/wordcount_s3.py
