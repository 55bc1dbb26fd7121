"""THE audit record: what happened to a request, who sent it, which device it was for.

One record is one line of JSON (the audit file is JSON lines; the journal gets the same
line in PRGUARD_RECORD plus searchable PRGUARD_* fields). Keys come in a fixed order,
absent values are left out, and decoding is strict: exactly the known keys of each
section with their types, so a reader never half-understands a record.

Every record carries `seq` (one more than the record before it, across restarts and
rotations) and `prev`, the SHA-256 of the previous record's line: the hash chain
(shared/audit_chain.py) that makes a changed, removed or reordered record visible.

Kinds:
- `command`: a PR IN or OUT that reached SG_IO. A PR OUT has two records: `issuing`,
  written before the ioctl (no record, no command), and `done` with the outcome; a PR IN
  (with --audit-reads) only `done`.
- `refused`: a request answered without the device: the request rules, the tenant
  policy, or no record could be written.
- `start`: the worker started (and where the chain continues from).
- `policy`: a policy was loaded or a reload failed.
- `unrecorded`: records that could not be written while the sink failed, counted once it
  works again.
"""

from __future__ import annotations

import json
import re
import time
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

#: The record format; a reader refuses other versions.
SCHEMA = 1
#: `prev` of the first record of a chain.
GENESIS = "0" * 64

#: `Start.continues` when no earlier record was found.
NEW_CHAIN = "nothing"

KINDS = ("command", "refused", "start", "policy", "unrecorded")
PHASES = ("issuing", "done")


class RecordError(ValueError):
    """A line that is not a well-formed record of this schema."""


@dataclass(frozen=True)
class ClientIdentity:
    """Who sent the request, as the broker established it when the client connected:
    SO_PEERCRED, and the cgroup the host (not the client) put the process in."""

    pid: int
    uid: int
    gid: int
    #: the cgroup v2 path from /proc/<pid>/cgroup; None when it could not be read
    cgroup: str | None = None
    #: the systemd unit and libvirt domain derived from it (shared/cgroup_identity.py)
    unit: str | None = None
    domain: str | None = None
    #: the cgroup was read while a pidfd pinned the process: a recycled pid cannot have
    #: been read instead (False where the kernel has no SO_PEERPIDFD)
    pidfd: bool = False


@dataclass(frozen=True)
class DeviceIdentity:
    """The device an fd refers to, as the worker resolved it from the fd and sysfs."""

    #: major:minor
    dev: str
    #: the kernel's disk sequence number: a new disk behind the same devnum gets a new one
    diskseq: int | None = None
    #: as /dev/disk/by-id/wwn-<wwn> spells it ("0x6001405..."), from VPD page 0x83
    wwn: str | None = None
    #: the preferred LU designator as the kernel's `wwid` spells it ("naa.6001405...")
    designator: str | None = None
    vendor: str | None = None
    model: str | None = None
    serial: str | None = None
    #: for a device-mapper map
    dm_name: str | None = None
    dm_uuid: str | None = None


@dataclass(frozen=True)
class Command:
    """What was asked of the device: the exact CDB and parameter list (hex) and what
    they mean."""

    op: str  #: "PR IN" or "PR OUT"
    action: str  #: service action by name
    cdb: str
    param: str | None = None
    type: str | None = None
    scope: int | None = None
    key: str | None = None  #: reservation key, "0x..."
    sa_key: str | None = None  #: service action reservation key
    aptpl: bool | None = None
    all_tg_pt: bool | None = None
    spec_i_pt: bool | None = None
    unreg: bool | None = None
    relative_target_port: int | None = None


@dataclass(frozen=True)
class Answer:
    """What QEMU was answered."""

    status: str  #: by name: "GOOD", "CHECK CONDITION", ...
    sense: str | None = None  #: key/ASC/ASCQ in hex, "05/24/00"
    sense_name: str | None = None  #: "ILLEGAL REQUEST: invalid field in CDB"


@dataclass(frozen=True)
class Cause:
    """Where the answer came from: the kernel's SG_IO outcome, or who refused it."""

    errno: str | None = None  #: "EINVAL"; None when the ioctl succeeded
    host_status: int | None = None
    driver_status: int | None = None
    device_status: int | None = None
    refused_by: str | None = None  #: "rules", "policy", "audit"
    rule: str | None = None  #: the policy rule that decided
    reason: str | None = None


