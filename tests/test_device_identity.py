"""Device identity from sysfs: every attribute, dm maps, sg devices, and a new disk
behind the same device number never inheriting the old one's identity."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from lab.loopdev import loop_device
from lab.vpd_pages import descriptor, page80, page83
from prguard.shared.audit_record import DeviceIdentity
from prguard.shared.vpd import by_id_names
from prguard.worker.device_identity import DeviceIdentities, read_attribute

NAA6 = bytes.fromhex("6001405aa11b2c3d4e5f60718293a4b5")
SDB = os.makedev(8, 16)
SG1 = os.makedev(21, 1)
DM0 = os.makedev(253, 0)
LOOP = os.makedev(7, 0)
BLOCK, CHAR = stat.S_IFBLK, stat.S_IFCHR


def disk(sys: Path, kind: str, rdev: int, attributes: dict[str, bytes]) -> Path:
    """A device's sysfs directory under devices/, linked from dev/<kind>/M:m as the
    kernel does."""
    name = f"{os.major(rdev)}:{os.minor(rdev)}"
    target = sys / "devices" / f"{kind}-{name}"
    for attribute, value in attributes.items():
        (target / attribute).parent.mkdir(parents=True, exist_ok=True)
        (target / attribute).write_bytes(value)
    link = sys / "dev" / kind / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    return target


LIO = {
    "diskseq": b"12\n",
    "device/vpd_pg83": page83(descriptor(NAA6, 3)),
    "device/vpd_pg80": page80(b"aa11b2c3-d4e5"),
    "device/wwid": b"naa.6001405aa11b2c3d4e5f60718293a4b5\n",
    "device/vendor": b"LIO-ORG \n",
    "device/model": b"disk0           \n",
}
LIO_IDENTITY = DeviceIdentity(
    dev="8:16", diskseq=12, wwn="0x6001405aa11b2c3d4e5f60718293a4b5",
    designator="naa.6001405aa11b2c3d4e5f60718293a4b5", vendor="LIO-ORG", model="disk0",
    serial="aa11b2c3-d4e5")


def test_a_scsi_disk(tmp_path: Path) -> None:
    disk(tmp_path, "block", SDB, LIO)
    assert DeviceIdentities(str(tmp_path)).resolve(BLOCK, SDB) == LIO_IDENTITY


def test_a_multipath_map_is_named_by_its_lu(tmp_path: Path) -> None:
    disk(tmp_path, "block", DM0, {"diskseq": b"40\n", "dm/name": b"mpatha\n",
                                  "dm/uuid": b"mpath-36001405aa11b2c3d4e5f60718293a4b5\n"})
    assert DeviceIdentities(str(tmp_path)).resolve(BLOCK, DM0) == DeviceIdentity(
        dev="253:0", diskseq=40, wwn="0x6001405aa11b2c3d4e5f60718293a4b5", dm_name="mpatha",
        dm_uuid="mpath-36001405aa11b2c3d4e5f60718293a4b5")


def holder(sys: Path, path_rdev: int, name: str, attributes: dict[str, bytes]) -> None:
    """`name` (a dm map) in the disk's holders/, linked as the kernel links it."""
    target = sys / "devices" / "virtual" / "block" / name
    for attribute, value in attributes.items():
        (target / attribute).parent.mkdir(parents=True, exist_ok=True)
        (target / attribute).write_bytes(value)
    holders = sys / "devices" / f"block-{os.major(path_rdev)}:{os.minor(path_rdev)}" / "holders"
    holders.mkdir(parents=True, exist_ok=True)
    (holders / name).symlink_to(target)


MPATHA = {"dm/name": b"mpatha\n", "dm/uuid": b"mpath-36001405aa11b2c3d4e5f60718293a4b5\n"}


def test_a_path_of_a_multipath_map_is_named_by_the_map_too(tmp_path: Path) -> None:
    """With multipath on, a map's commands go down its paths: the records and the
    policy still see the map's name."""
    disk(tmp_path, "block", SDB, LIO)
    identities = DeviceIdentities(str(tmp_path))
    assert identities.resolve(BLOCK, SDB) == LIO_IDENTITY
    holder(tmp_path, SDB, "dm-0", MPATHA)  # the map assembled later: same diskseq
    assert identities.resolve(BLOCK, SDB) == replace(
        LIO_IDENTITY, dm_name="mpatha", dm_uuid="mpath-36001405aa11b2c3d4e5f60718293a4b5")
    assert by_id_names(identities.resolve(BLOCK, SDB).wwn, "mpatha",
                       "mpath-36001405aa11b2c3d4e5f60718293a4b5")[1] == "dm-name-mpatha"


