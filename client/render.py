"""A reply rendered for people (the decoded data as sg_persist shows it, in words) or as
JSON, with the exit status: pure code."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass

from prguard.client import decode
from prguard.client.arguments import PROG, Options
from prguard.client.decode import (
    Capabilities,
    DecodeError,
    FullStatus,
    Keys,
    ReservationStatus,
    SenseData,
    TransportId,
    TruncatedError,
)
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import PrInAction, Status


class ExitStatus(enum.IntEnum):
    GOOD = 0
    SCSI_ERROR = 1  #: the command failed (status other than GOOD), or its data is unusable
    USAGE = 2
    UNREACHABLE = 3  #: device not opened, helper not reached, or no reply from it


PrInData = Keys | ReservationStatus | Capabilities | FullStatus

DECODERS: dict[PrInAction, Callable[[bytes], PrInData]] = {
    PrInAction.READ_KEYS: decode.decode_read_keys,
    PrInAction.READ_RESERVATION: decode.decode_read_reservation,
    PrInAction.REPORT_CAPABILITIES: decode.decode_report_capabilities,
    PrInAction.READ_FULL_STATUS: decode.decode_read_full_status,
}


def _key(value: int) -> str:
    return f"{value:#x}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def describe_transport_id(tid: TransportId) -> str:
    name = tid.protocol_name
    if tid.protocol == decode.Protocol.ISCSI and tid.format_code in (0, 1):
        isid = f", ISID 0x{tid.isid}" if tid.isid is not None else ""
        return f"iSCSI name {tid.identifier}{isid}"
    if tid.identifier != tid.raw.hex():
        return f"{name} port name {tid.identifier}"
    return f"{name} TransportID (format {tid.format_code}) {tid.identifier}"


def text_lines(data: PrInData) -> list[str]:
    """The decoded data as sg_persist shows it, in words."""
    if isinstance(data, Keys):
        if not data.keys:
            return [f"PR generation {data.generation:#x}, no registered reservation keys"]
        return [f"PR generation {data.generation:#x}, {len(data.keys)} registered "
                f"reservation key(s):", *(f"  {_key(k)}" for k in data.keys)]
    if isinstance(data, ReservationStatus):
        held = data.reservation
        if held is None:
            return [f"PR generation {data.generation:#x}, no reservation held"]
        return [f"PR generation {data.generation:#x}, reservation held:",
                f"  key {_key(held.key)}",
                f"  scope {decode.scope_name(held.scope)}, type {held.type_name} ({held.type})"]
    if isinstance(data, Capabilities):
        allow = decode.ALLOW_COMMANDS_NAMES.get(data.allow_commands)
        lines = [
            f"Report capabilities (length {data.length}):",
            f"  Compatible Reservation Handling (CRH): {_yes(data.crh)}",
            f"  Specify Initiator Ports Capable (SIP_C): {_yes(data.sip_c)}",
            f"  All Target Ports Capable (ATP_C): {_yes(data.atp_c)}",
            f"  Persist Through Power Loss Capable (PTPL_C): {_yes(data.ptpl_c)}",
            f"  Type Mask Valid (TMV): {_yes(data.tmv)}",
            f"  Allow Commands: {data.allow_commands}" + (f" ({allow})" if allow else ""),
            f"  Persist Through Power Loss Active (PTPL_A): {_yes(data.ptpl_a)}",
        ]
        if data.tmv:
            lines.append(f"  Supported reservation types (mask {data.type_mask:#06x}):")
            lines += [f"    {decode.type_name(t)} ({int(t)})" for t in data.types] or ["    none"]
        return lines
    if not data.registrations:
        return [f"PR generation {data.generation:#x}, no registrations"]
    lines = [f"PR generation {data.generation:#x}, {len(data.registrations)} registration(s):"]
    for reg in data.registrations:
        holder = (f"yes, scope {decode.scope_name(reg.scope)}, type {reg.type_name} "
                  f"({reg.type})" if reg.reservation_holder else "no")
        lines += [f"  key {_key(reg.key)}",
                  f"    reservation holder: {holder}",
                  f"    all target ports: {_yes(reg.all_tg_pt)}, "
                  f"relative target port {reg.relative_target_port}",
                  f"    {describe_transport_id(reg.transport_id)}"]
    return lines


def _tid_json(tid: TransportId) -> dict[str, object]:
    return {"protocol": tid.protocol, "protocol_name": tid.protocol_name,
            "format_code": tid.format_code, "identifier": tid.identifier, "isid": tid.isid,
            "hex": tid.raw.hex()}


def data_json(data: PrInData) -> dict[str, object]:
    """Keys as 0x strings: 64-bit values do not survive JSON readers that use doubles."""
    if isinstance(data, Keys):
        return {"generation": data.generation, "keys": [_key(k) for k in data.keys]}
    if isinstance(data, ReservationStatus):
        held = data.reservation
        return {"generation": data.generation, "reservation": None if held is None else {
            "key": _key(held.key), "scope": held.scope, "type": held.type,
            "type_name": held.type_name}}
    if isinstance(data, Capabilities):
        return {"length": data.length, "crh": data.crh, "sip_c": data.sip_c,
                "atp_c": data.atp_c, "ptpl_c": data.ptpl_c, "tmv": data.tmv,
                "allow_commands": data.allow_commands, "ptpl_a": data.ptpl_a,
                "type_mask": f"{data.type_mask:#06x}",
                "types": [{"type": int(t), "name": decode.type_name(t)} for t in data.types]}
    return {"generation": data.generation, "registrations": [
        {"key": _key(r.key), "all_tg_pt": r.all_tg_pt, "reservation_holder": r.reservation_holder,
         "scope": r.scope, "type": r.type,
         "type_name": r.type_name if r.reservation_holder else None,
         "relative_target_port": r.relative_target_port,
         "transport_id": _tid_json(r.transport_id)} for r in data.registrations]}


def describe_sense(sense: SenseData | None) -> str:
    if sense is None:
        return "no sense data"
    name = sense.asc_name or "unknown additional sense code"
    deferred = " (deferred)" if sense.deferred else ""
    return f"{sense.key_name}, {name} ({sense.code}){deferred}"


def _sense_json(raw: bytes) -> dict[str, object] | None:
    try:
        sense = decode.decode_sense(raw)
    except DecodeError as err:
        return {"error": str(err), "hex": decode.sense_in_use(raw).hex()}
    if sense is None:
        return None
    return {"key": sense.code.key, "key_name": sense.key_name, "asc": sense.code.asc,
            "ascq": sense.code.ascq, "code": str(sense.code), "description": sense.asc_name,
            "format": "descriptor" if sense.descriptor_format else "fixed",
            "deferred": sense.deferred, "hex": decode.sense_in_use(raw).hex()}


def error_line(reply: PrReply) -> str:
    """One line for a reply whose status is not GOOD."""
    status = decode.status_name(reply.status)
    if reply.status != Status.CHECK_CONDITION:
        return status
    try:
        return f"{status}: {describe_sense(decode.decode_sense(reply.sense))}"
    except DecodeError as err:
        return f"{status}: undecodable sense ({err}): {decode.sense_in_use(reply.sense).hex()}"


@dataclass(frozen=True)
class Outcome:
    exit_status: ExitStatus
    stdout: list[str]
    stderr: list[str]


def render(options: Options, reply: PrReply) -> Outcome:
    """What to print for a reply, and the exit status. Pure."""
    action = options.request.action
    data: PrInData | None = None
    problem: str | None = None
    if reply.status != Status.GOOD:
        problem = f"{action.title}: {error_line(reply)}"
    elif isinstance(action.code, PrInAction):
        try:
            data = DECODERS[action.code](reply.data)
        except TruncatedError as err:
            problem = f"{action.title} data: {err}; try a larger --alloc-length"
        except DecodeError as err:
            problem = f"{action.title} data: {err}"
    status = ExitStatus.SCSI_ERROR if problem else ExitStatus.GOOD
    stderr = [f"{PROG}: {problem}"] if problem else []
    if options.json:
        document: dict[str, object] = {
            "device": options.device, "socket": options.socket_path,
            "action": action.option, "status": decode.status_name(reply.status),
            "status_code": reply.status, "sense": _sense_json(reply.sense),
            "data": None if data is None else data_json(data)}
        if reply.data and data is None:
            document["raw_data"] = reply.data.hex()
        return Outcome(status, [json.dumps(document, indent=2)], stderr)
    if data is not None:
        return Outcome(status, text_lines(data), stderr)
    if problem is None:
        return Outcome(status, [f"{action.title}: {decode.status_name(reply.status)}"], stderr)
    return Outcome(status, [], stderr)


