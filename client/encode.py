"""Pure builders of PR IN/OUT CDBs, PR OUT parameter lists and TransportIDs (SPC-4).

CDBs are 16 bytes, the PR command's 10 followed by zeros, because that is what QEMU puts on
the helper's socket. Every builder checks its ranges and raises EncodeError (a
ValueError), so nothing the wire protocol or the device would misread is ever built: in
particular no parameter list over the protocol's 8192 bytes, which the helper answers by
closing the connection.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence

from prguard.client.decode import FIXED_TRANSPORT_ID_SIZE, ISCSI_ISID_SEPARATOR, Protocol
from prguard.shared.scsi import CDB_SIZE, DATA_SIZE, Opcode, PrInAction, PrOutAction

#: The basic PR OUT parameter list (SPC-4 6.16.3), without TransportIDs.
PARAMETER_LIST_SIZE = 24
#: REGISTER AND MOVE's list before its TransportID (SPC-4 6.16.4).
_MOVE_HEADER = struct.Struct(">QQxBHI")
_BASIC = struct.Struct(">QQ4xB3x")
#: Byte 20 of the basic parameter list.
SPEC_I_PT = 0x08
ALL_TG_PT = 0x04
APTPL = 0x01
#: Byte 17 of the REGISTER AND MOVE parameter list.
MOVE_UNREG = 0x02
MOVE_APTPL = 0x01

MAX_KEY = 2**64 - 1
#: The SERVICE ACTION field is bits 0-4 of CDB byte 1.
SERVICE_ACTION_MAX = 0x1F
#: The longest iSCSI name (iSCSI RFC 3720 3.2.6.1).
ISCSI_NAME_MAX = 223
#: The name field of an iSCSI TransportID is at least 20 bytes, padded to a multiple of 4.
_ISCSI_NAME_FIELD_MIN = 20
_ISID_HEX = re.compile(r"[0-9a-fA-F]{12}")
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]+")
_BYTE_SEPARATORS = re.compile(r"[ ,\t]+")
#: Only hex digits and separators, at least one digit.
_BYTE_LIST = re.compile(r"[0-9a-fA-F ,\t]*[0-9a-fA-F][0-9a-fA-F ,\t]*")


class EncodeError(ValueError):
    """A value that does not fit the field it is meant for."""


def _check(value: int, limit: int, what: str) -> None:
    if not 0 <= value <= limit:
        raise EncodeError(f"{what} {value} is outside 0..{limit}")


def pr_in_cdb_bytes(action: int, allocation_length: int) -> bytes:
    """PERSISTENT RESERVE IN (SPC-4 6.15.1): service action (byte 1), allocation length
    (bytes 7-8). Any value that fits its field, valid or not."""
    _check(action, SERVICE_ACTION_MAX, "service action")
    _check(allocation_length, 0xFFFF, "allocation length")
    cdb = bytearray(CDB_SIZE)
    cdb[0] = Opcode.PERSISTENT_RESERVE_IN
    cdb[1] = action
    cdb[7:9] = allocation_length.to_bytes(2, "big")
    return bytes(cdb)


def pr_out_cdb_bytes(action: int, parameter_list_length: int, scope_type: int) -> bytes:
    """PERSISTENT RESERVE OUT (SPC-4 6.16.1): service action (byte 1), scope and type
    (byte 2), parameter list length (BE32 at bytes 5-8). Any value that fits its field."""
    _check(action, SERVICE_ACTION_MAX, "service action")
    _check(parameter_list_length, 0xFFFFFFFF, "parameter list length")
    _check(scope_type, 0xFF, "scope and type")
    cdb = bytearray(CDB_SIZE)
    cdb[0] = Opcode.PERSISTENT_RESERVE_OUT
    cdb[1] = action
    cdb[2] = scope_type
    cdb[5:9] = parameter_list_length.to_bytes(4, "big")
    return bytes(cdb)


def pr_in_cdb(action: PrInAction, allocation_length: int) -> bytes:
    """A PR IN CDB the helper will take: allocation length within the protocol's 8192."""
    _check(allocation_length, DATA_SIZE, "allocation length")
    return pr_in_cdb_bytes(action, allocation_length)


def pr_out_cdb(action: PrOutAction, parameter_list_length: int, pr_type: int = 0,
               scope: int = 0) -> bytes:
    """A PR OUT CDB the helper will take: a parameter list within the protocol's 8192
    (so bytes 5-6 stay zero, and qemu-pr-helper, which reads bytes 7-8, agrees)."""
    _check(parameter_list_length, DATA_SIZE, "parameter list length")
    _check(pr_type, 0xF, "reservation type")
    _check(scope, 0xF, "scope")
    return pr_out_cdb_bytes(action, parameter_list_length, scope << 4 | pr_type)


