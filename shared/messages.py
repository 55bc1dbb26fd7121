"""THE broker<->worker message schema: one closed MsgType, one frozen class per message.

Wire form: one SOCK_SEQPACKET datagram per message, a msgpack array
[VERSION, MsgType, <fields in the class's order>]; the device fd, where there is one,
travels as SCM_RIGHTS with the same datagram. Decoding is strict: exactly the number of
fields of the type, exact types (bytes are bytes, ints are ints, no bools for ints), and
size caps checked by msgpack before anything is allocated. Requests have even type
numbers, answers odd ones (OpenSSH's monitor convention), and every answer to a request
carries its request id.
"""

from __future__ import annotations

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
#: Most fields of any message (SgIoResult), plus version and type.
MAX_ITEMS = 6

Body = tuple[Any, ...]


class MsgType(IntEnum):
    SGIO_REQUEST = 0x10  #: broker -> worker, with the device fd
    SGIO_RESULT = 0x11  #: worker -> broker: the command ran; its reply
    REFUSED = 0x13  #: worker -> broker: re-validation refused the request; status, sense
    MALFORMED = 0x15  #: worker -> broker: a datagram it could not decode at all
    READY = 0x17  #: worker -> broker, once: privileges dropped, serving
    PROBE = 0x18  #: broker -> worker: a liveness probe, no fd (the watchdog)
    ALIVE = 0x19  #: worker -> broker: a thread free of devices took the probe


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
        packed: bytes = _packb((VERSION, self.TYPE.value, *self.body()))
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
    IN); the worker derives direction and buffer sizes itself."""

    TYPE: ClassVar[MsgType] = MsgType.SGIO_REQUEST
    FIELDS: ClassVar[int] = 3
    id: int
    cdb: bytes
    data: bytes

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_bytes("cdb", self.cdb, CDB_SIZE, CDB_SIZE)
        _check_bytes("data", self.data, 0, DATA_SIZE)

    def body(self) -> Body:
        return (self.id, self.cdb, self.data)

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


_CLASSES: dict[int, type[Message]] = {
    cls.TYPE.value: cls
    for cls in (SgIoRequest, SgIoResult, Refused, Malformed, Ready, Probe, Alive)
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
