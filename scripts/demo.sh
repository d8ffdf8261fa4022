#!/usr/bin/env bash
# Build everything and run the demo: a real map-reduce on the local backend.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh

cargo build --release --workspace --exclude quelea-py --bins --examples
"$VENV/bin/maturin" develop --release --quiet
echo "== quelea hello: map 10,000 calls, then map_reduce them =="
./target/release/quelea hello --calls 10000
echo "== examples/rust/squares.rs: word count with Rust functions =="
./target/release/examples/squares
echo "== examples/python/wordcount.py: the same with Python functions =="
"$VENV/bin/python" examples/python/wordcount.py
./target/release/quelea clean
