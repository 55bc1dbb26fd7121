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

from prguard.shared.scsi import SenseCode, Status

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


class PrType(IntEnum):
    """Persistent reservation TYPE codes (SPC-4 6.15.3.4); other values are obsolete
    or reserved."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8


TYPE_NAMES: dict[int, str] = {
    PrType.WRITE_EXCLUSIVE: "Write Exclusive",
    PrType.EXCLUSIVE_ACCESS: "Exclusive Access",
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: "Write Exclusive, Registrants Only",
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: "Exclusive Access, Registrants Only",
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: "Write Exclusive, All Registrants",
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: "Exclusive Access, All Registrants",
}

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


def type_name(code: int) -> str:
    return TYPE_NAMES.get(code, f"obsolete or reserved type {code:#x}")


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

STATUS_NAMES: dict[int, str] = {
    Status.GOOD: "GOOD",
    Status.CHECK_CONDITION: "CHECK CONDITION",
    0x04: "CONDITION MET",
    Status.BUSY: "BUSY",
    Status.RESERVATION_CONFLICT: "RESERVATION CONFLICT",
    Status.TASK_SET_FULL: "TASK SET FULL",
    0x30: "ACA ACTIVE",
    0x40: "TASK ABORTED",
}

SENSE_KEY_NAMES = (
    "NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
    "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK", "VENDOR SPECIFIC",
    "COPY ABORTED", "ABORTED COMMAND", "RESERVED (0xc)", "VOLUME OVERFLOW", "MISCOMPARE",
    "COMPLETED",
)

#: ASC/ASCQ pairs a PR command or the helper's own answers produce (SPC-4 annex F).
ASC_NAMES: dict[tuple[int, int], str] = {
    (0x00, 0x00): "no additional sense information",
    (0x00, 0x06): "I/O process terminated",
    (0x04, 0x00): "logical unit not ready, cause not reportable",
    (0x04, 0x01): "logical unit is in process of becoming ready",
    (0x04, 0x02): "logical unit not ready, initializing command required",
    (0x04, 0x03): "logical unit not ready, manual intervention required",
    (0x04, 0x0A): "logical unit not accessible, asymmetric access state transition",
    (0x04, 0x0B): "logical unit not accessible, target port in standby state",
    (0x04, 0x0C): "logical unit not accessible, target port in unavailable state",
    (0x05, 0x00): "logical unit does not respond to selection",
    (0x08, 0x00): "logical unit communication failure",
    (0x08, 0x01): "logical unit communication time-out",
    (0x11, 0x00): "unrecovered read error",
    (0x1A, 0x00): "parameter list length error",
    (0x20, 0x00): "invalid command operation code",
    (0x24, 0x00): "invalid field in CDB",
    (0x25, 0x00): "logical unit not supported",
    (0x26, 0x00): "invalid field in parameter list",
    (0x26, 0x01): "parameter not supported",
    (0x26, 0x02): "parameter value invalid",
    (0x27, 0x07): "space allocation failed write protect",
    (0x29, 0x00): "power on, reset, or bus device reset occurred",
    (0x29, 0x01): "power on occurred",
    (0x29, 0x02): "SCSI bus reset occurred",
    (0x29, 0x03): "bus device reset function occurred",
    (0x29, 0x04): "device internal reset",
    (0x29, 0x07): "I_T nexus loss occurred",
    (0x2A, 0x00): "parameters changed",
    (0x2A, 0x03): "reservations preempted",
    (0x2A, 0x04): "reservations released",
    (0x2A, 0x05): "registrations preempted",
    (0x2C, 0x00): "command sequence error",
    (0x2E, 0x02): "command timeout during processing",
    (0x2F, 0x00): "commands cleared by another initiator",
    (0x2F, 0x02): "commands cleared by device server",
    (0x3A, 0x00): "medium not present",
    (0x3F, 0x0E): "reported LUNs data has changed",
    (0x44, 0x00): "internal target failure",
    (0x55, 0x02): "insufficient reservation resources",
    (0x55, 0x03): "insufficient resources",
    (0x55, 0x04): "insufficient registration resources",
}

#: Fallbacks by ASC alone, for qualifiers the table above does not list.
ASC_FAMILY_NAMES: dict[int, str] = {
    0x04: "logical unit not ready",
    0x29: "power on, reset, or bus device reset occurred",
    0x2A: "parameters changed",
    0x2F: "commands cleared",
    0x3F: "target operating conditions have changed",
    0x55: "system resource failure",
}

_FIXED = (0x70, 0x71)
_DESCRIPTOR_FORMAT = (0x72, 0x73)
#: Fixed format: ASC and ASCQ (bytes 12-13) exist when ADDITIONAL SENSE LENGTH reaches 6.
_FIXED_ASC_END = 14


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"status {status:#04x}")


def asc_name(asc: int, ascq: int) -> str | None:
    return ASC_NAMES.get((asc, ascq)) or ASC_FAMILY_NAMES.get(asc)


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
