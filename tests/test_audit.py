"""The audit trail of the running pair, on loop devices (SG_IO fails with EINVAL there,
which is an outcome too; the worker's -vvv log tells what reached SG_IO): a record for
every PR OUT service action and every refusal, the same answers as without an audit, a
full disk that stops PR OUT and not PR IN, the journal's copy, and start-up errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.journal_ns import JOURNAL_IN_NAMESPACE, parse_datagram
from lab.processes import PRGUARD, REPO, Helper, start_helper
from lab.sgio_log import SgIoLog, loop_einval
from lab.tiny_disk import fill, tiny_tmpfs
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.audit_chain import Where, verify
from prguard.shared.audit_record import Record, decode
from prguard.shared.scsi import PrOutAction, Sense, Status

KEY, SA_KEY = 0x1111, 0x2222


def plist(key: int = KEY, sa_key: int = SA_KEY, flags: int = 0) -> bytes:
    return key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(4) + bytes([flags]) + \
        bytes(3)


def records(path: Path) -> list[Record]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(decode(line))
        except ValueError:
            continue
    return out


def chain_ok(*paths: Path) -> bool:
    lines = []
    for path in paths:
        with path.open("rb") as stream:
            lines += [(Where(str(path), n), line) for n, line in enumerate(stream, 1)]
    return verify(lines).ok


@pytest.fixture
def audited(sockdir: Path) -> Iterator[Helper]:
    helper = start_helper(PRGUARD, str(sockdir / "p.sock"), "-vvv", "--audit-log",
                          str(sockdir / "audit.log"), "--audit-sync")
    yield helper
    helper.stop()


def ask(helper: Helper, cdb: bytes, device: str, data: bytes = b"",
        flags: int = os.O_RDWR) -> tuple[int, bytes]:
    fd = os.open(device, flags | os.O_CLOEXEC)
    try:
        with Client(helper.path) as client:
            reply = client.request(cdb, fd, data)
    finally:
        os.close(fd)
    return reply.status, reply.sense


def test_every_pr_out_service_action_is_recorded_before_and_after(
        audited: Helper, loop_disk: str, sockdir: Path) -> None:
    log = SgIoLog(audited)
    actions = list(PrOutAction)
    for action in actions:
        cdb = pr_out_cdb(int(action), 24, 0x01)
        assert ask(audited, cdb, loop_disk, plist()) == (
            Status.CHECK_CONDITION, Sense.INVALID_FIELD.fixed_format())
        assert log.new_calls() == [loop_einval(cdb, loop_disk)]  # it reached SG_IO
    found = records(sockdir / "audit.log")
    assert found[0].kind == "start"
    commands = [r for r in found if r.kind == "command"]
    assert [r.phase for r in commands] == ["issuing", "done"] * len(actions)
    st = os.stat(loop_disk)
    for (issuing, done), action in zip(zip(commands[::2], commands[1::2], strict=True),
                                       actions, strict=True):
        assert done.issued == issuing.seq
        assert done.command == issuing.command and done.command is not None
        assert done.command.action == action.name.replace("_", " ")
        assert done.command.cdb == pr_out_cdb(int(action), 24, 0x01).hex()
        assert done.command.param == plist().hex()
        assert done.device is not None
        assert done.device.dev == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        assert done.device.diskseq is not None
        assert done.client is not None and done.client.pid > 0 and done.client.uid == 0
        assert done.answer is not None and done.answer.sense == "05/24/00"
        assert done.cause is not None and done.cause.errno == "EINVAL"
    keyed = {r.command.action: r.command for r in commands if r.command}
    assert (keyed["PREEMPT"].key, keyed["PREEMPT"].sa_key) == ("0x1111", "0x2222")
    assert keyed["RESERVE"].type == "Write Exclusive" and keyed["RESERVE"].sa_key is None
    assert keyed["REGISTER AND IGNORE EXISTING KEY"].key is None
    assert chain_ok(sockdir / "audit.log")


def test_pr_in_is_not_recorded_without_audit_reads(audited: Helper, loop_disk: str,
                                                   sockdir: Path) -> None:
    ask(audited, pr_in_cdb(0, 8192), loop_disk)
    assert [r.kind for r in records(sockdir / "audit.log")] == ["start"]


#: (name, cdb, data, device fd kind, the answer's sense, the reason recorded)
REFUSALS = [
    ("read-only fd", pr_out_cdb(0, 24), plist(), "loop_ro", Sense.INVALID_OPCODE,
     "PR OUT on a read-only fd"),
    ("partition", pr_in_cdb(0, 8192), b"", "part", Sense.IO_ERROR, "fd is partition"),
    ("regular file", pr_in_cdb(0, 8192), b"", "file", Sense.IO_ERROR,
     "fd is not a SCSI device"),
    ("undefined PR IN action", pr_in_cdb(0x1F, 8192), b"", "loop", Sense.INVALID_FIELD,
     "undefined service action 0x1f"),
    ("undefined PR OUT action", pr_out_cdb(0x0B, 24), plist(), "loop", Sense.INVALID_FIELD,
     "undefined service action 0x0b"),
    ("list length bytes 5-6", pr_out_cdb(0, 24)[:6] + b"\x01" + pr_out_cdb(0, 24)[7:],
     plist(), "loop", Sense.INVALID_FIELD, "parameter list length over 65535"),
]


@pytest.mark.parametrize(("name", "cdb", "data", "kind", "sense", "reason"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_every_refusal_is_recorded_and_answered_as_without_audit(
        audited: Helper, prguard: Helper, fd_zoo: dict[str, int], sockdir: Path, name: str,
        cdb: bytes, data: bytes, kind: str, sense: object, reason: str) -> None:
    log = SgIoLog(audited)
    replies = []
    for helper in (audited, prguard):
        with Client(helper.path) as client:
            reply = client.request(cdb, fd_zoo[kind], data)
            replies.append((reply.status, reply.sense, reply.data))
    assert replies[0] == replies[1] == (Status.CHECK_CONDITION,
                                        sense.fixed_format(), b"")  # type: ignore[attr-defined]
    assert log.new_calls() == []  # refused: nothing reached SG_IO
    (refused,) = [r for r in records(sockdir / "audit.log") if r.kind == "refused"]
    assert refused.cause is not None and refused.cause.refused_by == "rules"
    assert refused.cause.reason == reason
    assert refused.answer is not None
    assert refused.answer.sense == str(sense)
    assert refused.command is not None and refused.command.cdb == cdb.hex()


def test_a_full_disk_refuses_pr_out_and_keeps_pr_in(sockdir: Path, loop_disk: str) -> None:
    with tiny_tmpfs("64k") as disk:
        helper = start_helper(PRGUARD, str(sockdir / "p.sock"), "-vvv", "--audit-log",
                              str(disk / "audit.log"))
        try:
            log = SgIoLog(helper)
            register = pr_out_cdb(0, 24)
            assert ask(helper, register, loop_disk, plist())[1] == \
                Sense.INVALID_FIELD.fixed_format()
            assert len(log.new_calls()) == 1
            filler = fill(disk)
            answers = [ask(helper, register, loop_disk, plist()) for _ in range(20)]
            refused = (Status.CHECK_CONDITION, Sense.TARGET_FAILURE.fixed_format())
            assert refused in answers
            calls = log.new_calls()
            # every PR OUT that reached SG_IO before the disk ran out has its record;
            # from the first refusal on, none reached it
            assert len(calls) == answers.index(refused)
            assert answers[answers.index(refused):] == [refused] * (20 - len(calls))
            for _ in range(3):  # PR IN goes on
                assert ask(helper, pr_in_cdb(0, 8192), loop_disk)[1] == \
                    Sense.INVALID_FIELD.fixed_format()
            assert len(log.new_calls()) == 3
            filler.unlink()
            assert ask(helper, register, loop_disk, plist())[1] == \
                Sense.INVALID_FIELD.fixed_format()
            assert len(log.new_calls()) == 1
            stderr = helper.stderr_text()
            assert stderr.count("audit: cannot write to") == 1
            assert "takes records again" in stderr
            summary = [r for r in records(disk / "audit.log") if r.kind == "unrecorded"]
            assert len(summary) == 1 and summary[0].unrecorded is not None
            assert summary[0].unrecorded.pr_out_refused == 20 - len(calls)
        finally:
            helper.stop()


def test_records_reach_the_journal(sockdir: Path, loop_disk: str) -> None:
    """The journal's socket is the test's own, bound where journald's would be, in a
    mount namespace prguard runs in (systemd is not PID 1 on every test host)."""
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(sockdir / "journal"))
    journal.settimeout(10)
    helper = start_helper([sys.executable, "-m", "lab.journal_ns", str(sockdir / "journal"),
                           *PRGUARD], str(sockdir / "p.sock"), "--audit-journal")
    try:
        start = parse_datagram(journal.recv(65536))
        assert start["PRGUARD_KIND"] == b"start"
        ask(helper, pr_out_cdb(4, 24, 0x01), loop_disk, plist())
        issuing, done = (parse_datagram(journal.recv(65536)) for _ in range(2))
    finally:
        helper.stop()
    assert issuing["PRGUARD_PHASE"] == b"issuing" and done["PRGUARD_PHASE"] == b"done"
    assert done["MESSAGE_ID"] == b"b1f3a0c6e2d84f5e9a7c3d1e8f6b2a40"
    assert done["PRGUARD_COMMAND_ACTION"] == b"PREEMPT"
    assert done["PRGUARD_COMMAND_SA_KEY"] == b"0x2222"
    assert done["PRGUARD_ANSWER_SENSE"] == b"05/24/00"
    assert done["PRIORITY"] == b"5"
    assert decode(done["PRGUARD_RECORD"]).prev == issuing["PRGUARD_HASH"].decode()
    assert JOURNAL_IN_NAMESPACE == "/run/systemd/journal/socket"


@pytest.mark.parametrize(("args", "error"), [
    (["--audit-log", "/nonexistent/dir/audit.log"],
     "prguard: cannot open the audit log /nonexistent/dir/audit.log: No such file or "
     "directory\n"),
    (["--audit-sync"], "prguard: --audit-sync needs --audit-log (it syncs that file)\n"),
    (["--audit-reads"], "prguard: --audit-reads needs --audit-log or --audit-journal\n"),
    (["--policy", "/nonexistent.toml"],
     "prguard: --policy: /nonexistent.toml: No such file or directory\n"),
    (["--policy", "{bad}"], "prguard:{bad}:2: default: allow must be \"nothing\", "
     "\"pr-in\" or \"pr-out\", not 'x'\n"),
])
def test_what_cannot_be_used_stops_prguard_in_one_line(sockdir: Path, args: list[str],
                                                      error: str) -> None:
    bad = sockdir / "bad.toml"
    bad.write_text('[default]\nallow = "x"\n')
    args = [a.replace("{bad}", str(bad)) for a in args]
    done = subprocess.run([*PRGUARD, "-k", str(sockdir / "p.sock"), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == error.replace("{bad}", str(bad))
    assert not (sockdir / "p.sock").exists()


def test_without_audit_or_policy_sigusr1_still_ends_prguard(prguard: Helper) -> None:
    """As the C helper: SIGUSR1 has its default action unless --policy is given."""
    os.kill(prguard.pid, signal.SIGUSR1)
    assert prguard.proc.wait(10) == -signal.SIGUSR1
    time.sleep(0.1)


def test_a_rotation_by_rename_is_followed_under_the_filter(audited: Helper, loop_disk: str,
                                                           sockdir: Path) -> None:
    register = pr_out_cdb(0, 24)
    ask(audited, register, loop_disk, plist())
    os.rename(sockdir / "audit.log", sockdir / "audit.log.1")  # logrotate's rename
    ask(audited, register, loop_disk, plist())
    ask(audited, register, loop_disk, plist())
    assert [r.kind for r in records(sockdir / "audit.log.1")] == ["start", "command",
                                                                  "command"]
    assert [r.phase for r in records(sockdir / "audit.log")] == ["issuing", "done"] * 2
    assert chain_ok(sockdir / "audit.log.1", sockdir / "audit.log")
    assert audited.proc.poll() is None and "rotated" in audited.stderr_text()


def test_a_journal_that_goes_away_stops_nothing_when_a_file_is_the_authority(
        sockdir: Path, loop_disk: str) -> None:
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(sockdir / "journal"))
    journal.settimeout(10)
    helper = start_helper([sys.executable, "-m", "lab.journal_ns", str(sockdir / "journal"),
                           *PRGUARD], str(sockdir / "p.sock"), "--audit-journal",
                          "--audit-log", str(sockdir / "audit.log"))
    try:
        journal.recv(65536)  # the start record
        journal.close()  # journald is gone
        for _ in range(3):
            ask(helper, pr_out_cdb(0, 24), loop_disk, plist())
        assert helper.proc.poll() is None
        assert helper.stderr_text().count("the journal does not take records") == 1
    finally:
        helper.stop()
    assert [r.phase for r in records(sockdir / "audit.log") if r.kind == "command"] == \
        ["issuing", "done"] * 3
