#!/usr/bin/env bash
# Install deltasync with its test dependencies into .venv and run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m stress`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,bench]'
# pyrsync2 0.2.6 (the reference peer of the delta tests) no longer builds from
# its sdist with current setuptools; build its pure-Python wheel in a
# throwaway venv with an old setuptools, then install the wheel.
if ! "$VENV/bin/python" -c 'import pyrsync2' 2>/dev/null; then
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "$PY" -m venv "$BUILD/venv"
    "$BUILD/venv/bin/pip" install -q --disable-pip-version-check setuptools==45.0.0 wheel
    "$BUILD/venv/bin/pip" wheel -q --disable-pip-version-check --no-deps \
        --no-build-isolation pyrsync2==0.2.6 -w "$BUILD/wheels"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$BUILD"/wheels/pyrsync2-*.whl
fi
exec "$VENV/bin/python" -m pytest -q "$@"
