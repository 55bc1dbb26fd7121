"""The audit file and the recorder: the chain continues across restarts and rotations,
a cut record stays alone on its line, a full disk stops records (and says so once) and
is counted when it ends, the journal gets a copy."""

from __future__ import annotations

import gzip
import logging
import os
import socket
from pathlib import Path

import pytest

from lab.journal_ns import parse_datagram
from lab.tiny_disk import fill, tiny_tmpfs
from prguard.shared.audit_chain import Head, Where, digest, link, verify
from prguard.shared.audit_record import GENESIS, NEW_CHAIN, Cause, Record, decode
from prguard.worker.audit_file import AuditFile, rotated_siblings
from prguard.worker.journal import AUDIT_MESSAGE_ID, JournalSink
from prguard.worker.recorder import Recorder


def refused(n: int) -> Record:
    return Record(seq=1, prev=GENESIS, time=f"2026-11-29T03:00:{n % 60:02d}.000000Z",
                  kind="refused", cause=Cause(refused_by="policy", reason=f"request {n}"))


def lines(*paths: Path) -> list[tuple[Where, bytes]]:
    out = []
    for path in paths:
        with path.open("rb") as stream:
            out += [(Where(str(path), n), line) for n, line in enumerate(stream, 1)]
    return out


def test_a_new_file_starts_a_chain(tmp_path: Path) -> None:
    audit = AuditFile(str(tmp_path / "audit.log"))
    assert audit.continuation.head == Head() and audit.continuation.source == NEW_CHAIN
    recorder = Recorder(audit, None, sync=True)
    assert [recorder.write(refused(n)) for n in range(3)] == [1, 2, 3]
    report = verify(lines(tmp_path / "audit.log"))
    assert report.ok and report.records == 3 and report.last_hash == recorder.head.hash


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    first = Recorder(AuditFile(str(tmp_path / "audit.log")), None, sync=False)
    for n in range(3):
        first.write(refused(n))
    again = AuditFile(str(tmp_path / "audit.log"))
    assert again.continuation.head == first.head
    assert again.continuation.source == "audit.log"
    assert Recorder(again, None, sync=False).write(refused(9)) == 4
    assert verify(lines(tmp_path / "audit.log")).ok


def test_a_cut_record_stays_on_its_own_line(tmp_path: Path) -> None:
    first = Recorder(AuditFile(str(tmp_path / "audit.log")), None, sync=False)
    for n in range(2):
        first.write(refused(n))
    with (tmp_path / "audit.log").open("ab") as log:
        log.write(b'{"v":1,"seq":3,"pr')  # a write cut short, then the process died
    audit = AuditFile(str(tmp_path / "audit.log"))
    assert audit.continuation.needs_newline and audit.continuation.head == first.head
    Recorder(audit, None, sync=False).write(refused(5))
    raw = (tmp_path / "audit.log").read_bytes().split(b"\n")
    assert raw[2] == b'{"v":1,"seq":3,"pr'
    assert decode(raw[3]).seq == 3 and decode(raw[3]).prev == first.head.hash
    report = verify(lines(tmp_path / "audit.log"))
    assert report.problem is not None and ":3: not a record" in report.problem


def test_rotation_by_rename_loses_nothing_and_keeps_the_chain(tmp_path: Path) -> None:
    recorder = Recorder(AuditFile(str(tmp_path / "audit.log")), None, sync=False)
    for n in range(3):
        recorder.write(refused(n))
    os.rename(tmp_path / "audit.log", tmp_path / "audit.log.1")
    for n in range(3, 5):
        recorder.write(refused(n))
    os.rename(tmp_path / "audit.log", tmp_path / "audit.log.2")
    recorder.write(refused(5))
    recorder.write(refused(6))
    files = [tmp_path / "audit.log.1", tmp_path / "audit.log.2", tmp_path / "audit.log"]
    assert [len(f.read_bytes().splitlines()) for f in files] == [3, 2, 2]
    assert verify(lines(*files)).ok


def test_a_start_after_rotation_continues_from_the_rotated_file(tmp_path: Path) -> None:
    recorder = Recorder(AuditFile(str(tmp_path / "audit.log")), None, sync=False)
    for n in range(4):
        recorder.write(refused(n))
    older = tmp_path / "audit.log.2.gz"
    with gzip.open(older, "wb") as packed:
        packed.write(link(refused(99), Head())[0])
    os.utime(older, (1, 1))
    os.rename(tmp_path / "audit.log", tmp_path / "audit.log.1")
    (tmp_path / "audit.log-other").mkdir()  # not a file: skipped
    assert rotated_siblings(str(tmp_path), "audit.log") == ["audit.log.1", "audit.log.2.gz"]
    audit = AuditFile(str(tmp_path / "audit.log"))  # logrotate's `create`: empty file
    assert audit.continuation.source == "audit.log.1"
    assert audit.continuation.head == recorder.head
    Recorder(audit, None, sync=False).write(refused(7))
    assert verify(lines(tmp_path / "audit.log.1", tmp_path / "audit.log")).ok


