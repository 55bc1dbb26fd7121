"""The SCSI vocabulary: fixed-format sense, CDB fields."""

from __future__ import annotations

import pytest

from prguard.client.session import pr_in_cdb
from prguard.shared.scsi import Sense, SenseCode, transfer_length


def test_sense_fixed_format_matches_scsi_build_sense() -> None:
    sense = Sense.INVALID_FIELD.fixed_format()
    assert len(sense) == 96
    assert sense[:18] == bytes([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])
    assert sense[18:] == bytes(78)
    assert str(Sense.SPACE_ALLOC_FAILED) == "07/27/07"
    with pytest.raises(ValueError):
        SenseCode(0x10, 0, 0)


@pytest.mark.parametrize(("cdb", "length"), [
    (pr_in_cdb(0, 0), 0), (pr_in_cdb(0, 8192), 8192),
    (b"\x5f\0\0\0\0\xff\xff\x00\x18" + bytes(7), 24),  # bytes 5-6 ignored for framing
])
def test_transfer_length_reads_bytes_7_and_8(cdb: bytes, length: int) -> None:
    assert transfer_length(cdb) == length
