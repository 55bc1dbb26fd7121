"""What sysfs says about a device-mapper map: is it a dm-multipath map prguard may fan out
over, and what are its paths?

A map is served by translation only if its dm uuid starts with `mpath-` (as
multipath(8) names its maps) and every one of its slaves is a whole disk (no `partition`
attribute), a SCSI disk (`device/scsi_device/` exists), not itself a device-mapper map,
and the same LU as the others (`device/wwid`). The uuid alone is not enough: a
bio-based map with an `mpath-` uuid over a partition, or a linear map over half a LU,
both reach the whole LU through its paths.

Everything is read by path beneath `root` (/sys) with open(2), read(2) and getdents64(2):
an attribute is opened read-only, a directory with the flags opendir(3) uses, and nothing
is stat()ed. The path opener is the only process that reads these (its seccomp policy
allows exactly those open flags, its Landlock domain reading beneath /sys only).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from prguard.shared import dirents

#: Flags of every attribute read (seccomp/opener.policy names them).
ATTRIBUTE_FLAGS = os.O_RDONLY | os.O_CLOEXEC
#: Flags glibc's opendir uses, for listing `slaves/` and testing a directory's presence.
DIRECTORY_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_DIRECTORY
MULTIPATH_UUID_PREFIX = "mpath-"
ATTRIBUTE_SIZE = 4096


class MapProblem(Exception):
    """The device is not a map prguard serves; the message says why, in one line."""


class NotDeviceMapper(MapProblem):
    """Certainly not a device-mapper map: sysfs describes the device, with no dm/."""


@dataclass(frozen=True)
class Slave:
    """One path of a map, as sysfs describes it."""

    name: str  #: the kernel's name (sdb): the node under /dev
    rdev: int
    running: bool  #: its SCSI device's state is "running"


@dataclass(frozen=True)
class MapInfo:
    uuid: str
    slaves: tuple[Slave, ...]  #: in device-number order


def _block_dir(rdev: int, root: str) -> str:
    return f"{root}/dev/block/{os.major(rdev)}:{os.minor(rdev)}"


def read_attribute(path: str) -> str | None:
    """The attribute's text without its trailing newline; None if it does not exist.
    OSError for anything else (unreadable: the caller refuses)."""
    try:
        fd = os.open(path, ATTRIBUTE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    try:
        return os.read(fd, ATTRIBUTE_SIZE).decode("utf-8", "replace").rstrip("\n")
    finally:
        os.close(fd)


def _exists(path: str, directory: bool = False) -> bool:
    try:
        fd = os.open(path, DIRECTORY_FLAGS if directory else ATTRIBUTE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    os.close(fd)
    return True


def list_directory(path: str) -> list[str]:
    """Entry names of a directory, read with getdents64 from an fd opened as opendir
    would (os.listdir also fstat()s it, by a call that can name any path)."""
    fd = os.open(path, DIRECTORY_FLAGS)
    try:
        return [name for name, _ in dirents.entries(fd)]
    finally:
        os.close(fd)


def _parse_dev(text: str) -> int:
    major, _, minor = text.partition(":")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(text)
    return os.makedev(int(major), int(minor))


def uuid_of(rdev: int, root: str = "/sys") -> str | None:
    """The dm uuid of a block device number; None if it is not a device-mapper map."""
    return read_attribute(f"{_block_dir(rdev, root)}/dm/uuid")


def read_map(rdev: int, root: str = "/sys") -> MapInfo:
    """The map behind `rdev` with its paths, or MapProblem saying why it is not served."""
    name = f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        return _read_map(rdev, name, root)
    except OSError as exc:
        raise MapProblem(f"{name}: cannot read sysfs ({exc.strerror})") from None


def _read_map(rdev: int, name: str, root: str) -> MapInfo:
    base = _block_dir(rdev, root)
    uuid = read_attribute(f"{base}/dm/uuid")
    if uuid is None:
        if read_attribute(f"{base}/dev") is None:
            raise MapProblem(f"{name}: no such block device in sysfs")
        raise NotDeviceMapper(f"{name} is not a device-mapper map")
    if not uuid.startswith(MULTIPATH_UUID_PREFIX):
        raise MapProblem(f"{name} is a device-mapper map but not a multipath one "
                         f"(uuid {uuid[:60]!r})")
    names = sorted(list_directory(f"{base}/slaves"))
    if not names:
        raise MapProblem(f"{name} ({uuid}) has no paths")
    slaves: list[Slave] = []
    wwids: set[str] = set()
    for slave in names:
        where = f"{base}/slaves/{slave}"
        dev = read_attribute(f"{where}/dev")
        if dev is None:
            raise MapProblem(f"{name}: path {slave} has no device number")
        try:
            slave_rdev = _parse_dev(dev)
        except ValueError:
            raise MapProblem(f"{name}: path {slave} has a malformed dev {dev!r}") from None
        if _exists(f"{where}/partition"):
            raise MapProblem(f"{name} ({uuid}): path {slave} is a partition, not a whole "
                             "disk")
        if _exists(f"{where}/dm/uuid"):
            raise MapProblem(f"{name} ({uuid}): path {slave} is itself a device-mapper map")
        if not _exists(f"{where}/device/scsi_device", directory=True):
            raise MapProblem(f"{name} ({uuid}): path {slave} is not a SCSI disk")
        wwids.add(read_attribute(f"{where}/device/wwid") or "")
        state = read_attribute(f"{where}/device/state")
        slaves.append(Slave(slave, slave_rdev, state == "running"))
    if len(wwids) != 1 or "" in wwids:
        raise MapProblem(f"{name} ({uuid}): its paths are not one LU (device/wwid differs "
                         "or is missing)")
    slaves.sort(key=lambda s: (os.major(s.rdev), os.minor(s.rdev)))
    return MapInfo(uuid, tuple(slaves))
