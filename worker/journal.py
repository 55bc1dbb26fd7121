"""The journal's native protocol, for audit records: one datagram of fields.

systemd-journald reads datagrams on /run/systemd/journal/socket, each a list of fields:
`NAME=value\\n`, or for a value that holds a newline `NAME\\n`, its length as a 64-bit
little-endian number, the value, `\\n` (systemd's "Native Journal Protocol"). Names are
upper-case letters, digits and underscores, not starting with an underscore.

Every audit record carries the same MESSAGE_ID, so `journalctl MESSAGE_ID=<AUDIT_ID>`
finds them all; PRGUARD_* fields make them searchable (`PRGUARD_DEVICE_WWN=0x6001...`,
`PRGUARD_VM=web02`), PRGUARD_RECORD holds the record's line exactly as the file has it and
PRGUARD_HASH its hash, so the journal is a second copy to compare the file with.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable

from prguard.shared.audit_record import Record

#: MESSAGE_ID of every prguard audit record (a random 128-bit id, fixed for good).
AUDIT_MESSAGE_ID = "b1f3a0c6e2d84f5e9a7c3d1e8f6b2a40"
SOCKET = "/run/systemd/journal/socket"
_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")
#: syslog priorities
NOTICE, INFO, WARNING = 5, 6, 4


def field(name: str, value: str | bytes) -> bytes:
    if not _NAME.match(name):
        raise ValueError(f"not a journal field name: {name!r}")
    raw = value.encode() if isinstance(value, str) else value
    if b"\n" in raw:
        return name.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
    return name.encode() + b"=" + raw + b"\n"


def datagram(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    return b"".join(field(name, value) for name, value in fields)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def record_fields(record: Record, line: bytes, line_hash: str,
                  message: str) -> list[tuple[str, str | bytes]]:
    """The fields of one audit record: MESSAGE (the line `prguard-audit show` prints),
    the fixed MESSAGE_ID, a priority (NOTICE for what changed a device, WARNING for
    refusals, INFO otherwise) and the record's own fields as PRGUARD_*."""
    changed = record.command is not None and record.command.op == "PR OUT" \
        and record.kind == "command"
    priority = WARNING if record.kind in ("refused", "unrecorded") else (
        NOTICE if changed else INFO)
    out: list[tuple[str, str | bytes]] = [
        ("MESSAGE", message), ("MESSAGE_ID", AUDIT_MESSAGE_ID), ("PRIORITY", str(priority)),
        ("SYSLOG_IDENTIFIER", "prguard"),
        ("PRGUARD_SEQ", str(record.seq)), ("PRGUARD_HASH", line_hash),
        ("PRGUARD_PREV", record.prev), ("PRGUARD_KIND", record.kind),
    ]
    if record.phase:
        out.append(("PRGUARD_PHASE", record.phase))
    sections = (("CLIENT", record.client), ("DEVICE", record.device),
                ("COMMAND", record.command), ("ANSWER", record.answer),
                ("CAUSE", record.cause))
    for prefix, section in sections:
        if section is None:
            continue
        for name in section.__dataclass_fields__:
            value = getattr(section, name)
            if value is not None:
                out.append((f"PRGUARD_{prefix}_{name.upper()}", _text(value)))
    if record.client is not None and record.client.domain:
        out.append(("PRGUARD_VM", record.client.domain))  # PRGUARD_CLIENT_DOMAIN, shorter
    out.append(("PRGUARD_RECORD", line))
    return out


#: How long a record may wait for room in the journal's socket before it counts as lost.
SEND_TIMEOUT = 1.0


class JournalSink:
    """The journal's socket, connected before lockdown: records go out with send() (no
    destination address, which is all the worker's filter allows)."""

    def __init__(self, path: str = SOCKET) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            seconds = int(SEND_TIMEOUT)
            micros = int((SEND_TIMEOUT - seconds) * 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                 struct.pack("ll", seconds, micros))
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def send(self, fields: Iterable[tuple[str, str | bytes]]) -> None:
        """One record; OSError if the journal did not take it."""
        self.sock.send(datagram(fields))

    def fileno(self) -> int:
        return self.sock.fileno()
