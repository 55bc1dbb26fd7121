"""The worker trusts nobody: a compromised broker speaking to it directly is refused.

The test holds the broker's end of the channel and sends hostile datagrams; every one is
answered with Refused or Malformed, no fd is kept, and valid requests still work.
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import msgpack
import pytest

from lab.processes import REPO, fd_count, proc_status
from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.messages import (
    Malformed,
    Message,
    Ready,
    Refused,
    SgIoRequest,
    SgIoResult,
    decode,
)
from prguard.shared.scsi import PrReply, Sense, Status


class WorkerUnderTest:
    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.lone_worker", str(theirs.fileno())], cwd=REPO,
            pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
        theirs.close()
        self.sock.settimeout(10)
        ready = self.receive()
        assert isinstance(ready, Ready) and ready.pid == self.proc.pid

    def send(self, payload: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([payload], anc if fds else [])

    def receive(self) -> Message:
        return decode(self.sock.recv(16384))

    def ask(self, payload: bytes, fds: list[int] | tuple[int, ...] = ()) -> Message:
        self.send(payload, fds)
        return self.receive()


@pytest.fixture
def worker() -> Iterator[WorkerUnderTest]:
    w = WorkerUnderTest()
    yield w
    w.sock.close()
    assert w.proc.wait(10) == 0  # orderly EOF with its parent alive: exit 0


def request(cdb: bytes, data: bytes = b"", rid: int = 1) -> bytes:
    return SgIoRequest(rid, cdb, data).encode()


def test_worker_runs_with_sys_rawio_only(worker: WorkerUnderTest) -> None:
    status = proc_status(worker.proc.pid)
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 1 << 17
    assert int(status["CapBnd"], 16) == int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"


def test_valid_request_reaches_the_driver(worker: WorkerUnderTest, fd_zoo: dict[str, int]
                                          ) -> None:
    answer = worker.ask(request(pr_in_cdb(), rid=77), [fd_zoo["loop"]])
    assert answer == SgIoResult(77, PrReply(int(Status.CHECK_CONDITION),
                                            Sense.INVALID_FIELD.fixed_format()))


HOSTILE_DATAGRAMS = [
    b"",
    b"\x00" * 64,
    os.urandom(512),
    msgpack.packb([1, 0x10, 1, bytes(16), b"", 0, 1]),  # a field too many
    msgpack.packb([1, 0x10, "1", bytes(16), b"", 0]),  # id as str
    msgpack.packb([1, 0x10, 1, bytes(16), bytes(9000), 0]),  # data over 8192
    msgpack.packb([1, 0x10, 1, bytes(16), b"", -1]),  # connection negative
    msgpack.packb({"v": 1, "t": 0x10, "id": 1, "cdb": bytes(16), "data": b""}),  # a map
    b"\x91" * 2000 + b"\x90",  # arrays nested 2000 deep
    msgpack.packb([1, 0x11, 1, 0, bytes(96), b""]),  # an answer sent to the worker
    Ready(1).encode(),
]


@pytest.mark.parametrize("payload", HOSTILE_DATAGRAMS)
def test_undecodable_or_misdirected_datagrams_are_malformed(
        worker: WorkerUnderTest, fd_zoo: dict[str, int], payload: bytes) -> None:
    base = fd_count(worker.proc.pid)
    assert isinstance(worker.ask(payload, [fd_zoo["loop"]]), Malformed)
    assert isinstance(worker.ask(request(pr_in_cdb()), [fd_zoo["loop"]]), SgIoResult)
    assert fd_count(worker.proc.pid) == base


@pytest.mark.parametrize(("cdb", "data", "fd", "sense"), [
    (b"\x2a" + bytes(15), b"", "loop", Sense.INVALID_FIELD),  # WRITE(10)
    (b"\x04" + bytes(15), b"", "loop", Sense.INVALID_FIELD),  # FORMAT UNIT
    (b"\x3b" + bytes(15), b"", "loop", Sense.INVALID_FIELD),  # WRITE BUFFER
    (b"\x48" + bytes(15), b"", "loop", Sense.INVALID_FIELD),  # SANITIZE
    (b"\x85" + bytes(15), b"", "loop", Sense.INVALID_FIELD),  # ATA PASS-THROUGH(16)
    (b"\xa1" + bytes(15), b"", "loop", Sense.INVALID_FIELD),  # ATA PASS-THROUGH(12)
    (pr_out_cdb(0, 24), bytes(10), "loop", Sense.INVALID_FIELD),  # data != CDB length
    (pr_in_cdb(0, 24), bytes(24), "loop", Sense.INVALID_FIELD),  # PR IN with data
    (pr_in_cdb(0, 9000), b"", "loop", Sense.INVALID_FIELD),
    (pr_out_cdb(0, 24), bytes(24), "loop_ro", Sense.INVALID_OPCODE),
    (pr_out_cdb(0, 24), bytes(24), "opath", Sense.INVALID_OPCODE),
    (pr_in_cdb(), b"", "part", Sense.IO_ERROR),
    (pr_in_cdb(), b"", "file", Sense.IO_ERROR),
    (pr_in_cdb(), b"", "pipe_r", Sense.IO_ERROR),
    (pr_in_cdb(), b"", "socket", Sense.IO_ERROR),
    (pr_in_cdb(), b"", "devnull", Sense.IO_ERROR),
    (pr_in_cdb(), b"", "dir", Sense.IO_ERROR),
    (pr_in_cdb(7), b"", "loop", Sense.INVALID_FIELD),
])
def test_requests_the_rules_forbid_are_refused(
        worker: WorkerUnderTest, fd_zoo: dict[str, int], cdb: bytes, data: bytes, fd: str,
        sense: object) -> None:
    base = fd_count(worker.proc.pid)
    answer = worker.ask(request(cdb, data, rid=5), [fd_zoo[fd]])
    assert isinstance(answer, Refused)
    assert answer.id == 5 and answer.status == Status.CHECK_CONDITION
    assert answer.sense == sense.fixed_format()  # type: ignore[attr-defined]
    assert fd_count(worker.proc.pid) == base


def test_request_without_fd_is_refused(worker: WorkerUnderTest) -> None:
    answer = worker.ask(request(pr_in_cdb(), rid=3))
    assert isinstance(answer, Refused) and answer.id == 3


def test_two_fds_are_malformed_and_both_closed(worker: WorkerUnderTest,
                                               fd_zoo: dict[str, int]) -> None:
    base = fd_count(worker.proc.pid)
    answer = worker.ask(request(pr_in_cdb()), [fd_zoo["loop"], fd_zoo["file"]])
    assert isinstance(answer, Malformed)
    assert fd_count(worker.proc.pid) == base


def test_oversize_datagram_is_malformed(worker: WorkerUnderTest, fd_zoo: dict[str, int]
                                        ) -> None:
    base = fd_count(worker.proc.pid)
    assert isinstance(worker.ask(bytes(20000), [fd_zoo["loop"]]), Malformed)
    assert fd_count(worker.proc.pid) == base


def test_answers_carry_the_request_ids_out_of_order_allowed(
        worker: WorkerUnderTest, fd_zoo: dict[str, int]) -> None:
    ids = list(range(100, 140))
    for rid in ids:
        worker.send(request(pr_in_cdb(), rid=rid), [fd_zoo["loop"]])
    answers = [worker.receive() for _ in ids]
    assert sorted(a.id for a in answers if isinstance(a, SgIoResult)) == ids


#: Runs a broker stand-in that starts the worker, waits for Ready and exits without a word;
#: as the child subreaper, this process then collects the orphaned worker's exit status.
ORPHAN_THE_WORKER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
broker = ("import os,socket,subprocess,sys\\n"
          "a,b=socket.socketpair(socket.AF_UNIX,socket.SOCK_SEQPACKET)\\n"
          "p=subprocess.Popen([sys.executable,'-m','lab.lone_worker',str(b.fileno())],"
          "pass_fds=(b.fileno(),))\\n"
          "a.recv(100); print(p.pid, flush=True); os._exit(0)\\n")
out = subprocess.run([sys.executable, "-c", broker], stdout=subprocess.PIPE, text=True)
_, status = os.waitpid(int(out.stdout), 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_worker_exits_nonzero_when_its_parent_dies() -> None:
    """The broker dying (parent gone) is not an orderly stop: exit status 1, saying so."""
    result = subprocess.run([sys.executable, "-c", ORPHAN_THE_WORKER], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.stdout == "1\n", result
    assert result.stderr == "worker: the broker died; exiting\n"
