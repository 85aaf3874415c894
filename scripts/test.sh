#!/usr/bin/env bash
# Install deltasync with its test dependencies into .venv and run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m stress`).
set -euo pipefail
cd "$(dirname "$0")/.."
# System tools the tests use: openssh (a real loopback sshd for the remote
# tests), setpriv (dropping to nobody), rsync/rdiff/GNU time (bench smoke run),
# setfacl/getfacl/getfattr (the -A/-X tests), lsyncd (the watch bench).
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v rdiff >/dev/null || need+=(rdiff)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v setpriv >/dev/null || need+=(util-linux)
[ -x /usr/bin/time ] || need+=(time)
command -v setfacl >/dev/null || need+=(acl)
command -v getfattr >/dev/null || need+=(attr)
command -v lsyncd >/dev/null || need+=(lsyncd)  # the watch bench's peer
# loop-mounted btrfs and XFS images (tests/loopfs.py, bench big-delta-writes)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "scripts/test.sh: please install: ${need[*]}" >&2
    fi
fi
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# editable_mode=compat: a plain .pth path entry; the default "strict" mode
# installs an import-hook finder that every Python start imports (~10 ms,
# paid twice per remote pass: here and on the far side).
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,bench]' \
    --config-settings editable_mode=compat
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
