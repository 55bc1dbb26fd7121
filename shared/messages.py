"""THE broker<->worker message schema: one closed MsgType, one frozen class per message.

Wire form: one SOCK_SEQPACKET datagram per message, a msgpack map
{"v": VERSION, "t": MsgType, <fields>}; the device fd, where there is one, travels as
SCM_RIGHTS with the same datagram. Decoding is strict: the exact key set of the class,
exact types (bytes are bytes, ints are ints, no bools for ints), and size caps checked by
msgpack before anything is allocated. Requests have even type numbers, answers odd ones
(OpenSSH's monitor convention), and every answer to a request carries its request id.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from prguard.shared.errors import ChannelError
from prguard.shared.scsi import CDB_SIZE, DATA_SIZE, SENSE_SIZE

VERSION = 1
#: Upper bound of one encoded message: data, sense, CDB and a short reason, with headroom.
MAX_MESSAGE_SIZE = DATA_SIZE + 1024
MAX_REASON = 200
MAX_ID = 2**63 - 1


class MsgType(IntEnum):
    SGIO_REQUEST = 0x10  #: broker -> worker, with the device fd
    SGIO_RESULT = 0x11  #: worker -> broker: the command ran; status, sense, data
    REFUSED = 0x13  #: worker -> broker: re-validation refused the request; status, sense
    MALFORMED = 0x15  #: worker -> broker: a datagram it could not decode at all
    READY = 0x17  #: worker -> broker, once: privileges dropped, serving


class Message:
    """Base of every message class. Don't subclass outside this file."""

    TYPE: ClassVar[MsgType]
    __slots__ = ()

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "t": int(self.TYPE)}
        for f in fields(self):  # type: ignore[arg-type]
            body[f.name] = getattr(self, f.name)
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ChannelError(f"{name} must be an int in [{low}, {high}]")


def _check_bytes(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not bytes or not low <= len(value) <= high:
        raise ChannelError(f"{name} must be {low}..{high} bytes")


@dataclass(frozen=True)
class SgIoRequest(Message):
    """Run this CDB on the attached fd. `data` is the PR OUT parameter list (empty for PR
    IN); the worker derives direction and buffer sizes itself."""

    TYPE: ClassVar[MsgType] = MsgType.SGIO_REQUEST
    id: int
    cdb: bytes
    data: bytes

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_bytes("cdb", self.cdb, CDB_SIZE, CDB_SIZE)
        _check_bytes("data", self.data, 0, DATA_SIZE)


@dataclass(frozen=True)
class SgIoResult(Message):
    """The outcome of an SG_IO the worker issued: status byte, full sense field, and the
    PR IN data already cut to the allocation length (empty unless GOOD)."""

    TYPE: ClassVar[MsgType] = MsgType.SGIO_RESULT
    id: int
    status: int
    sense: bytes
    data: bytes

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_int("status", self.status, 0, 0xFF)
        _check_bytes("sense", self.sense, SENSE_SIZE, SENSE_SIZE)
        _check_bytes("data", self.data, 0, DATA_SIZE)


@dataclass(frozen=True)
class Refused(Message):
    """The worker's own validation refused the request; the device was not touched."""

    TYPE: ClassVar[MsgType] = MsgType.REFUSED
    id: int
    status: int
    sense: bytes
    reason: str

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, MAX_ID)
        _check_int("status", self.status, 0, 0xFF)
        _check_bytes("sense", self.sense, SENSE_SIZE, SENSE_SIZE)
        if type(self.reason) is not str or len(self.reason) > MAX_REASON:
            raise ChannelError("reason must be a short str")


@dataclass(frozen=True)
class Malformed(Message):
    """The worker could not decode a datagram (no id to answer to)."""

    TYPE: ClassVar[MsgType] = MsgType.MALFORMED
    reason: str

    def __post_init__(self) -> None:
        if type(self.reason) is not str or len(self.reason) > MAX_REASON:
            raise ChannelError("reason must be a short str")


@dataclass(frozen=True)
class Ready(Message):
    """Sent once by the worker when it has dropped privileges and serves."""

    TYPE: ClassVar[MsgType] = MsgType.READY
    pid: int

    def __post_init__(self) -> None:
        _check_int("pid", self.pid, 1, 2**31 - 1)


_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (SgIoRequest, SgIoResult, Refused, Malformed, Ready)
}


def decode(datagram: bytes) -> Message:
    """Strictly decode one datagram; any deviation raises ChannelError."""
    if len(datagram) > MAX_MESSAGE_SIZE:
        raise ChannelError("message too large")
    try:
        body = msgpack.unpackb(
            datagram, raw=False, strict_map_key=True, use_list=False,
            max_bin_len=DATA_SIZE, max_str_len=MAX_REASON, max_array_len=0,
            max_map_len=8, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise ChannelError(f"not a msgpack message: {exc.__class__.__name__}") from None
    if type(body) is not dict:
        raise ChannelError("message is not a map")
    if body.get("v") != VERSION or type(body.get("v")) is not int:
        raise ChannelError("unknown message version")
    kind = body.get("t")
    if type(kind) is not int or kind not in _CLASSES:
        raise ChannelError("unknown message type")
    cls = _CLASSES[kind]
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if set(body) != names | {"v", "t"}:
        raise ChannelError(f"{cls.__name__}: wrong set of keys")
    try:
        return cls(**{name: body[name] for name in names})
    except TypeError as exc:
        raise ChannelError(f"{cls.__name__}: {exc}") from None
