"""The broker's multipath hop over its real channels: a request on a map goes to the path
opener, the path fds it returns are checked, and the translation's SG_IOs go to the worker
on them. The test plays both the opener and the worker (lab/lone_broker.py), with loop
devices standing in for the map (the lone broker takes their major for device-mapper's)
and for its paths; a real map is in the lab (tests/test_lab.py, multipath cases).

A compromised opener's fds are never used: one that is not what it claims ends the
broker, as a worker that breaks its channel does. Which block devices are maps is learnt
from the opener (the broker reads no sysfs): a device it says is none goes the ordinary
way, and so do later ones of the same major without asking."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.loopdev import loop_device
from lab.processes import REPO, wait_for_service
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared import fdpass
from prguard.shared.messages import (
    Alive,
    MapPaths,
    MapRefused,
    MapRequest,
    PathFd,
    PathState,
    Probe,
    Ready,
    SgIoRequest,
    SgIoResult,
    decode,
)
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import Sense, Status

SENSE0 = bytes(96)
GOOD = PrReply(0, SENSE0)
K = 0xA1A1A1A1A1A1A1A1
UUID = "mpath-36001405feedbeef"


def plist(key: int = 0, sakey: int = 0, flags: int = 0) -> bytes:
    return key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes(4) + bytes([flags]) \
        + bytes(3)


@dataclass
class Devices:
    map: str
    paths: list[str]

    def rdev(self, node: str) -> int:
        return os.stat(node).st_rdev

    def states(self, live: tuple[bool, ...] = (True, True)) -> tuple[PathState, ...]:
        states = [PathState(self.rdev(p), os.path.basename(p), up)
                  for p, up in zip(self.paths, live, strict=True)]
        return tuple(sorted(states, key=lambda s: s.rdev))


@pytest.fixture(scope="module")
def devices(loop_disk: str) -> Iterator[Devices]:
    with loop_device() as first, loop_device() as second:
        yield Devices(loop_disk, sorted([first, second], key=lambda p: os.stat(p).st_rdev))


@dataclass
class LoneBroker:
    path: str
    worker: socket.socket
    opener: socket.socket
    proc: subprocess.Popen[bytes]
    devices: Devices

    def start(self, cdb: bytes, data: bytes = b"", flags: int = os.O_RDWR
              ) -> tuple[threading.Thread, list[PrReply]]:
        """A client's request on the map, answered in a thread while the test plays."""
        replies: list[PrReply] = []

        def ask() -> None:
            fd = os.open(self.devices.map, flags)
            try:
                with Client(self.path, timeout=20) as client:
                    replies.append(client.request(cdb, fd, data))
            finally:
                os.close(fd)

        thread = threading.Thread(target=ask)
        thread.start()
        return thread, replies

    def map_request(self) -> MapRequest:
        got = fdpass.recv_message(self.opener)
        assert got is not None and got[1] is not None
        assert os.fstat(got[1]).st_rdev == self.devices.rdev(self.devices.map)
        os.close(got[1])
        request = decode(got[0])
        assert isinstance(request, MapRequest)
        return request

    def answer_paths(self, request: MapRequest, fds: list[tuple[int, int]],
                     states: tuple[PathState, ...] | None = None) -> None:
        """MapPaths, then a PathFd for each (rdev, fd), as the opener sends them."""
        states = states or self.devices.states()
        fdpass.send_message(self.opener, MapPaths(request.id, UUID, states, len(fds)).encode())
        for rdev, fd in fds:
            fdpass.send_message(self.opener, PathFd(request.id, rdev).encode(), fd)

    def to_worker(self) -> tuple[bytes, int | None]:
        """The next datagram to the worker that is not a liveness probe (answered)."""
        while True:
            got = fdpass.recv_message(self.worker)
            assert got is not None
            message = decode(got[0])
            if not isinstance(message, Probe):
                return got
            self.worker.send(Alive(message.id).encode())

    def sg_io(self, reply: PrReply = GOOD) -> tuple[SgIoRequest, int]:
        """The next SG_IO the worker is asked for, answered with `reply`; its device."""
        got = self.to_worker()
        assert got[1] is not None
        rdev = os.fstat(got[1]).st_rdev
        flags = fcntl.fcntl(got[1], fcntl.F_GETFL)
        os.close(got[1])
        assert flags & os.O_ACCMODE == os.O_WRONLY
        request = decode(got[0])
        assert isinstance(request, SgIoRequest)
        self.worker.send(SgIoResult(request.id, reply).encode())
        return request, rdev

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


