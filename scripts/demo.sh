#!/usr/bin/env bash
# Install deltasync into .venv and mirror the bundled example tree once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
# editable_mode=compat: a plain .pth path entry; the default "strict" mode
# installs an import-hook finder that every Python start imports (~10 ms,
# paid twice per remote pass: here and on the far side).
"$VENV/bin/pip" install -q --disable-pip-version-check -e . --config-settings editable_mode=compat
DEST=${1:-/tmp/deltasync-demo-replica}
"$VENV/bin/deltasync" sync examples/source "$DEST" --stats
echo "replica: $DEST  (run the command again: nothing is written the second time)"
