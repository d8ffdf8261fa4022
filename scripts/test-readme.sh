#!/usr/bin/env bash
# The README's runnable blocks, run as written (tests/readme/run_blocks.py)
# in a fresh venv with quelea installed from a wheel of this checkout, built
# in the dev profile from the same target/ as `maturin develop`, so that it
# reuses that build. The http block starts two worker servers itself; they
# are stopped through the block's process group, by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/maturin" build --profile dev --interpreter "$VENV/bin/python" --out "$WORK/wheels" --quiet
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet "$WORK"/wheels/*.whl
"$VENV/bin/python" tests/readme/run_blocks.py README.md --venv "$WORK/venv" --work "$WORK"
