# Sourced by the scripts: a project venv with the Python tools, made once.
VENV="${VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import maturin, cloudpickle, pytest, ruff" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "maturin>=1.7,<2" "cloudpickle>=3" "pytest>=8" ruff
fi
export VENV
