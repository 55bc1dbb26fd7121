"""The worker's guard around SG_IO: the policy's refusals, the record before a PR OUT
(written before the ioctl, or no ioctl), the outcome after it (or no answer from the
device), and what costs nothing when nothing is configured."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from lab.tiny_disk import fill, tiny_tmpfs
from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.audit_chain import Where, verify
from prguard.shared.audit_record import ClientIdentity, Record, decode
from prguard.shared.policy import parse
from prguard.shared.scsi import Sense, Status
from prguard.worker.audit_file import AuditFile
from prguard.worker.device_identity import DeviceIdentities
from prguard.worker.guard import (
    UNKNOWN_CLIENT,
    Admitted,
    Clients,
    Guard,
    PolicyHolder,
    Refusal,
)
from prguard.worker.recorder import Recorder
from prguard.worker.sgio import SgIoOutcome

WEB = ClientIdentity(pid=10, uid=107, gid=107, cgroup="/machine.slice/w",
                     unit="machine-qemu\\x2d1\\x2dweb01.scope", domain="web01", pidfd=True)
LOOP = os.makedev(7, 3)
REGISTER = (pr_out_cdb(0, 24), bytes(8) + (0xAB).to_bytes(8, "big") + bytes(8))
READ_KEYS = (pr_in_cdb(0, 8192), b"")
EINVAL = SgIoOutcome(errno=22, status=0, host_status=0, driver_status=0, resid=0,
                     sense=bytes(96), data=b"")
CHECK_24 = (int(Status.CHECK_CONDITION), Sense.INVALID_FIELD.fixed_format())


def records(path: Path) -> list[Record]:
    """The records of a file, skipping a line a full disk cut short."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(decode(line))
        except ValueError:
            continue
    return out


def guard(path: Path | None, policy: str | None = None, reads: bool = False) -> Guard:
    recorder = Recorder(AuditFile(str(path)), None, sync=True) if path else None
    no_names: dict[str, int] = {}
    holder = (PolicyHolder(parse(policy, "p.toml", no_names.__getitem__, no_names.__getitem__))
              if policy else None)
    return Guard(recorder, reads, holder, DeviceIdentities())


def run(g: Guard, request: tuple[bytes, bytes], client: ClientIdentity = WEB,
        seen: list[str] | None = None, path: Path | None = None) -> Admitted | Refusal:
    verdict = g.before(client, request[0], request[1], stat.S_IFBLK, LOOP)
    if isinstance(verdict, Refusal):
        return verdict
    if seen is not None and path is not None:  # what the file held when SG_IO ran
        seen += [r.phase or "" for r in records(path)]
    replaced = g.after(verdict, EINVAL, *CHECK_24)
    return replaced if replaced is not None else verdict


