"""VPD page 0x83 and 0x80 as udev's scsi_id reads them: the `wwn-` link and the serial."""

from __future__ import annotations

import pytest

from lab.vpd_pages import descriptor, page83
from prguard.shared.vpd import (
    by_id_names,
    designators,
    unit_serial,
    wwn,
    wwn_from_dm_uuid,
)

NAA6 = bytes.fromhex("6001405aa11b2c3d4e5f60718293a4b5")
NAA5 = bytes.fromhex("5001405aa11b2c3d")
EUI64 = bytes.fromhex("0011223344556677")


# What LIO's fileio LU answers: NAA 6 for the LU, T10 vendor id, the target port's
# relative port and SCSI name string (association 1).
LIO = page83(
    descriptor(NAA6, 3),
    descriptor(b"LIO-ORG aa11b2c3-d4e5-f607-1829-3a4b5c6d7e8f", 1, code_set=2),
    descriptor(bytes([0, 0, 0, 1]), 4, association=1, protocol=5, piv=True),
    descriptor(b"naa.50014050000011b0,t,0x0001\0\0\0", 8, association=1, code_set=3,
               protocol=5, piv=True),
)


@pytest.mark.parametrize(("page", "expected"), [
    (LIO, "0x6001405aa11b2c3d4e5f60718293a4b5"),
    (page83(descriptor(NAA5, 3)), "0x5001405aa11b2c3d"),
    # IEEE Registered Extended is preferred wherever it is in the page
    (page83(descriptor(NAA5, 3), descriptor(NAA6, 3)), "0x6001405aa11b2c3d4e5f60718293a4b5"),
    # ... and binary over ASCII of the same NAA type
    (page83(descriptor(b"6001405ffffffffffff", 3, code_set=2), descriptor(NAA6, 3)),
     "0x6001405aa11b2c3d4e5f60718293a4b5"),
    (page83(descriptor(b"6001405ffffffffffff", 3, code_set=2)), "0x6001405ffffffffffff"),
    # a target port's NAA does not name the LU
    (page83(descriptor(NAA6, 3, association=1)), None),
    (page83(descriptor(NAA6, 3, association=1), descriptor(NAA5, 3)), "0x5001405aa11b2c3d"),
    # EUI-64 and T10 give a serial but no wwn- link
    (page83(descriptor(EUI64, 2)), None),
    (page83(descriptor(b"LIO-ORG x", 1, code_set=2)), None),
    # NAA of another type (2: IEEE extended) is taken when no 5 or 6 exists
    (page83(descriptor(bytes.fromhex("2000001122334455"), 3)), "0x2000001122334455"),
    # an old SCSI-2 format page (byte 6 not zero) yields no WWN
    (bytes([0, 0x83, 0, 16]) + bytes([0x01, 0x03, 0x60, 0x10]) + NAA6[:12], None),
    # not page 0x83, empty, cut short
    (bytes([0, 0x80, 0, 0]), None),
    (b"", None),
    (LIO[:10], None),
])
def test_wwn_as_udev_spells_it(page: bytes, expected: str | None) -> None:
    assert wwn(page) == expected


def test_only_the_first_254_bytes_count() -> None:
    filler = descriptor(b"x" * 240, 1, code_set=2)
    assert wwn(page83(filler, descriptor(NAA6, 3))) is None
    assert wwn(page83(descriptor(NAA6, 3), filler)) == "0x6001405aa11b2c3d4e5f60718293a4b5"


def test_designators_stop_at_a_descriptor_the_page_cuts() -> None:
    page = page83(descriptor(NAA5, 3), descriptor(NAA6, 3))
    cut = page[:-3]
    assert [d.value for d in designators(cut)] == [NAA5]
    assert [(d.type, d.association, d.code_set) for d in designators(LIO)] == [
        (3, 0, 1), (1, 0, 2), (4, 1, 1), (8, 1, 3)]


@pytest.mark.parametrize(("page", "expected"), [
    (bytes([0, 0x80, 0, 12]) + b"  SER1234   ", "SER1234"),
    (bytes([0, 0x80, 0, 4]) + b"abcdef", "abcd"),
    (bytes([0, 0x80, 0, 0]), None),
    (bytes([0, 0x83, 0, 4]) + b"abcd", None),
    (b"\0\x80", None),
])
def test_unit_serial(page: bytes, expected: str | None) -> None:
    assert unit_serial(page) == expected


@pytest.mark.parametrize(("uuid", "expected"), [
    ("mpath-36001405aa11b2c3d4e5f60718293a4b5", "0x6001405aa11b2c3d4e5f60718293a4b5"),
    ("mpath-35001405aa11b2c3d", "0x5001405aa11b2c3d"),
    ("mpath-2001122334455", None),  # EUI-64: no wwn- link
    ("LVM-abc", None),
    ("mpath-3", None),
    ("mpath-3XYZ", None),
])
def test_wwn_of_a_multipath_map(uuid: str, expected: str | None) -> None:
    assert wwn_from_dm_uuid(uuid) == expected


def test_by_id_names() -> None:
    assert by_id_names("0x6001", "mpatha", "mpath-36001") == [
        "wwn-0x6001", "dm-name-mpatha", "dm-uuid-mpath-36001"]
    assert by_id_names(None, None, None) == []
