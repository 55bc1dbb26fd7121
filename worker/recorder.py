"""The worker's audit recorder: links each record into the chain and hands it to the
sinks, from any of the worker's threads.

The file (--audit-log) is the record of authority when given; the journal
(--audit-journal) is then a copy, and the record of authority only without a file. A
record is written when the authority took it (and, with --audit-sync, fdatasync
returned). `write` answers the record's seq, or None when it could not be written: the
caller then does not issue a PR OUT (no record, no command) and tells QEMU so.

A failure is said loudly once (an error line); while the authority fails, lost records
and refused PR OUTs are counted, and the first record that can be written again is
preceded by an `unrecorded` record with those counts. A journal that fails while a file
is the authority is reported once per failure streak and stops nothing.

The lock covers linking and the one write, so the file's order is the chain's;
fdatasync and the journal's copy run outside it.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prguard.shared import audit_render
from prguard.shared.audit_chain import Head, chained
from prguard.shared.audit_record import GENESIS, Record, Unrecorded, utc_text
from prguard.worker.audit_file import AuditFile
from prguard.worker.journal import JournalSink, record_fields

log = logging.getLogger("prguard.worker")

Clock = Callable[[], int]


@dataclass
class _Outage:
    """What a failing authority has cost so far."""

    since_ns: int
    error: str
    records: int = 0
    pr_out_refused: int = 0


def _error_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.strerror or exc))


class Recorder:
    def __init__(self, file: AuditFile | None, journal: JournalSink | None, sync: bool,
                 clock: Clock = time.time_ns) -> None:
        if file is None and journal is None:
            raise ValueError("a recorder needs a sink")
        self._file = file
        self._journal = journal
        self._sync = sync and file is not None
        self._clock = clock
        self._lock = threading.Lock()
        self.head = file.continuation.head if file is not None else Head()
        #: the file the chain continues from ("" when it starts here)
        self.continues_from = (file.continuation.source if file is not None
                               and file.continuation.head.seq else "")
        self._outage: _Outage | None = None
        self._journal_failing = False
        self._rotation_reported = False

    @property
    def sink_name(self) -> str:
        return self._file.path if self._file is not None else "the journal"

    @property
    def syncs(self) -> bool:
        return self._sync

    @property
    def failing(self) -> bool:
        return self._outage is not None

    def write(self, record: Record) -> int | None:
        """Link `record` into the chain and write it; its seq, or None if it could not
        be written."""
        with self._lock:
            if self._outage is not None and not self._recover():
                self._outage.records += 1
                return None
            linked, line, head = chained(record, self.head)
            try:
                self._to_authority(linked, line, head)
            except OSError as exc:
                self._fail(exc)
                return None
            self.head = head
        if self._sync:
            assert self._file is not None
            try:
                self._file.sync()
            except OSError as exc:
                with self._lock:
                    self._fail(exc)
                return None
        if self._file is not None and self._journal is not None:
            self._copy_to_journal(linked, line, head)
        return head.seq

    def refused_pr_out(self) -> None:
        """A PR OUT was refused because its record could not be written."""
        with self._lock:
            if self._outage is not None:
                self._outage.pr_out_refused += 1

    def _to_authority(self, linked: Record, line: bytes, head: Head) -> None:
        if self._file is not None:
            if self._file.follow_rotation():
                log.info("audit: %s was rotated; records go to the new file", self.sink_name)
            self._report_rotation()
            self._file.append(line)
        else:
            assert self._journal is not None
            self._journal.send(record_fields(linked, line[:-1], head.hash,
                                             audit_render.line(linked)))

    def _copy_to_journal(self, linked: Record, line: bytes, head: Head) -> None:
        assert self._journal is not None
        try:
            self._journal.send(record_fields(linked, line[:-1], head.hash,
                                             audit_render.line(linked)))
        except OSError as exc:
            if not self._journal_failing:
                log.error("audit: the journal does not take records (%s); %s still has "
                          "them all", exc.strerror or exc, self.sink_name)
            self._journal_failing = True
            return
        if self._journal_failing:
            log.warning("audit: the journal takes records again")
            self._journal_failing = False

    def _fail(self, exc: OSError) -> None:
        """Called with the lock held."""
        if self._outage is None:
            self._outage = _Outage(self._clock(), _error_name(exc))
            log.error("audit: cannot write to %s (%s): no PR OUT is issued until records can "
                      "be written again; PR IN is still served", self.sink_name,
                      exc.strerror or exc)
        self._outage.records += 1

    def _recover(self) -> bool:
        """Write the `unrecorded` record that ends an outage; False if it still fails.
        Called with the lock held."""
        outage = self._outage
        assert outage is not None
        summary = Record(seq=1, prev=GENESIS, time=utc_text(self._clock()), kind="unrecorded",
                         unrecorded=Unrecorded(records=outage.records,
                                               pr_out_refused=outage.pr_out_refused,
                                               since=utc_text(outage.since_ns),
                                               error=outage.error))
        linked, line, head = chained(summary, self.head)
        try:
            self._to_authority(linked, line, head)
            if self._sync:
                assert self._file is not None
                self._file.sync()
        except OSError:
            return False
        self.head = head
        self._outage = None
        log.warning("audit: %s takes records again; %d record(s) were lost and %d PR OUT "
                    "refused since %s", self.sink_name, outage.records, outage.pr_out_refused,
                    utc_text(outage.since_ns))
        if self._file is not None and self._journal is not None:
            self._copy_to_journal(linked, line, head)
        return True

    def _report_rotation(self) -> None:
        assert self._file is not None
        error = self._file.rotation_error
        if error is not None and not self._rotation_reported:
            log.error("audit: cannot open %s again after a rotation (%s): records go on into "
                      "the file it was renamed to", self.sink_name, error.strerror or error)
            self._rotation_reported = True
        elif error is None:
            self._rotation_reported = False
