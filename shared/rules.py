"""The request rules: what prguard lets through to SG_IO, as pure functions over a CDB
and facts about an fd.

Both processes run the same checks: the broker to answer early, the worker because it
trusts nobody. The order reproduces the C helper's answers wherever it has one:

1. PR OUT on an fd opened read-only: CHECK CONDITION 05/20/00 (qemu-pr-helper's
   do_pr_out check, made before anything else);
2. an fd that is not a whole SCSI-capable device (regular file, pipe, socket, other
   character device, O_PATH fd, a partition, a device-mapper map that is not a whole-LU
   multipath map): CHECK CONDITION 0b/00/06, the answer the C helper gives when SG_IO
   fails with ENOTTY on such fds. A partition or such a map is refused as well: with
   CAP_SYS_RAWIO the kernel would pass SG_IO on either through to the whole LUN;
3. an undefined service action: CHECK CONDITION 05/24/00 (what a device answers);
4. a PR OUT CDB whose parameter list length has bits in bytes 5-6 (SPC's BE32), which the
   framing ignores and the device would not: 05/24/00.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import NamedTuple

from prguard.shared.scsi import (
    CDB_SIZE,
    DATA_SIZE,
    Opcode,
    PrInAction,
    PrOutAction,
    Sense,
    SenseCode,
    Status,
    parameter_list_length_high,
    service_action,
    transfer_length,
)


class FdKind(enum.Enum):
    BLOCK_DISK = "block device"  #: a whole-disk block device (sd, dm, loop, ...)
    SCSI_GENERIC = "sg device"  #: /dev/sgN, character major 21
    PARTITION = "partition"
    #: a block device sysfs does not describe (not there, or unreadable): refused
    UNKNOWN_BLOCK = "block device sysfs does not describe"
    #: LVM, kpartx, dm-crypt, linear, ...: with CAP_SYS_RAWIO, SG_IO on such a map can
    #: reach the whole LU under it (shared/sysfs.py)
    DM_NOT_MULTIPATH = "device-mapper map that is not a whole-LU multipath map"
    OTHER = "not a SCSI device"


class FdFacts(NamedTuple):
    """What fstat/fcntl say about a received fd (a tuple: built on every request)."""

    kind: FdKind
    read_only: bool
    rdev: int = 0  #: device number, for per-device scheduling (0 if not a device)

    @property
    def forwardable(self) -> bool:
        return self.kind in (FdKind.BLOCK_DISK, FdKind.SCSI_GENERIC)


@dataclass(frozen=True)
class Verdict:
    """A request answered without touching the device."""

    status: Status
    sense: SenseCode
    reason: str

    @property
    def sense_bytes(self) -> bytes:
        return self.sense.fixed_format()


_PR_IN_ACTIONS = frozenset(int(a) for a in PrInAction)
_PR_OUT_ACTIONS = frozenset(int(a) for a in PrOutAction)


def check_framing(cdb: bytes, data_length: int) -> str | None:
    """Shape checks the QEMU framing already guarantees; the worker repeats them.

    Returns the reason a request is malformed, or None.
    """
    if len(cdb) != CDB_SIZE:
        return "CDB is not 16 bytes"
    if cdb[0] not in (Opcode.PERSISTENT_RESERVE_IN, Opcode.PERSISTENT_RESERVE_OUT):
        return f"opcode {cdb[0]:#04x} is not PERSISTENT RESERVE IN/OUT"
    if transfer_length(cdb) > DATA_SIZE:
        return "transfer length over 8192"
    expected = transfer_length(cdb) if cdb[0] == Opcode.PERSISTENT_RESERVE_OUT else 0
    if data_length != expected:
        return f"{data_length} data bytes where the CDB says {expected}"
    return None


def check_request(cdb: bytes, fd: FdFacts) -> Verdict | None:
    """The answer to give without SG_IO, or None if the request may go to the device.

    Requires a CDB that passed check_framing.
    """
    pr_out = cdb[0] == Opcode.PERSISTENT_RESERVE_OUT
    if pr_out and fd.read_only:
        return Verdict(Status.CHECK_CONDITION, Sense.INVALID_OPCODE,
                       "PR OUT on a read-only fd")
    if not fd.forwardable:
        return Verdict(Status.CHECK_CONDITION, Sense.IO_ERROR, f"fd is {fd.kind.value}")
    action = service_action(cdb)
    if action not in (_PR_OUT_ACTIONS if pr_out else _PR_IN_ACTIONS):
        return Verdict(Status.CHECK_CONDITION, Sense.INVALID_FIELD,
                       f"undefined service action {action:#04x}")
    if pr_out and parameter_list_length_high(cdb):
        return Verdict(Status.CHECK_CONDITION, Sense.INVALID_FIELD,
                       "parameter list length over 65535")
    return None


def read_only(status_flags: int) -> bool:
    """From fcntl(F_GETFL): opened O_RDONLY, or an O_PATH fd (no I/O at all)."""
    return (status_flags & os.O_ACCMODE) == os.O_RDONLY or bool(status_flags & os.O_PATH)