def _check_length(size: int) -> None:
    if size > DATA_SIZE:
        raise EncodeError(f"parameter list of {size} bytes is over the protocol's {DATA_SIZE}")


def pr_out_parameters(key: int, sa_key: int, *, all_tg_pt: bool = False,
                      aptpl: bool = False, transport_ids: Sequence[bytes] = ()) -> bytes:
    """The basic parameter list; with TransportIDs, SPEC_I_PT is set and they follow in a
    TRANSPORTID PARAMETER DATA LENGTH-prefixed list (SPC-4 6.16.3)."""
    _check(key, MAX_KEY, "reservation key")
    _check(sa_key, MAX_KEY, "service action reservation key")
    flags = (SPEC_I_PT if transport_ids else 0) | (ALL_TG_PT if all_tg_pt else 0) | (
        APTPL if aptpl else 0)
    basic = _BASIC.pack(key, sa_key, flags)
    if not transport_ids:
        return basic
    tids = b"".join(transport_ids)
    _check_length(len(basic) + 4 + len(tids))
    return basic + len(tids).to_bytes(4, "big") + tids


def register_and_move_parameters(key: int, sa_key: int, transport_id: bytes, *,
                                 relative_target_port: int, unreg: bool = False,
                                 aptpl: bool = False) -> bytes:
    """REGISTER AND MOVE's own list format (SPC-4 6.16.4): one TransportID, the relative
    target port of the I_T nexus the reservation moves to, UNREG and APTPL."""
    _check(key, MAX_KEY, "reservation key")
    _check(sa_key, MAX_KEY, "service action reservation key")
    _check(relative_target_port, 0xFFFF, "relative target port identifier")
    if not transport_id:
        raise EncodeError("REGISTER AND MOVE needs a TransportID")
    flags = (MOVE_UNREG if unreg else 0) | (MOVE_APTPL if aptpl else 0)
    header = _MOVE_HEADER.pack(key, sa_key, flags, relative_target_port, len(transport_id))
    _check_length(len(header) + len(transport_id))
    return header + transport_id


# -- TransportIDs (SPC-4 7.6.4) -----------------------------------------------------------

def _fixed_transport_id(protocol: Protocol, offset: int, name: int, size: int) -> bytes:
    _check(name, 2**(8 * size) - 1, f"{protocol.name} port name")
    tid = bytearray(FIXED_TRANSPORT_ID_SIZE)
    tid[0] = protocol
    tid[offset:offset + size] = name.to_bytes(size, "big")
    return bytes(tid)


def sas_transport_id(address: int) -> bytes:
    return _fixed_transport_id(Protocol.SAS, 4, address, 8)


def fc_transport_id(port_name: int) -> bytes:
    return _fixed_transport_id(Protocol.FCP, 8, port_name, 8)


def sbp_transport_id(eui64: int) -> bytes:
    """IEEE 1394 (SBP): the initiator's EUI-64 at bytes 8-15."""
    return _fixed_transport_id(Protocol.SBP, 8, eui64, 8)


def srp_transport_id(port: int) -> bytes:
    """SRP: the 16-byte initiator port identifier at bytes 8-23."""
    return _fixed_transport_id(Protocol.SRP, 8, port, 16)


def spi_transport_id(scsi_address: int, relative_target_port: int) -> bytes:
    """Parallel SCSI: SCSI address (bytes 2-3), relative port identifier (bytes 6-7)."""
    _check(scsi_address, 0xFFFF, "SPI SCSI address")
    _check(relative_target_port, 0xFFFF, "SPI relative port identifier")
    tid = bytearray(FIXED_TRANSPORT_ID_SIZE)
    tid[0] = Protocol.SPI
    tid[2:4] = scsi_address.to_bytes(2, "big")
    tid[6:8] = relative_target_port.to_bytes(2, "big")
    return bytes(tid)


def sop_transport_id(routing_id: int) -> bytes:
    """SCSI over PCIe: the routing identifier at bytes 2-3."""
    return _fixed_transport_id(Protocol.SOP, 2, routing_id, 2)


