"""The channel schema: round trips, and strict refusal of everything else."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    MAX_MESSAGE_SIZE,
    VERSION,
    Malformed,
    Message,
    MsgType,
    Ready,
    Refused,
    SgIoRequest,
    SgIoResult,
    decode,
)

SAMPLES: list[Message] = [
    SgIoRequest(1, bytes(16), b""),
    SgIoRequest(2**63 - 1, b"\x5f" + bytes(15), bytes(8192)),
    SgIoResult(7, 0x18, bytes(96), b""),
    SgIoResult(8, 0, bytes(96), b"k" * 8192),
    Refused(9, 2, bytes(96), "PR OUT on a read-only fd"),
    Malformed("unknown message type"),
    Ready(1234),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    wire = message.encode()
    assert len(wire) <= MAX_MESSAGE_SIZE
    assert decode(wire) == message


def test_types_pair_requests_even_with_answers_odd() -> None:
    assert MsgType.SGIO_REQUEST % 2 == 0
    assert all(t % 2 == 1 for t in MsgType if t is not MsgType.SGIO_REQUEST)


def pack(body: object) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


GOOD = {"v": VERSION, "t": int(MsgType.SGIO_REQUEST), "id": 1, "cdb": bytes(16), "data": b""}

BAD: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\xc1\xc1\xc1"),
    ("not a map", pack([1, 2, 3])),
    ("trailing bytes", pack(GOOD) + b"\0"),
    ("extra key", pack({**GOOD, "extra": 1})),
    ("missing key", pack({k: v for k, v in GOOD.items() if k != "data"})),
    ("wrong version", pack({**GOOD, "v": 2})),
    ("bool version", pack({**GOOD, "v": True})),
    ("unknown type", pack({**GOOD, "t": 0x7F})),
    ("cdb as str", pack({**GOOD, "cdb": "x" * 16})),
    ("cdb 15 bytes", pack({**GOOD, "cdb": bytes(15)})),
    ("data 8193 bytes", pack({**GOOD, "data": bytes(8193)})),
    ("id negative", pack({**GOOD, "id": -1})),
    ("id bool", pack({**GOOD, "id": True})),
    ("id float", pack({**GOOD, "id": 1.0})),
    ("nested map", pack({**GOOD, "data": {"a": {"b": {}}}})),
    ("array value", pack({**GOOD, "data": [1]})),
    ("int key", pack({1: 2})),
    ("huge bin", b"\xc6\xff\xff\xff\xff"),
    ("oversize datagram", bytes(MAX_MESSAGE_SIZE + 1)),
    ("sense 95 bytes", pack({"v": 1, "t": 0x11, "id": 1, "status": 0, "sense": bytes(95),
                             "data": b""})),
    ("status 256", pack({"v": 1, "t": 0x11, "id": 1, "status": 256, "sense": bytes(96),
                         "data": b""})),
    ("long reason", pack({"v": 1, "t": 0x15, "reason": "x" * 201})),
    ("ext type", b"\xd4\x01\x00"),
]


@pytest.mark.parametrize(("name", "wire"), BAD, ids=[b[0] for b in BAD])
def test_strict_decoding_refuses(name: str, wire: bytes) -> None:
    with pytest.raises(ChannelError):
        decode(wire)


def test_constructors_refuse_what_decode_refuses() -> None:
    with pytest.raises(ChannelError):
        SgIoRequest(1, bytes(17), b"")
    with pytest.raises(ChannelError):
        SgIoResult(1, 0, bytes(96), bytes(8193))


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_channel_error(wire: bytes) -> None:
    try:
        message = decode(wire)
    except ChannelError:
        return
    assert decode(message.encode()) == message  # what was accepted is what it says


def canonical(body: dict[Any, Any]) -> bytes:
    """The map's bytes with keys in one order (True and 1 still differ)."""
    return pack(dict(sorted(body.items(), key=repr)))


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=4),
    max_leaves=20)


KEYS = ["v", "t", "id", "cdb", "data", "status", "sense", "reason", "pid", "x"]
#: each sample's own map with one key set to anything: near misses that often decode
near_misses = st.builds(lambda base, key, value: {**base, key: value},
                        st.sampled_from([msgpack.unpackb(m.encode()) for m in SAMPLES]),
                        st.sampled_from(KEYS), json_like)


@settings(max_examples=800, deadline=None)
@given(near_misses | st.dictionaries(st.sampled_from(KEYS), json_like, max_size=7))
def test_arbitrary_maps_decode_or_raise_channel_error(body: dict[str, object]) -> None:
    try:
        message = decode(pack(body))
    except ChannelError:
        return
    # accepted only if the map is exactly the message's own: no extra key, no value
    # read as something else (a bool as an int, a float as an int, str as bytes)
    assert canonical(msgpack.unpackb(message.encode())) == canonical(dict(body))
