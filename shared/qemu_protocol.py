"""Sans-I/O implementation of the qemu-pr-helper wire protocol (both roles).

No sockets here: the shell asks `wanted()` how much it may read and whether it may accept
file descriptors with those bytes, feeds what it read to `receive_data()`, and pulls typed
events out of `next_event()`. Replies go the other way through `send_reply()`, which
returns bytes. Framing and the points at which the connection is closed follow
qemu-pr-helper exactly:

* the server writes its 4-byte feature word first; the client answers with 4 bytes;
  any bit we do not offer closes the connection;
* a request is a 16-byte CDB carrying exactly one fd (SCM_RIGHTS on any of the reads
  that deliver those 16 bytes), then for PR OUT the parameter list, whose length comes
  from CDB bytes 7-8;
* the reply is `result` BE32, `sz` BE32, 96 bytes of sense, then `sz` bytes of PR IN data.

Fds are owned by the connection until handed out in a `PrRequest`; whatever it still
holds after an error or EOF the shell gets back from `take_fds()` and must close.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from prguard.shared.errors import QemuProtocolError
from prguard.shared.scsi import CDB_SIZE, DATA_SIZE, Opcode, Status, transfer_length
from prguard.shared.scsi import PrReply as PrReply  # the reply triple, defined with SCSI

#: Feature bits this implementation offers in the handshake (none are defined upstream).
SUPPORTED_FEATURES = 0
FEATURES_SIZE = 4
REPLY_HEADER = struct.Struct(">iI96s")
REPLY_HEADER_SIZE = REPLY_HEADER.size  # 104

NO_FD_MESSAGE = "No file descriptor in request."
INVALID_CDB_MESSAGE = "Invalid CDB, closing socket."
SHORT_DATA_MESSAGE = "Unexpected end-of-file before all data were read"


class Event:
    """Base class of everything next_event() returns. Don't subclass outside this file."""

    __slots__ = ()


@dataclass(frozen=True)
class FeaturesAgreed(Event):
    """The handshake is over; `features` is the set both sides use."""

    features: int


@dataclass(frozen=True)
class FeaturesOffered(Event):
    """(client role) The helper's feature word arrived."""

    features: int


@dataclass(frozen=True, slots=True)
class PrRequest(Event):
    """One complete request. The receiver owns `fd` and must close it.

    Only the state machine below builds these, from a CDB whose opcode and length it
    has already checked (the C helper's framing rules).
    """

    cdb: bytes
    fd: int
    parameter_list: bytes

    @property
    def opcode(self) -> Opcode:
        return Opcode(self.cdb[0])

    @property
    def transfer_length(self) -> int:
        return transfer_length(self.cdb)


class ReplyNotAllowed(ValueError):
    """A reply QEMU would abort on (see reply_fault); nothing was encoded."""


def reply_fault(request: PrRequest, reply: PrReply) -> str | None:
    """Why `reply` may not answer `request`, or None: data only with a GOOD PR IN, and
    never more than its allocation length. QEMU asserts on both; this is the one place
    the rule is stated, and send_reply() is where it is enforced."""
    if not reply.data:
        return None
    if request.cdb[0] != Opcode.PERSISTENT_RESERVE_IN:
        return "a PR OUT reply never carries data"
    if reply.status != Status.GOOD:
        return "only a GOOD reply carries data"
    if len(reply.data) > transfer_length(request.cdb):
        return "reply data longer than the allocation length"
    return None


