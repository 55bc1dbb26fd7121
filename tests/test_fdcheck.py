"""Facts about received fds, and the broker's memo of whole disks."""

from __future__ import annotations

import os

from prguard.shared import fdcheck
from prguard.shared.rules import FdKind


def test_the_memo_remembers_whole_disks_only(fd_zoo: dict[str, int]) -> None:
    sysfs = fdcheck.open_sysfs_block()
    try:
        memo = fdcheck.WholeDisks()
        disk = os.fstat(fd_zoo["loop"]).st_rdev
        part = os.fstat(fd_zoo["part"]).st_rdev
        assert fdcheck.inspect_fd(fd_zoo["loop"], sysfs, memo).kind is FdKind.BLOCK_DISK
        assert fdcheck.inspect_fd(fd_zoo["part"], sysfs, memo).kind is FdKind.PARTITION
        assert disk in memo and part not in memo  # a partition is checked every time
        assert fdcheck.inspect_fd(fd_zoo["part"], sysfs, memo).kind is FdKind.PARTITION
        # Without a memo (the worker) nothing is remembered: the answer is always fresh.
        assert fdcheck.inspect_fd(fd_zoo["part"], sysfs).kind is FdKind.PARTITION
        # A memo can only be wrong towards forwarding: a device number remembered as a
        # whole disk counts as one (the worker, checking fresh, still refuses it).
        memo.add(part)
        assert fdcheck.inspect_fd(fd_zoo["part"], sysfs, memo).kind is FdKind.BLOCK_DISK
        assert fdcheck.inspect_fd(fd_zoo["part"], sysfs).kind is FdKind.PARTITION
    finally:
        os.close(sysfs)


def test_the_memo_is_bounded() -> None:
    memo = fdcheck.WholeDisks()
    for rdev in range(fdcheck.WholeDisks.LIMIT):
        memo.add(rdev)
    assert 0 in memo
    memo.add(fdcheck.WholeDisks.LIMIT)
    assert 0 not in memo and fdcheck.WholeDisks.LIMIT in memo
