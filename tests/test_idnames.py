"""Owners by name across machines (issue 13 item 6: --numeric-ids and its default).

The far side runs in a mount namespace whose /etc/passwd and /etc/group give
the same names other numbers (``daemon`` is 1 here, 4001 there), so a push or
a pull crosses two "machines" without a network.  rsync is the oracle: the
same transfer by ``rsync -a`` through the same far side must give the same
owners (root: by name; ``--numeric-ids``: by number; 0 and ids without a
name stay as they are).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from remoteutil import REPO, pipe_rsh, pull, push
from treeutil import build_tree

from deltasync.idnames import IdMap, Names

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners can only be set as root")

FAR_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
              "daemon:x:4001:4001::/:/bin/false\n"
              "bin:x:4002:4002::/:/bin/false\n"
              "nobody:x:65534:65534::/:/bin/false\n")
FAR_GROUP = "root:x:0:\ndaemon:x:4001:\nbin:x:4002:\nnogroup:x:65534:\n"


def far_side(tmp_path: Path) -> tuple[str, str]:
    """(deltasync's remote command, rsync's --rsync-path) on the far "machine"."""
    (tmp_path / "passwd").write_text(FAR_PASSWD)
    (tmp_path / "group").write_text(FAR_GROUP)
    wrap = tmp_path / "far.sh"
    wrap.write_text("#!/bin/sh\n"
                    f"mount --bind {tmp_path / 'passwd'} /etc/passwd || exit 97\n"
                    f"mount --bind {tmp_path / 'group'} /etc/group || exit 97\n"
                    'exec "$@"\n')
    wrap.chmod(0o755)
    deltasync = (f"exec unshare -m {wrap} env PYTHONPATH={REPO} PYTHONDONTWRITEBYTECODE=1 "
                 f"{sys.executable} -m deltasync")
    return deltasync, f"unshare -m {wrap} rsync"


def _tree(root: Path, owners: dict[str, tuple[int, int]]) -> None:
    build_tree(root, {name: name.encode() for name in owners})
    for name, (u, g) in owners.items():
        os.chown(root / name, u, g)
    os.chown(root, *next(iter(owners.values())))


def _owners(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for name in sorted(os.listdir(root)):
        s = os.lstat(root / name)
        out[name] = (s.st_uid, s.st_gid)
    s = os.lstat(root)
    out["."] = (s.st_uid, s.st_gid)
    return out


def _rsync(rsh: str, rsync_path: str, src: str, dst: str, *args: str) -> None:
    subprocess.run(["rsync", "-a", "--delete", f"--rsh={rsh}", f"--rsync-path={rsync_path}",
                    *args, src, dst], check=True, capture_output=True)


LOCAL_SIDE = {"by-name": (1, 2), "nameless": (3333, 3334), "root": (0, 0),
              "nobody": (65534, 65534)}
FAR_SIDE = {"by-name": (4001, 4002), "nameless": (3333, 3334), "root": (0, 0),
            "nobody": (65534, 65534)}


@pytest.mark.parametrize("numeric", [False, True])
def test_push_maps_owners_by_name_as_rsync_does(tmp_path: Path, numeric: bool) -> None:
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    _tree(src, LOCAL_SIDE)
    cmd, rsync_path = far_side(tmp_path)
    rsh = pipe_rsh(tmp_path)
    r = push(rsh, src, ours, remote_command=cmd, numeric_ids=numeric)
    assert r.code == 0, (r.rep.failed_, r.rep.warnings)
    _rsync(rsh, rsync_path, f"{src}/", f"h:{theirs}/", *(["--numeric-ids"] if numeric else []))
    assert _owners(ours) == _owners(theirs)
    assert _owners(ours)["by-name"] == ((1, 2) if numeric else (4001, 4002))
    again = push(rsh, src, ours, remote_command=cmd, numeric_ids=numeric)
    assert again.code == 0 and again.writes == 0, again.rep.done_


@pytest.mark.parametrize("numeric", [False, True])
def test_pull_maps_owners_by_name_as_rsync_does(tmp_path: Path, numeric: bool) -> None:
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    _tree(src, FAR_SIDE)  # the far side's files, in its numbers
    cmd, rsync_path = far_side(tmp_path)
    rsh = pipe_rsh(tmp_path)
    r = pull(rsh, src, ours, remote_command=cmd, numeric_ids=numeric)
    assert r.code == 0, (r.rep.failed_, r.rep.warnings)
    _rsync(rsh, rsync_path, f"h:{src}/", f"{theirs}/", *(["--numeric-ids"] if numeric else []))
    assert _owners(ours) == _owners(theirs)
    assert _owners(ours)["by-name"] == ((4001, 4002) if numeric else (1, 2))
    again = pull(rsh, src, ours, remote_command=cmd, numeric_ids=numeric)
    assert again.code == 0 and again.writes == 0, again.rep.done_


def test_changed_content_is_installed_with_mapped_owners(tmp_path: Path) -> None:
    """A file replaced by data (not only metadata) gets the mapped owner too."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src, LOCAL_SIDE)
    cmd, _ = far_side(tmp_path)
    rsh = pipe_rsh(tmp_path)
    assert push(rsh, src, dst, remote_command=cmd).code == 0
    (src / "by-name").write_bytes(b"new content, longer")
    r = push(rsh, src, dst, remote_command=cmd)
    assert ("update", "by-name") in r.rep.ops()
    assert _owners(dst)["by-name"] == (4001, 4002)


names = st.dictionaries(st.integers(0, 70000), st.sampled_from(["a", "b", "c", "d", "root"]),
                        max_size=6)


@given(src_users=names, dst_users=names, uid=st.integers(0, 70000))
def test_the_map_follows_rsyncs_rules(src_users: dict[int, str], dst_users: dict[int, str],
                                      uid: int) -> None:
    m = IdMap.between(Names(src_users, {}), Names(dst_users, {}))
    got = m.uids.get(uid, uid) if m is not None else uid
    by_name = {}
    for i, n in dst_users.items():
        by_name.setdefault(n, i)
    name = src_users.get(uid)
    want = uid if uid == 0 or name is None or name not in by_name else by_name[name]
    assert got == want


@given(users=names, groups=names)
def test_names_round_trip_through_json(users: dict[int, str], groups: dict[int, str]) -> None:
    import json

    n = Names(users, groups)
    assert Names.from_json(json.loads(json.dumps(n.to_json()))) == n