def iscsi_transport_id(name: str, isid: str | None = None) -> bytes:
    """Format 00b (initiator device name) or, with an ISID, 01b (initiator port name)."""
    if not name or ISCSI_ISID_SEPARATOR in name or "\0" in name:
        raise EncodeError(f"not an iSCSI name: {name!r}")
    text = name
    if isid is not None:
        if not _ISID_HEX.fullmatch(isid):
            raise EncodeError(f"ISID {isid!r} is not 12 hex digits")
        text += ISCSI_ISID_SEPARATOR + isid
    encoded = text.encode("utf-8")
    if len(name.encode("utf-8")) > ISCSI_NAME_MAX:
        raise EncodeError(f"iSCSI name longer than {ISCSI_NAME_MAX} bytes")
    field = max(_ISCSI_NAME_FIELD_MIN, -(-(len(encoded) + 1) // 4) * 4)
    header = bytes([(1 << 6 if isid is not None else 0) | Protocol.ISCSI, 0])
    return header + field.to_bytes(2, "big") + encoded.ljust(field, b"\0")


def _hex_number(text: str, what: str) -> int:
    digits = text[2:] if text.lower().startswith("0x") else text
    if not _HEX_DIGITS.fullmatch(digits):
        raise EncodeError(f"{what} {text!r} is not a hex number")
    return int(digits, 16)


def _hex_byte_list(text: str) -> bytes:
    """sg_persist's plain form: hex bytes separated by commas or spaces (`6,0,0,0,5,0,...`),
    zero-padded to the 24 bytes of the shortest TransportID."""
    raw = bytearray()
    for item in _BYTE_SEPARATORS.split(text.strip(" ,\t")):
        if not _HEX_DIGITS.fullmatch(item) or int(item, 16) > 0xFF:
            raise EncodeError(f"{item!r} in {text!r} is not a hex byte")
        raw.append(int(item, 16))
    return bytes(raw.ljust(FIXED_TRANSPORT_ID_SIZE, b"\0"))


def _spi(rest: str) -> bytes:
    address, sep, port = rest.partition(",")
    if not (sep and address.isdecimal() and port.isdecimal()):
        raise EncodeError(f"SPI TransportID {rest!r} is not ADDRESS,PORT (decimal)")
    return spi_transport_id(int(address), int(port))


_SYMBOLIC: dict[str, Callable[[str], bytes]] = {
    "sas": lambda rest: sas_transport_id(_hex_number(rest, "SAS address")),
    "fcp": lambda rest: fc_transport_id(_hex_number(rest, "FC port name")),
    "fc": lambda rest: fc_transport_id(_hex_number(rest, "FC port name")),
    "sbp": lambda rest: sbp_transport_id(_hex_number(rest, "EUI-64 name")),
    "srp": lambda rest: srp_transport_id(_hex_number(rest, "SRP port identifier")),
    "sop": lambda rest: sop_transport_id(_hex_number(rest, "SOP routing identifier")),
    "spi": _spi,
}


def parse_transport_id(text: str) -> bytes:
    """A TransportID from its text, in sg_persist's forms and a few more.

    `sas,ADDRESS`, `fcp,PORTNAME` (or `fc,`), `sbp,EUI64`, `srp,PORTID`, `sop,ROUTINGID`
    take hex, `spi,ADDRESS,PORT` decimal; an iSCSI name (`iqn.`, `eui.`, `naa.`,
    optionally `iscsi,` in front) may end in `,i,0xISID`; `hex,BYTES` is sent as given;
    anything else is read as hex bytes separated by commas or spaces.
    """
    kind, sep, rest = text.partition(",")
    kind = kind.lower()
    if sep and kind in _SYMBOLIC:
        return _SYMBOLIC[kind](rest)
    if sep and kind == "hex":
        try:
            raw = bytes.fromhex(rest.removeprefix("0x"))
        except ValueError:
            raise EncodeError(f"{rest!r} is not hex bytes") from None
        if len(raw) < 4:
            raise EncodeError("a TransportID has at least 4 bytes")
        return raw
    name = rest if sep and kind == "iscsi" else text
    if name.lower().startswith(("iqn.", "eui.", "naa.")):
        base, has_isid, isid = name.partition(ISCSI_ISID_SEPARATOR)
        return iscsi_transport_id(base, isid if has_isid else None)
    if _BYTE_LIST.fullmatch(text):
        return _hex_byte_list(text)
    raise EncodeError(f"unrecognised TransportID {text!r} (sas,HEX fcp,HEX iqn.NAME "
                      f"hex,BYTES, or hex bytes such as 6,0,0,0,...)")
