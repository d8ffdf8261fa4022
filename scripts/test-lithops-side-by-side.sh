#!/usr/bin/env bash
# The side-by-side check of issue 11: examples/python/lithops_side_by_side.py
# run with `import lithops` (Lithops 3.8, localhost backend, in a venv of its
# own) and with `import quelea as lithops`; their outputs must be the same.
#
#   scripts/test-lithops-side-by-side.sh
#
# Lithops goes into $LITHOPS_VENV (default .venv-lithops, made once: about
# 30 s). Both runs get a scratch HOME, so no config of the user's is read;
# each has a deadline. Lithops prints an empty line before each progress
# bar it would draw: empty lines are not compared.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
LITHOPS_VENV="${LITHOPS_VENV:-$PWD/.venv-lithops}"
EXAMPLE=examples/python/lithops_side_by_side.py

if ! "$LITHOPS_VENV/bin/python" -c "import lithops" 2>/dev/null; then
    echo "side-by-side: installing lithops==3.8.* into $LITHOPS_VENV" >&2
    python3 -m venv "$LITHOPS_VENV"
    "$LITHOPS_VENV/bin/pip" install --quiet 'lithops==3.8.*'
fi
"$VENV/bin/python" -c "import quelea" 2>/dev/null || "$VENV/bin/maturin" develop --quiet

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/home-lithops" "$dir/home-quelea"
# Lithops starts its worker with the `python` on PATH: its venv's.
HOME="$dir/home-lithops" PATH="$LITHOPS_VENV/bin:$PATH" \
    timeout 300 "$LITHOPS_VENV/bin/python" "$EXAMPLE" >"$dir/lithops.raw" 2>"$dir/lithops.err" || {
    echo "side-by-side: the Lithops run failed:" >&2
    tail -n 30 "$dir/lithops.err" >&2
    exit 1
}
HOME="$dir/home-quelea" timeout 300 "$VENV/bin/python" "$EXAMPLE" --quelea >"$dir/quelea.raw" 2>"$dir/quelea.err" || {
    echo "side-by-side: the quelea run failed:" >&2
    tail -n 30 "$dir/quelea.err" >&2
    exit 1
}
grep -v '^$' "$dir/lithops.raw" >"$dir/lithops.out" || true
grep -v '^$' "$dir/quelea.raw" >"$dir/quelea.out" || true
lines="$(wc -l <"$dir/lithops.out")"
if [[ "$lines" -lt 30 ]]; then
    echo "side-by-side: Lithops printed $lines lines, expected every feature's (30+):" >&2
    cat "$dir/lithops.out" >&2
    exit 1
fi
if ! diff -u "$dir/lithops.out" "$dir/quelea.out"; then
    echo "side-by-side: the outputs differ (- lithops, + quelea)" >&2
    exit 1
fi
echo "side-by-side: the same $lines lines from Lithops 3.8 and from quelea"
