#!/usr/bin/env bash
# Self-test of scripts/sections.sh, the machinery of scripts/test.sh: a
# deliberately failing section must not stop the sections after it, the
# summary must list every section with its result, the run must exit
# non-zero, and a server started for the run must still be stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/suite.sh" <<'SUITE'
set -uo pipefail
source scripts/sections.sh
WORK="$1"
sleep 300 &
SERVER_PID=$!
echo "$SERVER_PID" >"$WORK/server.pid"
trap 'kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; echo stopped >"$WORK/server.stopped"' EXIT
s_fails_midway() {
    echo "first command runs"
    false
    echo "never printed" >"$WORK/after-false"
}
section "passes first" true
section "fails on purpose" s_fails_midway
section "passes after the failure" touch "$WORK/third-ran"
section "selected out" touch "$WORK/must-not-run"
sections_summary
SUITE

set +e
TEST_SECTIONS='^pass|^fail' bash "$WORK/suite.sh" "$WORK" >"$WORK/out" 2>&1
rc=$?
set -e
fail() {
    echo "test.sh self-test: $*" >&2
    echo "--- output of the suite ---" >&2
    cat "$WORK/out" >&2
    exit 1
}
((rc != 0)) || fail "a failing section must make the run exit non-zero (got 0)"
[[ -e "$WORK/third-ran" ]] || fail "the section after the failing one did not run"
[[ ! -e "$WORK/after-false" ]] || fail "a section went on after its failing command"
[[ ! -e "$WORK/must-not-run" ]] || fail "a section TEST_SECTIONS did not select ran"
grep -Eq '^passes first +passed ' "$WORK/out" || fail "the summary lacks 'passes first  passed'"
grep -Eq '^fails on purpose +FAILED ' "$WORK/out" || fail "the summary lacks 'fails on purpose  FAILED'"
grep -Eq '^passes after the failure +passed ' "$WORK/out" || fail "the summary lacks the third section"
grep -Eq '^selected out +not selected ' "$WORK/out" || fail "the summary lacks the unselected section"
grep -q '1 of 4 sections did not pass' "$WORK/out" || fail "the summary does not count the failure"
[[ -e "$WORK/server.stopped" ]] || fail "the server's EXIT trap did not run"
! kill -0 "$(cat "$WORK/server.pid")" 2>/dev/null || fail "the server (PID $(cat "$WORK/server.pid")) is still running"
echo "test.sh self-test: a failing section let the others run; summary, exit code and server stop are right"
