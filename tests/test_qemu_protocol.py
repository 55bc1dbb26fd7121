"""The sans-I/O wire protocol: every case fed whole, byte by byte, and with trailing bytes.

Fds here are plain integers: the core only counts and hands them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import (
    INVALID_CDB_MESSAGE,
    NEED_DATA,
    NO_FD_MESSAGE,
    SHORT_DATA_MESSAGE,
    ClientConnection,
    Closed,
    Event,
    FeaturesAgreed,
    FeaturesOffered,
    PrReply,
    PrRequest,
    ReplyNotAllowed,
    ServerConnection,
    State,
    reply_fault,
)
from prguard.shared.scsi import Sense, Status

FEATURES = bytes(4)
SENSE0 = bytes(96)


@dataclass(frozen=True)
class Chunk:
    """Bytes as one read delivers them, with the fds that came along."""

    data: bytes
    fds: tuple[int, ...] = ()


def drive(chunks: Sequence[Chunk], split: str = "whole", conn: ServerConnection | None = None
          ) -> tuple[list[Event], ServerConnection]:
    """Feed chunks to a fresh server (or `conn`, to look at it after a violation);
    `split` = whole | bytes (one byte per read)."""
    conn = conn or ServerConnection()
    assert conn.initiate() == FEATURES
    events: list[Event] = []
    pieces: list[Chunk] = []
    for chunk in chunks:
        if split == "bytes" and chunk.data:
            pieces.append(Chunk(chunk.data[:1], chunk.fds))
            pieces += [Chunk(bytes([b])) for b in chunk.data[1:]]
        else:
            pieces.append(chunk)
    pieces.append(Chunk(b""))  # EOF
    for piece in pieces:
        conn.receive_data(piece.data, piece.fds)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            events.append(event)
            if isinstance(event, Closed):
                return events, conn
            if isinstance(event, PrRequest):
                conn.send_reply(PrReply(Status.GOOD, SENSE0))
    return events, conn


VALID_CASES: list[tuple[str, list[Chunk], list[Event]]] = [
    ("handshake then EOF", [Chunk(FEATURES)], [FeaturesAgreed(0), Closed()]),
    ("PR IN", [Chunk(FEATURES), Chunk(pr_in_cdb(0, 24), (7,))],
     [FeaturesAgreed(0), PrRequest(pr_in_cdb(0, 24), 7, b""), Closed()]),
    ("PR IN allocation 8192", [Chunk(FEATURES), Chunk(pr_in_cdb(0, 8192), (7,))],
     [FeaturesAgreed(0), PrRequest(pr_in_cdb(0, 8192), 7, b""), Closed()]),
    ("PR OUT with 24 bytes", [Chunk(FEATURES), Chunk(pr_out_cdb(0, 24), (5,)),
                              Chunk(bytes(range(24)))],
     [FeaturesAgreed(0), PrRequest(pr_out_cdb(0, 24), 5, bytes(range(24))), Closed()]),
    ("PR OUT length 0", [Chunk(FEATURES), Chunk(pr_out_cdb(3, 0), (5,))],
     [FeaturesAgreed(0), PrRequest(pr_out_cdb(3, 0), 5, b""), Closed()]),
    ("PR OUT frames with bytes 7-8 only",
     [Chunk(FEATURES), Chunk(b"\x5f\0\0\0\0\x00\x01\x00\x18" + bytes(7), (5,)),
      Chunk(bytes(24))],
     [FeaturesAgreed(0), PrRequest(b"\x5f\0\0\0\0\x00\x01\x00\x18" + bytes(7), 5, bytes(24)),
      Closed()]),
    ("two requests back to back",
     [Chunk(FEATURES), Chunk(pr_in_cdb(), (3,)), Chunk(pr_in_cdb(1), (4,))],
     [FeaturesAgreed(0), PrRequest(pr_in_cdb(), 3, b""), PrRequest(pr_in_cdb(1), 4, b""),
      Closed()]),
    ("fd on a later chunk of the CDB",
     [Chunk(FEATURES), Chunk(pr_in_cdb()[:5]), Chunk(pr_in_cdb()[5:], (9,))],
     [FeaturesAgreed(0), PrRequest(pr_in_cdb(), 9, b""), Closed()]),
]


@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize(("name", "chunks", "expected"), VALID_CASES,
                         ids=[c[0] for c in VALID_CASES])
def test_valid_streams(name: str, chunks: list[Chunk], expected: list[Event],
                       split: str) -> None:
    events, conn = drive(chunks, split)
    assert events == expected
    assert conn.take_fds() == []


def test_trailing_bytes_wait_for_the_reply() -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.receive_data(FEATURES)
    assert conn.next_event() == FeaturesAgreed(0)
    conn.receive_data(pr_in_cdb() + pr_in_cdb(1), (8,))
    assert conn.next_event() == PrRequest(pr_in_cdb(), 8, b"")
    assert conn.next_event() is NEED_DATA  # one request at a time
    conn.send_reply(PrReply(Status.GOOD, SENSE0))
    with pytest.raises(QemuProtocolError) as err:
        conn.next_event()  # second CDB has no fd of its own
    assert err.value.message == NO_FD_MESSAGE


CLOSE_CASES: list[tuple[str, list[Chunk], str | None]] = [
    ("EOF in handshake", [Chunk(b"\0\0")], None),
    ("unsupported feature bit", [Chunk(b"\0\0\0\1")], None),
    ("all feature bits", [Chunk(b"\xff\xff\xff\xff")], None),
    ("EOF inside the CDB", [Chunk(FEATURES), Chunk(pr_in_cdb()[:10], (3,))], None),
    ("no fd", [Chunk(FEATURES), Chunk(pr_in_cdb())], NO_FD_MESSAGE),
    ("two fds in one message", [Chunk(FEATURES), Chunk(pr_in_cdb(), (3, 4))], None),
    ("two fds over two chunks",
     [Chunk(FEATURES), Chunk(pr_in_cdb()[:4], (3,)), Chunk(pr_in_cdb()[4:], (4,))], None),
    ("WRITE(10)", [Chunk(FEATURES), Chunk(b"\x2a" + bytes(15), (3,))], INVALID_CDB_MESSAGE),
    ("FORMAT UNIT", [Chunk(FEATURES), Chunk(b"\x04" + bytes(15), (3,))], INVALID_CDB_MESSAGE),
    ("ATA PASS-THROUGH(16)", [Chunk(FEATURES), Chunk(b"\x85" + bytes(15), (3,))],
     INVALID_CDB_MESSAGE),
    ("PR IN allocation 8193", [Chunk(FEATURES), Chunk(pr_in_cdb(0, 8193), (3,))], None),
    ("PR OUT length 8193", [Chunk(FEATURES), Chunk(pr_out_cdb(0, 8193), (3,))], None),
    ("PR OUT length 65535", [Chunk(FEATURES), Chunk(pr_out_cdb(0, 0xFFFF), (3,))], None),
    ("PR OUT short data", [Chunk(FEATURES), Chunk(pr_out_cdb(0, 24), (3,)), Chunk(bytes(10))],
     SHORT_DATA_MESSAGE),
]


@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize(("name", "chunks", "message"), CLOSE_CASES,
                         ids=[c[0] for c in CLOSE_CASES])
def test_violations_close_and_release_every_fd(name: str, chunks: list[Chunk],
                                               message: str | None, split: str) -> None:
    conn = ServerConnection()
    with pytest.raises(QemuProtocolError) as err:
        drive(chunks, split, conn)
    assert err.value.message == message
    assert conn.state is State.ERROR
    # every fd that came with the stream is handed back for closing, none twice
    assert sorted(conn.take_fds()) == sorted(fd for chunk in chunks for fd in chunk.fds)
    assert conn.take_fds() == []


def test_violation_returns_fds_for_closing() -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.receive_data(FEATURES)
    conn.next_event()
    with pytest.raises(QemuProtocolError):
        conn.receive_data(pr_in_cdb(), (3, 4))
    assert sorted(conn.take_fds()) == [3, 4]
    assert conn.state is State.ERROR


def test_fds_with_handshake_or_parameter_bytes_are_discarded() -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.receive_data(FEATURES, (11,))
    assert conn.next_event() == FeaturesAgreed(0)
    conn.receive_data(pr_out_cdb(0, 24), (12,))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(bytes(24), (13,))
    assert conn.next_event() == PrRequest(pr_out_cdb(0, 24), 12, bytes(24))
    assert sorted(conn.take_fds()) == [11, 13]


def test_wanted_reads_exactly_what_the_c_helper_reads() -> None:
    conn = ServerConnection()
    conn.initiate()
    assert (conn.wanted().max_bytes, conn.wanted().with_fds) == (4, False)
    conn.receive_data(FEATURES)
    conn.next_event()
    assert (conn.wanted().max_bytes, conn.wanted().with_fds) == (16, True)
    conn.receive_data(pr_out_cdb(0, 40)[:6], (3,))
    assert conn.next_event() is NEED_DATA
    assert (conn.wanted().max_bytes, conn.wanted().with_fds) == (10, True)
    conn.receive_data(pr_out_cdb(0, 40)[6:])
    assert conn.next_event() is NEED_DATA
    assert (conn.wanted().max_bytes, conn.wanted().with_fds) == (40, False)


@pytest.mark.parametrize(("cdb", "reply"), [
    (pr_out_cdb(0, 24), PrReply(Status.GOOD, SENSE0, b"x")),
    (pr_in_cdb(0, 8), PrReply(Status.GOOD, SENSE0, bytes(9))),
    (pr_in_cdb(0, 0), PrReply(Status.GOOD, SENSE0, b"\0")),
    (pr_in_cdb(0, 8), PrReply(Status.CHECK_CONDITION, SENSE0, b"x")),
])
def test_reply_never_carries_data_qemu_would_abort_on(cdb: bytes, reply: PrReply) -> None:
    conn2 = ServerConnection()
    conn2.initiate()
    conn2.receive_data(FEATURES)
    conn2.next_event()
    conn2.receive_data(cdb, (3,))
    if cdb[0] == 0x5F:
        conn2.receive_data(bytes(24))
    request = conn2.next_event()
    assert isinstance(request, PrRequest)
    assert reply_fault(request, reply) is not None
    with pytest.raises(ReplyNotAllowed):
        conn2.send_reply(reply)
    # nothing was sent: the request still waits for an answer QEMU can take
    assert conn2.state is State.SEND_REPLY
    assert conn2.send_reply(PrReply(Status.CHECK_CONDITION, SENSE0))[:4] == b"\0\0\0\2"


def test_reply_encoding_is_the_104_byte_header_plus_data() -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.receive_data(FEATURES)
    conn.next_event()
    conn.receive_data(pr_in_cdb(0, 16), (3,))
    conn.next_event()
    sense = Sense.INVALID_FIELD.fixed_format()
    wire = conn.send_reply(PrReply(Status.GOOD, sense, b"k" * 16))
    assert wire[:8] == b"\0\0\0\0\0\0\0\x10"
    assert wire[8:104] == sense and wire[104:] == b"k" * 16


def test_reply_objects_refuse_impossible_values() -> None:
    with pytest.raises(ValueError):
        PrReply(0x100, SENSE0)
    with pytest.raises(ValueError):
        PrReply(Status.GOOD, bytes(95))
    with pytest.raises(ValueError):
        PrReply(Status.GOOD, SENSE0, bytes(8193))


def test_client_and_server_back_to_back() -> None:
    server, client = ServerConnection(), ClientConnection()
    client.receive_data(server.initiate())
    assert client.next_event() == FeaturesOffered(0)
    server.receive_data(client.send_features())
    assert server.next_event() == FeaturesAgreed(0)
    cdb, params = client.send_request(pr_out_cdb(6, 24), bytes(range(24)))
    server.receive_data(cdb, (42,))
    server.receive_data(params)
    request = server.next_event()
    assert request == PrRequest(pr_out_cdb(6, 24), 42, bytes(range(24)))
    client.receive_data(server.send_reply(PrReply(Status.RESERVATION_CONFLICT, SENSE0)))
    assert client.next_event() == PrReply(Status.RESERVATION_CONFLICT, SENSE0)
    cdb, _ = client.send_request(pr_in_cdb(0, 8))
    server.receive_data(cdb, (43,))
    server.next_event()
    client.receive_data(server.send_reply(PrReply(Status.GOOD, SENSE0, b"12345678")))
    assert client.next_event() == PrReply(Status.GOOD, SENSE0, b"12345678")


# -- hypothesis: arbitrary byte and fd streams -----------------------------------------

chunks_strategy = st.lists(
    st.tuples(st.binary(min_size=0, max_size=40),
              st.lists(st.integers(min_value=3, max_value=999), max_size=3)),
    max_size=12)


@settings(max_examples=600, deadline=None)
@given(prefix=st.sampled_from([b"", FEATURES, FEATURES + pr_in_cdb(), FEATURES + pr_out_cdb()]),
       stream=chunks_strategy)
def test_arbitrary_streams_raise_only_protocol_errors_and_lose_no_fd(
        prefix: bytes, stream: list[tuple[bytes, list[int]]]) -> None:
    conn = ServerConnection()
    conn.initiate()
    seen: list[int] = []
    handed: list[int] = []
    feed = ([(prefix, [1000])] if prefix else []) + stream + [(b"", [])]
    try:
        for data, fds in feed:
            fds = [fd for fd in fds if fd not in seen]
            seen += fds
            if not data:
                data = b""
            conn.receive_data(data, fds)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, PrRequest):
                    handed.append(event.fd)
                    conn.send_reply(PrReply(Status.GOOD, SENSE0))
                if isinstance(event, Closed):
                    raise StopIteration
            if not data:
                break
    except (QemuProtocolError, StopIteration):
        pass
    returned = conn.take_fds()
    assert sorted(handed + returned) == sorted(seen)