@pytest.mark.parametrize("holders", [
    {"dm-1": {"dm/name": b"vg-lv\n", "dm/uuid": b"LVM-abc\n"}},  # an LVM volume on it
    {"dm-0": MPATHA, "dm-1": {"dm/name": b"mpathb\n", "dm/uuid": b"mpath-3600\n"}},
])
def test_a_disk_held_by_no_single_multipath_map_has_no_map_name(
        tmp_path: Path, holders: dict[str, dict[str, bytes]]) -> None:
    disk(tmp_path, "block", SDB, LIO)
    for name, attributes in holders.items():
        holder(tmp_path, SDB, name, attributes)
    assert DeviceIdentities(str(tmp_path)).resolve(BLOCK, SDB) == LIO_IDENTITY


def test_a_scsi_generic_device(tmp_path: Path) -> None:
    attributes = {k: v for k, v in LIO.items() if k != "diskseq"}
    disk(tmp_path, "char", SG1, attributes)
    identity = DeviceIdentities(str(tmp_path)).resolve(CHAR, SG1)
    assert identity.dev == "21:1" and identity.diskseq is None
    assert identity.wwn == LIO_IDENTITY.wwn


@pytest.mark.parametrize(("mode", "rdev"), [
    (BLOCK, LOOP),  # not in the fake sysfs at all
    (CHAR, os.makedev(1, 3)),  # /dev/null: not a SCSI generic device
    (stat.S_IFREG, 0),
])
def test_devices_without_identity_are_named_by_number(tmp_path: Path, mode: int,
                                                      rdev: int) -> None:
    identity = DeviceIdentities(str(tmp_path)).resolve(mode, rdev)
    assert identity == DeviceIdentity(dev=f"{os.major(rdev)}:{os.minor(rdev)}")


def test_a_new_disk_behind_the_same_number_gets_its_own_identity(tmp_path: Path) -> None:
    identities = DeviceIdentities(str(tmp_path))
    disk(tmp_path, "block", SDB, LIO)
    assert identities.resolve(BLOCK, SDB).wwn == LIO_IDENTITY.wwn
    # hot-unplug, and another LU comes back as 8:16 with a new diskseq
    other = dict(LIO, **{"diskseq": b"13\n",
                         "device/vpd_pg83": page83(descriptor(bytes.fromhex(
                             "6001405bb11b2c3d4e5f60718293a4b5"), 3))})
    disk(tmp_path, "block", SDB, other)
    assert identities.resolve(BLOCK, SDB).wwn == "0x6001405bb11b2c3d4e5f60718293a4b5"
    assert identities.resolve(BLOCK, SDB).diskseq == 13


def test_the_same_disk_is_read_once(tmp_path: Path) -> None:
    identities = DeviceIdentities(str(tmp_path))
    target = disk(tmp_path, "block", SDB, LIO)
    first = identities.resolve(BLOCK, SDB)
    (target / "device/vendor").write_bytes(b"CHANGED\n")  # same diskseq: the cache answers
    assert identities.resolve(BLOCK, SDB) is first


def test_without_diskseq_nothing_is_cached(tmp_path: Path) -> None:
    identities = DeviceIdentities(str(tmp_path))
    attributes = {k: v for k, v in LIO.items() if k != "diskseq"}
    target = disk(tmp_path, "block", SDB, attributes)
    assert identities.resolve(BLOCK, SDB).vendor == "LIO-ORG"
    (target / "device/vendor").write_bytes(b"CHANGED\n")
    assert identities.resolve(BLOCK, SDB).vendor == "CHANGED"


def test_a_real_loop_device_has_its_diskseq() -> None:
    """On this host: loop devices have no SCSI identity, but the kernel's diskseq."""
    with loop_device(1 << 20) as path:
        st = os.stat(path)
        identity = DeviceIdentities().resolve(st.st_mode, st.st_rdev)
        seq = read_attribute(f"/sys/dev/block/{os.major(st.st_rdev)}:"
                             f"{os.minor(st.st_rdev)}/diskseq")
    assert seq is not None and identity.diskseq == int(seq)
    assert identity.wwn is None and identity.vendor is None