def test_a_pr_out_is_recorded_before_the_ioctl_and_after(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    g = guard(log)
    seen: list[str] = []
    assert isinstance(run(g, REGISTER, seen=seen, path=log), Admitted)
    assert seen == ["issuing"]
    issuing, done = records(log)
    assert (issuing.kind, issuing.phase, done.phase) == ("command", "issuing", "done")
    assert done.issued == issuing.seq and done.client == WEB
    assert done.command is not None and done.command.action == "REGISTER"
    assert done.command.sa_key == "0xab" and done.device is not None
    assert done.device.dev == "7:3"
    assert done.answer is not None and done.answer.sense == "05/24/00"
    assert done.cause is not None and done.cause.errno == "EINVAL"
    assert done.duration_us is not None and done.duration_us >= 0


def test_pr_in_is_recorded_only_with_audit_reads(tmp_path: Path) -> None:
    run(guard(tmp_path / "a.log"), READ_KEYS)
    assert records(tmp_path / "a.log") == []
    run(guard(tmp_path / "b.log", reads=True), READ_KEYS)
    (done,) = records(tmp_path / "b.log")
    assert done.phase == "done" and done.issued is None
    assert done.command is not None and done.command.action == "READ KEYS"


POLICY = """\
[[rule]]
name = "web reads"
client = { domain = "web*" }
allow = "pr-in"
[default]
allow = "nothing"
"""


def test_a_policy_refusal_is_recorded_with_its_rule(tmp_path: Path) -> None:
    g = guard(tmp_path / "audit.log", POLICY)
    refusal = run(g, REGISTER)
    assert refusal == Refusal(Status.CHECK_CONDITION, Sense.ACCESS_DENIED,
                              'rule 1 "web reads" allows PR IN only')
    (refused,) = records(tmp_path / "audit.log")
    assert refused.kind == "refused" and refused.cause is not None
    assert (refused.cause.refused_by, refused.cause.rule) == ("policy", 'rule 1 "web reads"')
    assert refused.answer is not None and refused.answer.sense == "05/20/02"
    assert isinstance(run(g, READ_KEYS), Admitted)
    refusal = run(g, READ_KEYS, client=UNKNOWN_CLIENT)
    assert isinstance(refusal, Refusal) and refusal.reason == "default allows nothing"


def test_a_policy_without_an_audit_log(tmp_path: Path) -> None:
    g = guard(None, POLICY)
    assert isinstance(run(g, REGISTER), Refusal)
    assert isinstance(run(g, READ_KEYS), Admitted)


def test_rules_refusals_are_recorded(tmp_path: Path) -> None:
    g = guard(tmp_path / "audit.log")
    g.rules_refusal(WEB, *REGISTER, stat.S_IFBLK, LOOP, int(Status.CHECK_CONDITION),
                    Sense.INVALID_OPCODE, "PR OUT on a read-only fd")
    g.rules_refusal(WEB, *REGISTER, None, 0, int(Status.CHECK_CONDITION), Sense.IO_ERROR,
                    "fd is not a SCSI device")
    first, second = records(tmp_path / "audit.log")
    assert first.cause is not None and first.cause.refused_by == "rules"
    assert first.answer is not None and first.answer.sense == "05/20/00"
    assert first.device is not None and second.device is None


def test_nothing_configured_costs_nothing(tmp_path: Path) -> None:
    g = Guard(None, False, None, DeviceIdentities(sys=str(tmp_path / "no-sysfs")))
    verdict = g.before(WEB, *REGISTER, stat.S_IFBLK, LOOP)
    assert isinstance(verdict, Admitted)
    assert (verdict.device, verdict.issuing, verdict.issued_seq) == (None, None, None)
    assert g.after(verdict, EINVAL, *CHECK_24) is None


def test_a_full_disk_refuses_pr_out_before_the_ioctl_and_keeps_pr_in(
        caplog: pytest.LogCaptureFixture) -> None:
    with tiny_tmpfs("64k") as disk:
        g = guard(disk / "audit.log")
        assert isinstance(run(g, REGISTER), Admitted)
        filler = fill(disk)
        with caplog.at_level(logging.ERROR, "prguard.worker"):
            outcomes = [run(g, REGISTER) for _ in range(30)]
            assert Refusal(Status.CHECK_CONDITION, Sense.TARGET_FAILURE,
                           "no audit record could be written: PR OUT not issued") in outcomes
            assert all(isinstance(run(g, READ_KEYS), Admitted) for _ in range(3))
        assert sum("cannot write to" in r.getMessage() for r in caplog.records) == 1
        filler.unlink()
        assert isinstance(run(g, REGISTER), Admitted)
        kinds = [r.kind for r in records(disk / "audit.log") if r.kind != "command"]
        assert kinds == ["unrecorded"]


def test_an_outcome_that_cannot_be_recorded_is_not_passed_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with tiny_tmpfs("64k") as disk:
        g = guard(disk / "audit.log")
        verdict = g.before(WEB, *REGISTER, stat.S_IFBLK, LOOP)
        assert isinstance(verdict, Admitted)
        fill(disk)  # the disk fills while the device works
        with caplog.at_level(logging.ERROR, "prguard.worker"):
            replaced = None
            for _ in range(30):  # the page the issuing record began may still have room
                replaced = g.after(verdict, EINVAL, *CHECK_24)
                if replaced is not None:
                    break
        assert replaced == Refusal(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE,
                                   "outcome could not be recorded")
        assert any("outcome not recorded: PR OUT REGISTER on 7:3 answered CHECK CONDITION "
                   "05/24/00" in r.getMessage() for r in caplog.records)


def test_the_client_table() -> None:
    clients = Clients()
    assert clients.add(1, WEB) and clients.get(1) == WEB
    assert clients.get(2) == UNKNOWN_CLIENT
    clients.remove(1)
    assert clients.get(1) == UNKNOWN_CLIENT and len(clients) == 0


def test_the_file_is_one_chain(tmp_path: Path) -> None:
    g = guard(tmp_path / "audit.log", reads=True)
    for request in (REGISTER, READ_KEYS, REGISTER):
        run(g, request)
    with (tmp_path / "audit.log").open("rb") as stream:
        report = verify([(Where("a", n), line) for n, line in enumerate(stream, 1)])
    assert report.ok and report.records == 5
