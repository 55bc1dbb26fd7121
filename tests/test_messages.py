"""The channel schema: round trips, and strict refusal of everything else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    MAX_MESSAGE_SIZE,
    VERSION,
    Forget,
    Identified,
    Identify,
    Malformed,
    MapPaths,
    MapRefused,
    MapRequest,
    Message,
    MsgType,
    PathFd,
    PathState,
    PolicyReloaded,
    Ready,
    Refused,
    ReloadPolicy,
    SgIoRequest,
    SgIoResult,
    decode,
)
from prguard.shared.scsi import PrReply

SAMPLES: list[Message] = [
    SgIoRequest(1, bytes(16), b""),
    SgIoRequest(2**63 - 1, b"\x5f" + bytes(15), bytes(8192)),
    SgIoRequest(3, bytes(16), b"", 2**63 - 1),
    SgIoResult(7, PrReply(0x18, bytes(96))),
    SgIoResult(8, PrReply(0, bytes(96), b"k" * 8192)),
    Refused(9, 2, bytes(96), "PR OUT on a read-only fd"),
    Malformed("unknown message type"),
    Ready(1234),
    MapRequest(3, ()),
    MapRequest(4, tuple(range(64))),
    MapPaths(5, "mpath-36001405aa", (PathState(2064, "sdb", True),
                                     PathState(2080, "s" * 32, False)), 1),
    PathFd(6, 2**64 - 1),
    MapRefused(7, "254:3 is not a device-mapper map"),
    Identify(1, 1, 0, 0, 0),
    Identify(2**63 - 1, 2**63 - 1, 2**31 - 1, 2**32 - 1, 2**32 - 1),
    Identified(5),
    Forget(6),
    ReloadPolicy(7),
    PolicyReloaded(7, True, ""),
    PolicyReloaded(8, False, "policy.toml:3: rule 1: unknown key 'x'"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    wire = message.encode()
    assert len(wire) <= MAX_MESSAGE_SIZE
    assert decode(wire) == message


REQUESTS = {MsgType.SGIO_REQUEST, MsgType.PROBE, MsgType.IDENTIFY, MsgType.FORGET,
            MsgType.RELOAD_POLICY, MsgType.MAP_REQUEST}


def test_types_pair_requests_even_with_answers_odd() -> None:
    assert all(t % 2 == 0 for t in REQUESTS)
    assert all(t % 2 == 1 for t in MsgType if t not in REQUESTS)


def pack(body: object) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


GOOD = [VERSION, int(MsgType.SGIO_REQUEST), 1, bytes(16), b"", 0]


def with_item(index: int, value: object) -> list[object]:
    body = list(GOOD)
    body[index] = value
    return body


BAD: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\xc1\xc1\xc1"),
    ("not an array", pack(5)),
    ("a map", pack({"v": VERSION, "t": 0x10, "id": 1, "cdb": bytes(16), "data": b""})),
    ("version alone", pack([VERSION])),
    ("trailing bytes", pack(GOOD) + b"\0"),
    ("extra field", pack([*GOOD, 1])),
    ("missing field", pack(GOOD[:-1])),
    ("wrong version", pack(with_item(0, 2))),
    ("bool version", pack(with_item(0, True))),
    ("unknown type", pack(with_item(1, 0x7F))),
    ("bool type", pack(with_item(1, True))),
    ("cdb as str", pack(with_item(3, "x" * 16))),
    ("cdb 15 bytes", pack(with_item(3, bytes(15)))),
    ("data 8193 bytes", pack(with_item(4, bytes(8193)))),
    ("id negative", pack(with_item(2, -1))),
    ("id bool", pack(with_item(2, True))),
    ("id float", pack(with_item(2, 1.0))),
    ("nested map", pack(with_item(4, {"a": {"b": {}}}))),
    ("array value", pack(with_item(4, [1]))),
    ("huge bin", b"\xc6\xff\xff\xff\xff"),
    ("huge array", b"\xdd\xff\xff\xff\xff"),
    ("oversize datagram", bytes(MAX_MESSAGE_SIZE + 1)),
    ("sense 95 bytes", pack([1, 0x11, 1, 0, bytes(95), b""])),
    ("status 256", pack([1, 0x11, 1, 256, bytes(96), b""])),
    ("status bool", pack([1, 0x11, 1, False, bytes(96), b""])),
    ("long reason", pack([1, 0x15, "x" * 201])),
    ("ext type", b"\xd4\x01\x00"),
    ("have not whole", pack([1, 0x20, 1, bytes(9)])),
    ("have 65 paths", pack([1, 0x20, 1, bytes(8 * 65)])),
    ("paths empty", pack([1, 0x21, 1, "mpath-x", b"", 0])),
    ("paths not whole", pack([1, 0x21, 1, "mpath-x", bytes(42), 0])),
    ("paths out of order", pack([1, 0x21, 1, "mpath-x", MapPaths(
        1, "m", (PathState(2, "sdb", True), PathState(3, "sdc", True)), 0).body()[2][41:]
        + MapPaths(1, "m", (PathState(2, "sdb", True),), 0).body()[2], 0])),
    ("path twice", pack([1, 0x21, 1, "mpath-x", MapPaths(
        1, "m", (PathState(2, "sdb", True),), 0).body()[2] * 2, 0])),
    ("path live 2", pack([1, 0x21, 1, "mpath-x", bytes(8) + b"\x02" + b"sdb".ljust(32, b"\0"),
                          0])),
    ("path no name", pack([1, 0x21, 1, "mpath-x", bytes(41), 0])),
    ("path name slash", pack([1, 0x21, 1, "mpath-x",
                              bytes(8) + b"\x01" + b"../sda".ljust(32, b"\0"), 0])),
    ("path name with nul", pack([1, 0x21, 1, "mpath-x",
                                 bytes(8) + b"\x01" + b"sd\0a".ljust(32, b"\0"), 0])),
    ("more fds than paths", pack([1, 0x21, 1, "mpath-x", MapPaths(
        1, "m", (PathState(2, "sdb", True),), 0).body()[2], 2])),
    ("uuid empty", pack([1, 0x21, 1, "", MapPaths(
        1, "m", (PathState(2, "sdb", True),), 0).body()[2], 0])),
    ("rdev negative", pack([1, 0x23, 1, -1])),
    ("path name newline", pack([1, 0x21, 1, "mpath-x",
                                bytes(8) + b"\x01" + b"sd\nb".ljust(32, b"\0"), 0])),
    ("uuid newline", pack([1, 0x21, 1, "mpath-x\nprguard: forged", MapPaths(
        1, "m", (PathState(2, "sdb", True),), 0).body()[2], 0])),
    ("connection negative", pack(with_item(5, -1))),
    ("connection bool", pack(with_item(5, False))),
    ("identify connection 0", pack([1, 0x12, 1, 0, 1, 0, 0])),
    ("identify uid 2**32", pack([1, 0x12, 1, 1, 1, 2**32, 0])),
    ("forget connection 0", pack([1, 0x14, 0])),
    ("reloaded ok as int", pack([1, 0x1D, 1, 1, ""])),
    ("reloaded long reason", pack([1, 0x1D, 1, False, "x" * 201])),
]


@pytest.mark.parametrize(("name", "wire"), BAD, ids=[b[0] for b in BAD])
def test_strict_decoding_refuses(name: str, wire: bytes) -> None:
    with pytest.raises(ChannelError):
        decode(wire)


def test_constructors_refuse_what_decode_refuses() -> None:
    with pytest.raises(ChannelError):
        SgIoRequest(1, bytes(17), b"")
    with pytest.raises(ChannelError):
        SgIoResult(1, (0, bytes(96), b""))  # type: ignore[arg-type]


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_channel_error(wire: bytes) -> None:
    try:
        message = decode(wire)
    except ChannelError:
        return
    assert decode(message.encode()) == message  # what was accepted is what it says


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=4),
    max_leaves=20)


#: each sample's own array with one item set to anything, or one too many or too few:
#: near misses that often decode
near_misses = st.one_of(
    st.builds(lambda base, index, value: [*base[:index], value, *base[index + 1:]],
              st.sampled_from([list(msgpack.unpackb(m.encode())) for m in SAMPLES]),
              st.integers(min_value=0, max_value=5), json_like),
    st.builds(lambda base, value: [*base, value],
              st.sampled_from([list(msgpack.unpackb(m.encode())) for m in SAMPLES]),
              json_like),
    st.builds(lambda base: base[:-1],
              st.sampled_from([list(msgpack.unpackb(m.encode())) for m in SAMPLES])),
)


@settings(max_examples=800, deadline=None)
@given(near_misses | st.lists(json_like, max_size=7))
def test_arbitrary_arrays_decode_or_raise_channel_error(body: list[object]) -> None:
    try:
        message = decode(pack(body))
    except ChannelError:
        return
    # accepted only if the array is exactly the message's own: no extra item, no value
    # read as something else (a bool as an int, a float as an int, str as bytes)
    assert message.encode() == pack(body)