def test_the_newest_compressed_rotation_is_read(tmp_path: Path) -> None:
    head = Head()
    with gzip.open(tmp_path / "audit.log.1.gz", "wb") as packed:
        for n in range(3):
            line, head = link(refused(n), head)
            packed.write(line)
    audit = AuditFile(str(tmp_path / "audit.log"))
    assert audit.continuation.head == head
    assert audit.continuation.source == "audit.log.1.gz"


def test_a_rotation_that_cannot_be_followed_keeps_the_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(AuditFile(str(tmp_path / "audit.log")), None, sync=False)
    recorder.write(refused(0))
    os.rename(tmp_path / "audit.log", tmp_path / "audit.log.1")
    (tmp_path / "audit.log").mkdir()  # the name cannot be opened for writing
    with caplog.at_level(logging.INFO, "prguard.worker"):
        assert recorder.write(refused(1)) == 2
        assert recorder.write(refused(2)) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot open" in errors[0] and "Is a directory" in errors[0]
    assert len((tmp_path / "audit.log.1").read_bytes().splitlines()) == 3
    os.rmdir(tmp_path / "audit.log")
    assert recorder.write(refused(3)) == 4
    assert verify(lines(tmp_path / "audit.log.1", tmp_path / "audit.log")).ok


def test_a_full_disk_refuses_records_says_so_once_and_counts_them(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = iter(range(1_800_000_000_000_000_000, 1_900_000_000_000_000_000,
                       1_000_000_000))
    with tiny_tmpfs("64k") as disk:
        recorder = Recorder(AuditFile(str(disk / "audit.log")), None, sync=True,
                            clock=lambda: next(clock))
        assert recorder.write(refused(0)) == 1
        filler = fill(disk)
        with caplog.at_level(logging.WARNING, "prguard.worker"):
            results = [recorder.write(refused(n)) for n in range(1, 200)]
            assert None in results
            first_failure = results.index(None)
            assert all(r is None for r in results[first_failure:])
            recorder.refused_pr_out()
            recorder.refused_pr_out()
            assert recorder.failing
            filler.unlink()
            seq = recorder.write(refused(500))
        assert seq is not None and not recorder.failing
        messages = [r.getMessage() for r in caplog.records]
        assert sum("cannot write to" in m for m in messages) == 1
        assert any("takes records again" in m for m in messages)
        raw = (disk / "audit.log").read_bytes().splitlines()
        summary = decode(raw[-2])
        assert summary.kind == "unrecorded" and summary.unrecorded is not None
        assert summary.unrecorded.records == results.count(None)
        assert summary.unrecorded.pr_out_refused == 2
        assert summary.unrecorded.error == "ENOSPC"
        # A record the full disk cut short is a line of its own (the next record starts
        # on a new line) and was never part of the chain: without it, the chain holds.
        damaged = []
        for number, line in enumerate(raw):
            try:
                decode(line)
            except ValueError:
                damaged.append(number)
        assert len(damaged) <= 1 and (not damaged or damaged[0] == len(raw) - 3)
        kept = [line + b"\n" for n, line in enumerate(raw) if n not in damaged]
        assert verify([(Where("audit.log", n), line) for n, line in enumerate(kept)]).ok


def journal_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock


def test_the_journal_gets_a_copy_with_searchable_fields(tmp_path: Path) -> None:
    journal = journal_socket(tmp_path / "journal")
    recorder = Recorder(AuditFile(str(tmp_path / "audit.log")),
                        JournalSink(str(tmp_path / "journal")), sync=False)
    recorder.write(refused(0))
    fields = parse_datagram(journal.recv(65536))
    line = (tmp_path / "audit.log").read_bytes().rstrip(b"\n")
    assert fields["MESSAGE_ID"] == AUDIT_MESSAGE_ID.encode()
    assert fields["PRGUARD_RECORD"] == line
    assert fields["PRGUARD_HASH"] == digest(line).encode()
    assert fields["PRGUARD_SEQ"] == b"1" and fields["PRGUARD_KIND"] == b"refused"
    assert fields["PRGUARD_CAUSE_REASON"] == b"request 0"
    assert fields["PRIORITY"] == b"4"
    assert fields["MESSAGE"].startswith(b"2026-11-29 03:00:00 (no client)")


def test_the_journal_alone_is_the_authority(tmp_path: Path) -> None:
    journal = journal_socket(tmp_path / "journal")
    recorder = Recorder(None, JournalSink(str(tmp_path / "journal")), sync=True)
    assert recorder.write(refused(0)) == 1
    assert recorder.write(refused(1)) == 2
    first, second = (parse_datagram(journal.recv(65536)) for _ in range(2))
    assert decode(second["PRGUARD_RECORD"]).prev == digest(first["PRGUARD_RECORD"])
    journal.close()
    os.unlink(tmp_path / "journal")  # journald gone: no record, so no PR OUT
    assert recorder.write(refused(2)) is None and recorder.failing


def test_a_failing_journal_stops_nothing_when_a_file_is_the_authority(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = journal_socket(tmp_path / "journal")
    recorder = Recorder(AuditFile(str(tmp_path / "audit.log")),
                        JournalSink(str(tmp_path / "journal")), sync=False)
    journal.close()
    with caplog.at_level(logging.WARNING, "prguard.worker"):
        assert [recorder.write(refused(n)) for n in range(3)] == [1, 2, 3]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "the journal does not take records" in errors[0].getMessage()
