#!/usr/bin/env bash
# The dashboard in a real headless Chromium (Debian's chromium and
# chromium-driver, driven by selenium from PyPI), and `fexec.plot()` with
# matplotlib (the `quelea[plot]` extra). Installs what it needs itself;
# expects the project venv with the engine built (`maturin develop`).
# The browser test's screenshot is kept under $DASHBOARD_TEST_OUTPUT
# (default target/test-output)/dashboard/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! "$VENV/bin/python" -c "import selenium, matplotlib" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "selenium>=4.20" "matplotlib>=3.7"
fi
export DASHBOARD_TEST_OUTPUT="${DASHBOARD_TEST_OUTPUT:-$PWD/target/test-output}"
"$VENV/bin/python" -m pytest tests/dashboard -q "$@"
echo "dashboard screenshot: $DASHBOARD_TEST_OUTPUT/dashboard/job-page.png"
