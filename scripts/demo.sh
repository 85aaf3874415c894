#!/usr/bin/env bash
# Install deltasync into .venv and mirror the bundled example tree once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e .
DEST=${1:-/tmp/deltasync-demo-replica}
"$VENV/bin/deltasync" sync examples/source "$DEST" --stats
echo "replica: $DEST  (run the command again: nothing is written the second time)"
