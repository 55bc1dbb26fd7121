"""THE channel message schema: one closed MsgType, one frozen class per message, for both
of the broker's channels (to the worker, and to the path opener of dm-multipath maps).

Wire form: one SOCK_SEQPACKET datagram per message, a msgpack array
[VERSION, MsgType, <fields in the class's order>]; the device fd, where there is one,
travels as SCM_RIGHTS with the same datagram. Decoding is strict: exactly the number of
fields of the type, exact types (bytes are bytes, ints are ints, no bools for ints), and
size caps checked by msgpack before anything is allocated. Requests have even type
numbers, answers odd ones (OpenSSH's monitor convention), and every answer to a request
carries its request id.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from prguard.shared.errors import ChannelError
from prguard.shared.scsi import CDB_SIZE, DATA_SIZE, SENSE_SIZE, PrReply

VERSION = 1
#: Upper bound of one encoded message: data, sense, CDB and a short reason, with headroom.
MAX_MESSAGE_SIZE = DATA_SIZE + 1024
MAX_REASON = 200
MAX_ID = 2**63 - 1
#: Most fields of any message (Identify), plus version and type.
MAX_ITEMS = 7

Body = tuple[Any, ...]


class MsgType(IntEnum):
    SGIO_REQUEST = 0x10  #: broker -> worker, with the device fd
    SGIO_RESULT = 0x11  #: worker -> broker: the command ran; its reply
    IDENTIFY = 0x12  #: broker -> worker: a new client connection (audit, policy)
    REFUSED = 0x13  #: worker -> broker: re-validation refused the request; status, sense
    FORGET = 0x14  #: broker -> worker: a client connection is gone (no answer)
    MALFORMED = 0x15  #: worker -> broker: a datagram it could not decode at all
    RELOAD_POLICY = 0x16  #: broker -> worker: read the --policy file again
    READY = 0x17  #: worker or opener -> broker, once: privileges dropped, serving
    PROBE = 0x18  #: broker -> worker: a liveness probe, no fd (the watchdog)
    ALIVE = 0x19  #: worker -> broker: a thread free of devices took the probe
    IDENTIFIED = 0x1B  #: worker -> broker: the connection's client is known
    POLICY_RELOADED = 0x1D  #: worker -> broker: whether the reload took
    MAP_REQUEST = 0x20  #: broker -> opener, with a map's fd: check it, open its paths
    MAP_PATHS = 0x21  #: opener -> broker: the map's uuid and paths; PATH_FDs follow
    PATH_FD = 0x23  #: opener -> broker, with one path's fd (write-only)
    MAP_REFUSED = 0x25  #: opener -> broker: not a map prguard serves, and why


class Message:
    """Base of every message class. Don't subclass outside this file.

    Each class gives its fields in wire order (`body`) and builds itself from them
    (`from_body`, which checks every type and bound); `FIELDS` is their number.
    """

    TYPE: ClassVar[MsgType]
    FIELDS: ClassVar[int]
    __slots__ = ()

    def body(self) -> Body:
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: Body) -> Message:
        raise NotImplementedError

    def encode(self) -> bytes:
        # The member itself: msgpack packs an int subclass as its value, without the
        # Python-level `.value` lookup.
        packed: bytes = _packb((VERSION, self.TYPE, *self.body()))
        return packed


_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ChannelError(f"{name} must be an int in [{low}, {high}]")


def _check_bytes(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not bytes or not low <= len(value) <= high:
        raise ChannelError(f"{name} must be {low}..{high} bytes")


def _check_reason(value: object) -> None:
    if type(value) is not str or len(value) > MAX_REASON:
        raise ChannelError("reason must be a short str")


@dataclass(frozen=True, slots=True)
class SgIoRequest(Message):
    """Run this CDB on the attached fd. `data` is the PR OUT parameter list (empty for PR
    IN); the worker derives direction and buffer sizes itself. `connection` names the
    client connection the broker introduced with Identify (0: none, when neither audit
    nor policy is on)."""

    TYPE: ClassVar[MsgType] = MsgType.SGIO_REQUEST
    FIELDS: ClassVar[int] = 4
    id: int
    cdb: bytes
    data: bytes
    connection: int = 0

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_bytes("cdb", self.cdb, CDB_SIZE, CDB_SIZE)
        _check_bytes("data", self.data, 0, DATA_SIZE)
        _check_int("connection", self.connection, 0, MAX_ID)

    def body(self) -> Body:
        return (self.id, self.cdb, self.data, self.connection)

    @classmethod
    def from_body(cls, body: Body) -> SgIoRequest:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class SgIoResult(Message):
    """The outcome of an SG_IO the worker issued, as the reply QEMU is to get (PR IN data
    already cut to the allocation length; empty unless GOOD)."""

    TYPE: ClassVar[MsgType] = MsgType.SGIO_RESULT
    FIELDS: ClassVar[int] = 4
    id: int
    reply: PrReply

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        if type(self.reply) is not PrReply:
            raise ChannelError("reply must be a PrReply")

    def body(self) -> Body:
        reply = self.reply
        return (self.id, reply.status, reply.sense, reply.data)

    @classmethod
    def from_body(cls, body: Body) -> SgIoResult:
        id_, status, sense, data = body
        _check_int("status", status, 0, 0xFF)
        _check_bytes("sense", sense, SENSE_SIZE, SENSE_SIZE)
        _check_bytes("data", data, 0, DATA_SIZE)
        return cls(id_, PrReply(status, sense, data))


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """The worker's own validation refused the request; the device was not touched."""

    TYPE: ClassVar[MsgType] = MsgType.REFUSED
    FIELDS: ClassVar[int] = 4
    id: int
    status: int
    sense: bytes
    reason: str

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_int("status", self.status, 0, 0xFF)
        _check_bytes("sense", self.sense, SENSE_SIZE, SENSE_SIZE)
        _check_reason(self.reason)

    def body(self) -> Body:
        return (self.id, self.status, self.sense, self.reason)

    @classmethod
    def from_body(cls, body: Body) -> Refused:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Malformed(Message):
    """The worker could not decode a datagram (no id to answer to)."""

    TYPE: ClassVar[MsgType] = MsgType.MALFORMED
    FIELDS: ClassVar[int] = 1
    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason)

    def body(self) -> Body:
        return (self.reason,)

    @classmethod
    def from_body(cls, body: Body) -> Malformed:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """Sent once by the worker when it has dropped privileges and serves."""

    TYPE: ClassVar[MsgType] = MsgType.READY
    FIELDS: ClassVar[int] = 1
    pid: int

    def __post_init__(self) -> None:
        _check_int("pid", self.pid, 1, 2**31 - 1)

    def body(self) -> Body:
        return (self.pid,)

    @classmethod
    def from_body(cls, body: Body) -> Ready:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Probe(Message):
    """Are you serving? Answered by whichever worker thread receives it, at once and
    without touching a device: an answer means a thread is free to take requests."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE
    FIELDS: ClassVar[int] = 1
    id: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)

    def body(self) -> Body:
        return (self.id,)

    @classmethod
    def from_body(cls, body: Body) -> Probe:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Alive(Message):
    """The answer to the Probe with the same id."""

    TYPE: ClassVar[MsgType] = MsgType.ALIVE
    FIELDS: ClassVar[int] = 1
    id: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)

    def body(self) -> Body:
        return (self.id,)

    @classmethod
    def from_body(cls, body: Body) -> Alive:
        return cls(*body)


#: Most paths a map may have (dm-multipath maps have a handful; 64 bounds a message).
MAX_PATHS = 64
#: Longest kernel name of a block device (DISK_NAME_LEN).
NAME_SIZE = 32
_RDEV = struct.Struct(">Q")
_PATH_RECORD = struct.Struct(f">QB{NAME_SIZE}s")  # rdev, flags (bit 0: live), name
MAX_UUID = 128  #: DM_UUID_LEN less its NUL


def _printable_ascii(text: str) -> bool:
    """Names that go into log lines: no control characters (no forged lines)."""
    return text.isascii() and text.isprintable()


def _check_rdev(name: str, value: object) -> None:
    _check_int(name, value, 0, 2**64 - 1)


@dataclass(frozen=True, slots=True)
class MapRequest(Message):
    """Check the attached fd is a dm-multipath map prguard serves; list its paths; open
    write-only every live path whose device number is not in `have` (the broker holds
    those already) and send each as a PathFd. Nothing is opened for a read-only map fd."""

    TYPE: ClassVar[MsgType] = MsgType.MAP_REQUEST
    FIELDS: ClassVar[int] = 2
    id: int
    have: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        if type(self.have) is not tuple or len(self.have) > MAX_PATHS:
            raise ChannelError(f"have must be a tuple of at most {MAX_PATHS} device numbers")
        for rdev in self.have:
            _check_rdev("have", rdev)

    def body(self) -> Body:
        return (self.id, b"".join(_RDEV.pack(rdev) for rdev in self.have))

    @classmethod
    def from_body(cls, body: Body) -> MapRequest:
        id_, have = body
        _check_bytes("have", have, 0, MAX_PATHS * _RDEV.size)
        if len(have) % _RDEV.size:
            raise ChannelError("have is not a whole number of device numbers")
        return cls(id_, tuple(rdev for (rdev,) in _RDEV.iter_unpack(have)))


@dataclass(frozen=True, slots=True)
class PathState:
    """One path of a map: its device number, kernel name, and whether it is usable now
    (its SCSI device is running and, when it was to be opened, it could be)."""

    rdev: int
    name: str
    live: bool

    def __post_init__(self) -> None:
        _check_rdev("rdev", self.rdev)
        if (type(self.name) is not str or not _printable_ascii(self.name)
                or not 0 < len(self.name) <= NAME_SIZE or "/" in self.name):
            raise ChannelError("path name must be a kernel device name")
        if type(self.live) is not bool:
            raise ChannelError("live must be a bool")


@dataclass(frozen=True, slots=True)
class MapPaths(Message):
    """The answer to a MapRequest for a map prguard serves: its dm uuid, its paths in
    device-number order, and how many PathFd datagrams follow (one per path opened)."""

    TYPE: ClassVar[MsgType] = MsgType.MAP_PATHS
    FIELDS: ClassVar[int] = 4
    id: int
    uuid: str
    paths: tuple[PathState, ...]
    fds: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        if (type(self.uuid) is not str or not 0 < len(self.uuid) <= MAX_UUID
                or not _printable_ascii(self.uuid)):
            raise ChannelError(f"uuid must be 1..{MAX_UUID} printable ASCII characters")
        if (type(self.paths) is not tuple or not 0 < len(self.paths) <= MAX_PATHS
                or any(type(p) is not PathState for p in self.paths)):
            raise ChannelError(f"paths must be 1..{MAX_PATHS} PathStates")
        rdevs = [p.rdev for p in self.paths]
        if rdevs != sorted(set(rdevs)):
            raise ChannelError("paths must be in device-number order, each once")
        _check_int("fds", self.fds, 0, len(self.paths))

    def body(self) -> Body:
        packed = b"".join(_PATH_RECORD.pack(p.rdev, int(p.live), p.name.encode("ascii"))
                          for p in self.paths)
        return (self.id, self.uuid, packed, self.fds)

    @classmethod
    def from_body(cls, body: Body) -> MapPaths:
        id_, uuid, packed, fds = body
        _check_bytes("paths", packed, _PATH_RECORD.size, MAX_PATHS * _PATH_RECORD.size)
        if len(packed) % _PATH_RECORD.size:
            raise ChannelError("paths is not a whole number of records")
        paths = []
        for rdev, flags, raw in _PATH_RECORD.iter_unpack(packed):
            name = raw.rstrip(b"\0")
            if flags not in (0, 1) or b"\0" in name:
                raise ChannelError("malformed path record")
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                raise ChannelError("path name is not ASCII") from None
            paths.append(PathState(rdev, text, bool(flags)))
        return cls(id_, uuid, tuple(paths), fds)


@dataclass(frozen=True, slots=True)
class PathFd(Message):
    """One opened path of the MapRequest `id`, its fd attached."""

    TYPE: ClassVar[MsgType] = MsgType.PATH_FD
    FIELDS: ClassVar[int] = 2
    id: int
    rdev: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_rdev("rdev", self.rdev)

    def body(self) -> Body:
        return (self.id, self.rdev)

    @classmethod
    def from_body(cls, body: Body) -> PathFd:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Identify(Message):
    """A client connected: SO_PEERCRED's pid, uid and gid, and a pidfd of the process as
    SCM_RIGHTS where the kernel has SO_PEERPIDFD. The worker reads the client's identity
    itself and answers Identified; requests name the connection from then on."""

    TYPE: ClassVar[MsgType] = MsgType.IDENTIFY
    FIELDS: ClassVar[int] = 5
    id: int
    connection: int
    pid: int
    uid: int
    gid: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_int("connection", self.connection, 1, MAX_ID)
        _check_int("pid", self.pid, 0, 2**31 - 1)
        _check_int("uid", self.uid, 0, 2**32 - 1)
        _check_int("gid", self.gid, 0, 2**32 - 1)

    def body(self) -> Body:
        return (self.id, self.connection, self.pid, self.uid, self.gid)

    @classmethod
    def from_body(cls, body: Body) -> Identify:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class MapRefused(Message):
    """The MapRequest's fd is not a map prguard serves (or its paths are not all whole
    SCSI disks); nothing was opened. `not_device_mapper`: certainly no device-mapper
    device at all (the broker then serves it as any disk, and its major from then on)."""

    TYPE: ClassVar[MsgType] = MsgType.MAP_REFUSED
    FIELDS: ClassVar[int] = 3
    id: int
    reason: str
    not_device_mapper: bool = False

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_reason(self.reason)
        if type(self.not_device_mapper) is not bool:
            raise ChannelError("not_device_mapper must be a bool")

    def body(self) -> Body:
        return (self.id, self.reason, self.not_device_mapper)

    @classmethod
    def from_body(cls, body: Body) -> MapRefused:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Identified(Message):
    """The worker knows the client of the connection Identify `id` introduced."""

    TYPE: ClassVar[MsgType] = MsgType.IDENTIFIED
    FIELDS: ClassVar[int] = 1
    id: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)

    def body(self) -> Body:
        return (self.id,)

    @classmethod
    def from_body(cls, body: Body) -> Identified:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class Forget(Message):
    """A connection is closed and has no request in flight; no answer."""

    TYPE: ClassVar[MsgType] = MsgType.FORGET
    FIELDS: ClassVar[int] = 1
    connection: int

    def __post_init__(self) -> None:
        _check_int("connection", self.connection, 1, MAX_ID)

    def body(self) -> Body:
        return (self.connection,)

    @classmethod
    def from_body(cls, body: Body) -> Forget:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class ReloadPolicy(Message):
    """Read the --policy file again (the broker got SIGUSR1)."""

    TYPE: ClassVar[MsgType] = MsgType.RELOAD_POLICY
    FIELDS: ClassVar[int] = 1
    id: int

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)

    def body(self) -> Body:
        return (self.id,)

    @classmethod
    def from_body(cls, body: Body) -> ReloadPolicy:
        return cls(*body)


@dataclass(frozen=True, slots=True)
class PolicyReloaded(Message):
    """Whether the reload took; `reason` says why not (the old policy stays then)."""

    TYPE: ClassVar[MsgType] = MsgType.POLICY_RELOADED
    FIELDS: ClassVar[int] = 3
    id: int
    ok: bool
    reason: str

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        if type(self.ok) is not bool:
            raise ChannelError("ok must be a bool")
        _check_reason(self.reason)

    def body(self) -> Body:
        return (self.id, self.ok, self.reason)

    @classmethod
    def from_body(cls, body: Body) -> PolicyReloaded:
        return cls(*body)


_CLASSES: dict[int, type[Message]] = {
    cls.TYPE.value: cls
    for cls in (SgIoRequest, SgIoResult, Refused, Malformed, Ready, Probe, Alive, Identify,
                Identified, Forget, ReloadPolicy, PolicyReloaded, MapRequest, MapPaths, PathFd,
                MapRefused)
}
_DECODE_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                  msgpack.StackError)


def decode(datagram: bytes) -> Message:
    """Strictly decode one datagram; any deviation raises ChannelError."""
    if len(datagram) > MAX_MESSAGE_SIZE:
        raise ChannelError("message too large")
    try:
        body = msgpack.unpackb(
            datagram, raw=False, use_list=False, max_bin_len=DATA_SIZE,
            max_str_len=MAX_REASON, max_array_len=MAX_ITEMS, max_map_len=0, max_ext_len=0,
        )
    except _DECODE_ERRORS as exc:
        raise ChannelError(f"not a msgpack message: {exc.__class__.__name__}") from None
    if type(body) is not tuple or len(body) < 2:
        raise ChannelError("message is not an array of version, type and fields")
    if type(body[0]) is not int or body[0] != VERSION:
        raise ChannelError("unknown message version")
    cls = _CLASSES.get(body[1]) if type(body[1]) is int else None
    if cls is None:
        raise ChannelError("unknown message type")
    if len(body) != 2 + cls.FIELDS:
        raise ChannelError(f"{cls.__name__}: wrong number of fields")
    return cls.from_body(body[2:])
