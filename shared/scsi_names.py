"""The names people know SCSI values by: status bytes, sense keys, additional sense
codes (SPC-4 annex F, the ones PR commands and prguard's own answers produce),
persistent reservation types and service actions.

One table for every reader: the operator client's decoded answers, the audit records
the worker writes and `prguard-audit show`.
"""

from __future__ import annotations

from enum import IntEnum

from prguard.shared.scsi import PrInAction, PrOutAction, SenseCode, Status


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


def type_name(code: int) -> str:
    return TYPE_NAMES.get(code, f"obsolete or reserved type {code:#x}")


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
    (0x20, 0x02): "access denied - no access rights",
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


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"status {status:#04x}")


def asc_name(asc: int, ascq: int) -> str | None:
    return ASC_NAMES.get((asc, ascq)) or ASC_FAMILY_NAMES.get(asc)


def sense_name(code: SenseCode) -> str:
    """"ILLEGAL REQUEST: invalid field in CDB" (the ASC part omitted when unknown)."""
    key = SENSE_KEY_NAMES[code.key]
    asc = asc_name(code.asc, code.ascq)
    return f"{key}: {asc}" if asc else key


def action_name(pr_out: bool, action: int) -> str:
    """"PREEMPT AND ABORT", "READ KEYS", or "service action 0x1f" for undefined ones."""
    try:
        member = PrOutAction(action) if pr_out else PrInAction(action)
    except ValueError:
        return f"service action {action:#04x}"
    return member.name.replace("_", " ")


#: sg_persist's short names of the reservation types.
TYPE_SHORT_NAMES: dict[int, str] = {
    PrType.WRITE_EXCLUSIVE: "WE",
    PrType.EXCLUSIVE_ACCESS: "EA",
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: "WE_RO",
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: "EA_RO",
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: "WE_AR",
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: "EA_AR",
}
