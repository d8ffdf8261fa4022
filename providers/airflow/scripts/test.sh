#!/usr/bin/env bash
# Tests of the Airflow provider against a real Airflow (SQLite metadata DB).
#
#   providers/airflow/scripts/test.sh [pytest args...]                          Airflow 3.3 (3.3.2)
#   AIRFLOW_VERSION=2.11.x providers/airflow/scripts/test.sh [pytest args...]   Airflow 2.11 (2.11.2)
#
# AIRFLOW_VERSION is 3.3.x / 2.11.x (the release tested here: 3.3.2 / 2.11.2) or
# an exact release. Without test paths among the pytest args: every test, the
# scheduler DAGs last (tests/scheduler: a real scheduler + triggerer on 3.x,
# dag.test() on 2.x).
#
# Uses (or creates) the venv ${AIRFLOW_VENV:-<repo>/.venv-airflow} (3.x) or
# <repo>/.venv-airflow-<major.minor> (2.x), apart from the project's .venv
# because Airflow pins many packages; a `*` .gitignore keeps it out of git. quelea goes into it from
# this checkout: when python/quelea already holds a built engine (a `maturin
# develop` checkout), a .pth file points at python/; otherwise a wheel is
# built with maturin (CARGO_TARGET_DIR is honoured). The scheduler tests start
# their servers on 127.0.0.1 and stop them by PID.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROVIDER="$(cd "$HERE/.." && pwd)"
ROOT="$(cd "$PROVIDER/../.." && pwd)"
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.x}"
case "$AIRFLOW_VERSION" in
    3.3 | 3.3.x) AIRFLOW_VERSION=3.3.2 ;;
    2.11 | 2.11.x) AIRFLOW_VERSION=2.11.2 ;;
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) echo "AIRFLOW_VERSION must be 3.3.x, 2.11.x or a release like 3.3.2, got $AIRFLOW_VERSION" >&2; exit 2 ;;
esac
case "$AIRFLOW_VERSION" in
    2.*) DEFAULT_VENV="$ROOT/.venv-airflow-${AIRFLOW_VERSION%.*}" ;;
    *) DEFAULT_VENV="$ROOT/.venv-airflow" ;;
esac
VENV="${AIRFLOW_VENV:-$DEFAULT_VENV}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
[ -e "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
PY="$VENV/bin/python"
if ! "$PY" -c "import airflow, sys; sys.exit(airflow.__version__ != '$AIRFLOW_VERSION')" 2>/dev/null; then
    echo "== installing apache-airflow==$AIRFLOW_VERSION"
    "$VENV/bin/pip" install -q "apache-airflow==$AIRFLOW_VERSION"
fi
"$VENV/bin/pip" install -q "pytest>=8" "wtforms>=3" "cloudpickle>=3" "maturin>=1.7,<2"
# 3.x: the CeleryExecutor run of the scheduler test (celery 5.7 removed what the
# provider's database result backend imports).
case "$AIRFLOW_VERSION" in
    2.*) ;;
    *) "$PY" -c "import airflow.providers.celery" 2>/dev/null \
        || "$VENV/bin/pip" install -q "apache-airflow==$AIRFLOW_VERSION" \
            "apache-airflow-providers-celery==3.26.0" "celery>=5.5,<5.7" ;;
esac

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ls "$ROOT"/python/quelea/_engine*.so >/dev/null 2>&1; then
    echo "== quelea from $ROOT/python (engine already built there)"
    "$VENV/bin/pip" uninstall -q -y quelea >/dev/null 2>&1 || true
    echo "$ROOT/python" > "$SITE/quelea-checkout.pth"
else
    echo "== building quelea (maturin build) into $VENV"
    rm -f "$SITE/quelea-checkout.pth"
    WHEELS="$(mktemp -d)"
    (cd "$ROOT" && "$VENV/bin/maturin" build --quiet --out "$WHEELS")
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEELS"/quelea-*.whl
    rm -rf "$WHEELS"
fi
"$PY" -c "import quelea" || { echo "quelea does not import in $VENV" >&2; exit 1; }
# --no-deps: quelea is not on PyPI (a different package may have the name).
"$VENV/bin/pip" install -q --no-deps -e "$PROVIDER"

SCRATCH="$(mktemp -d -t quelea-airflow-test.XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT
export AIRFLOW_HOME="$SCRATCH/airflow"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=True
# 2.x: a sensor's reschedule check loads the default executor, and SQLite
# takes only a single-threaded one.
case "$AIRFLOW_VERSION" in 2.*) export AIRFLOW__CORE__EXECUTOR=SequentialExecutor ;; esac
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$SCRATCH/airflow/airflow.db"
export AIRFLOW__CORE__DAGS_FOLDER="$PROVIDER/tests/e2e/dags"
export AIRFLOW_PROVIDER_TEST_STORAGE="$SCRATCH/storage"
# dag.test() resumes a deferred task in-process: no scheduler, no deferral race to
# wait out (the real-scheduler test drops this and runs with the default).
export AIRFLOW__QUELEA__MIN_DEFERRAL_S=0
mkdir -p "$AIRFLOW_HOME"
echo "== airflow db migrate"
"$VENV/bin/airflow" db migrate >"$SCRATCH/migrate.log" 2>&1 || { cat "$SCRATCH/migrate.log"; exit 1; }
"$VENV/bin/airflow" providers list 2>/dev/null | grep -q airflow-provider-quelea \
    || { echo "airflow providers list does not show airflow-provider-quelea" >&2; exit 1; }
echo "== pytest (Airflow $AIRFLOW_VERSION, $VENV)"
cd "$PROVIDER"
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) "$PY" -m pytest "$@"; exit 0 ;;  # tests named: run those only
    esac
done
"$PY" -m pytest "$@" tests --ignore=tests/scheduler
# The scheduler DAGs (tests/scheduler): on 3.x one real api-server + scheduler
# (LocalExecutor) + triggerer + dag-processor on 127.0.0.1 runs them all, with
# two `quelea worker serve` for the http backend; on 2.x, dag.test() runs them.
# A fresh metadata DB and storage.
export AIRFLOW_HOME="$SCRATCH/airflow-scheduler"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW_PROVIDER_TEST_STORAGE="$SCRATCH/storage-scheduler"
mkdir -p "$AIRFLOW_HOME" "$AIRFLOW_PROVIDER_TEST_STORAGE"
"$VENV/bin/airflow" db migrate >"$SCRATCH/migrate-scheduler.log" 2>&1 || { cat "$SCRATCH/migrate-scheduler.log"; exit 1; }
case "$AIRFLOW_VERSION" in
    2.*) SCHEDULER_TEST=tests/scheduler/test_scheduler.py::test_the_scheduler_dags_under_dag_test ;;
    *) SCHEDULER_TEST="tests/scheduler/test_scheduler.py::test_a_real_scheduler_and_triggerer_run_every_dag
        tests/scheduler/test_scheduler.py::test_the_celery_executor_runs_the_three_paths" ;;
esac
echo "== "$SCHEDULER_TEST
# shellcheck disable=SC2086 # one or two test ids
"$PY" -m pytest "$@" -s $SCHEDULER_TEST
