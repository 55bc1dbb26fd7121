"""The broker trusts nobody either: a compromised worker's answers are checked before
anything reaches QEMU.

The test holds the worker's end of the channel (lab/lone_broker.py runs the broker alone)
and answers each forwarded request itself. Data the request could not have produced is
never passed on: the client gets CHECK CONDITION 0b/08/00 instead. A worker that breaks
the channel protocol ends the broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.processes import REPO, wait_for_service
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared import fdpass
from prguard.shared.messages import Alive, Probe, Ready, SgIoRequest, SgIoResult, decode
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import Sense, Status

LUN_COMM_FAILURE = Sense.LUN_COMM_FAILURE.fixed_format()
SENSE0 = bytes(96)


def forwarded_request(channel: socket.socket) -> tuple[SgIoRequest, int]:
    """The next request the broker forwards, and its fd; liveness probes on the way are
    answered as a worker's free thread answers them."""
    while True:
        got = fdpass.recv_message(channel)
        assert got is not None
        message = decode(got[0])
        if isinstance(message, Probe):
            assert got[1] is None
            channel.send(Alive(message.id).encode())
            continue
        assert isinstance(message, SgIoRequest) and got[1] is not None
        return message, got[1]


@dataclass
class LoneBroker:
    path: str
    channel: socket.socket
    proc: subprocess.Popen[bytes]

    def request(self, cdb: bytes, fd: int, data: bytes,
                answer: object) -> tuple[PrReply, SgIoRequest]:
        """A client's request; the forwarded one is answered by `answer(request)`."""
        replies: list[PrReply] = []
        with Client(self.path) as client:
            asking = threading.Thread(target=lambda: replies.append(
                client.request(cdb, fd, data)))
            asking.start()
            forwarded, fd_in_flight = forwarded_request(self.channel)
            os.close(fd_in_flight)
            self.channel.send(answer(forwarded))  # type: ignore[operator]
            asking.join(10)
        assert replies, "no reply to the client"
        return replies[0], forwarded


@pytest.fixture
def broker(sockdir: Path) -> Iterator[LoneBroker]:
    path = str(sockdir / "b.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.lone_broker", str(listener.fileno()), str(theirs.fileno())],
        cwd=REPO, pass_fds=(listener.fileno(), theirs.fileno()), stderr=subprocess.PIPE)
    listener.close()
    theirs.close()
    ours.settimeout(10)
    ours.send(Ready(os.getpid()).encode())
    wait_for_service(path)
    yield LoneBroker(path, ours, proc)
    ours.close()
    if proc.poll() is None:
        proc.terminate()
    proc.wait(10)


def answered(status: int, data: bytes) -> object:
    return lambda request: SgIoResult(request.id, PrReply(status, SENSE0, data)).encode()


def test_a_plausible_answer_is_passed_on(broker: LoneBroker, fd_zoo: dict[str, int]) -> None:
    """The control case: the channel works, and PR IN data within the allocation length
    reaches the client as the worker sent it."""
    reply, forwarded = broker.request(pr_in_cdb(0, 24), fd_zoo["loop"], b"",
                                      answered(Status.GOOD, b"k" * 24))
    assert forwarded.cdb == pr_in_cdb(0, 24)
    assert reply == PrReply(Status.GOOD, SENSE0, b"k" * 24)


@pytest.mark.parametrize(("cdb", "data", "status", "answer_data"), [
    (pr_in_cdb(0, 24), b"", Status.GOOD, b"k" * 25),  # more than the allocation length
    (pr_in_cdb(0, 0), b"", Status.GOOD, b"k"),
    (pr_in_cdb(0, 24), b"", Status.CHECK_CONDITION, b"k" * 8),  # data with an error
    (pr_in_cdb(0, 24), b"", Status.RESERVATION_CONFLICT, b"k" * 8),
    (pr_out_cdb(0, 24), bytes(24), Status.GOOD, b"k" * 8),  # PR OUT returns no data
], ids=["over allocation", "allocation 0", "with check condition", "with conflict",
        "pr out"])
def test_data_the_request_cannot_have_produced_is_never_passed_on(
        broker: LoneBroker, fd_zoo: dict[str, int], cdb: bytes, data: bytes, status: int,
        answer_data: bytes) -> None:
    reply, _ = broker.request(cdb, fd_zoo["loop"], data, answered(status, answer_data))
    assert reply == PrReply(Status.CHECK_CONDITION, LUN_COMM_FAILURE)
    # ... and the broker goes on serving
    reply, _ = broker.request(pr_in_cdb(0, 8), fd_zoo["loop"], b"",
                              answered(Status.GOOD, b"k" * 8))
    assert reply == PrReply(Status.GOOD, SENSE0, b"k" * 8)
    assert broker.proc.poll() is None


def test_an_answer_carrying_an_fd_ends_the_broker(broker: LoneBroker,
                                                  fd_zoo: dict[str, int]) -> None:
    replies: list[PrReply] = []
    with Client(broker.path) as client:
        asking = threading.Thread(target=lambda: replies.append(
            client.request(pr_in_cdb(), fd_zoo["loop"])))
        asking.start()
        request, fd_in_flight = forwarded_request(broker.channel)
        os.close(fd_in_flight)
        fdpass.send_message(broker.channel, SgIoResult(request.id, PrReply(0, SENSE0)).encode(),
                            fd_zoo["file"])
        asking.join(10)
    assert replies == [PrReply(Status.CHECK_CONDITION, LUN_COMM_FAILURE)]
    assert broker.proc.wait(10) == 1
    assert broker.proc.stderr is not None
    assert "the worker sent an fd" in broker.proc.stderr.read().decode()


def test_an_alive_for_no_probe_ends_the_broker(broker: LoneBroker) -> None:
    """Alive answers a probe the broker sent; any other is a worker off the protocol."""
    broker.channel.send(Alive(10**6).encode())
    assert broker.proc.wait(10) == 1
    assert broker.proc.stderr is not None
    assert "unexpected Alive from the worker" in broker.proc.stderr.read().decode()
