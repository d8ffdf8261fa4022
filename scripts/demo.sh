#!/usr/bin/env bash
# Build quelea and run the demo: real map-reduces on the local backend, with
# Rust functions and with Python functions.
#
#   ./scripts/demo.sh             the dev profile (what scripts/test.sh builds
#                                 next, so its builds reuse this one's)
#   ./scripts/demo.sh --release   optimised, for speed figures (longer build)
#
# It builds only what it runs: the `quelea` command, one Rust example, and
# the Python engine (maturin develop into .venv), all in one target/ with one
# profile, so each dependency is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=dev
CARGO_PROFILE=()
MATURIN_PROFILE=()
case "${1:-}" in
"") ;;
--release)
    PROFILE=release
    CARGO_PROFILE=(--release)
    MATURIN_PROFILE=(--release)
    ;;
*)
    echo "usage: $0 [--release]" >&2
    exit 2
    ;;
esac
BIN_DIR="$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN_DIR="$BIN_DIR/$([[ $PROFILE == release ]] && echo release || echo debug)"

STEP=0
STEPS=6
STARTED=$SECONDS
step() {
    STEP=$((STEP + 1))
    echo
    echo "== [$STEP/$STEPS, $((SECONDS - STARTED)) s so far] $* =="
}

if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv and installing maturin, cloudpickle, pytest and ruff into it (about 30 s)"
else
    step "checking the Python tools in .venv"
fi
source scripts/python-env.sh

if [[ $PROFILE == release ]]; then
    step "building the quelea command and examples/rust/squares.rs (release profile: about 10 minutes on 2 cores the first time)"
else
    step "building the quelea command and examples/rust/squares.rs (dev profile: about 4 minutes on 2 cores the first time, seconds after)"
fi
cargo build "${CARGO_PROFILE[@]}" -p quelea-cli --bin quelea -p quelea --example squares

step "building the Python engine into .venv with maturin (reuses the build above: about 1 minute the first time)"
"$VENV/bin/maturin" develop "${MATURIN_PROFILE[@]}"

step "quelea hello: map 10,000 calls of a Rust function, then map_reduce them"
"$BIN_DIR/quelea" hello --calls 10000
[[ $PROFILE == release ]] || echo "(an unoptimised build: ./scripts/demo.sh --release for speed figures; bench/RESULTS.md has them)"

step "examples/rust/squares.rs and examples/python/wordcount.py: word counts with Rust, then Python functions"
"$BIN_DIR/examples/squares"
"$VENV/bin/python" examples/python/wordcount.py

step "quelea clean: removing the demo's job objects"
"$BIN_DIR/quelea" clean
echo
echo "done in $((SECONDS - STARTED)) s. Next: source .venv/bin/activate, then python, import quelea;"
echo "quelea test checks the configured backend; ./scripts/test.sh runs the test suite."
