#!/usr/bin/env bash
# Builds the Python package from source into a private virtual environment and runs its
# pytest suite, after ruff. Needs python3 (3.10+) and a Rust toolchain; fetches maturin,
# pytest, ruff, aiohttp and prometheus_client (for one test each) from PyPI. Works unattended
# (CI=true, no stdin).
# Exit status: pytest's (5, "no tests", is a failure too).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "bindings/python/test.sh: needs Python 3.10 or newer ($py: $("$py" --version 2>&1))" >&2
    exit 1
fi

venv="$here/.venv"
if [[ ! -x $venv/bin/python ]]; then
    echo "== creating $venv"
    "$py" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$venv/bin/python" -m pip install --quiet --upgrade "maturin>=1.5,<2" pytest pytest-timeout \
    "ruff>=0.17,<0.18" "aiohttp>=3.9,<4" "prometheus_client>=0.17,<1" </dev/null

echo "== ruff"
"$venv/bin/ruff" check "$here"
"$venv/bin/ruff" format --check "$here"

echo "== building and installing rcluster from source"
# --force-reinstall: the version does not change while the sources do. The build runs
# through pip as a user would run it; cargo's own cache keeps it quick after the first time.
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$here" </dev/null

echo "== pytest"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/tests" </dev/null
status=$?
set -e
case $status in
0) echo "bindings/python/test.sh: all Python tests passed" ;;
5)
    echo "bindings/python/test.sh: pytest collected no tests: that is a failure" >&2
    exit 1
    ;;
*) echo "bindings/python/test.sh: Python tests failed (pytest exit status $status)" >&2 ;;
esac
exit "$status"
