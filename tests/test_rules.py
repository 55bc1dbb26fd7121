"""The request rules both processes apply."""

from __future__ import annotations

import os

import pytest

from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.rules import FdFacts, FdKind, check_framing, check_request, read_only
from prguard.shared.scsi import Sense, SenseCode, Status

DISK = FdFacts(FdKind.BLOCK_DISK, read_only=False)
DISK_RO = FdFacts(FdKind.BLOCK_DISK, read_only=True)
SG = FdFacts(FdKind.SCSI_GENERIC, read_only=False)


@pytest.mark.parametrize(("cdb", "data_len", "ok"), [
    (pr_in_cdb(0, 24), 0, True),
    (pr_in_cdb(0, 24), 24, False),  # PR IN carries no data to the device
    (pr_out_cdb(0, 24), 24, True),
    (pr_out_cdb(0, 24), 23, False),
    (pr_in_cdb(0, 8193), 0, False),
    (b"\x2a" + bytes(15), 0, False),
    (pr_in_cdb()[:10], 0, False),
])
def test_framing_checks(cdb: bytes, data_len: int, ok: bool) -> None:
    assert (check_framing(cdb, data_len) is None) == ok


@pytest.mark.parametrize(("cdb", "facts", "expected"), [
    (pr_in_cdb(0), DISK, None),
    (pr_in_cdb(3), SG, None),
    (pr_out_cdb(8), DISK, None),
    (pr_in_cdb(0), DISK_RO, None),
    (pr_out_cdb(0), DISK_RO, Sense.INVALID_OPCODE),
    # read-only is checked before the fd kind, as the C helper does
    (pr_out_cdb(0), FdFacts(FdKind.OTHER, read_only=True), Sense.INVALID_OPCODE),
    (pr_in_cdb(0), FdFacts(FdKind.OTHER, read_only=False), Sense.IO_ERROR),
    (pr_in_cdb(0), FdFacts(FdKind.PARTITION, read_only=False), Sense.IO_ERROR),
    (pr_out_cdb(0), FdFacts(FdKind.DM_NOT_MULTIPATH, read_only=False), Sense.IO_ERROR),
    (pr_in_cdb(4), DISK, Sense.INVALID_FIELD),
    (pr_out_cdb(9), DISK, Sense.INVALID_FIELD),
    (pr_in_cdb(4), FdFacts(FdKind.OTHER, read_only=False), Sense.IO_ERROR),
    (b"\x5f\0\0\0\0\x00\x01\x00\x18" + bytes(7), DISK, Sense.INVALID_FIELD),
])
def test_check_request(cdb: bytes, facts: FdFacts, expected: SenseCode | None) -> None:
    verdict = check_request(cdb, facts)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert verdict.status == Status.CHECK_CONDITION
        assert verdict.sense == expected


def test_read_only_covers_o_path() -> None:
    assert read_only(os.O_RDONLY)
    assert read_only(os.O_PATH | os.O_RDWR)
    assert not read_only(os.O_RDWR)
    assert not read_only(os.O_WRONLY)
