"""Facts about received fds: what fstat and fcntl tell (both processes), and what sysfs
tells of a block device (the worker alone)."""

from __future__ import annotations

import os

import pytest

from prguard.shared import fdcheck
from prguard.shared.rules import FdKind


@pytest.mark.parametrize(("name", "broker", "worker"), [
    ("loop", FdKind.BLOCK_DISK, FdKind.BLOCK_DISK),
    ("part", FdKind.BLOCK_DISK, FdKind.PARTITION),  # the broker cannot tell: the worker does
    ("opath", FdKind.OTHER, FdKind.OTHER),
    ("file", FdKind.OTHER, FdKind.OTHER),
    ("devnull", FdKind.OTHER, FdKind.OTHER),
    ("socket", FdKind.OTHER, FdKind.OTHER),
    ("pipe_r", FdKind.OTHER, FdKind.OTHER),
])
def test_what_each_process_can_tell_of_an_fd(fd_zoo: dict[str, int], name: str,
                                             broker: FdKind, worker: FdKind) -> None:
    fd = fd_zoo[name]
    assert fdcheck.inspect_fd(fd, with_sysfs=False).kind is broker
    facts = fdcheck.inspect_fd(fd, with_sysfs=True)
    assert facts.kind is worker
    assert facts.rdev == os.fstat(fd).st_rdev


def test_read_only_comes_from_the_access_mode(fd_zoo: dict[str, int]) -> None:
    assert fdcheck.inspect_fd(fd_zoo["loop_ro"], with_sysfs=True).read_only
    assert not fdcheck.inspect_fd(fd_zoo["loop"], with_sysfs=True).read_only
    assert fdcheck.inspect_fd(fd_zoo["opath"], with_sysfs=False).read_only


def test_a_closed_fd_is_an_error() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError):
        fdcheck.inspect_fd(fd, with_sysfs=True)
