"""prguard-client's SPC-4 codecs, on hand-built byte strings: good answers, and every way
an answer can be short or inconsistent (a DecodeError, never an IndexError)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from prguard.client import decode, encode
from prguard.client.decode import (
    Capabilities,
    DecodeError,
    FullStatus,
    Keys,
    PrType,
    Registration,
    Reservation,
    ReservationStatus,
    TransportId,
    TruncatedError,
)
from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.qemu_protocol import PrRequest
from prguard.shared.scsi import PrInAction, PrOutAction, Sense, SenseCode, transfer_length

K1 = bytes.fromhex("0123456789abcdef")
K2 = bytes.fromhex("00000000000000aa")


def be32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def header(generation: int, length: int) -> bytes:
    return be32(generation) + be32(length)


SAS_ADDRESS = bytes.fromhex("5001405fa1b2c3d4")
SAS_TID = bytes([0x06, 0, 0, 0]) + SAS_ADDRESS + bytes(12)
FC_TID = bytes([0x00]) + bytes(7) + bytes.fromhex("21000024ff123456") + bytes(8)
SRP_TID = bytes([0x04]) + bytes(7) + bytes(range(16))
ISCSI_NAME = b"iqn.2003-01.org.linux-iscsi.host:sn.1"  # 37 bytes + NUL -> field of 40
ISCSI_TID = bytes([0x05, 0]) + (40).to_bytes(2, "big") + ISCSI_NAME.ljust(40, b"\0")
ISCSI_PORT = ISCSI_NAME + b",i,0x23d000000001"
ISCSI_PORT_TID = bytes([0x45, 0]) + (56).to_bytes(2, "big") + ISCSI_PORT.ljust(56, b"\0")
SOP_TID = bytes([0x0A, 0, 0x12, 0x34]) + bytes(20)


def descriptor(key: bytes, flags: int, scope_type: int, port: int, tid: bytes) -> bytes:
    return (key + bytes(4) + bytes([flags, scope_type]) + bytes(4) + port.to_bytes(2, "big")
            + be32(len(tid)) + tid)


# -- READ KEYS --------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (header(0, 0), Keys(0, ())),
    (header(5, 16) + K1 + K2, Keys(5, (0x0123456789ABCDEF, 0xAA))),
    # a multipath helper pads to the allocation length: the padding is not a key
    (header(5, 8) + K1 + bytes(64), Keys(5, (0x0123456789ABCDEF,))),
    (header(0xFFFFFFFF, 8) + bytes(8), Keys(0xFFFFFFFF, (0,))),
], ids=["none", "two", "padded", "zero key"])
def test_read_keys(data: bytes, expected: Keys) -> None:
    assert decode.decode_read_keys(data) == expected


# -- READ RESERVATION -------------------------------------------------------------------

def reservation(key: bytes, scope_type: int) -> bytes:
    return header(3, 16) + key + bytes(4) + bytes([0, scope_type]) + bytes(2)


@pytest.mark.parametrize(("data", "expected"), [
    (header(3, 0), ReservationStatus(3, None)),
    (reservation(K1, 0x01), ReservationStatus(3, Reservation(0x0123456789ABCDEF, 0, 1))),
    (reservation(K2, 0x08), ReservationStatus(3, Reservation(0xAA, 0, 8))),
    (reservation(K2, 0x25), ReservationStatus(3, Reservation(0xAA, 2, 5))),
], ids=["none", "write exclusive", "EA all registrants", "obsolete scope"])
def test_read_reservation(data: bytes, expected: ReservationStatus) -> None:
    assert decode.decode_read_reservation(data) == expected


@pytest.mark.parametrize(("code", "name"), [
    (1, "Write Exclusive"), (3, "Exclusive Access"), (5, "Write Exclusive, Registrants Only"),
    (6, "Exclusive Access, Registrants Only"), (7, "Write Exclusive, All Registrants"),
    (8, "Exclusive Access, All Registrants"), (2, "obsolete or reserved type 0x2"),
])
def test_type_names(code: int, name: str) -> None:
    assert decode.type_name(code) == name


# -- REPORT CAPABILITIES ----------------------------------------------------------------

ALL_TYPES = tuple(PrType)


@pytest.mark.parametrize(("data", "expected", "types"), [
    (bytes.fromhex("00081d91ea010000"),
     Capabilities(8, True, True, True, True, True, 1, True, 0xEA01), ALL_TYPES),
    (bytes.fromhex("0008008002000000"),
     Capabilities(8, False, False, False, False, True, 0, False, 0x0200),
     (PrType.WRITE_EXCLUSIVE,)),
    # TMV clear: the mask means nothing, whatever it holds
    (bytes.fromhex("000801500fff0000"),
     Capabilities(8, False, False, False, True, False, 5, False, 0x0FFF), ()),
    (bytes.fromhex("0008800000000000"),
     Capabilities(8, False, False, False, False, False, 0, False, 0, rlr_c=True), ()),
], ids=["everything", "write exclusive only", "mask not valid", "replace lost capable"])
def test_report_capabilities(data: bytes, expected: Capabilities,
                             types: tuple[PrType, ...]) -> None:
    got = decode.decode_report_capabilities(data)
    assert got == expected
    assert got.types == types


# -- READ FULL STATUS -------------------------------------------------------------------

def full_status(*descriptors: bytes, generation: int = 7) -> bytes:
    body = b"".join(descriptors)
    return header(generation, len(body)) + body


def tid(raw: bytes, protocol: int, identifier: str, isid: str | None = None,
        format_code: int = 0) -> TransportId:
    return TransportId(protocol, format_code, identifier, isid, raw)


SAS = tid(SAS_TID, 6, "0x5001405fa1b2c3d4")


@pytest.mark.parametrize(("data", "expected"), [
    (full_status(generation=0), FullStatus(0, ())),
    (full_status(descriptor(K1, 0x01, 0x01, 1, SAS_TID)),
     FullStatus(7, (Registration(0x0123456789ABCDEF, False, True, 0, 1, 1, SAS),))),
    (full_status(descriptor(K1, 0x01, 0x03, 1, SAS_TID), descriptor(K2, 0x02, 0, 2, FC_TID)),
     FullStatus(7, (Registration(0x0123456789ABCDEF, False, True, 0, 3, 1, SAS),
                    Registration(0xAA, True, False, 0, 0, 2,
                                 tid(FC_TID, 0, "0x21000024ff123456"))))),
    (full_status(descriptor(K2, 0, 0, 3, ISCSI_TID)),
     FullStatus(7, (Registration(0xAA, False, False, 0, 0, 3,
                                 tid(ISCSI_TID, 5, ISCSI_NAME.decode())),))),
    (full_status(descriptor(K2, 0, 0, 3, ISCSI_PORT_TID)),
     FullStatus(7, (Registration(0xAA, False, False, 0, 0, 3,
                                 tid(ISCSI_PORT_TID, 5, ISCSI_NAME.decode(), "23d000000001",
                                     format_code=1)),))),
    (full_status(descriptor(K2, 0, 0, 4, SRP_TID)),
     FullStatus(7, (Registration(0xAA, False, False, 0, 0, 4,
                                 tid(SRP_TID, 4, "0x" + bytes(range(16)).hex())),))),
    # a protocol without a decoder: the whole TransportID in hex
    (full_status(descriptor(K2, 0, 0, 5, SOP_TID)),
     FullStatus(7, (Registration(0xAA, False, False, 0, 0, 5, tid(SOP_TID, 0xA,
                                                                   SOP_TID.hex())),))),
    (full_status(descriptor(K2, 0, 0, 1, SAS_TID)) + bytes(100),
     FullStatus(7, (Registration(0xAA, False, False, 0, 0, 1, SAS),))),
], ids=["empty", "SAS holder", "SAS and FC", "iSCSI name", "iSCSI port", "SRP", "SOP hex",
        "padded"])
def test_read_full_status(data: bytes, expected: FullStatus) -> None:
    assert decode.decode_read_full_status(data) == expected


def test_transport_id_names() -> None:
    assert SAS.protocol_name == "SAS"
    assert tid(SOP_TID, 0xA, "").protocol_name == "SOP"
    assert tid(b"", 0xE, "").protocol_name == "protocol 0xe"


# -- malformed PR IN data ---------------------------------------------------------------

DESC_SAS = descriptor(K1, 1, 1, 1, SAS_TID)

MALFORMED: list[tuple[str, bytes, type[DecodeError], str]] = [
    ("read_keys", b"", TruncatedError, "header needs 8 bytes, only 0"),
    ("read_keys", header(1, 0)[:7], TruncatedError, "needs 8 bytes, only 7"),
    ("read_keys", header(1, 16) + K1, TruncatedError, "additional length 16) needs 24 bytes"),
    ("read_keys", header(1, 0xFFFFFFFF), TruncatedError, "needs 4294967303 bytes"),
    ("read_keys", header(1, 12) + bytes(12), DecodeError, "not a multiple of 8"),
    ("read_reservation", header(1, 8) + K1, DecodeError, "neither 0 nor 16"),
    ("read_reservation", header(1, 16) + bytes(12), TruncatedError, "needs 24 bytes"),
    ("read_reservation", b"\0\0\0", TruncatedError, "header"),
    ("report_capabilities", b"", TruncatedError, "length field"),
    ("report_capabilities", b"\0", TruncatedError, "length field"),
    ("report_capabilities", bytes.fromhex("0004000000000000"), DecodeError, "under 8"),
    ("report_capabilities", bytes.fromhex("00081d91ea01"), TruncatedError, "only 6"),
    ("read_full_status", header(1, 24) + DESC_SAS[:24], DecodeError,
     "descriptor 1: TransportID of 24 bytes overruns the list"),
    ("read_full_status", header(1, 20) + DESC_SAS[:20], DecodeError,
     "descriptor 1 overruns the list"),
    ("read_full_status", full_status(DESC_SAS, DESC_SAS)[:60], TruncatedError, "only 60"),
    ("read_full_status", full_status(DESC_SAS, bytes(10)), DecodeError,
     "descriptor 2 overruns"),
    ("read_full_status", full_status(descriptor(K1, 0, 0, 1, b"")), DecodeError,
     "TransportID of 0 bytes is too short"),
    ("read_full_status", full_status(descriptor(K1, 0, 0, 1, SAS_TID[:8])), DecodeError,
     "SAS TransportID of 8 bytes (24 expected)"),
    ("read_full_status", full_status(descriptor(K1, 0, 0, 1, FC_TID[:12])), DecodeError,
     "FC TransportID of 12 bytes"),
    ("read_full_status", full_status(descriptor(K1, 0, 0, 1, ISCSI_TID[:24])), DecodeError,
     "iSCSI TransportID additional length 40 overruns its 24 bytes"),
    ("read_full_status",
     full_status(descriptor(K1, 0, 0, 1, bytes([5, 0, 0, 20]) + b"iqn.x" * 4)), DecodeError,
     "not null-terminated"),
    ("read_full_status",
     full_status(descriptor(K1, 0, 0, 1, bytes([5, 0, 0, 20]) + b"iqn.\xff".ljust(20, b"\0"))),
     DecodeError, "not UTF-8"),
    ("read_full_status",
     full_status(descriptor(K1, 0, 0, 1, bytes([0x45, 0, 0, 20]) + b"iqn.x".ljust(20, b"\0"))),
     DecodeError, "format 01b without"),
]


@pytest.mark.parametrize(("which", "data", "error", "text"), MALFORMED,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_data_is_a_clear_decode_error(which: str, data: bytes,
                                                error: type[DecodeError], text: str) -> None:
    decoder = getattr(decode, f"decode_{which}")
    with pytest.raises(error) as caught:
        decoder(data)
    assert text in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("which", ["read_keys", "read_reservation", "report_capabilities",
                                   "read_full_status"])
def test_every_prefix_of_good_data_decodes_or_raises_decode_error(which: str) -> None:
    good = {
        "read_keys": header(5, 16) + K1 + K2,
        "read_reservation": reservation(K1, 1),
        "report_capabilities": bytes.fromhex("00081d91ea010000"),
        "read_full_status": full_status(DESC_SAS, descriptor(K2, 0, 0, 2, ISCSI_PORT_TID)),
    }[which]
    decoder = getattr(decode, f"decode_{which}")
    decoder(good)
    for cut in range(len(good)):
        with pytest.raises(DecodeError):
            decoder(good[:cut])


def test_truncation_reports_what_was_needed() -> None:
    with pytest.raises(TruncatedError) as caught:
        decode.decode_read_keys(header(1, 24) + K1)
    assert (caught.value.needed, caught.value.available) == (32, 16)


# -- status and sense -------------------------------------------------------------------

def descriptor_sense(key: int, asc: int, ascq: int, code: int = 0x72) -> bytes:
    return bytes([code, key, asc, ascq, 0, 0, 0, 0]).ljust(96, b"\0")


@pytest.mark.parametrize(("sense", "code", "name", "deferred", "descriptor_format"), [
    (Sense.INVALID_FIELD.fixed_format(), "05/24/00", "invalid field in CDB", False, False),
    (Sense.INVALID_OPCODE.fixed_format(), "05/20/00", "invalid command operation code",
     False, False),
    (Sense.INVALID_PARAM.fixed_format(), "05/26/00", "invalid field in parameter list",
     False, False),
    (Sense.INVALID_PARAM_LEN.fixed_format(), "05/1a/00", "parameter list length error",
     False, False),
    (Sense.IO_ERROR.fixed_format(), "0b/00/06", "I/O process terminated", False, False),
    (Sense.LUN_COMM_FAILURE.fixed_format(), "0b/08/00", "logical unit communication failure",
     False, False),
    (Sense.TARGET_FAILURE.fixed_format(), "04/44/00", "internal target failure", False, False),
    (SenseCode(6, 0x29, 0x00).fixed_format(), "06/29/00",
     "power on, reset, or bus device reset occurred", False, False),
    (SenseCode(6, 0x29, 0x42).fixed_format(), "06/29/42",
     "power on, reset, or bus device reset occurred", False, False),
    (SenseCode(6, 0x2A, 0x03).fixed_format(), "06/2a/03", "reservations preempted", False,
     False),
    (SenseCode(6, 0x2A, 0x04).fixed_format(), "06/2a/04", "reservations released", False,
     False),
    (descriptor_sense(6, 0x2A, 0x05), "06/2a/05", "registrations preempted", False, True),
    (descriptor_sense(2, 0x04, 0x0B, code=0x73), "02/04/0b",
     "logical unit not accessible, target port in standby state", True, True),
    (descriptor_sense(2, 0x04, 0x77), "02/04/77", "logical unit not ready", False, True),
    (descriptor_sense(5, 0x99, 0x01), "05/99/01", None, False, True),
    (b"\xf0\0\x05\0\0\0\0\x0a\0\0\0\0\x24\0".ljust(96, b"\0"), "05/24/00",
     "invalid field in CDB", False, False),  # VALID bit set
    (b"\x71\0\x05\0\0\0\0\x0a\0\0\0\0\x24\0", "05/24/00", "invalid field in CDB", True, False),
    # ADDITIONAL SENSE LENGTH 0: no ASC/ASCQ, whatever bytes 12-13 hold
    (b"\x70\0\x06\0\0\0\0\x00\0\0\0\0\x29\0", "06/00/00", "no additional sense information",
     False, False),
])
def test_sense(sense: bytes, code: str, name: str | None, deferred: bool,
               descriptor_format: bool) -> None:
    got = decode.decode_sense(sense)
    assert got is not None
    assert str(got.code) == code
    assert got.asc_name == name
    assert got.deferred is deferred
    assert got.descriptor_format is descriptor_format


def test_sense_key_names() -> None:
    got = decode.decode_sense(Sense.INVALID_FIELD.fixed_format())
    assert got is not None and got.key_name == "ILLEGAL REQUEST"
    got = decode.decode_sense(Sense.IO_ERROR.fixed_format())
    assert got is not None and got.key_name == "ABORTED COMMAND"


@pytest.mark.parametrize(("sense", "error", "text"), [
    (b"\x7f" + bytes(95), DecodeError, "response code 0x7f"),
    (b"\x70\0\x05", TruncatedError, "fixed-format sense needs 8"),
    (b"\x70\0\x05\0\0\0\0\x0a\0\0\0", TruncatedError, "fixed-format sense needs 14"),
    (b"\x72\x05", TruncatedError, "descriptor-format sense needs 4"),
])
def test_malformed_sense(sense: bytes, error: type[DecodeError], text: str) -> None:
    with pytest.raises(error, match=text):
        decode.decode_sense(sense)


@pytest.mark.parametrize("sense", [b"", bytes(96), b"\x80" + bytes(95)])
def test_no_sense(sense: bytes) -> None:
    assert decode.decode_sense(sense) is None


@pytest.mark.parametrize(("status", "name"), [
    (0x00, "GOOD"), (0x02, "CHECK CONDITION"), (0x08, "BUSY"),
    (0x18, "RESERVATION CONFLICT"), (0x28, "TASK SET FULL"), (0x99, "status 0x99"),
])
def test_status_names(status: int, name: str) -> None:
    assert decode.status_name(status) == name


# -- encode -----------------------------------------------------------------------------

@pytest.mark.parametrize(("cdb", "expected"), [
    (encode.pr_in_cdb(PrInAction.READ_KEYS, 8192), "5e000000000000200000000000000000"),
    (encode.pr_in_cdb(PrInAction.READ_FULL_STATUS, 24), "5e030000000000001800000000000000"),
    (encode.pr_out_cdb(PrOutAction.RESERVE, 24, 1), "5f010100000000001800000000000000"),
    (encode.pr_out_cdb(PrOutAction.REGISTER_AND_MOVE, 52, 8),
     "5f070800000000003400000000000000"),
    (encode.pr_out_cdb(PrOutAction.CLEAR, 8192), "5f030000000000200000000000000000"),
])
def test_cdbs(cdb: bytes, expected: str) -> None:
    assert cdb.hex() == expected


def test_cdbs_match_what_the_other_tests_send_and_what_the_framing_reads() -> None:
    assert encode.pr_in_cdb(PrInAction.READ_RESERVATION, 24) == pr_in_cdb(1, 24)
    assert encode.pr_out_cdb(PrOutAction.PREEMPT, 24, 5) == pr_out_cdb(4, 24, 5)
    params = encode.pr_out_parameters(1, 2, transport_ids=[SAS_TID, ISCSI_TID])
    cdb = encode.pr_out_cdb(PrOutAction.REGISTER, len(params))
    assert transfer_length(cdb) == len(params)
    assert PrRequest(cdb, 0, params).transfer_length == len(params)


KEY = 0x1122334455667788
SARK = 0xAABBCCDDEEFF0011


@pytest.mark.parametrize(("params", "expected"), [
    (encode.pr_out_parameters(0, 0), "00" * 24),
    (encode.pr_out_parameters(KEY, SARK, aptpl=True),
     "1122334455667788" "aabbccddeeff0011" "00000000" "01000000"),
    (encode.pr_out_parameters(KEY, 0, all_tg_pt=True),
     "1122334455667788" "0000000000000000" "00000000" "04000000"),
    (encode.pr_out_parameters(0, SARK, transport_ids=[SAS_TID]),
     "0000000000000000" "aabbccddeeff0011" "00000000" "08000000" "00000018" + SAS_TID.hex()),
    (encode.pr_out_parameters(0, 1, all_tg_pt=True, aptpl=True,
                              transport_ids=[SAS_TID, FC_TID]),
     "0000000000000000" "0000000000000001" "00000000" "0d000000" "00000030"
     + SAS_TID.hex() + FC_TID.hex()),
    (encode.register_and_move_parameters(KEY, SARK, SAS_TID, relative_target_port=2,
                                         unreg=True, aptpl=True),
     "1122334455667788" "aabbccddeeff0011" "00" "03" "0002" "00000018" + SAS_TID.hex()),
    (encode.register_and_move_parameters(KEY, SARK, ISCSI_TID, relative_target_port=0x1234),
     "1122334455667788" "aabbccddeeff0011" "00" "00" "1234" "0000002c" + ISCSI_TID.hex()),
], ids=["zeros", "aptpl", "all_tg_pt", "spec_i_pt", "all flags", "move", "move iscsi"])
def test_parameter_lists(params: bytes, expected: str) -> None:
    assert params.hex() == expected


@pytest.mark.parametrize(("text", "raw"), [
    ("sas,5001405fa1b2c3d4", SAS_TID),
    ("SAS,0x5001405FA1B2C3D4", SAS_TID),
    ("fcp,21000024ff123456", FC_TID),
    ("fc,0x21000024ff123456", FC_TID),
    (ISCSI_NAME.decode(), ISCSI_TID),
    ("iscsi," + ISCSI_NAME.decode(), ISCSI_TID),
    (ISCSI_PORT.decode(), ISCSI_PORT_TID),
    ("iqn.a", bytes([5, 0, 0, 20]) + b"iqn.a".ljust(20, b"\0")),  # padded to the minimum
    ("hex,0a001234" + "00" * 20, SOP_TID),
    # sg_persist's forms
    ("6,0,0,0,50,1,40,5f,a1,b2,c3,d4", SAS_TID),  # hex bytes, padded to 24
    ("6 0 0 0 50 1 40 5f a1 b2 c3 d4", SAS_TID),
    ("FCP,21000024ff123456", FC_TID),
    ("sbp,0011223344556677", bytes([3]) + bytes(7) + bytes.fromhex("0011223344556677")
     + bytes(8)),
    ("srp,00112233445566778899aabbccddeeff",
     bytes([4]) + bytes(7) + bytes.fromhex("00112233445566778899aabbccddeeff")),
    ("spi,7,2", bytes([1, 0, 0, 7, 0, 0, 0, 2]) + bytes(16)),
    ("sop,0a12", bytes([0xA, 0, 0x0A, 0x12]) + bytes(20)),
])
def test_parse_transport_id(text: str, raw: bytes) -> None:
    assert encode.parse_transport_id(text) == raw


@pytest.mark.parametrize("raw", [SAS_TID, FC_TID, ISCSI_TID, ISCSI_PORT_TID])
def test_transport_ids_round_trip(raw: bytes) -> None:
    decoded = decode.decode_transport_id(raw)
    rebuilt = {
        6: lambda: encode.sas_transport_id(int(decoded.identifier, 16)),
        0: lambda: encode.fc_transport_id(int(decoded.identifier, 16)),
        5: lambda: encode.iscsi_transport_id(decoded.identifier, decoded.isid),
    }[decoded.protocol]()
    assert rebuilt == raw


@pytest.mark.parametrize(("build", "text"), [
    (lambda: encode.pr_in_cdb(PrInAction.READ_KEYS, 8193), "allocation length 8193"),
    (lambda: encode.pr_in_cdb(PrInAction.READ_KEYS, -1), "allocation length -1"),
    (lambda: encode.pr_out_cdb(PrOutAction.RESERVE, 24, 16), "reservation type 16"),
    (lambda: encode.pr_out_cdb(PrOutAction.RESERVE, 8193), "parameter list length 8193"),
    (lambda: encode.pr_out_parameters(2**64, 0), "reservation key"),
    (lambda: encode.pr_out_parameters(0, -1), "service action reservation key"),
    (lambda: encode.pr_out_parameters(0, 0, transport_ids=[SAS_TID] * 341), "over the"),
    (lambda: encode.register_and_move_parameters(0, 0, b"", relative_target_port=1),
     "needs a TransportID"),
    (lambda: encode.register_and_move_parameters(0, 0, SAS_TID, relative_target_port=65536),
     "relative target port"),
    (lambda: encode.register_and_move_parameters(0, 0, bytes(8170), relative_target_port=1),
     "over the"),
    (lambda: encode.sas_transport_id(2**64), "SAS port name"),
    (lambda: encode.iscsi_transport_id("iqn.x", "12"), "ISID"),
    (lambda: encode.iscsi_transport_id(""), "not an iSCSI name"),
    (lambda: encode.iscsi_transport_id("iqn." + "x" * 220), "longer than 223"),
    (lambda: encode.parse_transport_id("sas,xyz"), "not a hex number"),
    (lambda: encode.parse_transport_id("hex,0a0"), "not hex bytes"),
    (lambda: encode.parse_transport_id("hex,0a00"), "at least 4 bytes"),
    (lambda: encode.parse_transport_id("spi,1"), "SPI TransportID '1' is not ADDRESS,PORT"),
    (lambda: encode.parse_transport_id("xyz,1"), "unrecognised TransportID"),
    (lambda: encode.parse_transport_id("6,0,100"), "'100' in '6,0,100' is not a hex byte"),
    (lambda: encode.parse_transport_id("srp," + "1" * 33), "SRP port name"),
    (lambda: encode.parse_transport_id("host1"), "unrecognised TransportID"),
])
def test_encode_refuses_what_does_not_fit(build: Callable[[], object], text: str) -> None:
    with pytest.raises(encode.EncodeError, match=text):
        build()
