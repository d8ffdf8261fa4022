#!/usr/bin/env bash
# Install what the tests need and run the whole suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== lint =="
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== rust tests =="
cargo test --workspace
