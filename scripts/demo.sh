#!/usr/bin/env bash
# Build everything and run the demo: a real map-reduce on the local backend.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins --examples
echo "== quelea hello: map 10,000 calls, then map_reduce them =="
./target/release/quelea hello --calls 10000
echo "== examples/rust/squares.rs: word count with Rust functions =="
./target/release/examples/squares
./target/release/quelea clean
