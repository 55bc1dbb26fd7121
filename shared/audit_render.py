"""Audit records as lines for people (no I/O):

    2026-11-29 03:12:07 vm web02 (uid 107) PREEMPT AND ABORT key 0x2 → preempted 0x1
    (Write Exclusive) on wwn-0x6001405... GOOD

(on one line). Times are UTC. A PR OUT's `issuing` and `done` records make one line, at
the `done`; an `issuing` record that no `done` follows is shown as OUTCOME NOT RECORDED
(the command was sent and its result never written: the worker died, or the disk failed,
in between).
"""

from __future__ import annotations

from prguard.shared.audit_record import (
    NEW_CHAIN,
    Answer,
    Cause,
    ClientIdentity,
    Command,
    DeviceIdentity,
    Record,
)

ARROW = "\u2192"


def when(record: Record) -> str:
    """"2026-11-29 03:12:07" from the record's UTC time."""
    return record.time[:19].replace("T", " ")


def who(client: ClientIdentity | None) -> str:
    if client is None:
        return "(no client)"
    if client.domain:
        name = f"vm {client.domain}"
    elif client.unit:
        name = f"unit {client.unit}"
    else:
        name = f"pid {client.pid}"
    return f"{name} (uid {client.uid})"


def device_name(device: DeviceIdentity | None) -> str:
    if device is None:
        return "(no device)"
    if device.wwn:
        return f"wwn-{device.wwn}"
    if device.dm_name:
        return f"dm-name-{device.dm_name}"
    return device.dev


def what(command: Command) -> str:
    action = command.action
    key, sa_key = command.key, command.sa_key
    if command.op == "PR IN":
        text = action
    elif action in ("REGISTER", "REGISTER AND IGNORE EXISTING KEY"):
        new = "unregister" if sa_key in ("0x0", None) else sa_key
        old = f" key {key}" if key not in (None, "0x0") else ""
        text = f"{action}{old} {ARROW} {new}"
    elif action in ("PREEMPT", "PREEMPT AND ABORT"):
        text = f"{action} key {key} {ARROW} preempted {sa_key}"
    elif action == "REGISTER AND MOVE":
        text = (f"{action} key {key} {ARROW} {sa_key} to relative target port "
                f"{command.relative_target_port}")
    elif action == "REPLACE LOST RESERVATION":
        text = f"{action} {ARROW} {sa_key}"
    elif key is not None:
        text = f"{action} key {key}"
    else:
        text = action
    if command.type is not None:
        text += f" ({command.type})"
    flags = [name for name, value in (("APTPL", command.aptpl),
                                      ("ALL_TG_PT", command.all_tg_pt),
                                      ("SPEC_I_PT", command.spec_i_pt),
                                      ("UNREG", command.unreg)) if value]
    if flags:
        text += " " + " ".join(flags)
    if command.op == "PR OUT" and key is None and sa_key is None and command.param is not None \
            and len(command.param) < 48:
        text += f" (parameter list of {len(command.param) // 2} bytes)"
    return text


def outcome(answer: Answer | None, cause: Cause | None) -> str:
    if answer is None:
        return "OUTCOME NOT RECORDED"
    text = answer.status
    if answer.sense:
        text += f" {answer.sense}"
        if answer.sense_name:
            text += f" {answer.sense_name}"
    if cause is not None:
        if cause.refused_by:
            text = f"REFUSED by {cause.refused_by}: {cause.reason} {ARROW} {text}"
        elif cause.errno:
            text += f" (SG_IO {cause.errno})"
        elif cause.host_status or cause.driver_status:
            text += (f" (host status {cause.host_status:#04x}, driver status "
                     f"{cause.driver_status:#04x})")
    return text


def line(record: Record, issued: Record | None = None) -> str:
    """One record for people; `issued` is the `issuing` record a `done` completes (its
    time is when the command was sent)."""
    head = when(issued or record)
    if record.kind in ("command", "refused"):
        body = " ".join([who(record.client),
                         what(record.command) if record.command else "(no command)",
                         "on", device_name(record.device)])
        answer = None if record.phase == "issuing" else record.answer
        tail = outcome(answer, record.cause)
        if record.duration_us is not None and record.phase == "done":
            tail += f" in {record.duration_us / 1000:.1f} ms"
        return f"{head} {body} {tail}"
    if record.kind == "start" and record.start:
        start = record.start
        chain = (f"continuing the chain of {start.continues}" if start.continues != NEW_CHAIN
                 else "starting a new chain (no earlier record found)")
        return (f"{head} prguard {start.version} started (worker pid {start.pid}), {chain}"
                + (f"; policy sha256 {start.policy[:12]}" if start.policy else ""))
    if record.kind == "policy" and record.policy:
        change = record.policy
        if change.result == "loaded":
            return (f"{head} policy loaded: {change.rules} rule(s), sha256 "
                    f"{(change.sha256 or '')[:12]}")
        return f"{head} policy reload refused: {change.reason}; the previous policy stays"
    if record.kind == "unrecorded" and record.unrecorded:
        lost = record.unrecorded
        return (f"{head} {lost.records} record(s) could not be written since {lost.since} "
                f"({lost.error}); {lost.pr_out_refused} PR OUT refused meanwhile")
    return f"{head} {record.kind}"
