"""What a compromised broker can and cannot do to the audit trail and the policy: the
tests speak to a worker (started with --audit-log, --policy) on its channel directly.

It cannot get a PR OUT executed without a record of what was sent to which device (the
worker writes the record, from the CDB, parameter list and fd it got, before the ioctl),
nor with a full disk. What it can forge is who asked: a connection it never introduced
is recorded as an unknown client, and without a pidfd the pid it names is taken as it
is (the record then says `pidfd` false)."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.processes import REPO
from lab.tiny_disk import fill, tiny_tmpfs
from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.audit_record import Record, decode
from prguard.shared.messages import (
    Forget,
    Identified,
    Identify,
    Message,
    PolicyReloaded,
    Ready,
    Refused,
    ReloadPolicy,
    SgIoRequest,
    SgIoResult,
)
from prguard.shared.messages import decode as decode_message
from prguard.shared.scsi import Sense, Status
from prguard.worker.guard import UNKNOWN_CLIENT

REGISTER = pr_out_cdb(0, 24)
PARAMS = (0).to_bytes(8, "big") + (0x77).to_bytes(8, "big") + bytes(8)


class Worker:
    def __init__(self, *args: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.lone_worker", str(theirs.fileno()), *args], cwd=REPO,
            pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
        theirs.close()
        self.sock.settimeout(10)
        assert isinstance(self.receive(), Ready)

    def send(self, message: Message, fd: int | None = None) -> None:
        anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
               if fd is not None else [])
        self.sock.sendmsg([message.encode()], anc)

    def receive(self) -> Message:
        return decode_message(self.sock.recv(16384))

    def ask(self, message: Message, fd: int | None = None) -> Message:
        self.send(message, fd)
        return self.receive()

    def stop(self) -> str:
        self.sock.close()
        assert self.proc.wait(10) == 0
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


@pytest.fixture
def loop_rw(loop_disk: str) -> Iterator[int]:
    fd = os.open(loop_disk, os.O_RDWR)
    yield fd
    os.close(fd)


def records(path: Path) -> list[Record]:
    return [decode(line) for line in path.read_bytes().splitlines()]


def test_a_pr_out_from_an_unintroduced_connection_is_recorded_as_sent(
        tmp_path: Path, loop_rw: int, loop_disk: str) -> None:
    worker = Worker("--audit-log", str(tmp_path / "audit.log"))
    try:
        answer = worker.ask(SgIoRequest(1, REGISTER, PARAMS, connection=42), loop_rw)
    finally:
        worker.stop()
    assert isinstance(answer, SgIoResult)  # it did reach the device
    issuing, done = [r for r in records(tmp_path / "audit.log") if r.kind == "command"]
    assert issuing.client == done.client == UNKNOWN_CLIENT
    assert done.command is not None and done.command.cdb == REGISTER.hex()
    assert done.command.param == PARAMS.hex() and done.command.sa_key == "0x77"
    st = os.stat(loop_disk)
    assert done.device is not None and done.device.dev == f"7:{os.minor(st.st_rdev)}"
    assert done.cause is not None and done.cause.errno == "EINVAL"


def test_a_named_pid_without_a_pidfd_is_taken_as_it_is_and_said_so(
        tmp_path: Path, loop_rw: int) -> None:
    worker = Worker("--audit-log", str(tmp_path / "audit.log"))
    try:
        assert worker.ask(Identify(5, 1, 1, 0, 0)) == Identified(5)  # pid 1, no pidfd
        worker.ask(SgIoRequest(2, REGISTER, PARAMS, connection=1), loop_rw)
        # an fd that is no pidfd vouches for nothing
        with open(os.devnull, "rb") as null:
            assert worker.ask(Identify(6, 2, os.getpid(), 0, 0), null.fileno()) == \
                Identified(6)
        worker.ask(SgIoRequest(3, REGISTER, PARAMS, connection=2), loop_rw)
        # a real pidfd names its own process, whatever pid the broker says
        pidfd = os.pidfd_open(os.getpid())
        try:
            assert worker.ask(Identify(7, 3, 1, 9, 9), pidfd) == Identified(7)
        finally:
            os.close(pidfd)
        worker.ask(SgIoRequest(4, REGISTER, PARAMS, connection=3), loop_rw)
        worker.send(Forget(3))
        # Forget has no answer, and another of the worker's threads may take the next
        # request before it is applied (the broker never names a forgotten connection
        # again): ask until the worker has forgotten, within a bound.
        for request_id in range(5, 55):
            worker.ask(SgIoRequest(request_id, REGISTER, PARAMS, connection=3), loop_rw)
            last = [r.client for r in records(tmp_path / "audit.log") if r.phase == "done"]
            if last[-1] == UNKNOWN_CLIENT:
                break
            time.sleep(0.05)
    finally:
        worker.stop()
    clients = [r.client for r in records(tmp_path / "audit.log") if r.phase == "done"]
    assert clients[0] is not None and (clients[0].pid, clients[0].pidfd) == (1, False)
    assert clients[1] is not None and clients[1].cgroup is None and not clients[1].pidfd
    assert clients[2] is not None and clients[2].pidfd
    assert (clients[2].pid, clients[2].uid) == (os.getpid(), os.geteuid())
    assert clients[-1] == UNKNOWN_CLIENT  # forgotten
    assert all(c == clients[2] for c in clients[3:-1])  # until then, the same client


def test_a_full_disk_means_no_pr_out_whoever_asks(loop_rw: int) -> None:
    with tiny_tmpfs("64k") as disk:
        worker = Worker("--audit-log", str(disk / "audit.log"))
        try:
            fill(disk)
            answers = [worker.ask(SgIoRequest(n, REGISTER, PARAMS), loop_rw)
                       for n in range(1, 30)]
            refused = [a for a in answers if isinstance(a, Refused)]
            assert refused and refused[-1] == Refused(
                29, Status.CHECK_CONDITION, Sense.TARGET_FAILURE.fixed_format(),
                "no audit record could be written: PR OUT not issued")
            # PR IN is still served
            assert isinstance(worker.ask(SgIoRequest(40, pr_in_cdb(0, 8192), b""), loop_rw),
                              SgIoResult)
        finally:
            stderr = worker.stop()
    assert stderr.count("audit: cannot write to") == 1


POLICY = """\
[[rule]]
name = "web"
client = { domain = ["web*"] }
allow = "pr-out"
[default]
allow = "pr-in"
"""


def test_the_worker_applies_the_policy_to_the_client_it_read(tmp_path: Path,
                                                             loop_rw: int) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    worker = Worker("--policy", str(tmp_path / "policy.toml"))
    try:
        answer = worker.ask(SgIoRequest(1, REGISTER, PARAMS, connection=9), loop_rw)
        assert answer == Refused(1, Status.CHECK_CONDITION,
                                 Sense.ACCESS_DENIED.fixed_format(),
                                 "default allows PR IN only")
        assert isinstance(worker.ask(SgIoRequest(2, pr_in_cdb(0, 8192), b""), loop_rw),
                          SgIoResult)
        (tmp_path / "policy.toml").write_text(POLICY.replace('allow = "pr-in"',
                                                             'allow = "pr-out"'))
        assert worker.ask(ReloadPolicy(3)) == PolicyReloaded(3, True, "")
        assert isinstance(worker.ask(SgIoRequest(4, REGISTER, PARAMS), loop_rw), SgIoResult)
        (tmp_path / "policy.toml").write_text("[default]\nallow = 'everything'\n")
        reloaded = worker.ask(ReloadPolicy(5))
        assert isinstance(reloaded, PolicyReloaded) and not reloaded.ok
        assert "policy.toml:2: default: allow must be" in reloaded.reason
        # the policy in force stays
        assert isinstance(worker.ask(SgIoRequest(6, REGISTER, PARAMS), loop_rw), SgIoResult)
    finally:
        stderr = worker.stop()
    assert "policy reload refused, the policy in force stays" in stderr


def test_identify_and_forget_without_audit_or_policy_are_malformed(loop_rw: int) -> None:
    worker = Worker()
    try:
        for message in (Identify(1, 1, 1, 0, 0), Forget(1)):
            answer = worker.ask(message)
            assert type(answer).__name__ == "Malformed"
        assert worker.ask(ReloadPolicy(2)) == PolicyReloaded(2, False,
                                                             "no --policy was given")
    finally:
        worker.stop()
