# Sourced by scripts/test.sh (and its self-test): run named sections, every
# one of them whatever the others did, then print a summary table.
#
#   section "NAME" COMMAND [ARGS...]   run COMMAND in a subshell with `set -e`
#                                      (its first failing command fails it),
#                                      record passed/FAILED and the time taken
#   section_here "NAME" FUNCTION       the same in this shell, for set-ups that
#                                      export variables (FUNCTION must return
#                                      non-zero itself on failure)
#   section_skip "NAME" "WHY"          record a section that cannot run (say why)
#   any_section_selected NAME...       whether TEST_SECTIONS selects any of them
#   sections_summary                   print the table; returns 1 if any failed
#
# TEST_SECTIONS, if set, is an extended regex: only sections whose name
# matches run (the others are listed as "not selected").

SECTION_NAMES=()
SECTION_RESULTS=()
SECTION_TIMES=()

_section_selected() {
    [[ -z "${TEST_SECTIONS:-}" ]] || [[ "$1" =~ $TEST_SECTIONS ]]
}

_section_record() {
    SECTION_NAMES+=("$1")
    SECTION_RESULTS+=("$2")
    SECTION_TIMES+=("$3")
}

section() {
    local name="$1"
    shift
    if ! _section_selected "$name"; then
        _section_record "$name" "not selected" 0
        return 0
    fi
    echo
    echo "== $name =="
    local started=$SECONDS rc
    # Not in a tested context (no `if`, `||`): `set -e` holds inside.
    (
        set -euo pipefail
        "$@"
    )
    rc=$?
    if ((rc == 0)); then
        _section_record "$name" passed $((SECONDS - started))
    else
        echo "== $name: FAILED (exit $rc) ==" >&2
        _section_record "$name" FAILED $((SECONDS - started))
    fi
    return 0
}

section_here() {
    local name="$1" function="$2"
    if ! _section_selected "$name"; then
        _section_record "$name" "not selected" 0
        return 0
    fi
    echo
    echo "== $name =="
    local started=$SECONDS
    if "$function"; then
        _section_record "$name" passed $((SECONDS - started))
    else
        echo "== $name: FAILED ==" >&2
        _section_record "$name" FAILED $((SECONDS - started))
    fi
}

# Whether any of the named sections is selected (to start what they need).
any_section_selected() {
    local name
    for name in "$@"; do
        _section_selected "$name" && return 0
    done
    return 1
}

section_skip() {
    echo
    echo "== $1: not run: $2 ==" >&2
    _section_record "$1" "not run: $2" 0
}

# Whether the section NAME ran and passed (for sections that need another).
section_passed() {
    local i
    for i in "${!SECTION_NAMES[@]}"; do
        if [[ "${SECTION_NAMES[$i]}" == "$1" ]]; then
            [[ "${SECTION_RESULTS[$i]}" == passed ]]
            return
        fi
    done
    return 1
}

sections_summary() {
    local i failed=() passed=0 width=7
    for i in "${!SECTION_NAMES[@]}"; do
        ((${#SECTION_NAMES[$i]} > width)) && width=${#SECTION_NAMES[$i]}
    done
    echo
    echo "== summary =="
    printf "%-${width}s  %-12s %8s\n" section result time
    for i in "${!SECTION_NAMES[@]}"; do
        printf "%-${width}s  %-12s %7ss\n" "${SECTION_NAMES[$i]}" "${SECTION_RESULTS[$i]}" \
            "${SECTION_TIMES[$i]}"
        case "${SECTION_RESULTS[$i]}" in
        passed) passed=$((passed + 1)) ;;
        "not selected") ;;
        *) failed+=("${SECTION_NAMES[$i]}") ;;
        esac
    done
    if ((${#failed[@]} > 0)); then
        echo "${#failed[@]} of ${#SECTION_NAMES[@]} sections did not pass:" >&2
        printf '  %s\n' "${failed[@]}" >&2
        return 1
    fi
    echo "all $passed sections run passed (${SECONDS}s)"
}
