"""Which device an fd refers to, for the audit and the policy: resolved by the worker
from the fd's device number and sysfs, never from anything the broker says.

- A block device: `/sys/dev/block/M:m/`: its `diskseq`, and for a SCSI disk
  `device/vpd_pg83` (the `wwn-` name, shared/vpd.py), `device/vpd_pg80` (serial),
  `device/wwid` (the kernel's preferred designator), `device/vendor`, `device/model`;
  for a device-mapper map `dm/name`, `dm/uuid` (and the WWN of a multipath map's LU);
  for a path of a multipath map (where prguard sends a map's commands with multipath
  on), the map's `dm/name` and `dm/uuid` (shared/sysfs.py `multipath_holder`), so that
  the records and the policy name the map whichever way the command went.
- A SCSI generic device (`/dev/sgN`): `/sys/dev/char/21:N/device/...`, the same
  attributes.

Identities are cached by (device number, diskseq): the kernel gives every disk it
creates a new diskseq, so a different LU that reappears behind the same device number
after a hot-unplug gets a fresh lookup and never the old identity. diskseq is read
again for every request (one small sysfs read), before and after the attributes, so an
identity is never assembled from two disks. A device without diskseq (sg devices, old
kernels) is looked up every time.

What remains: sysfs describes the device now behind the number, not the fd's. An fd
opened on a disk that has since gone away and been replaced at the same number would be
named after the new disk; SG_IO on such an fd fails (the old disk is gone), so no
command reaches either disk under the wrong name.

The worker reads sysfs with openat (read-only) and pread, which its Landlock rules allow
beneath /sys/devices only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace

from prguard.shared import sysfs, vpd
from prguard.shared.audit_record import DeviceIdentity

SYS = "/sys"
SCSI_GENERIC_MAJOR = 21
#: Largest attribute read (a VPD page is at most this long in sysfs).
ATTRIBUTE_SIZE = 4096
#: Identities kept; a host rarely has more LUs than this, and a miss only costs a lookup.
CACHE_SIZE = 4096


def read_attribute(path: str) -> bytes | None:
    """A sysfs attribute's bytes, None if it does not exist or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, ATTRIBUTE_SIZE, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    text = raw.decode("ascii", "replace").strip()
    return text or None


def _number(raw: bytes | None) -> int | None:
    text = _text(raw)
    return int(text) if text is not None and text.isdigit() else None


class DeviceIdentities:
    """Resolves device numbers to identities, with the cache described above."""

    def __init__(self, sys: str = SYS) -> None:
        self._sys = sys
        self._cache: dict[tuple[int, int], DeviceIdentity] = {}

    def _base(self, mode: int, rdev: int) -> str | None:
        if stat.S_ISBLK(mode):
            kind = "block"
        elif stat.S_ISCHR(mode) and os.major(rdev) == SCSI_GENERIC_MAJOR:
            kind = "char"
        else:
            return None
        return f"{self._sys}/dev/{kind}/{os.major(rdev)}:{os.minor(rdev)}"

    def resolve(self, mode: int, rdev: int) -> DeviceIdentity:
        """The identity of the device with this st_mode and st_rdev."""
        identity = self._resolve(mode, rdev)
        if stat.S_ISBLK(mode) and identity.dm_uuid is None:
            # Read every time: a map can be assembled over a disk, or taken down, without
            # the disk's diskseq changing.
            try:
                holder = sysfs.multipath_holder(rdev, self._sys)
            except sysfs.SysfsError:
                holder = None
            if holder is not None:
                identity = replace(identity, dm_name=holder[0], dm_uuid=holder[1])
        return identity

    def _resolve(self, mode: int, rdev: int) -> DeviceIdentity:
        name = f"{os.major(rdev)}:{os.minor(rdev)}"
        base = self._base(mode, rdev)
        if base is None:
            return DeviceIdentity(dev=name)
        diskseq = _number(read_attribute(f"{base}/diskseq"))
        if diskseq is not None:
            cached = self._cache.get((rdev, diskseq))
            if cached is not None:
                return cached
        for _ in range(3):
            identity = self._lookup(base, name, diskseq)
            again = _number(read_attribute(f"{base}/diskseq"))
            if again == diskseq:
                break
            diskseq = again  # the disk changed while it was read: read the new one
        else:
            return DeviceIdentity(dev=name)  # still changing: name only the number
        if diskseq is not None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[(rdev, diskseq)] = identity
        return identity

    def _lookup(self, base: str, name: str, diskseq: int | None) -> DeviceIdentity:
        page83 = read_attribute(f"{base}/device/vpd_pg83")
        page80 = read_attribute(f"{base}/device/vpd_pg80")
        dm_name = _text(read_attribute(f"{base}/dm/name"))
        dm_uuid = _text(read_attribute(f"{base}/dm/uuid"))
        wwn = vpd.wwn(page83) if page83 else None
        if wwn is None and dm_uuid is not None:
            wwn = vpd.wwn_from_dm_uuid(dm_uuid)
        return DeviceIdentity(
            dev=name, diskseq=diskseq, wwn=wwn,
            designator=_text(read_attribute(f"{base}/device/wwid")),
            vendor=_text(read_attribute(f"{base}/device/vendor")),
            model=_text(read_attribute(f"{base}/device/model")),
            serial=vpd.unit_serial(page80) if page80 else None,
            dm_name=dm_name, dm_uuid=dm_uuid)


def warm_up(identities: DeviceIdentities) -> None:
    """Run the lookup once (a missing device) before lockdown."""
    identities.resolve(stat.S_IFBLK, os.makedev(7, 1 << 19))
