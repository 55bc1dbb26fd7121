"""Landlock (shared/landlock.py) and the file facts read under it: what a ruleset grants
and refuses, the fd-only fstat and directory listing, sysfs lookups, and prguard's
refusal to start where Landlock is missing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lab.processes import REPO
from prguard.shared import dirents, fdcheck, landlock, sysfs
from prguard.shared.rules import FdKind

PRGUARD_SCRIPT = str(Path(sys.executable).parent / "prguard")

RESTRICTED = """\
import json, os, sys
import prctl
from prguard.shared import landlock
prctl.set_no_new_privs(1)
rules = [landlock.Beneath(int(access), path=path) for path, access in json.loads(sys.argv[1])]
landlock.restrict(rules)
out = {}
for what, path in json.loads(sys.argv[2]):
    try:
        if what == "read":
            os.close(os.open(path, os.O_RDONLY))
        elif what == "write":
            os.close(os.open(path, os.O_WRONLY))
        elif what == "unlink":
            os.unlink(path)
        elif what == "list":
            os.listdir(path)
        out[f"{what} {path}"] = "OK"
    except OSError as exc:
        out[f"{what} {path}"] = exc.strerror
print(json.dumps(out))
"""


def restricted(rules: list[tuple[str, int]], attempts: list[tuple[str, str]]) -> dict[str, str]:
    result = subprocess.run([sys.executable, "-c", RESTRICTED, json.dumps(rules),
                             json.dumps(attempts)], cwd=REPO, capture_output=True, text=True,
                            check=True)
    loaded: dict[str, str] = json.loads(result.stdout)
    return loaded


def test_the_kernel_has_landlock() -> None:
    assert landlock.require() >= 1


def test_a_ruleset_grants_its_rights_beneath_its_directory_and_nothing_else(
        tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    for directory in (inside, outside):
        directory.mkdir()
        (directory / "f").write_text("x")
        (directory / "g").write_text("x")
    got = restricted([(str(inside), landlock.READ_FILE | landlock.REMOVE_FILE)],
                     [("read", f"{inside}/f"), ("unlink", f"{inside}/g"),
                      ("write", f"{inside}/f"), ("list", str(inside)),
                      ("read", f"{outside}/f"), ("unlink", f"{outside}/g"),
                      ("read", f"{inside}/missing"), ("read", "/etc/hostname")])
    assert got == {
        f"read {inside}/f": "OK", f"unlink {inside}/g": "OK",
        f"write {inside}/f": "Permission denied", f"list {inside}": "Permission denied",
        f"read {outside}/f": "Permission denied", f"unlink {outside}/g": "Permission denied",
        f"read {inside}/missing": "No such file or directory",
        "read /etc/hostname": "Permission denied"}
    assert (outside / "g").exists() and not (inside / "g").exists()


def test_the_brokers_ruleset_grants_nothing() -> None:
    got = restricted([], [("read", "/etc/hostname"), ("list", "/"),
                          ("read", "/sys/dev/block")])
    assert set(got.values()) == {"Permission denied"}


def test_sysfs_is_read_through_its_symlinks(loop_disk: str) -> None:
    """/sys/dev/block/M:m links into /sys/devices: Landlock looks at where it leads."""
    rdev = os.stat(loop_disk).st_rdev
    link = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    elsewhere = "/sys/kernel/mm/transparent_hugepage/enabled"
    got = restricted([(sysfs.SYS_DEVICES, landlock.READ_FILE)],
                     [("read", f"{link}/size"), ("read", f"{link}/dev"),
                      ("write", f"{link}/uevent"), ("read", elsewhere)])
    assert got == {f"read {link}/size": "OK", f"read {link}/dev": "OK",
                   f"write {link}/uevent": "Permission denied",
                   f"read {elsewhere}": "Permission denied"}


def test_fstat_is_the_fd_only_system_call_and_agrees_with_os_fstat(loop_disk: str,
                                                                   tmp_path: Path) -> None:
    for path in (loop_disk, "/dev/null", str(tmp_path)):
        fd = os.open(path, os.O_RDONLY)
        try:
            ours, theirs = fdcheck.fstat(fd), os.fstat(fd)
        finally:
            os.close(fd)
        assert (ours.mode, ours.rdev, ours.dev, ours.ino, ours.nlink) == (
            theirs.st_mode, theirs.st_rdev, theirs.st_dev, theirs.st_ino, theirs.st_nlink)
    with pytest.raises(OSError):
        fdcheck.fstat(-1)


def test_a_directory_is_listed_from_its_fd(tmp_path: Path) -> None:
    for name in ("a", "b.sock", "c" * 200):
        (tmp_path / name).write_text("")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = dict(dirents.entries(fd))
        again = dict(dirents.entries(fd))  # from the start each time
    finally:
        os.close(fd)
    assert first == again == {p.name: p.stat().st_ino for p in tmp_path.iterdir()}


def test_sysfs_tells_a_partition_from_its_disk(partitioned: tuple[str, str]) -> None:
    disk, part = partitioned
    assert sysfs.block_kind(os.stat(disk).st_rdev) is FdKind.BLOCK_DISK
    assert sysfs.block_kind(os.stat(part).st_rdev) is FdKind.PARTITION
    # A device number sysfs does not know is refused, not taken for a whole disk.
    assert sysfs.block_kind(os.makedev(4095, 1048575)) is FdKind.UNKNOWN_BLOCK
    assert stat.S_ISBLK(os.stat(disk).st_mode)


NO_LANDLOCK = """\
import errno, os, sys, pyseccomp as s
f = s.SyscallFilter(s.ALLOW)
for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
    f.add_rule(s.ERRNO(int(sys.argv[1])), name)
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.mark.parametrize("errno_value", [38, 95, 1])  # ENOSYS, EOPNOTSUPP, EPERM
def test_prguard_refuses_to_start_without_landlock(sockdir: Path, errno_value: int) -> None:
    """An old kernel (ENOSYS), Landlock not among the LSMs (EOPNOTSUPP), or a unit whose
    SystemCallFilter= leaves the calls out (EPERM): one line, exit 1, no socket left."""
    path = sockdir / "l.sock"
    result = subprocess.run([sys.executable, "-c", NO_LANDLOCK, str(errno_value),
                             PRGUARD_SCRIPT, "-k", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert result.stderr == f"prguard: {landlock.UNAVAILABLE}\n"
    assert not path.exists()
