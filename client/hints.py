"""One-line hints for the confusions behind most failed checks: a device that takes no
SCSI pass-through (a loop device answers 05/24/00, a file 0b/00/06), a partition or a
device-mapper map that is not multipath, a socket the caller may not connect to, no
helper listening.

The facts are gathered from stat() and sysfs (`device_facts`, `socket_facts`: the only
I/O here, and only after something failed); the rules that turn them into words are
pure (`for_reply`, `for_failure`).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from prguard.client.arguments import DEFAULT_SOCKET
from prguard.client.command import PrCommand
from prguard.client.decode import DecodeError, decode_sense
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import Sense, Status

#: The char major of the SCSI generic driver (/dev/sgN).
SG_MAJOR = 21
_SCSI_KINDS = ("scsi", "sg", "dm-multipath")


@dataclass(frozen=True)
class DeviceFacts:
    """What the device path is, as far as PR goes.

    kind: scsi (a SCSI disk), sg, dm-multipath, partition, dm (another device-mapper
    map), loop, nvme, block (another block device), char, file, directory, other.
    """

    kind: str
    name: str = ""  #: the kernel's name (sdb1, dm-3, loop0)
    whole_disk: str = ""  #: a partition's disk, as /dev/NAME
    below: tuple[str, ...] = ()  #: a dm map's devices, as /dev/NAME


@dataclass(frozen=True)
class Owner:
    """Who may open a path: its owner, group and mode, and who we are."""

    user: str
    group: str
    mode: int
    me: str
    my_uid: int
    my_groups: tuple[str, ...]


@dataclass(frozen=True)
class SocketFacts:
    kind: str  #: socket, missing, unreachable (a directory on the way denies search), other
    owner: Owner | None = None


def _name(table: str, number: int) -> str:
    try:
        return (pwd.getpwuid(number).pw_name if table == "user"
                else grp.getgrgid(number).gr_name)
    except KeyError:
        return str(number)


def owner_of(st: os.stat_result) -> Owner:
    uid = os.geteuid()
    groups = dict.fromkeys([os.getegid(), *os.getgroups()])
    return Owner(_name("user", st.st_uid), _name("group", st.st_gid),
                 stat.S_IMODE(st.st_mode), _name("user", uid), uid,
                 tuple(_name("group", g) for g in groups))


def _block_facts(rdev: int, sys_root: Path) -> DeviceFacts:
    link = sys_root / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        real = link.resolve(strict=True)
    except OSError:
        return DeviceFacts("block")
    name = real.name
    if (real / "partition").exists():
        return DeviceFacts("partition", name, whole_disk=f"/dev/{real.parent.name}")
    uuid = real / "dm" / "uuid"
    if uuid.exists():
        try:
            multipath = uuid.read_text().startswith("mpath-")
            below = tuple(sorted(f"/dev/{n}" for n in os.listdir(real / "slaves")))
        except OSError:
            multipath, below = False, ()
        return DeviceFacts("dm-multipath" if multipath else "dm", name, below=below)
    if (real / "loop").exists():
        return DeviceFacts("loop", name)
    if (real / "device" / "scsi_level").exists():
        return DeviceFacts("scsi", name)
    if name.startswith("nvme"):
        return DeviceFacts("nvme", name)
    return DeviceFacts("block", name)


def device_facts(path: str, sys_root: Path = Path("/sys")) -> DeviceFacts | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return _block_facts(st.st_rdev, sys_root)
    if stat.S_ISCHR(st.st_mode):
        return DeviceFacts("sg" if os.major(st.st_rdev) == SG_MAJOR else "char")
    if stat.S_ISREG(st.st_mode):
        return DeviceFacts("file")
    if stat.S_ISDIR(st.st_mode):
        return DeviceFacts("directory")
    return DeviceFacts("other")


def socket_facts(path: str) -> SocketFacts:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return SocketFacts("missing")
    except PermissionError:
        return SocketFacts("unreachable")
    except OSError:
        return SocketFacts("other")
    return SocketFacts("socket" if stat.S_ISSOCK(st.st_mode) else "other", owner_of(st))


def device_owner(path: str) -> Owner | None:
    try:
        return owner_of(os.stat(path))
    except OSError:
        return None


# -- the rules -----------------------------------------------------------------------------

_WHAT = {
    "loop": "a loop device", "nvme": "an NVMe namespace", "block": "a block device",
    "char": "a character device", "file": "a regular file", "directory": "a directory",
    "other": "neither a device nor a file",
}


def not_scsi(path: str, facts: DeviceFacts | None) -> str | None:
    """Why PR commands cannot work on this device, if they cannot."""
    if facts is None or facts.kind in _SCSI_KINDS:
        return None
    if facts.kind == "partition":
        return (f"{path} is a partition of {facts.whole_disk}: reservations belong to the "
                f"whole logical unit, and SCSI pass-through is refused on a partition; use "
                f"{facts.whole_disk}")
    if facts.kind == "dm":
        below = f" ({', '.join(facts.below)})" if facts.below else ""
        return (f"{path} is a device-mapper map ({facts.name}) that is not multipath, such "
                f"as LVM or dm-crypt: it takes no SCSI pass-through; reserve the disk "
                f"below it{below}")
    detail = ""
    if facts.kind == "loop":
        detail = " (the loop driver answers SG_IO with EINVAL, sent back as 05/24/00)"
    return (f"{path} is {_WHAT[facts.kind]}, not a SCSI disk: it takes no SCSI "
            f"pass-through (SG_IO), so every PR command on it fails{detail}; give the disk "
            f"QEMU uses (/dev/sdX, /dev/sgN or a multipath map)")


def symptom_of_no_pass_through(reply: PrReply) -> bool:
    """The answers a device without SCSI pass-through gets: 05/24/00 (SG_IO failed with
    EINVAL, as the loop driver does) or 0b/00/06 (ENOTTY and the like)."""
    if reply.status != Status.CHECK_CONDITION:
        return False
    try:
        sense = decode_sense(reply.sense)
    except DecodeError:
        return False
    return sense is not None and sense.code in (Sense.INVALID_FIELD, Sense.IO_ERROR)


def for_reply(command: PrCommand, reply: PrReply, device: DeviceFacts | None) -> list[str]:
    """Hints for a reply that is not GOOD."""
    if reply.status == Status.GOOD:
        return []
    hints = []
    if symptom_of_no_pass_through(reply):
        hints += [text for text in [not_scsi(command.device, device)] if text]
    if reply.status == Status.RESERVATION_CONFLICT and command.request.action.pr_out \
            and not hints:
        hints.append("a PR OUT that conflicts often has a key (--param-rk) or TYPE "
                     "(--prout-type) that does not match this I_T nexus' registration or "
                     "the reservation, rather than another initiator in the way")
    return hints


def _who(owner: Owner) -> str:
    return "root" if owner.user == "root" else f"root or {owner.user}"


def _ownership(path: str, owner: Owner) -> str:
    groups = ", ".join(owner.my_groups) or "none"
    return (f"{path} is owner {owner.user}, group {owner.group}, mode {owner.mode:04o}; you "
            f"are {owner.me} (uid {owner.my_uid}, groups {groups})")


def for_connect(path: str, err: int | None, sock: SocketFacts) -> list[str]:
    if err in (errno.EACCES, errno.EPERM):
        if sock.owner is not None:
            return [f"only who may write to the socket may connect: "
                    f"{_ownership(path, sock.owner)}: run as {_who(sock.owner)}, or as a "
                    f"member of group {sock.owner.group} (prguard.socket sets them with "
                    f"SocketGroup= and SocketMode=)"]
        return [f"a directory on the way to {path} does not let you search it"]
    if err == errno.ENOENT:
        return [f"no helper listens at {path}: is prguard (or qemu-pr-helper) running, and "
                f"is this its socket (its -k; the default is {DEFAULT_SOCKET}, libvirt's "
                f"per-domain helpers listen on "
                f"/var/lib/libvirt/qemu/domain-ID-NAME/pr-helper0.sock)?"]
    if err == errno.ECONNREFUSED:
        if sock.kind == "other":
            return [f"{path} is not a socket"]
        return [f"{path} is a socket nobody listens on: the helper that made it is not "
                f"running any more (the file outlives it); start the helper again"]
    return []


def for_open(command: PrCommand, err: int | None, owner: Owner | None) -> list[str]:
    if err not in (errno.EACCES, errno.EPERM) or owner is None:
        return []
    access = "read-only" if command.read_only else "read-write"
    hint = (f"{_ownership(command.device, owner)}: opening it {access} takes "
            f"{_who(owner)} or a member of group {owner.group}")
    if not command.read_only and not command.request.action.pr_out:
        hint += "; --readonly is enough for PR IN"
    return [hint]


def for_timeout(command: PrCommand) -> list[str]:
    return [f"the helper on {command.socket_path} did not answer within "
            f"{command.timeout:g} s: it may be stopped, waiting on a slow device, or its "
            f"listen backlog full; --timeout waits longer"]


def for_hang_up() -> list[str]:
    return ["the helper closed the connection instead of answering, which is how "
            "qemu-pr-helper and prguard refuse a request they cannot take: its log says "
            "why"]
