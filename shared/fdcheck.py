"""Facts about a received fd, from fcntl(F_GETFL) and fstat, never from a path.

The one piece of filesystem access is whether a block device is a partition, answered by
`<major>:<minor>/partition` under /sys/dev/block, looked up relative to a directory fd the
process opened before it locked itself down. That lookup costs more than the rest of the
request's checks together; a caller whose answer is not the last word (the broker: the
worker checks again, fresh, before any SG_IO) may pass a `WholeDisks` memo, which skips
it for device numbers already seen to be whole disks. A memo can only be wrong towards
forwarding (a device number that has since become a partition's), never towards
refusing a whole disk.
"""

from __future__ import annotations

import fcntl
import os
import stat

from prguard.shared.rules import FdFacts, FdKind, read_only

SYS_DEV_BLOCK = "/sys/dev/block"
#: Character major of the SCSI generic driver (Documentation/admin-guide/devices.txt).
SCSI_GENERIC_MAJOR = 21


def open_sysfs_block() -> int:
    """A directory fd of /sys/dev/block for later partition checks."""
    return os.open(SYS_DEV_BLOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def is_partition(rdev: int, sysfs_block_fd: int) -> bool:
    name = f"{os.major(rdev)}:{os.minor(rdev)}/partition"
    try:
        os.stat(name, dir_fd=sysfs_block_fd)
    except FileNotFoundError:
        return False
    return True


class WholeDisks:
    """Device numbers seen to be whole disks (bounded: forgotten all at once when full)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def __contains__(self, rdev: int) -> bool:
        return rdev in self._seen

    def add(self, rdev: int) -> None:
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen.add(rdev)


def inspect_fd(fd: int, sysfs_block_fd: int, whole_disks: WholeDisks | None = None) -> FdFacts:
    """Classify `fd`. OSError from fcntl/fstat propagates (a bad fd is the caller's bug)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    st = os.fstat(fd)
    if flags & os.O_PATH:
        kind = FdKind.OTHER
    elif stat.S_ISBLK(st.st_mode):
        if whole_disks is not None and st.st_rdev in whole_disks:
            kind = FdKind.BLOCK_DISK
        elif is_partition(st.st_rdev, sysfs_block_fd):
            kind = FdKind.PARTITION
        else:
            kind = FdKind.BLOCK_DISK
            if whole_disks is not None:
                whole_disks.add(st.st_rdev)
    elif stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == SCSI_GENERIC_MAJOR:
        kind = FdKind.SCSI_GENERIC
    else:
        kind = FdKind.OTHER
    return FdFacts(kind, read_only(flags), st.st_rdev)