@dataclass(frozen=True)
class Closed(Event):
    """The peer closed cleanly where a new message could start."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: next_event() found no complete event; read wanted() bytes and feed them.
NEED_DATA = _NeedData()


class ReadSpec(NamedTuple):
    """How the shell reads next: at most `max_bytes`, with a control buffer or not (a
    tuple: built for every read).

    Reading with fds only where the C helper does matters: fds sent along with bytes
    read without a control buffer are discarded by the kernel, and the C helper relies
    on exactly that for handshake bytes and PR OUT parameter data.
    """

    max_bytes: int
    with_fds: bool


class State(enum.StrEnum):
    """str-valued so that it hashes in C: `_RULES[state]` is looked up twice per request."""

    SEND_FEATURES = "send-features"
    RECV_FEATURES = "recv-features"
    RECV_CDB = "recv-cdb"
    RECV_PARAMETERS = "recv-parameters"
    SEND_REPLY = "send-reply"
    CLOSED = "closed"
    ERROR = "error"


class _Buffer:
    """Bytes received and not yet consumed, and whether EOF was seen."""

    __slots__ = ("data", "eof")

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False


class ServerConnection:
    """The helper's side of one QEMU connection.

    Everything that depends on the state is in one table, `_RULES` (below the class):
    per state, what to read next, whether a message is in progress, and how to turn
    buffered bytes into the next event.
    """

    def __init__(self, supported_features: int = SUPPORTED_FEATURES) -> None:
        self._supported = supported_features
        self._state = State.SEND_FEATURES
        self._buf = _Buffer()
        self._cdb_fds: list[int] = []
        self._discarded: list[int] = []
        self._pending: PrRequest | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def mid_message(self) -> bool:
        """The peer has started a message (or owes its handshake) and not finished it:
        the time it may take for that is bounded; idle time between requests is not."""
        return _RULES[self._state].mid_message(self)

    def initiate(self) -> bytes:
        """The helper speaks first: its supported-features word."""
        self._expect(State.SEND_FEATURES, "initiate")
        self._state = State.RECV_FEATURES
        return self._supported.to_bytes(FEATURES_SIZE, "big")

    def wanted(self) -> ReadSpec:
        """What the shell should read next; only meaningful after NEED_DATA."""
        read = _RULES[self._state].read
        if read is None:
            raise QemuProtocolError(f"nothing to read in state {self._state.value}")
        return read(self)

    def receive_data(self, data: bytes, fds: Sequence[int] = (), fds_truncated: bool = False
                     ) -> None:
        """Feed bytes read from the socket (b"" means EOF) and the fds that came with them.

        The fds are taken over by the connection. Fds arriving where the C helper reads
        without a control buffer (handshake, parameter data) are discarded, as the
        kernel would discard them there; `take_fds()` returns them for closing.
        """
        if self._state in (State.CLOSED, State.ERROR):
            self._discarded.extend(fds)
            raise QemuProtocolError(f"data received in state {self._state.value}")
        if not data:
            self._discarded.extend(fds)
            self._buf.eof = True
            return
        if self._state is State.RECV_CDB and len(self._buf.data) < CDB_SIZE:
            self._cdb_fds.extend(fds)
            if fds_truncated or len(self._cdb_fds) > 1:
                self._state = State.ERROR
                raise QemuProtocolError("more than one fd with the CDB")
        elif fds:
            self._discarded.extend(fds)
        self._buf.data += data

    def next_event(self) -> Event | _NeedData:
        try:
            return _RULES[self._state].advance(self)
        except QemuProtocolError:
            self._state = State.ERROR
            raise

    def send_reply(self, reply: PrReply) -> bytes:
        """Bytes for the reply to the pending request.

        A reply QEMU would abort on (reply_fault) raises ReplyNotAllowed and leaves the
        request pending, so that the caller can answer it otherwise: such a reply is
        never sent.
        """
        self._expect(State.SEND_REPLY, "send_reply")
        assert self._pending is not None
        fault = reply_fault(self._pending, reply)
        if fault is not None:
            raise ReplyNotAllowed(fault)
        self._pending = None
        self._state = State.RECV_CDB
        return encode_reply(reply)

    def take_fds(self) -> list[int]:
        """Every fd the connection still holds (none handed out in a PrRequest).

        Call it when done with the connection, whatever the reason; the caller closes them.
        """
        fds = self._discarded + self._cdb_fds
        self._discarded = []
        self._cdb_fds = []
        return fds

    def _expect(self, state: State, what: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"{what}() called in state {self._state.value}")

    # -- per-state rules (the table is below the class) ---------------------------------

    def _in_cdb(self) -> bool:
        return bool(self._buf.data or self._cdb_fds)

    def _want_features(self) -> ReadSpec:
        return ReadSpec(max(FEATURES_SIZE - len(self._buf.data), 1), with_fds=False)

    def _want_cdb(self) -> ReadSpec:
        return ReadSpec(max(CDB_SIZE - len(self._buf.data), 1), with_fds=True)

    def _want_parameters(self) -> ReadSpec:
        need = CDB_SIZE + transfer_length(self._buf.data[:CDB_SIZE]) - len(self._buf.data)
        return ReadSpec(max(need, 1), with_fds=False)

    def _features(self) -> Event | _NeedData:
        buf = self._buf
        if len(buf.data) < FEATURES_SIZE:
            if buf.eof:
                raise QemuProtocolError("EOF during the feature handshake")
            return NEED_DATA
        requested = int.from_bytes(buf.data[:FEATURES_SIZE], "big")
        del buf.data[:FEATURES_SIZE]
        if requested & ~self._supported:
            raise QemuProtocolError(f"unsupported features requested: {requested:#x}")
        self._state = State.RECV_CDB
        return FeaturesAgreed(requested)

    def _cdb(self) -> Event | _NeedData:
        buf = self._buf
        if len(buf.data) < CDB_SIZE:
            if buf.eof:
                if not buf.data and not self._cdb_fds:
                    self._state = State.CLOSED
                    return Closed()
                raise QemuProtocolError("EOF inside a CDB")
            return NEED_DATA
        cdb = buf.data[:CDB_SIZE]
        if not self._cdb_fds:
            raise QemuProtocolError("no fd with the CDB", NO_FD_MESSAGE)
        if cdb[0] not in _PR_OPCODES:
            raise QemuProtocolError(f"opcode {cdb[0]:#04x} is not PR IN/OUT",
                                    INVALID_CDB_MESSAGE)
        if transfer_length(cdb) > DATA_SIZE:
            raise QemuProtocolError(f"transfer length {transfer_length(cdb)} over 8192")
        self._state = State.RECV_PARAMETERS
        return self._parameters()

    def _parameters(self) -> Event | _NeedData:
        buf = self._buf
        length = (transfer_length(buf.data) if buf.data[0] == Opcode.PERSISTENT_RESERVE_OUT
                  else 0)
        end = CDB_SIZE + length
        if len(buf.data) < end:
            if buf.eof:
                raise QemuProtocolError("EOF inside the parameter list", SHORT_DATA_MESSAGE)
            return NEED_DATA
        cdb = bytes(buf.data[:CDB_SIZE])
        params = bytes(buf.data[CDB_SIZE:end])
        del buf.data[:end]
        (fd,) = self._cdb_fds
        self._cdb_fds = []
        self._pending = PrRequest(cdb, fd, params)
        self._state = State.SEND_REPLY
        return self._pending

    def _awaiting_reply(self) -> Event | _NeedData:
        return NEED_DATA

    def _closed(self) -> Event | _NeedData:
        return Closed()

    def _failed(self) -> Event | _NeedData:
        raise QemuProtocolError("connection already failed")


_PR_OPCODES = (Opcode.PERSISTENT_RESERVE_IN, Opcode.PERSISTENT_RESERVE_OUT)


def _always(conn: ServerConnection) -> bool:
    return True


def _never(conn: ServerConnection) -> bool:
    return False


class _Rule(NamedTuple):
    """What a state means for the shell: `read` (None: nothing to read in this state),
    whether a message is in progress, and how buffered bytes become the next event."""

    read: Callable[[ServerConnection], ReadSpec] | None
    mid_message: Callable[[ServerConnection], bool]
    advance: Callable[[ServerConnection], Event | _NeedData]


_RULES: dict[State, _Rule] = {
    State.SEND_FEATURES: _Rule(None, _never, ServerConnection._failed),
    State.RECV_FEATURES: _Rule(ServerConnection._want_features, _always,
                               ServerConnection._features),
    State.RECV_CDB: _Rule(ServerConnection._want_cdb, ServerConnection._in_cdb,
                          ServerConnection._cdb),
    State.RECV_PARAMETERS: _Rule(ServerConnection._want_parameters, _always,
                                 ServerConnection._parameters),
    State.SEND_REPLY: _Rule(None, _never, ServerConnection._awaiting_reply),
    State.CLOSED: _Rule(None, _never, ServerConnection._closed),
    State.ERROR: _Rule(None, _never, ServerConnection._failed),
}


def encode_reply(reply: PrReply) -> bytes:
    return REPLY_HEADER.pack(reply.status, len(reply.data), reply.sense) + reply.data


class ClientConnection:
    """QEMU's side (pr-manager-helper): used by prguard-client and the tests."""

    def __init__(self, requested_features: int = 0) -> None:
        self._requested = requested_features
        self._buf = bytearray()
        self._eof = False
        self._features_seen = False
        self._awaiting: Opcode | None = None

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        self._buf += data

    def next_event(self) -> Event | PrReply | _NeedData:
        if not self._features_seen:
            if len(self._buf) < FEATURES_SIZE:
                return self._need()
            self._features_seen = True
            offered = int.from_bytes(self._buf[:FEATURES_SIZE], "big")
            del self._buf[:FEATURES_SIZE]
            return FeaturesOffered(offered)
        if self._awaiting is None:
            if self._buf:
                raise QemuProtocolError("helper sent bytes nobody asked for")
            return Closed() if self._eof else NEED_DATA
        if len(self._buf) < REPLY_HEADER_SIZE:
            return self._need()
        status, size, sense = REPLY_HEADER.unpack_from(self._buf)
        if size > DATA_SIZE or (size and (self._awaiting is Opcode.PERSISTENT_RESERVE_OUT
                                          or status != Status.GOOD)):
            raise QemuProtocolError(f"reply carries {size} bytes of data it may not carry")
        if len(self._buf) < REPLY_HEADER_SIZE + size:
            return self._need()
        data = bytes(self._buf[REPLY_HEADER_SIZE:REPLY_HEADER_SIZE + size])
        del self._buf[:REPLY_HEADER_SIZE + size]
        self._awaiting = None
        if not 0 <= status <= 0xFF:
            raise QemuProtocolError(f"reply status {status} is not a SCSI status")
        return PrReply(status, sense, data)

    def _need(self) -> _NeedData:
        if self._eof:
            raise QemuProtocolError("helper closed the connection")
        return NEED_DATA

    def send_features(self) -> bytes:
        return self._requested.to_bytes(FEATURES_SIZE, "big")

    def send_request(self, cdb: bytes, parameter_list: bytes = b"") -> tuple[bytes, bytes]:
        """(CDB bytes to send with the fd attached, parameter bytes to send after)."""
        if len(cdb) != CDB_SIZE:
            raise ValueError("CDB must be 16 bytes (zero-filled like QEMU does)")
        if self._awaiting is not None:
            raise RuntimeError("one request at a time per connection")
        self._awaiting = Opcode(cdb[0])
        return cdb, parameter_list
