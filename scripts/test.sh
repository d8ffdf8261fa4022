#!/usr/bin/env bash
# Install what the tests need and run the whole suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh

echo "== lint =="
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
"$VENV/bin/ruff" check python tests
"$VENV/bin/ruff" format --check python tests

echo "== rust tests =="
cargo test --workspace --exclude quelea-py

echo "== python tests =="
"$VENV/bin/maturin" develop --quiet
"$VENV/bin/python" -m pytest tests/python -q
