"""What prguard-client prints and the exit status, for a reply, a failure before one, or
a usage error: the decoded data in words (or sg_persist's hex), one error line, hints,
or one JSON document. Pure."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prguard.client import daemon_status, decode, exit_status, hexdump
from prguard.client.arguments import PROG, UsageError
from prguard.client.command import DaemonStatusCommand, PrCommand
from prguard.client.daemon_status import DaemonStatus
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
from prguard.client.exchange import Failure
from prguard.client.exit_status import ExitStatus
from prguard.client.json_output import PrInData, document, error_json
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import PrInAction, Status


@dataclass(frozen=True)
class Outcome:
    exit_status: int
    stdout: list[str]
    stderr: list[str]


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
    """The decoded data in words."""
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
            f"  Replace Lost Reservation Capable (RLR_C): {_yes(data.rlr_c)}",
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
    return _full_status_lines(data)


def _full_status_lines(data: FullStatus) -> list[str]:
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


def describe_sense(sense: SenseData | None) -> str:
    if sense is None:
        return "no sense data"
    name = sense.asc_name or "unknown additional sense code"
    deferred = " (deferred)" if sense.deferred else ""
    return f"{sense.key_name}, {name} ({sense.code}){deferred}"


def error_line(reply: PrReply) -> str:
    """One line for a reply whose status is not GOOD."""
    status = decode.status_name(reply.status)
    if reply.status != Status.CHECK_CONDITION:
        return status
    try:
        return f"{status}: {describe_sense(decode.decode_sense(reply.sense))}"
    except DecodeError as err:
        return f"{status}: undecodable sense ({err}): {decode.sense_in_use(reply.sense).hex()}"


def _errors(problem: str | None, hints: Sequence[str]) -> list[str]:
    lines = [f"{PROG}: {problem}"] if problem else []
    return lines + [f"{PROG}: hint: {hint}" for hint in hints]


def _json(doc: dict[str, object]) -> list[str]:
    return [json.dumps(doc, indent=2)]


def _pr_in(command: PrCommand, code: PrInAction, raw: bytes
           ) -> tuple[PrInData | None, list[str], str | None]:
    """(decoded data, lines for stdout, problem) for a GOOD PR IN's data."""
    title = command.request.action.title
    if command.hex:  # sg_persist shows the bytes undecoded, checking only this
        if code is PrInAction.REPORT_CAPABILITIES and raw[1:2] != bytes([8]):
            return None, [], f"{title} data: length is not 8"
        return None, hexdump.pr_in_hex(code, raw, command.request.allocation_length,
                                       command.hex), None
    try:
        data = DECODERS[code](raw)
    except TruncatedError as err:
        return None, [], f"{title} data: {err}; try a larger --alloc-length"
    except DecodeError as err:
        return None, [], f"{title} data: {err}"
    return data, text_lines(data), None


def reply_outcome(command: PrCommand, reply: PrReply, hints: Sequence[str] = ()) -> Outcome:
    """What to print for a reply, and the exit status."""
    action = command.request.action
    status = exit_status.of_reply(reply, action.pr_out)
    data: PrInData | None = None
    problem: str | None = None
    kind = "scsi"
    shown: list[str]
    good_pr_in = reply.status == Status.GOOD and isinstance(action.code, PrInAction)
    if reply.status != Status.GOOD:
        problem, shown = f"{action.title}: {error_line(reply)}", []
    elif isinstance(action.code, PrInAction):
        data, shown, problem = _pr_in(command, action.code, reply.data)
        if problem:
            kind, status = "malformed", ExitStatus.MALFORMED
    else:
        shown = [f"{action.title}: {decode.status_name(reply.status)}"]
    stderr = [f"{PROG}: warning: {text}" for text in command.warnings]
    stderr += _errors(problem, hints)
    if not command.json:
        return Outcome(status, shown, stderr)
    doc = document(exit_status=status, device=command.device, socket=command.socket_path,
                   action=action.option, status=reply.status, sense=reply.sense, data=data,
                   raw_data=reply.data if good_pr_in else None,
                   error=error_json(kind, problem) if problem and status else None,
                   hints=hints)
    return Outcome(status, _json(doc), stderr)


def failure_outcome(command: PrCommand, failure: Failure) -> Outcome:
    """What to print when there is no reply."""
    stderr = [f"{PROG}: warning: {text}" for text in command.warnings]
    stderr += _errors(failure.message, failure.hints)
    if not command.json:
        return Outcome(failure.exit_status, [], stderr)
    doc = document(exit_status=failure.exit_status, device=command.device,
                   socket=command.socket_path, action=command.request.action.option,
                   error=error_json(failure.kind, failure.message, failure.errno_name),
                   hints=failure.hints)
    return Outcome(failure.exit_status, _json(doc), stderr)


def usage_outcome(error: UsageError, json_wanted: bool) -> Outcome:
    message = f"{error} (see --help)"
    stderr = [f"{PROG}: error: {message}"]
    if not json_wanted:
        return Outcome(error.status, [], stderr)
    doc = document(exit_status=error.status, error=error_json("usage", str(error)))
    return Outcome(error.status, _json(doc), stderr)


def daemon_status_outcome(command: DaemonStatusCommand, status: DaemonStatus) -> Outcome:
    """--daemon-status: the status in words (or one JSON document), and its verdict's
    exit status."""
    _, code = status.verdict
    problem = daemon_status.problem(status)
    if command.json:
        return Outcome(code, _json(daemon_status.json_document(status)), [])
    return Outcome(code, daemon_status.text_lines(status),
                   [] if problem is None else [f"{PROG}: {problem}"])
