"""What sysfs says about a block device number: a whole disk, a partition, or a
device-mapper map, and which kind of map?

With CAP_SYS_RAWIO, SG_IO on a partition, or on a device-mapper map over part of a LU,
reaches the whole LU (the kernel checks the range only for callers without it, and the
worker holds it). So the worker lets through only whole disks and multipath maps:

- a partition (a `partition` attribute) is refused;
- a device-mapper map (a `dm/` directory) is accepted only when its dm uuid starts with
  `mpath-` (as multipath-tools names its maps), it has at least one device under it,
  and each of those is a whole disk, no map itself, of the map's size. Every other map
  (LVM's `LVM-`, kpartx's `part<N>-`, cryptsetup's `CRYPT-`, a map without a uuid, an
  `mpath-` map over a partition or another map, or smaller than its paths) is refused
  like a partition. So is a linear map over a whole LU, although the kernel would pass
  SG_IO through it: which target a map uses and where it starts in its device is not in
  sysfs (only in its table, which DM_TABLE_STATUS reads with CAP_SYS_ADMIN), and a table
  can be replaced under an open fd; the uuid says who made the map, and only
  multipath-tools makes maps that stand for one whole LU;
- a device sysfs does not list (no `dev` attribute: no such device here, or /sys not
  mounted), or an attribute that cannot be read for any reason other than its absence,
  is refused too (fail closed).

A multipath map's paths must also be SCSI disks (`device/scsi_device/`: a map over a loop
device is refused) reaching one LU (the same `device/wwid`). This is the one place that
decides what a device-mapper map is: the worker asks `block_kind` before any SG_IO, the
path opener asks `multipath_map` (the same facts and the same decision, with the reason
and the paths) before opening any path.

The API: `facts_of(rdev)` gathers the facts (`BlockFacts`) from sysfs, `classify(facts)`
decides on them (pure), `block_kind(rdev)` is both, failing closed; `multipath_map(rdev)`
is the map with its paths, or `MapProblem` saying why it is not served;
`multipath_holder(rdev)` names the multipath map a disk is a path of (device identity).
Paths are /sys/dev/block/<major>:<minor>/..., which link into /sys/devices. The worker
reads them with openat (read-only flags only), pread64 and getdents64, confined by
Landlock to reading beneath /sys/devices; the path opener with the same calls, beneath
/sys; the broker reads no file after its lock-down, so it leaves this decision to them.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from prguard.shared import dirents
from prguard.shared.rules import FdKind

SYS = "/sys"
#: Where every block device's sysfs directory lives; the worker's Landlock rule.
SYS_DEVICES = f"{SYS}/devices"
#: What multipath-tools puts first in the dm uuid of its maps.
MULTIPATH_UUID_PREFIX = "mpath-"
#: DM_UUID_LEN is 129 with its NUL; a sysfs attribute is at most a page.
READ_SIZE = 4096


class SysfsError(OSError):
    """An attribute exists but could not be read."""


@dataclass(frozen=True)
class Below:
    """A device a map is made of (its `slaves/` entry)."""

    name: str
    partition: bool
    mapped: bool  #: a device-mapper map itself
    size: int | None  #: in 512-byte sectors
    rdev: int | None = None  #: its `dev`; None when missing or malformed
    scsi: bool = False  #: a SCSI device (`device/scsi_device/`)
    wwid: str | None = None  #: `device/wwid`: the LU it reaches
    running: bool = False  #: its SCSI device's state is `running` (a fact, not a criterion)


@dataclass(frozen=True)
class BlockFacts:
    """What sysfs says of one block device number (`classify` decides on it)."""

    listed: bool  #: sysfs has the device number
    partition: bool = False
    dm_uuid: str | None = None  #: None: not a device-mapper map
    size: int | None = None
    below: tuple[Below, ...] = ()


def classify(facts: BlockFacts) -> FdKind:
    """The kind of a block device, from what sysfs says of it."""
    if not facts.listed:
        return FdKind.UNKNOWN_BLOCK
    if facts.partition:
        return FdKind.PARTITION
    if facts.dm_uuid is None:
        return FdKind.BLOCK_DISK
    return FdKind.BLOCK_DISK if map_problem(facts) is None else FdKind.DM_NOT_MULTIPATH


def map_problem(facts: BlockFacts, name: str = "the map") -> str | None:
    """Why a device-mapper map (`facts.dm_uuid` set) is not a multipath map standing for
    one whole LU, in one line; None when it is one."""
    uuid = facts.dm_uuid or ""
    if not uuid.startswith(MULTIPATH_UUID_PREFIX):
        return f"{name} is a device-mapper map but not a multipath one (uuid {uuid[:60]!r})"
    if not facts.below:
        return f"{name} ({uuid}) has no paths"
    if not facts.size:
        return f"{name} ({uuid}): its size is unknown"
    for path in facts.below:
        if path.rdev is None:
            return f"{name} ({uuid}): path {path.name} has no device number"
        if path.partition:
            return f"{name} ({uuid}): path {path.name} is a partition, not a whole disk"
        if path.mapped:
            return f"{name} ({uuid}): path {path.name} is itself a device-mapper map"
        if not path.scsi:
            return f"{name} ({uuid}): path {path.name} is not a SCSI disk"
        if path.size != facts.size:
            return f"{name} ({uuid}): path {path.name} is not of the map's size"
    if len({path.wwid for path in facts.below}) != 1 or not facts.below[0].wwid:
        return (f"{name} ({uuid}): its paths are not one LU (device/wwid differs or is "
                "missing)")
    return None


def _path(rdev: int, attribute: str, root: str) -> str:
    return f"{root}/dev/block/{os.major(rdev)}:{os.minor(rdev)}/{attribute}"


def _open(path: str, flags: int = 0) -> int | None:
    """An fd, or None when there is no such file."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise SysfsError(exc.errno, f"{path}: {exc.strerror}") from None