@dataclass(frozen=True)
class Start:
    """A `start` record: the worker began serving."""

    version: str
    pid: int
    #: where the chain continues from: the log's own name, a rotated file's, or NEW_CHAIN
    continues: str
    audit_reads: bool = False
    audit_sync: bool = False
    policy: str | None = None  #: sha256 of the policy file in force, if any


@dataclass(frozen=True)
class PolicyChange:
    """A `policy` record: a policy file was loaded, or a reload was refused."""

    result: str  #: "loaded" or "refused"
    sha256: str | None = None  #: of the file now in force
    rules: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Unrecorded:
    """An `unrecorded` record: how many records the sink lost while it failed."""

    records: int
    pr_out_refused: int
    since: str
    error: str


@dataclass(frozen=True)
class Record:
    """One line of the audit trail. `seq` and `prev` are filled in by the chain."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("client", "device", "command", "answer", "cause",
                                           "start", "policy", "unrecorded")

    seq: int
    prev: str
    time: str  #: UTC with microseconds, "2026-11-29T03:12:07.123456Z"
    kind: str
    phase: str | None = None
    #: the `issuing` record a `done` record completes
    issued: int | None = None
    duration_us: int | None = None
    client: ClientIdentity | None = None
    device: DeviceIdentity | None = None
    command: Command | None = None
    answer: Answer | None = None
    cause: Cause | None = None
    start: Start | None = None
    policy: PolicyChange | None = None
    unrecorded: Unrecorded | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RecordError(f"unknown kind {self.kind!r}")
        if self.phase is not None and self.phase not in PHASES:
            raise RecordError(f"unknown phase {self.phase!r}")
        if (self.phase is not None) != (self.kind == "command"):
            raise RecordError("a command record, and only one, has a phase")
        if not _HEX64.fullmatch(self.prev):
            raise RecordError("prev must be 64 lowercase hex digits")
        if self.seq < 1:
            raise RecordError("seq starts at 1")


_HEX64 = re.compile("[0-9a-f]{64}")
_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(obj: object) -> dict[str, Any]:
    cls = type(obj)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(obj))  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        out[name] = _plain(value) if hasattr(value, "__dataclass_fields__") else value
    return out


def encode(record: Record) -> bytes:
    """The record's line, without its newline: compact JSON, ASCII only (any other
    character \\u-escaped), keys in field order, absent values left out."""
    body = {"v": SCHEMA, **_plain(record)}
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"),
                      allow_nan=False).encode("ascii")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _decode_value(hint: Any, value: object, where: str) -> object:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None):
            continue
        if option is bool:
            if type(value) is bool:
                return value
        elif option is int:
            if type(value) is int:
                return value
        elif option is str:
            if type(value) is str:
                return value
        elif isinstance(value, dict):
            return _decode_section(option, value, where)
    raise RecordError(f"{where}: {type(value).__name__} where {hint} belongs")


def _decode_section(cls: type, body: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = set(body) - set(names)
    if unknown:
        raise RecordError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    values: dict[str, object] = {}
    for name in names:
        if name in body:
            if body[name] is None:
                raise RecordError(f"{where}.{name}: null (absent values are left out)")
            values[name] = _decode_value(hints[name], body[name], f"{where}.{name}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field missing
        raise RecordError(f"{where}: {exc}") from None


def decode(line: bytes) -> Record:
    """Strictly decode one line (with or without its newline)."""
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if type(body) is not dict:
        raise RecordError("not a JSON object")
    if body.pop("v", None) != SCHEMA:
        raise RecordError(f"not a version {SCHEMA} record")
    record = _decode_section(Record, body, "record")
    assert isinstance(record, Record)
    return record


def utc_text(time_ns: int) -> str:
    """"2026-11-29T03:12:07.123456Z" from nanoseconds since the epoch, without
    datetime or time zone files (the worker formats this while confined)."""
    seconds, micros = divmod(time_ns // 1000, 1_000_000)
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{micros:06d}Z")
