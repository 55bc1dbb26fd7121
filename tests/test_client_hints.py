"""Hint lines for the usual confusions: a partition or a device-mapper map that is not
multipath (through real prguard where the host has one, on a sysfs tree built for the
test where it has not), and a socket or device the caller may not open, tried as nobody
(the owner, group and mode it names are the real ones)."""

from __future__ import annotations

import grp
import io
import os
import pwd
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from lab.processes import Helper
from prguard.client import hints
from prguard.client.cli import main

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


def test_a_partition_names_its_disk(capsys: pytest.CaptureFixture[str], prguard: Helper,
                                    partitioned: tuple[str, str]) -> None:
    disk, part = partitioned
    code = main(["--socket", prguard.path, part])
    err = capsys.readouterr().err.splitlines()
    assert code == 11  # prguard refuses a partition with 0b/00/06, as the C helper does
    assert err[1] == (f"prguard-client: hint: {part} is a partition of {disk}: reservations "
                      f"belong to the whole logical unit, and SCSI pass-through is refused "
                      f"on a partition; use {disk}")


@pytest.fixture
def sys_root(tmp_path: Path, loop_disk: str) -> Iterator[tuple[Path, Path]]:
    """A sysfs tree in which `loop_disk`'s device number leads to a directory the test
    fills in: (the tree's root, that directory)."""
    rdev = os.stat(loop_disk).st_rdev
    device = tmp_path / "sys" / "devices" / "virtual" / "block" / "dm-3"
    device.mkdir(parents=True)
    (tmp_path / "sys" / "dev" / "block").mkdir(parents=True)
    (tmp_path / "sys" / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}").symlink_to(
        device)
    yield tmp_path / "sys", device


def dm(device: Path, uuid: str, below: list[str]) -> None:
    (device / "dm").mkdir()
    (device / "dm" / "uuid").write_text(uuid + "\n")
    (device / "slaves").mkdir()
    for name in below:
        (device / "slaves" / name).mkdir()


def test_a_device_mapper_map_that_is_not_multipath(sys_root: tuple[Path, Path],
                                                   loop_disk: str) -> None:
    root, device = sys_root
    dm(device, "LVM-Xyz", ["sdc", "sdb"])
    facts = hints.device_facts(loop_disk, root)
    assert facts == hints.DeviceFacts("dm", "dm-3", below=("/dev/sdb", "/dev/sdc"))
    assert hints.not_scsi("/dev/vg/lv", facts) == (
        "/dev/vg/lv is a device-mapper map (dm-3) that is not multipath, such as LVM or "
        "dm-crypt: it takes no SCSI pass-through; reserve the disk below it (/dev/sdb, "
        "/dev/sdc)")


def test_a_multipath_map_and_a_scsi_disk_get_no_such_hint(sys_root: tuple[Path, Path],
                                                          loop_disk: str) -> None:
    root, device = sys_root
    dm(device, "mpath-3600140512345", ["sdb"])
    facts = hints.device_facts(loop_disk, root)
    assert facts is not None and facts.kind == "dm-multipath"
    assert hints.not_scsi("/dev/mapper/mpatha", facts) is None
    (device / "dm" / "uuid").unlink()
    (device / "device").mkdir()
    (device / "device" / "scsi_level").write_text("7\n")
    facts = hints.device_facts(loop_disk, root)
    assert facts == hints.DeviceFacts("scsi", "dm-3")
    assert hints.not_scsi("/dev/sdb", facts) is None


def test_what_the_real_sysfs_says_of_a_loop_device_and_its_partition(
        loop_disk: str, partitioned: tuple[str, str]) -> None:
    assert hints.device_facts(loop_disk) == hints.DeviceFacts(
        "loop", os.path.basename(loop_disk))
    disk, part = partitioned
    facts = hints.device_facts(part)
    assert facts is not None and (facts.kind, facts.whole_disk) == ("partition", disk)
    assert hints.device_facts("/dev/null") == hints.DeviceFacts("char")


# -- permissions, as nobody ------------------------------------------------------------------

def as_nobody(argv: list[str]) -> tuple[int, list[str]]:
    """main(argv) in a child that dropped to nobody: (exit status, stderr lines)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            err = io.StringIO()
            with redirect_stdout(io.StringIO()), redirect_stderr(err):
                code = main(argv)
            os.write(write, err.getvalue().encode())
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as stream:
        text = stream.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text.splitlines()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everyone may reach and search, with a device stand-in everyone may
    read."""
    path = Path(tempfile.mkdtemp(prefix="pgh", dir="/tmp"))
    path.chmod(0o755)
    (path / "disk").write_bytes(bytes(512))
    (path / "disk").chmod(0o644)
    yield path
    shutil.rmtree(path)


def test_a_socket_nobody_may_write_to(open_dir: Path) -> None:
    path = open_dir / "helper.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)
        os.chown(path, 0, 0)
        path.chmod(0o660)
        code, err = as_nobody(["--socket", str(path), "-y", str(open_dir / "disk")])
    assert code == 63  # sg3_utils: 50 + EACCES
    assert err == [
        f"prguard-client: cannot connect to {path}: Permission denied",
        f"prguard-client: hint: only who may write to the socket may connect: {path} is "
        f"owner root, group root, mode 0660; you are nobody (uid {NOBODY.pw_uid}, groups "
        f"{NOGROUP}): run as root, or as a member of group root (prguard.socket sets them "
        f"with SocketGroup= and SocketMode=)"]


def test_a_socket_in_a_directory_nobody_may_search(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    code, err = as_nobody(["--socket", str(closed / "helper.sock"), "-y",
                           str(open_dir / "disk")])
    assert code == 63
    assert err[1] == (f"prguard-client: hint: a directory on the way to {closed}/helper.sock "
                      f"does not let you search it")


@pytest.mark.parametrize(("flags", "access", "more"), [
    ([], "read-write", "; --readonly is enough for PR IN"),
    (["-y"], "read-only", ""),
])
def test_a_device_nobody_may_open(open_dir: Path, flags: list[str], access: str,
                                  more: str) -> None:
    disk = open_dir / "disk"
    disk.chmod(0o600)
    code, err = as_nobody(["--socket", str(open_dir / "x.sock"), *flags, str(disk)])
    assert code == 63
    assert err == [f"prguard-client: cannot open {disk}: Permission denied",
                   f"prguard-client: hint: {disk} is owner root, group root, mode 0600; you "
                   f"are nobody (uid {NOBODY.pw_uid}, groups {NOGROUP}): opening it {access} "
                   f"takes root or a member of group root{more}"]
