"""Pure decoders of what a PR IN command and a failed command return (SPC-4).

PR IN parameter data (6.15): READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL
STATUS with its TransportIDs (7.6.4), plus the sense data of an error reply (4.5) and the
names people know status bytes and reservation types by.

Strict by design: an operator checks a deployment with this, so a short or inconsistent
answer is reported as such (DecodeError, a ValueError) and never half-decoded or turned
into an IndexError. Bytes after the length a header announces are ignored: a multipath
helper pads PR IN data with zeros up to the allocation length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from prguard.shared.scsi import SenseCode

# Re-exported: the client's decoders name answers with the shared tables.
from prguard.shared.scsi_names import ASC_FAMILY_NAMES as ASC_FAMILY_NAMES
from prguard.shared.scsi_names import ASC_NAMES as ASC_NAMES
from prguard.shared.scsi_names import SENSE_KEY_NAMES as SENSE_KEY_NAMES
from prguard.shared.scsi_names import STATUS_NAMES as STATUS_NAMES
from prguard.shared.scsi_names import TYPE_NAMES as TYPE_NAMES
from prguard.shared.scsi_names import PrType as PrType
from prguard.shared.scsi_names import asc_name as asc_name
from prguard.shared.scsi_names import status_name as status_name
from prguard.shared.scsi_names import type_name as type_name

#: PRgeneration and ADDITIONAL LENGTH, the header of READ KEYS/RESERVATION/FULL STATUS.
_HEADER = struct.Struct(">II")
HEADER_SIZE = _HEADER.size
KEY_SIZE = 8
#: READ RESERVATION's ADDITIONAL LENGTH when a reservation is held (SPC-4 6.15.3).
RESERVATION_LENGTH = 16
CAPABILITIES_LENGTH = 8
#: Fixed part of a READ FULL STATUS descriptor, before its TransportID (SPC-4 6.15.5).
_DESCRIPTOR = struct.Struct(">Q4xBB4xHI")
DESCRIPTOR_SIZE = _DESCRIPTOR.size  # 24
#: FC, SAS, SRP and 1394 TransportIDs are exactly this long (SPC-4 7.6.4).
FIXED_TRANSPORT_ID_SIZE = 24
LU_SCOPE = 0


class DecodeError(ValueError):
    """Bytes that are not what SPC-4 says this answer looks like."""


class TruncatedError(DecodeError):
    """The data stops before the length its own header announces.

    Usually the allocation length was too small: the device reports the full length but
    transfers only what fits.
    """

    def __init__(self, what: str, needed: int, available: int) -> None:
        super().__init__(f"{what} needs {needed} bytes, only {available} returned")
        self.needed = needed
        self.available = available


#: Bit of the 16-bit PERSISTENT RESERVATION TYPE MASK (bytes 4-5) for each type.
TYPE_MASK_BITS: dict[PrType, int] = {
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: 0x8000,
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 0x4000,
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 0x2000,
    PrType.EXCLUSIVE_ACCESS: 0x0800,
    PrType.WRITE_EXCLUSIVE: 0x0200,
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 0x0001,
}

ALLOW_COMMANDS_NAMES: dict[int, str] = {
    0: "no information",
    1: "TEST UNIT READY allowed through Write Exclusive and Exclusive Access",
}


def scope_name(scope: int) -> str:
    return "LU_SCOPE" if scope == LU_SCOPE else f"obsolete or reserved scope {scope:#x}"


class Protocol(IntEnum):
    """PROTOCOL IDENTIFIER of a TransportID (SPC-4 7.6.1)."""

    FCP = 0x0
    SPI = 0x1
    SSA = 0x2
    SBP = 0x3
    SRP = 0x4
    ISCSI = 0x5
    SAS = 0x6
    ADT = 0x7
    ATA = 0x8
    UAS = 0x9
    SOP = 0xA
    PCIE = 0xB


PROTOCOL_NAMES: dict[int, str] = {
    Protocol.FCP: "FC", Protocol.SPI: "SPI", Protocol.SSA: "SSA", Protocol.SBP: "IEEE 1394",
    Protocol.SRP: "SRP", Protocol.ISCSI: "iSCSI", Protocol.SAS: "SAS", Protocol.ADT: "ADT",
    Protocol.ATA: "ATA", Protocol.UAS: "UAS", Protocol.SOP: "SOP", Protocol.PCIE: "PCIe",
}

#: iSCSI TransportID FORMAT CODE 01b: the name is followed by this and the ISID in hex.
ISCSI_ISID_SEPARATOR = ",i,0x"


@dataclass(frozen=True)
class Keys:
    """READ KEYS: every registered reservation key."""

    generation: int
    keys: tuple[int, ...]


@dataclass(frozen=True)
class Reservation:
    key: int
    scope: int
    type: int

    @property
    def type_name(self) -> str:
        return type_name(self.type)


@dataclass(frozen=True)
class ReservationStatus:
    """READ RESERVATION: the reservation, or None when none is held."""

    generation: int
    reservation: Reservation | None


@dataclass(frozen=True)
class Capabilities:
    """REPORT CAPABILITIES (SPC-4 6.15.4)."""

    length: int
    crh: bool  #: compatible reservation handling
    sip_c: bool  #: specify initiator ports capable
    atp_c: bool  #: all target ports capable
    ptpl_c: bool  #: persist through power loss capable
    tmv: bool  #: type mask valid
    allow_commands: int
    ptpl_a: bool  #: persist through power loss active
    type_mask: int
    rlr_c: bool = False  #: replace lost reservation capable (SPC-4 r26 on)

    @property
    def types(self) -> tuple[PrType, ...]:
        """The supported reservation types; empty when the mask is not valid."""
        if not self.tmv:
            return ()
        return tuple(t for t in PrType if self.type_mask & TYPE_MASK_BITS[t])


@dataclass(frozen=True)
class TransportId:
    """A TransportID: the initiator port a registration belongs to.

    `identifier` is the port's name as people write it (0x-prefixed hex for FC/SAS/SRP/1394
    port names, the iSCSI name, or the whole TransportID in hex for other protocols).
    """

    protocol: int
    format_code: int
    identifier: str
    isid: str | None
    raw: bytes

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol, f"protocol {self.protocol:#x}")


@dataclass(frozen=True)
class Registration:
    """One READ FULL STATUS descriptor: a registered I_T nexus."""

    key: int
    all_tg_pt: bool
    reservation_holder: bool
    scope: int  #: meaningful only for the reservation holder
    type: int  #: meaningful only for the reservation holder
    relative_target_port: int
    transport_id: TransportId

    @property
    def type_name(self) -> str:
        return type_name(self.type)


@dataclass(frozen=True)
class FullStatus:
    generation: int
    registrations: tuple[Registration, ...]


def _header(data: bytes, what: str) -> tuple[int, int]:
    if len(data) < HEADER_SIZE:
        raise TruncatedError(f"{what} header", HEADER_SIZE, len(data))
    generation, length = _HEADER.unpack_from(data)
    if HEADER_SIZE + length > len(data):
        raise TruncatedError(f"{what} (additional length {length})", HEADER_SIZE + length,
                             len(data))
    return generation, length


def decode_read_keys(data: bytes) -> Keys:
    generation, length = _header(data, "READ KEYS")
    if length % KEY_SIZE:
        raise DecodeError(f"READ KEYS additional length {length} is not a multiple of 8")
    keys = tuple(int.from_bytes(data[i:i + KEY_SIZE], "big")
                 for i in range(HEADER_SIZE, HEADER_SIZE + length, KEY_SIZE))
    return Keys(generation, keys)


def decode_read_reservation(data: bytes) -> ReservationStatus:
    generation, length = _header(data, "READ RESERVATION")
    if length == 0:
        return ReservationStatus(generation, None)
    if length != RESERVATION_LENGTH:
        raise DecodeError(f"READ RESERVATION additional length {length} is neither 0 nor 16")
    key = int.from_bytes(data[8:16], "big")
    scope_type = data[21]
    return ReservationStatus(generation, Reservation(key, scope_type >> 4, scope_type & 0xF))


def decode_report_capabilities(data: bytes) -> Capabilities:
    if len(data) < 2:
        raise TruncatedError("REPORT CAPABILITIES length field", 2, len(data))
    length = int.from_bytes(data[0:2], "big")
    if length < CAPABILITIES_LENGTH:
        raise DecodeError(f"REPORT CAPABILITIES length {length} is under 8")
    if length > len(data):
        raise TruncatedError(f"REPORT CAPABILITIES (length {length})", length, len(data))
    flags, more = data[2], data[3]
    return Capabilities(
        length=length,
        crh=bool(flags & 0x10),
        sip_c=bool(flags & 0x08),
        atp_c=bool(flags & 0x04),
        ptpl_c=bool(flags & 0x01),
        tmv=bool(more & 0x80),
        allow_commands=(more >> 4) & 0x7,
        ptpl_a=bool(more & 0x01),
        type_mask=int.from_bytes(data[4:6], "big"),
        rlr_c=bool(flags & 0x80),
    )


def decode_read_full_status(data: bytes) -> FullStatus:
    generation, length = _header(data, "READ FULL STATUS")
    end = HEADER_SIZE + length
    offset = HEADER_SIZE
    registrations: list[Registration] = []
    while offset < end:
        number = len(registrations) + 1
        if offset + DESCRIPTOR_SIZE > end:
            raise DecodeError(f"READ FULL STATUS descriptor {number} overruns the list "
                              f"(additional length {length})")
        key, holder_flags, scope_type, port, tid_length = _DESCRIPTOR.unpack_from(data, offset)
        tid_start = offset + DESCRIPTOR_SIZE
        if tid_start + tid_length > end:
            raise DecodeError(f"READ FULL STATUS descriptor {number}: TransportID of "
                              f"{tid_length} bytes overruns the list")
        try:
            tid = decode_transport_id(data[tid_start:tid_start + tid_length])
        except DecodeError as err:
            raise DecodeError(f"READ FULL STATUS descriptor {number}: {err}") from err
        registrations.append(Registration(
            key=key,
            all_tg_pt=bool(holder_flags & 0x02),
            reservation_holder=bool(holder_flags & 0x01),
            scope=scope_type >> 4,
            type=scope_type & 0xF,
            relative_target_port=port,
            transport_id=tid,
        ))
        offset = tid_start + tid_length
    return FullStatus(generation, tuple(registrations))


def _port_name(raw: bytes, start: int, size: int, protocol: int) -> str:
    if len(raw) < FIXED_TRANSPORT_ID_SIZE:
        raise DecodeError(f"{PROTOCOL_NAMES[protocol]} TransportID of {len(raw)} bytes "
                          f"(24 expected)")
    return f"0x{raw[start:start + size].hex()}"


def decode_transport_id(raw: bytes) -> TransportId:
    """One TransportID (SPC-4 7.6.4): FC, SAS, SRP, 1394 and iSCSI decoded, others in hex."""
    if len(raw) < 4:
        raise DecodeError(f"TransportID of {len(raw)} bytes is too short")
    format_code, protocol = raw[0] >> 6, raw[0] & 0x0F
    isid: str | None = None
    if format_code == 0 and protocol == Protocol.FCP:
        identifier = _port_name(raw, 8, 8, protocol)  # N_PORT_NAME
    elif format_code == 0 and protocol == Protocol.SAS:
        identifier = _port_name(raw, 4, 8, protocol)  # SAS ADDRESS
    elif format_code == 0 and protocol == Protocol.SBP:
        identifier = _port_name(raw, 8, 8, protocol)  # EUI-64 NAME
    elif format_code == 0 and protocol == Protocol.SRP:
        identifier = _port_name(raw, 8, 16, protocol)  # INITIATOR PORT IDENTIFIER
    elif format_code in (0, 1) and protocol == Protocol.ISCSI:
        identifier, isid = _iscsi_name(raw, format_code)
    else:
        identifier = raw.hex()
    return TransportId(protocol, format_code, identifier, isid, bytes(raw))


def _iscsi_name(raw: bytes, format_code: int) -> tuple[str, str | None]:
    length = int.from_bytes(raw[2:4], "big")
    if 4 + length > len(raw):
        raise DecodeError(f"iSCSI TransportID additional length {length} overruns its "
                          f"{len(raw)} bytes")
    field = raw[4:4 + length]
    if b"\0" not in field:
        raise DecodeError("iSCSI name is not null-terminated")
    try:
        text = field[:field.index(b"\0")].decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError(f"iSCSI name is not UTF-8: {err.reason}") from err
    if format_code == 0:
        return text, None
    name, sep, isid = text.partition(ISCSI_ISID_SEPARATOR)
    if not sep:
        raise DecodeError(f"iSCSI TransportID format 01b without {ISCSI_ISID_SEPARATOR!r}")
    return name, isid


# -- status and sense -------------------------------------------------------------------

_FIXED = (0x70, 0x71)
_DESCRIPTOR_FORMAT = (0x72, 0x73)
#: Fixed format: ASC and ASCQ (bytes 12-13) exist when ADDITIONAL SENSE LENGTH reaches 6.
_FIXED_ASC_END = 14


@dataclass(frozen=True)
class SenseData:
    """The parts of sense data people act on."""

    response_code: int
    code: SenseCode

    @property
    def deferred(self) -> bool:
        return self.response_code in (0x71, 0x73)

    @property
    def descriptor_format(self) -> bool:
        return self.response_code in _DESCRIPTOR_FORMAT

    @property
    def key_name(self) -> str:
        return SENSE_KEY_NAMES[self.code.key]

    @property
    def asc_name(self) -> str | None:
        return asc_name(self.code.asc, self.code.ascq)


def sense_in_use(sense: bytes) -> bytes:
    """The bytes of a sense field its ADDITIONAL SENSE LENGTH covers (byte 7 in both
    formats), for showing it: the rest of the 96 bytes is padding."""
    if len(sense) >= 8 and sense[0] & 0x7F in (*_FIXED, *_DESCRIPTOR_FORMAT):
        return sense[:8 + sense[7]]
    return sense.rstrip(b"\0")


def decode_sense(sense: bytes) -> SenseData | None:
    """Fixed or descriptor format sense (SPC-4 4.5); None when there is none at all."""
    if not sense or not sense[0] & 0x7F:
        return None
    response_code = sense[0] & 0x7F
    if response_code in _FIXED:
        if len(sense) < 8:
            raise TruncatedError("fixed-format sense", 8, len(sense))
        key = sense[2] & 0x0F
        asc = ascq = 0
        if 8 + sense[7] >= _FIXED_ASC_END:
            if len(sense) < _FIXED_ASC_END:
                raise TruncatedError("fixed-format sense", _FIXED_ASC_END, len(sense))
            asc, ascq = sense[12], sense[13]
        return SenseData(response_code, SenseCode(key, asc, ascq))
    if response_code in _DESCRIPTOR_FORMAT:
        if len(sense) < 4:
            raise TruncatedError("descriptor-format sense", 4, len(sense))
        return SenseData(response_code, SenseCode(sense[1] & 0x0F, sense[2], sense[3]))
    raise DecodeError(f"sense response code {response_code:#04x} is neither fixed (0x70/0x71)"
                      f" nor descriptor format (0x72/0x73)")
