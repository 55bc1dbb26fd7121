"""Building audit records from what the worker knows (pure): the request's CDB and
parameter list, the client the broker vouches for, the device the worker resolved, the
kernel's answer or the refusal. Formatting happens only here, only for a record that is
due."""

from __future__ import annotations

import errno as E
from dataclasses import replace

from prguard.shared import pr_fields
from prguard.shared.audit_record import (
    GENESIS,
    Answer,
    Cause,
    ClientIdentity,
    Command,
    DeviceIdentity,
    Record,
    utc_text,
)
from prguard.shared.scsi import SenseCode, Status
from prguard.shared.scsi_names import sense_name, status_name, type_name
from prguard.worker.sgio import SgIoOutcome

#: Who refused a request, as records name it.
BY_RULES = "rules"
BY_POLICY = "policy"
BY_AUDIT = "audit"


def command_of(cdb: bytes, parameter_list: bytes) -> Command:
    fields = pr_fields.decode(cdb, parameter_list)
    return Command(
        op=fields.opcode_name, action=fields.action_name, cdb=cdb.hex(),
        param=parameter_list.hex() if fields.pr_out else None,
        type=type_name(fields.type) if fields.type is not None else None,
        scope=fields.scope,
        key=f"{fields.key:#x}" if fields.key is not None else None,
        sa_key=f"{fields.sa_key:#x}" if fields.sa_key is not None else None,
        aptpl=fields.aptpl, all_tg_pt=fields.all_tg_pt, spec_i_pt=fields.spec_i_pt,
        unreg=fields.unreg, relative_target_port=fields.relative_target_port)


def answer_of(status: int, sense: bytes) -> Answer:
    if status != Status.CHECK_CONDITION or len(sense) < 14:
        return Answer(status=status_name(status))
    code = SenseCode(sense[2] & 0xF, sense[12], sense[13])
    return Answer(status=status_name(status), sense=str(code), sense_name=sense_name(code))


def cause_of(outcome: SgIoOutcome) -> Cause:
    return Cause(errno=E.errorcode.get(outcome.errno, str(outcome.errno)) if outcome.errno
                 else None,
                 host_status=outcome.host_status, driver_status=outcome.driver_status,
                 device_status=outcome.status)


def refusal(by: str, reason: str, rule: str | None = None) -> Cause:
    return Cause(refused_by=by, rule=rule, reason=reason)


def request_record(time_ns: int, kind: str, client: ClientIdentity | None,
                   device: DeviceIdentity | None, command: Command,
                   phase: str | None = None, answer: Answer | None = None,
                   cause: Cause | None = None, issued: int | None = None,
                   duration_us: int | None = None) -> Record:
    """A `command` or `refused` record; seq and prev are the chain's to fill in."""
    return Record(seq=1, prev=GENESIS, time=utc_text(time_ns), kind=kind, phase=phase,
                  issued=issued, duration_us=duration_us, client=client, device=device,
                  command=command, answer=answer, cause=cause)


def done(issuing: Record, time_ns: int, issued: int | None, answer: Answer, cause: Cause,
         duration_us: int) -> Record:
    """The `done` record of a command (its `issuing` record's content, the outcome)."""
    return replace(issuing, time=utc_text(time_ns), phase="done", issued=issued,
                   duration_us=duration_us, answer=answer, cause=cause)
