#!/usr/bin/env bash
# Build quelea and run the demo: real map-reduces on the local backend, with
# Rust functions (`quelea hello`) and with Python functions.
#
#   ./scripts/demo.sh             the dev profile (what scripts/test.sh builds
#                                 next, so its builds reuse this one's)
#   ./scripts/demo.sh --release   optimised, for speed figures (longer build)
#
# It builds one thing: the Python engine (`maturin develop` into .venv),
# which also carries the whole `quelea` command line (the venv's `quelea`
# console script) and its Rust functions. Building the `quelea` binary or
# the Rust examples too would compile many crates a second time: their
# dependency features differ (examples pull in dev-dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=dev
MATURIN_PROFILE=()
case "${1:-}" in
"") ;;
--release)
    PROFILE=release
    MATURIN_PROFILE=(--release)
    ;;
*)
    echo "usage: $0 [--release]" >&2
    exit 2
    ;;
esac
STEP=0
STEPS=5
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
    step "building the Python engine and the quelea command into .venv (maturin develop --release: about 30 CPU-minutes the first time)"
else
    step "building the Python engine and the quelea command into .venv (maturin develop, dev profile: about 9 CPU-minutes, so 4-5 minutes on 2 idle cores the first time; seconds after)"
fi
"$VENV/bin/maturin" develop "${MATURIN_PROFILE[@]}"

step "quelea hello: map 10,000 calls of a Rust function, then map_reduce them"
"$VENV/bin/quelea" hello --calls 10000
[[ $PROFILE == release ]] || echo "(an unoptimised build: ./scripts/demo.sh --release for speed figures; bench/RESULTS.md has them)"

step "examples/python/wordcount.py: a word count with Python functions"
"$VENV/bin/python" examples/python/wordcount.py

step "quelea clean: removing the demo's job objects"
"$VENV/bin/quelea" clean
echo
echo "done in $((SECONDS - STARTED)) s. Next: source .venv/bin/activate, then python, import quelea;"
echo "quelea test checks the configured backend; cargo run --example squares is the Rust API;"
echo "./scripts/test.sh runs the test suite."
