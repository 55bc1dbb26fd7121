"""The audit record's line format: fixed key order, strict decoding, UTC text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prguard.shared.audit_record import (
    GENESIS,
    Answer,
    Cause,
    ClientIdentity,
    Command,
    DeviceIdentity,
    Record,
    RecordError,
    decode,
    encode,
    utc_text,
)

CLIENT = ClientIdentity(pid=8319, uid=107, gid=107,
                        cgroup="/machine.slice/machine-qemu\\x2d1\\x2dweb02.scope/libvirt/emulator",
                        unit="machine-qemu\\x2d1\\x2dweb02.scope", domain="web02", pidfd=True)
DEVICE = DeviceIdentity(dev="8:16", diskseq=12, wwn="0x6001405aa11b2c3d4e5f60718293a4b5",
                        designator="naa.6001405aa11b2c3d4e5f60718293a4b5", vendor="LIO-ORG",
                        model="disk0", serial="aa11b2c3-d4e5")
DONE = Record(
    seq=7, prev="ab" * 32, time="2026-11-29T03:12:07.123456Z", kind="command", phase="done",
    issued=6, duration_us=812, client=CLIENT, device=DEVICE,
    command=Command(op="PR OUT", action="PREEMPT AND ABORT", cdb="5f05" + "00" * 14,
                    param="00" * 24, type="Write Exclusive", scope=0, key="0x2", sa_key="0x1",
                    aptpl=False, all_tg_pt=False, spec_i_pt=False),
    answer=Answer(status="GOOD"),
    cause=Cause(errno=None, host_status=0, driver_status=0, device_status=0))


def test_a_record_survives_encoding() -> None:
    assert decode(encode(DONE)) == DONE


def test_keys_come_in_field_order_and_absent_values_are_left_out() -> None:
    body = json.loads(encode(DONE))
    assert list(body)[:5] == ["v", "seq", "prev", "time", "kind"]
    assert "errno" not in body["cause"]
    assert "dm_name" not in body["device"]
    assert list(body["client"]) == ["pid", "uid", "gid", "cgroup", "unit", "domain", "pidfd"]


def test_the_line_is_ascii_and_one_line() -> None:
    record = Record(seq=1, prev=GENESIS, time="t", kind="refused",
                    cause=Cause(refused_by="policy", rule="vm \u00e9t\u00e9\nline2"))
    line = encode(record)
    assert line.isascii() and b"\n" not in line
    assert decode(line).cause == record.cause


@pytest.mark.parametrize(("line", "complaint"), [
    (b"", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"v":2,"seq":1}', "not a version 1 record"),
    (b'{"seq":1}', "not a version 1 record"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused","x":1}',
     "unknown field 'x'"),
    (b'{"v":1,"seq":true,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused"}',
     "record.seq: bool"),
    (b'{"v":1,"seq":1.0,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused"}',
     "record.seq: float"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused","phase":null}',
     "null"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"nonsense"}',
     "unknown kind"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"command"}',
     "has a phase"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused",'
     b'"phase":"done"}', "has a phase"),
    (b'{"v":1,"seq":1,"prev":"AB","time":"t","kind":"refused"}', "64 lowercase hex"),
    (b'{"v":1,"seq":0,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused"}',
     "seq starts at 1"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused",'
     b'"client":{"pid":1,"uid":0}}', "gid"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused",'
     b'"client":{"pid":1,"uid":0,"gid":0,"extra":1}}', "record.client: unknown field"),
    (b'{"v":1,"seq":1,"prev":"' + b"0" * 64 + b'","time":"t","kind":"refused",'
     b'"client":7}', "record.client: int"),
    (b"\xff\xfe", "not JSON"),
])
def test_strict_decoding(line: bytes, complaint: str) -> None:
    with pytest.raises(RecordError, match=complaint):
        decode(line)


@pytest.mark.parametrize(("ns", "text"), [
    (0, "1970-01-01T00:00:00.000000Z"),
    (1_795_921_927_123_456_789, "2026-11-29T03:12:07.123456Z"),
    (951_782_400_000_001_000, "2000-02-29T00:00:00.000001Z"),
])
def test_utc_text(ns: int, text: str) -> None:
    assert utc_text(ns) == text


@given(st.text(max_size=50), st.integers(min_value=0, max_value=2**63),
       st.booleans(), st.none() | st.text(max_size=20))
def test_any_text_and_number_round_trips(text: str, number: int, flag: bool,
                                         maybe: str | None) -> None:
    record = Record(seq=number + 1, prev=GENESIS, time=text, kind="refused",
                    client=ClientIdentity(pid=number, uid=0, gid=0, cgroup=text, unit=maybe,
                                          pidfd=flag),
                    cause=Cause(reason=text, rule=maybe))
    line = encode(record)
    assert line.isascii() and b"\n" not in line
    assert decode(line) == record