def exists(path: str, directory: bool = False) -> bool:
    fd = _open(path, os.O_DIRECTORY if directory else 0)
    if fd is None:
        return False
    os.close(fd)
    return True


def read(path: str) -> str | None:
    """An attribute's text without its newline, or None when there is no such file."""
    fd = _open(path)
    if fd is None:
        return None
    try:
        return os.pread(fd, READ_SIZE, 0).decode("utf-8", "replace").rstrip("\n")
    except OSError as exc:
        raise SysfsError(exc.errno, f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _size(path: str) -> int | None:
    text = read(path)
    return int(text) if text is not None and text.isdigit() else None


def _below(rdev: int, root: str) -> tuple[Below, ...]:
    directory = _path(rdev, "slaves", root)
    fd = _open(directory, os.O_DIRECTORY)
    if fd is None:
        return ()
    try:
        names = sorted(name for name, _ in dirents.entries(fd))
    except OSError as exc:
        raise SysfsError(exc.errno, f"{directory}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return tuple(_path_below(f"{directory}/{name}", name) for name in names)


def _path_below(where: str, name: str) -> Below:
    return Below(name, exists(f"{where}/partition"), exists(f"{where}/dm/uuid"),
                 _size(f"{where}/size"), _dev(read(f"{where}/dev")),
                 exists(f"{where}/device/scsi_device", directory=True),
                 read(f"{where}/device/wwid"), read(f"{where}/device/state") == "running")


def _dev(text: str | None) -> int | None:
    major, _, minor = (text or "").partition(":")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return os.makedev(int(major), int(minor))


def multipath_holder(rdev: int, root: str = SYS) -> tuple[str, str] | None:
    """The dm name and uuid of the multipath map whose path block device `rdev` is (the
    one entry of its `holders/` whose dm uuid starts with `mpath-`); None when it is a
    path of no such map. What the audit and the policy call the device when multipath
    sends a map's command down one of its paths. Raises SysfsError."""
    directory = _path(rdev, "holders", root)
    fd = _open(directory, os.O_DIRECTORY)
    if fd is None:
        return None
    try:
        names = sorted(name for name, _ in dirents.entries(fd))
    except OSError as exc:
        raise SysfsError(exc.errno, f"{directory}: {exc.strerror}") from None
    finally:
        os.close(fd)
    maps = []
    for name in names:
        uuid = read(f"{directory}/{name}/dm/uuid")
        if uuid is not None and uuid.startswith(MULTIPATH_UUID_PREFIX):
            maps.append((read(f"{directory}/{name}/dm/name") or name, uuid))
    return maps[0] if len(maps) == 1 else None


def facts_of(rdev: int, root: str = SYS) -> BlockFacts:
    """What sysfs (mounted at `root`) says of block device `rdev`. Raises SysfsError."""
    if not exists(_path(rdev, "dev", root)):
        return BlockFacts(listed=False)
    if exists(_path(rdev, "partition", root)):
        return BlockFacts(listed=True, partition=True)
    uuid = read(_path(rdev, "dm/uuid", root))
    if uuid is None:
        return BlockFacts(listed=True)
    return BlockFacts(listed=True, dm_uuid=uuid, size=_size(_path(rdev, "size", root)),
                      below=_below(rdev, root))


def block_kind(rdev: int, root: str = SYS) -> FdKind:
    """The kind of a block device; one that cannot be looked up is refused."""
    try:
        return classify(facts_of(rdev, root))
    except SysfsError:
        return FdKind.UNKNOWN_BLOCK


class MapProblem(Exception):
    """The device is not a map prguard serves; the message says why, in one line."""


class NotDeviceMapper(MapProblem):
    """Certainly not a device-mapper map: sysfs describes the device, with no dm/."""


@dataclass(frozen=True)
class Slave:
    """One path of a multipath map, as the path opener needs it."""

    name: str  #: the kernel's name (sdb): the node under /dev
    rdev: int
    running: bool  #: its SCSI device's state is "running"


@dataclass(frozen=True)
class MapInfo:
    uuid: str
    slaves: tuple[Slave, ...]  #: in device-number order


def multipath_map(rdev: int, root: str = SYS) -> MapInfo:
    """The multipath map `rdev` with its paths, or MapProblem saying why it is not served
    (NotDeviceMapper when sysfs lists it with no dm/)."""
    name = f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        facts = facts_of(rdev, root)
    except OSError as exc:
        raise MapProblem(f"{name}: cannot read sysfs ({exc.strerror})") from None
    if not facts.listed:
        raise MapProblem(f"{name}: no such block device in sysfs")
    if facts.dm_uuid is None:
        raise NotDeviceMapper(f"{name} is not a device-mapper map")
    problem = map_problem(facts, name)
    if problem is not None:
        raise MapProblem(problem)
    slaves = [Slave(path.name, path.rdev, path.running) for path in facts.below
              if path.rdev is not None]
    slaves.sort(key=lambda s: (os.major(s.rdev), os.minor(s.rdev)))
    return MapInfo(facts.dm_uuid, tuple(slaves))


def warm_up() -> None:
    """Take every code path once (reading an attribute, listing a directory) before the
    process is confined: on files every system has beneath /sys/devices."""
    read(f"{SYS_DEVICES}/system/cpu/online")
    fd = _open(f"{SYS_DEVICES}/system/cpu", os.O_DIRECTORY)
    if fd is not None:
        try:
            list(dirents.entries(fd))
        finally:
            os.close(fd)
    block_kind(os.makedev(7, 0))
