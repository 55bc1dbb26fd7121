from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.loopdev import detach, losetup, partition_node
from lab.processes import C_HELPER, PRGUARD, Helper, start_helper
from lab.scripted_helper import ScriptedHelper, Serve
from prguard.shared.qemu_protocol import PrReply


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """Short paths: socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def loop_disk(workdir: Path) -> Iterator[str]:
    dev = losetup(workdir / "disk.img", 16 << 20)
    yield dev
    detach(dev)


@pytest.fixture(scope="session")
def partitioned(workdir: Path) -> Iterator[tuple[str, str]]:
    """(whole disk, its first partition), both loop device nodes."""
    dev = losetup(workdir / "parts.img", 16 << 20, partitions=True)
    part = partition_node(dev, 1, workdir)
    yield dev, part
    detach(dev)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgs", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fd_zoo(loop_disk: str, partitioned: tuple[str, str], workdir: Path) -> Iterator[dict[str, int]]:
    """One fd of every kind the tests send, opened fresh for each test."""
    regular = workdir / "regular"
    regular.write_bytes(b"x" * 4096)
    fds: dict[str, int] = {
        "loop": os.open(loop_disk, os.O_RDWR),
        "loop_ro": os.open(loop_disk, os.O_RDONLY),
        "part": os.open(partitioned[1], os.O_RDWR),
        "file": os.open(regular, os.O_RDWR),
        "file_ro": os.open(regular, os.O_RDONLY),
        "devnull": os.open("/dev/null", os.O_RDWR),
        "dir": os.open(workdir, os.O_RDONLY | os.O_DIRECTORY),
        "opath": os.open(loop_disk, os.O_PATH),
    }
    fds["pipe_r"], fds["pipe_w"] = os.pipe()
    a, b = socket.socketpair()
    fds["socket"] = a.detach()
    b.close()
    yield fds
    for fd in fds.values():
        os.close(fd)


@pytest.fixture
def prguard(sockdir: Path) -> Iterator[Helper]:
    helper = start_helper(PRGUARD, str(sockdir / "prguard.sock"))
    yield helper
    helper.stop()


@pytest.fixture
def prguard_debug(sockdir: Path) -> Iterator[Helper]:
    """prguard at -vvv: its worker logs every SG_IO it issues (lab/sgio_log.py)."""
    helper = start_helper(PRGUARD, str(sockdir / "prguard.sock"), "-vvv")
    yield helper
    helper.stop()


@pytest.fixture
def c_helper(sockdir: Path) -> Iterator[Helper]:
    helper = start_helper([C_HELPER], str(sockdir / "c.sock"))
    yield helper
    helper.stop()


@pytest.fixture
def scripted(sockdir: Path) -> Iterator[Serve]:
    """Starts a ScriptedHelper on a socket in `sockdir`: scripted(reply, silent=False).
    Each must be connected to by the test; it is closed afterwards."""
    helpers: list[ScriptedHelper] = []

    def serve(reply: PrReply | None, silent: bool = False) -> ScriptedHelper:
        helper = ScriptedHelper(str(sockdir / f"scripted{len(helpers)}.sock"), reply, silent)
        helpers.append(helper)
        return helper

    yield serve
    for helper in helpers:
        helper.close()
