"""The audit trail's hash chain: link a record to the one before it, and find the first
place where a sequence of lines stops being one unbroken chain.

A record's `prev` is the SHA-256 (hex) of the previous record's line, exactly as written
(without its newline); `seq` counts up by one. Changing a record changes its hash, so the
record after it no longer names it; removing one leaves a gap in `seq`; reordering puts
a `seq` out of place. The last record has no successor to vouch for it: compare its hash
(`verify` reports it) with a copy kept elsewhere, such as the journal's PRGUARD_HASH.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from prguard.shared.audit_record import GENESIS, Record, RecordError, decode, encode


def digest(line: bytes) -> str:
    """The hash the next record names: SHA-256 of the line without its newline."""
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True)
class Head:
    """The end of a chain: the last record's seq and hash (GENESIS before any)."""

    seq: int = 0
    hash: str = GENESIS


def link(record: Record, head: Head) -> tuple[bytes, Head]:
    """The line for `record` as the next one after `head` (its seq and prev are set
    here), with its newline, and the new head."""
    _, line, new_head = chained(record, head)
    return line, new_head


def chained(record: Record, head: Head) -> tuple[Record, bytes, Head]:
    """`record` as the next one after `head`, its line (with newline), the new head."""
    linked = replace(record, seq=head.seq + 1, prev=head.hash)
    line = encode(linked)
    return linked, line + b"\n", Head(linked.seq, digest(line))


def head_of(line: bytes) -> Head:
    """The head a chain has after this line (a complete record); RecordError if not."""
    line = line.rstrip(b"\n")
    return Head(decode(line).seq, digest(line))


@dataclass(frozen=True)
class Where:
    """A line of a file, for people: `audit.log:12`."""

    source: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Report:
    """What `verify` found. `problem` is the first break, None if the chain holds."""

    records: int
    problem: str | None
    #: how the chain begins: at its genesis, or continuing records not given
    beginning: str
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    #: where the problem is (None if none)
    at: Where | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class _Link:
    where: Where
    seq: int
    prev: str
    hash: str
    kind: str


def _parse(lines: Iterable[tuple[Where, bytes]]) -> tuple[list[_Link], Report | None]:
    links: list[_Link] = []
    for where, raw in lines:
        if not raw.endswith(b"\n"):
            return links, Report(len(links), f"{where}: incomplete record (the line has no "
                                 "end): a write was cut short, or the file was cut", "",
                                 at=where)
        line = raw[:-1]
        try:
            record = decode(line)
        except RecordError as exc:
            return links, Report(len(links), f"{where}: not a record ({exc}): changed or "
                                 "damaged", "", at=where)
        links.append(_Link(where, record.seq, record.prev, digest(line), record.kind))
    return links, None


def verify(lines: Iterable[tuple[Where, bytes]]) -> Report:
    """Check that `lines` (each with its newline, in order, across files) form one
    chain. Reports the first record that was changed, removed or reordered."""
    links, damaged = _parse(lines)
    problem: str | None = None
    at: Where | None = None
    beginning = "no records"
    if links:
        first = links[0]
        beginning = (f"begins at {first.where} (seq 1)" if first.prev == GENESIS
                     else f"continues from records before {first.where} that were not "
                     f"given (seq {first.seq})")
        if first.prev == GENESIS and first.seq != 1:
            problem, at = f"{first.where}: a chain's first record has seq {first.seq}, " \
                          "not 1", first.where
    for index in range(1, len(links)):
        if problem is not None:
            break
        before, after = links[index - 1], links[index]
        if after.prev == before.hash and after.seq == before.seq + 1:
            continue
        at = after.where
        if after.prev == GENESIS and after.kind == "start":
            problem = (f"{after.where}: a new chain starts here: prguard found no earlier "
                       f"record when it started (the log was removed or emptied, or the "
                       f"files are not one log)")
        elif after.seq == before.seq + 1:
            at = before.where
            problem = (f"{before.where}: record seq {before.seq} was changed: it is not "
                       f"the record {after.where} names as its predecessor")
        elif after.seq > before.seq + 1:
            moved = next((link for link in links[index + 1:]
                          if before.seq < link.seq < after.seq), None)
            if moved is not None:
                problem = (f"{after.where}: records out of order: seq {moved.seq} is at "
                           f"{moved.where}, after seq {after.seq}")
            else:
                count = after.seq - before.seq - 1
                span = (f"seq {before.seq + 1}" if count == 1
                        else f"seq {before.seq + 1}..{after.seq - 1}")
                problem = f"{after.where}: {count} record(s) removed before it ({span})"
        else:
            problem = (f"{after.where}: records out of order: seq {after.seq} comes after "
                       f"seq {before.seq} ({before.where})")
    if problem is None and damaged is not None:
        return replace(damaged, beginning=beginning,
                       first_seq=links[0].seq if links else None)
    return Report(len(links), problem, beginning,
                  first_seq=links[0].seq if links else None,
                  last_seq=links[-1].seq if links else None,
                  last_hash=links[-1].hash if links else None, at=at)

