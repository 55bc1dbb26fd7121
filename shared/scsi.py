"""SCSI vocabulary shared by both processes: opcodes, SAM status values, sense codes.

Values follow SAM/SPC as QEMU's include/scsi/constants.h spells them (status GOOD 0x00,
CHECK CONDITION 0x02, ...), not Linux's old shifted <scsi/scsi.h> values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

#: Bytes of CDB per request on the QEMU socket and in every SG_IO issued.
CDB_SIZE = 16
#: Bytes of sense in every reply header (pr-helper.h PR_HELPER_SENSE_SIZE).
SENSE_SIZE = 96
#: Largest PR IN allocation / PR OUT parameter list the protocol carries.
DATA_SIZE = 8192
#: Length of the fixed-format sense the helper builds itself (SPC-4 4.5.3).
FIXED_SENSE_LENGTH = 18


class Opcode(IntEnum):
    """The only two commands the helper ever forwards."""

    PERSISTENT_RESERVE_IN = 0x5E  #: SPC-4 6.15
    PERSISTENT_RESERVE_OUT = 0x5F  #: SPC-4 6.16


class Status(IntEnum):
    """SAM-5 status codes (the byte QEMU puts in the reply's `result`)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28


class PrInAction(IntEnum):
    """PERSISTENT RESERVE IN service actions (CDB byte 1, bits 0-4)."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03


class PrOutAction(IntEnum):
    """PERSISTENT RESERVE OUT service actions (CDB byte 1, bits 0-4)."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
    REGISTER_AND_MOVE = 0x07
    REPLACE_LOST_RESERVATION = 0x08


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB


@dataclass(frozen=True)
class SenseCode:
    """A (key, ASC, ASCQ) triple, written key/asc/ascq in hex in docs and logs."""

    key: int
    asc: int
    ascq: int

    def __post_init__(self) -> None:
        if not (0 <= self.key <= 0xF and 0 <= self.asc <= 0xFF and 0 <= self.ascq <= 0xFF):
            raise ValueError(f"sense code out of range: {self}")

    def fixed_format(self) -> bytes:
        """The 96-byte sense field as QEMU's scsi_build_sense fills it: fixed format,
        current error, additional length 10, zeros elsewhere."""
        sense = bytearray(SENSE_SIZE)
        sense[0] = 0x70
        sense[2] = self.key
        sense[7] = FIXED_SENSE_LENGTH - 8
        sense[12] = self.asc
        sense[13] = self.ascq
        return bytes(sense)

    def __str__(self) -> str:
        return f"{self.key:02x}/{self.asc:02x}/{self.ascq:02x}"


class Sense:
    """The sense codes prguard produces itself (names as in QEMU's scsi/utils.c)."""

    NO_SENSE = SenseCode(SenseKey.NO_SENSE, 0x00, 0x00)
    INVALID_OPCODE = SenseCode(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00)
    #: the tenant policy's refusal (SPC-4's answer of access controls)
    ACCESS_DENIED = SenseCode(SenseKey.ILLEGAL_REQUEST, 0x20, 0x02)
    INVALID_FIELD = SenseCode(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
    INVALID_PARAM = SenseCode(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)
    INVALID_PARAM_LEN = SenseCode(SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00)
    NO_MEDIUM = SenseCode(SenseKey.NOT_READY, 0x3A, 0x00)
    READ_ERROR = SenseCode(SenseKey.MEDIUM_ERROR, 0x11, 0x00)
    TARGET_FAILURE = SenseCode(SenseKey.HARDWARE_ERROR, 0x44, 0x00)
    SPACE_ALLOC_FAILED = SenseCode(SenseKey.DATA_PROTECT, 0x27, 0x07)
    RESET = SenseCode(SenseKey.UNIT_ATTENTION, 0x29, 0x00)
    IO_ERROR = SenseCode(SenseKey.ABORTED_COMMAND, 0x00, 0x06)
    LUN_NOT_RESPONDING = SenseCode(SenseKey.ABORTED_COMMAND, 0x05, 0x00)
    LUN_COMM_FAILURE = SenseCode(SenseKey.ABORTED_COMMAND, 0x08, 0x00)
    I_T_NEXUS_LOSS = SenseCode(SenseKey.ABORTED_COMMAND, 0x29, 0x07)
    COMMAND_TIMEOUT = SenseCode(SenseKey.ABORTED_COMMAND, 0x2E, 0x02)
    COMMAND_ABORTED = SenseCode(SenseKey.ABORTED_COMMAND, 0x2F, 0x02)


ZERO_SENSE = bytes(SENSE_SIZE)


@dataclass(frozen=True, slots=True)
class PrReply:
    """What a PR command came to, as QEMU receives it: the SCSI status byte, the full
    96-byte sense field, and the PR IN data (empty for PR OUT and for any other status).

    The one type for this triple: the worker maps an SG_IO outcome to it, the channel
    carries it, the broker answers with it and the wire protocol encodes it. Which data
    a reply may carry for which request is decided in one place, qemu_protocol's
    `reply_fault`.
    """

    status: int
    sense: bytes
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.status <= 0xFF:
            raise ValueError(f"status {self.status} is not a SCSI status byte")
        if len(self.sense) != SENSE_SIZE:
            raise ValueError("sense must be exactly 96 bytes")
        if len(self.data) > DATA_SIZE:
            raise ValueError("reply data over 8192 bytes")

    @classmethod
    def generated(cls, status: Status, sense: SenseCode) -> PrReply:
        """A reply prguard makes up itself (refusals, unknown outcomes): no data."""
        return cls(int(status), sense.fixed_format())


def service_action(cdb: bytes | bytearray) -> int:
    """Service action field of a PR IN/OUT CDB (byte 1, bits 0-4)."""
    return cdb[1] & 0x1F


def transfer_length(cdb: bytes | bytearray) -> int:
    """Bytes that follow the CDB (PR OUT) or that the initiator can take (PR IN).

    Both PR opcodes are in command group 2, where QEMU's scsi_cdb_xfer reads a BE16 at
    bytes 7-8. For PR OUT SPC defines a BE32 at bytes 5-8; the C helper frames with
    bytes 7-8 only, and so must we to stay in step with QEMU's client.
    """
    return int.from_bytes(cdb[7:9], "big")


def parameter_list_length_high(cdb: bytes) -> int:
    """Bytes 5-6 of a PR OUT CDB: the upper half of SPC's 32-bit parameter list length,
    which framing ignores (see transfer_length)."""
    return int.from_bytes(cdb[5:7], "big")