@pytest.fixture
def broker(sockdir: Path, devices: Devices) -> Iterator[LoneBroker]:
    path = str(sockdir / "b.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    worker, worker_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    opener, opener_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = (listener.fileno(), worker_theirs.fileno(), opener_theirs.fileno())
    proc = subprocess.Popen([sys.executable, "-m", "lab.lone_broker", *map(str, fds)],
                            cwd=REPO, pass_fds=fds, stderr=subprocess.PIPE)
    for sock in (listener, worker_theirs, opener_theirs):
        sock.close()
    for sock in (worker, opener):
        sock.settimeout(20)
        sock.send(Ready(os.getpid()).encode())
    wait_for_service(path, timeout=20)
    yield LoneBroker(path, worker, opener, proc, devices)
    worker.close()
    opener.close()
    if proc.poll() is None:
        proc.terminate()
    proc.wait(10)


def write_only(node: str) -> int:
    return os.open(node, os.O_WRONLY | os.O_CLOEXEC)


def test_register_on_a_map_reaches_each_path_through_the_worker(broker: LoneBroker) -> None:
    first, second = broker.devices.paths
    a, b = broker.devices.rdev(first), broker.devices.rdev(second)
    thread, replies = broker.start(pr_out_cdb(0, 24), plist(0, K))
    request = broker.map_request()
    assert request.have == ()
    broker.answer_paths(request, [(a, write_only(first)), (b, write_only(second))])
    primary, on = broker.sg_io()
    assert (primary.cdb, primary.data, on) == (pr_out_cdb(0, 24), plist(0, K), a)
    other, on = broker.sg_io()
    assert (other.cdb, other.data, on) == (pr_out_cdb(6, 24), plist(0, K), b)
    thread.join(20)
    assert replies == [GOOD]

    # the next request: the paths are held already, and the primary answers PR IN
    keys = PrReply(0, SENSE0, bytes(4) + (16).to_bytes(4, "big") + K.to_bytes(8, "big") * 2)
    thread, replies = broker.start(pr_in_cdb(0, 8192))
    request = broker.map_request()
    assert request.have == (a, b)
    broker.answer_paths(request, [])
    read, on = broker.sg_io(keys)
    assert read.cdb == pr_in_cdb(0, 8192) and on == a
    thread.join(20)
    assert replies == [keys]


def test_a_map_the_opener_refuses_is_answered_as_a_partition_is(broker: LoneBroker) -> None:
    for _ in range(2):  # and asked about again next time
        thread, replies = broker.start(pr_in_cdb(0, 24))
        request = broker.map_request()
        broker.opener.send(MapRefused(request.id, "254:0 is a device-mapper map but not a "
                                      "multipath one (uuid 'LVM-x')").encode())
        thread.join(20)
        assert replies == [PrReply(Status.CHECK_CONDITION, Sense.IO_ERROR.fixed_format())]
    assert broker.proc.poll() is None


def test_a_device_that_is_no_map_goes_to_the_worker_and_so_does_its_major(
        broker: LoneBroker) -> None:
    keys = PrReply(0, SENSE0, bytes(8))
    thread, replies = broker.start(pr_in_cdb(0, 8))
    request = broker.map_request()
    broker.opener.send(MapRefused(request.id, "7:0 is not a device-mapper map", True).encode())
    for _ in range(2):  # the second: straight to the worker, the opener is not asked
        got = broker.to_worker()
        assert got[1] is not None
        assert os.fstat(got[1]).st_rdev == broker.devices.rdev(broker.devices.map)
        assert fcntl.fcntl(got[1], fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR  # the client's
        os.close(got[1])
        forwarded = decode(got[0])
        assert isinstance(forwarded, SgIoRequest) and forwarded.cdb == pr_in_cdb(0, 8)
        broker.worker.send(SgIoResult(forwarded.id, keys).encode())
        thread.join(20)
        assert replies == [keys]
        thread, replies = broker.start(pr_in_cdb(0, 8))
    thread.join(0.5)
    assert thread.is_alive()  # the third request: waiting for the worker, not the opener
    got = broker.to_worker()
    assert got[1] is not None
    os.close(got[1])
    forwarded = decode(got[0])
    assert isinstance(forwarded, SgIoRequest)
    broker.worker.send(SgIoResult(forwarded.id, keys).encode())
    thread.join(20)
    broker.opener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        broker.opener.recv(100)


def test_pr_in_on_a_read_only_map_fd_goes_to_the_worker_on_the_map_itself(
        broker: LoneBroker) -> None:
    caps = PrReply(0, SENSE0, bytes([0, 8, 0x1D, 0x81, 0xFF, 0xFF, 0, 0]))
    thread, replies = broker.start(pr_in_cdb(2, 8), flags=os.O_RDONLY)
    request = broker.map_request()
    broker.answer_paths(request, [])
    got = broker.to_worker()
    assert got[1] is not None
    assert os.fstat(got[1]).st_rdev == broker.devices.rdev(broker.devices.map)
    os.close(got[1])
    forwarded = decode(got[0])
    assert isinstance(forwarded, SgIoRequest)
    broker.worker.send(SgIoResult(forwarded.id, caps).encode())
    thread.join(20)
    assert replies == [PrReply(0, SENSE0, bytes([0, 8, 0x19, 0x81, 0xFF, 0xFF, 0, 0]))]


BAD_FDS = ["another device", "read-write", "a file", "a path not live", "twice"]


@pytest.mark.parametrize("bad", BAD_FDS)
def test_an_fd_from_the_opener_that_is_not_what_it_claims_ends_the_broker(
        broker: LoneBroker, bad: str, tmp_path: Path) -> None:
    first, second = broker.devices.paths
    a, b = broker.devices.rdev(first), broker.devices.rdev(second)
    thread, replies = broker.start(pr_out_cdb(0, 24), plist(0, K))
    request = broker.map_request()
    states = broker.devices.states()
    fds = {
        "another device": [(a, write_only(broker.devices.map))],
        "read-write": [(a, os.open(first, os.O_RDWR))],
        "a file": [(a, os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT))],
        "a path not live": [(b, write_only(second))],
        "twice": [(a, write_only(first)), (a, write_only(first))],
    }[bad]
    if bad == "a path not live":
        states = broker.devices.states((True, False))
    broker.answer_paths(request, fds, states)
    for _, fd in fds:
        os.close(fd)
    thread.join(20)
    assert replies == [PrReply(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE.fixed_format())]
    assert broker.proc.wait(20) == 1
    assert "the path opener sent" in broker.stderr()


def test_an_answer_to_a_request_never_made_ends_the_broker(broker: LoneBroker) -> None:
    broker.opener.send(MapRefused(99, "unasked").encode())
    assert broker.proc.wait(20) == 1
    assert "an answer to request 99, never asked" in broker.stderr()
