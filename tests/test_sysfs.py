"""What sysfs says of a block device, and the decision on it (shared/sysfs.py: the
worker's, and the path opener's on a map): whole disks and whole-LU multipath maps pass;
partitions, every other device-mapper map and devices sysfs does not describe are
refused. Real maps are in the lab
(lab/guest_suite.py, the dm.* cases)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from prguard.shared import sysfs
from prguard.shared.rules import FdKind
from prguard.shared.sysfs import Below, BlockFacts, classify

SIZE = 32768
LU = "naa.6001405c1a0051000000000000000051"  #: the paths' device/wwid
PATH_A = Below("sdb", partition=False, mapped=False, size=SIZE, rdev=os.makedev(8, 16),
               scsi=True, wwid=LU, running=True)
PATH_B = Below("sdc", partition=False, mapped=False, size=SIZE, rdev=os.makedev(8, 32),
               scsi=True, wwid=LU, running=False)  # a path that is down is still a path
WWID = "mpath-36001405c1a0051000000000000000051"


@pytest.mark.parametrize(("name", "facts", "kind"), [
    ("a whole disk", BlockFacts(listed=True), FdKind.BLOCK_DISK),
    ("a partition", BlockFacts(listed=True, partition=True), FdKind.PARTITION),
    ("a device number sysfs does not list", BlockFacts(listed=False), FdKind.UNKNOWN_BLOCK),
    ("a multipath map over two whole paths",
     BlockFacts(True, dm_uuid=WWID, size=SIZE, below=(PATH_A, PATH_B)), FdKind.BLOCK_DISK),
    ("a multipath map over one path",
     BlockFacts(True, dm_uuid=WWID, size=SIZE, below=(PATH_A,)), FdKind.BLOCK_DISK),
    ("an LVM volume", BlockFacts(True, dm_uuid="LVM-abc" + "d" * 60, size=SIZE // 2,
                                 below=(PATH_A,)), FdKind.DM_NOT_MULTIPATH),
    ("an LVM volume over a whole LU",
     BlockFacts(True, dm_uuid="LVM-x", size=SIZE, below=(PATH_A,)), FdKind.DM_NOT_MULTIPATH),
    ("a kpartx partition of a multipath map",
     BlockFacts(True, dm_uuid="part1-" + WWID, size=SIZE // 2,
                below=(Below("dm-0", partition=False, mapped=True, size=SIZE),)),
     FdKind.DM_NOT_MULTIPATH),
    ("a dm-crypt map", BlockFacts(True, dm_uuid="CRYPT-LUKS2-x-y", size=SIZE - 4096,
                                  below=(PATH_A,)), FdKind.DM_NOT_MULTIPATH),
    ("a linear map without a uuid, over the whole LU",
     BlockFacts(True, dm_uuid="", size=SIZE, below=(PATH_A,)), FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid over a partition",
     BlockFacts(True, dm_uuid=WWID, size=SIZE // 2,
                below=(Below("sdb1", partition=True, mapped=False, size=SIZE // 2),)),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid over another map",
     BlockFacts(True, dm_uuid=WWID, size=SIZE // 2,
                below=(Below("dm-1", partition=False, mapped=True, size=SIZE // 2),)),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid, shorter than its path",
     BlockFacts(True, dm_uuid=WWID, size=SIZE // 2, below=(PATH_A,)),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid, one path of another size",
     BlockFacts(True, dm_uuid=WWID, size=SIZE,
                below=(PATH_A, Below("sdd", partition=False, mapped=False, size=SIZE * 2))),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid without paths", BlockFacts(True, dm_uuid=WWID, size=SIZE),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid, a path's size unknown",
     BlockFacts(True, dm_uuid=WWID, size=SIZE,
                below=(Below("sdb", partition=False, mapped=False, size=None),)),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid, its own size unknown",
     BlockFacts(True, dm_uuid=WWID, size=None, below=(PATH_A,)), FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid over a device that is not SCSI (a loop device)",
     BlockFacts(True, dm_uuid=WWID, size=SIZE, below=(replace(PATH_A, scsi=False),)),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid over two LUs",
     BlockFacts(True, dm_uuid=WWID, size=SIZE,
                below=(PATH_A, replace(PATH_B, wwid="naa.6001405ffff")),),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid, its paths' LU unknown",
     BlockFacts(True, dm_uuid=WWID, size=SIZE, below=(replace(PATH_A, wwid=None),)),
     FdKind.DM_NOT_MULTIPATH),
    ("a multipath uuid, a path without a device number",
     BlockFacts(True, dm_uuid=WWID, size=SIZE, below=(replace(PATH_A, rdev=None),)),
     FdKind.DM_NOT_MULTIPATH),
    ("MPATH- is not mpath-", BlockFacts(True, dm_uuid="MPATH-x", size=SIZE, below=(PATH_A,)),
     FdKind.DM_NOT_MULTIPATH),
])
def test_which_block_devices_pass(name: str, facts: BlockFacts, kind: FdKind) -> None:
    assert classify(facts) is kind


def _device(root: Path, where: str, dev: str, size: int, **attributes: str) -> Path:
    """A block device's sysfs directory beneath root/devices, linked from dev/block."""
    directory = root / "devices" / where
    directory.mkdir(parents=True)
    (directory / "dev").write_text(f"{dev}\n")
    (directory / "size").write_text(f"{size}\n")
    for name, text in attributes.items():
        (directory / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (directory / name.replace("__", "/")).write_text(f"{text}\n")
    links = root / "dev" / "block"
    links.mkdir(parents=True, exist_ok=True)
    (links / dev).symlink_to(os.path.relpath(directory, links))
    return directory


def _map(root: Path, name: str, dev: str, size: int, uuid: str, *below: Path) -> int:
    directory = _device(root, f"virtual/block/{name}", dev, size, dm__uuid=uuid,
                        dm__name=name)
    (directory / "slaves").mkdir()
    for device in below:
        (directory / "slaves" / device.name).symlink_to(
            os.path.relpath(device, directory / "slaves"))
    major, minor = dev.split(":")
    return os.makedev(int(major), int(minor))


def test_the_facts_are_gathered_as_sysfs_lays_them_out(tmp_path: Path) -> None:
    """A sysfs tree laid out as the kernel does (maps under devices/virtual/block, their
    slaves/ linking to the disks and partitions under them), read through dev/block."""
    root = tmp_path / "sys"
    host = "platform/host2/target2:0:0/2:0:0:0/block"
    # a disk's device/ is its SCSI device: scsi_device/, wwid, state (a partition has none)
    scsi = {"device__wwid": LU, "device__state": "running",
            "device__scsi_device__2:0:0:0__dev": "0:0"}
    sdb = _device(root, f"{host}/sdb", "8:16", SIZE, **scsi)
    sdb1 = _device(root, f"{host}/sdb/sdb1", "8:17", SIZE // 2, partition="1")
    sdc = _device(root, f"{host}/sdc", "8:32", SIZE, **{**scsi, "device__state": "offline"})
    mpath = _map(root, "dm-0", "253:0", SIZE, WWID, sdb, sdc)
    lvm = _map(root, "dm-1", "253:1", SIZE // 2, "LVM-" + "x" * 64, sdb)
    linear = _map(root, "dm-2", "253:2", SIZE, "", sdb)
    over_part = _map(root, "dm-3", "253:3", SIZE // 2, WWID, sdb1)
    kpartx = _map(root, "dm-4", "253:4", SIZE // 2, "part1-" + WWID,
                  root / "devices/virtual/block/dm-0")
    facts = {rdev: sysfs.facts_of(rdev, str(root))
             for rdev in (mpath, lvm, linear, over_part, kpartx)}
    whole = PATH_A
    assert facts[mpath] == BlockFacts(True, dm_uuid=WWID, size=SIZE, below=(PATH_A, PATH_B))
    assert facts[lvm] == BlockFacts(True, dm_uuid="LVM-" + "x" * 64, size=SIZE // 2,
                                    below=(whole,))
    assert facts[linear] == BlockFacts(True, dm_uuid="", size=SIZE, below=(whole,))
    assert facts[over_part].below == (Below("sdb1", True, False, SIZE // 2,
                                            os.makedev(8, 17)),)
    assert facts[kpartx].below == (Below("dm-0", False, True, SIZE, os.makedev(253, 0)),)
    assert sysfs.facts_of(os.makedev(8, 16), str(root)) == BlockFacts(listed=True)
    assert sysfs.facts_of(os.makedev(8, 17), str(root)) == BlockFacts(True, partition=True)
    assert [sysfs.block_kind(rdev, str(root)) for rdev in facts] == [
        FdKind.BLOCK_DISK, *[FdKind.DM_NOT_MULTIPATH] * 4]


def test_what_sysfs_says_of_a_loop_disk_and_its_partition(
        partitioned: tuple[str, str]) -> None:
    disk, part = partitioned
    assert sysfs.facts_of(os.stat(disk).st_rdev) == BlockFacts(listed=True)
    assert sysfs.facts_of(os.stat(part).st_rdev) == BlockFacts(listed=True, partition=True)
    assert sysfs.facts_of(os.makedev(4095, 1048575)) == BlockFacts(listed=False)
    assert sysfs.block_kind(os.stat(part).st_rdev) is FdKind.PARTITION


def test_an_attribute_that_cannot_be_read_refuses_the_device(
        monkeypatch: pytest.MonkeyPatch, loop_disk: str) -> None:
    """Fail closed: EACCES (say, a Landlock ruleset without sysfs) is not "no such file"."""
    def denied(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(os, "open", denied)
    assert sysfs.block_kind(os.stat(loop_disk).st_rdev) is FdKind.UNKNOWN_BLOCK


def test_the_warm_up_reads_and_lists_beneath_sys_devices() -> None:
    sysfs.warm_up()  # raises if either path is unreadable
    assert sysfs.read(f"{sysfs.SYS_DEVICES}/system/cpu/online")
