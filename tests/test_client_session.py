"""session.Client, the one QEMU-side client (prguard-client, the tests, the lab): what it
puts on the wire, and each way a helper can fail it, against a raw socket peer that
sends exactly the bytes a test gives."""

from __future__ import annotations

import array
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prguard.client.session import Client, ConnectError, pr_in_cdb, pr_out_cdb
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import PrReply, encode_reply
from prguard.shared.scsi import ZERO_SENSE, Status

Peer = Callable[[socket.socket], None]


@pytest.fixture
def peer(sockdir: Path) -> Iterator[Callable[[Peer], str]]:
    """peer(script): a socket whose one connection runs `script`; returns its path."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(script: Peer) -> str:
        path = str(sockdir / f"peer{len(threads)}.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                script(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        listeners.append(listener)
        return path

    yield start
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    for listener in listeners:
        listener.close()


def handshake(conn: socket.socket) -> None:
    conn.sendall(bytes(4))
    assert conn.recv(4) == bytes(4)  # the client asks for no feature


def test_the_cdb_carries_the_fd_and_the_parameter_list_follows_without(
        peer: Callable[[Peer], str]) -> None:
    seen: list[tuple[bytes, int, bytes, int]] = []

    def script(conn: socket.socket) -> None:
        handshake(conn)
        cdb, ancillary, _, _ = conn.recvmsg(16, socket.CMSG_SPACE(4 * 4))
        fds = array.array("i")
        for _, _, data in ancillary:
            fds.frombytes(data)
        params, more, _, _ = conn.recvmsg(24, socket.CMSG_SPACE(4 * 4))
        seen.append((cdb, len(fds), params, len(more)))
        for fd in fds:
            os.close(fd)
        conn.sendall(encode_reply(PrReply(Status.GOOD, ZERO_SENSE)))

    path = peer(script)
    with open("/dev/null", "rb") as device, Client(path) as client:
        assert client.features == 0
        reply = client.request(pr_out_cdb(0, 24), device.fileno(), bytes(range(24)))
    assert reply == PrReply(Status.GOOD, ZERO_SENSE)
    assert seen == [(pr_out_cdb(0, 24), 1, bytes(range(24)), 0)]


@pytest.mark.parametrize(("answer", "reason"), [
    (b"", "helper closed the connection"),
    (encode_reply(PrReply(Status.GOOD, ZERO_SENSE))[:50], "helper closed the connection"),
    # data with a PR OUT reply would make QEMU abort: the client refuses it too
    (encode_reply(PrReply(Status.GOOD, ZERO_SENSE, bytes(8))), "may not carry"),
    ((-1).to_bytes(4, "big", signed=True) + bytes(100), "not a SCSI status"),
], ids=["hang-up", "half a reply", "data with PR OUT", "status -1"])
def test_a_helper_that_does_not_answer_properly(peer: Callable[[Peer], str], answer: bytes,
                                                reason: str) -> None:
    def script(conn: socket.socket) -> None:
        handshake(conn)
        received = 0
        while received < 16 + 24:  # the CDB (its fd discarded with the control data)
            received += len(conn.recv(16 + 24 - received))  # and the parameter list
        conn.sendall(answer)

    path = peer(script)
    with open("/dev/null", "rb") as device, Client(path) as client, \
            pytest.raises(QemuProtocolError, match=reason):
        client.request(pr_out_cdb(0, 24), device.fileno(), bytes(24))


def test_a_helper_that_hangs_up_before_the_handshake(peer: Callable[[Peer], str]) -> None:
    path = peer(lambda conn: None)
    with pytest.raises(QemuProtocolError, match="helper closed the connection"):
        Client(path)


def test_a_silent_helper_times_out(peer: Callable[[Peer], str]) -> None:
    done = threading.Event()

    def script(conn: socket.socket) -> None:
        handshake(conn)
        done.wait(10)

    path = peer(script)
    try:
        with open("/dev/null", "rb") as device, Client(path, timeout=0.2) as client, \
                pytest.raises(TimeoutError):
            client.request(pr_in_cdb(), device.fileno())
    finally:
        done.set()


def test_connect_errors_keep_their_errno(sockdir: Path) -> None:
    with pytest.raises(ConnectError) as missing:
        Client(str(sockdir / "missing.sock"))
    assert isinstance(missing.value, OSError) and missing.value.errno == errno.ENOENT
    stale = sockdir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(stale))
        with pytest.raises(ConnectError) as refused:
            Client(str(stale))
    assert refused.value.errno == errno.ECONNREFUSED


@pytest.mark.parametrize(("build", "expected"), [
    (lambda: pr_in_cdb(), "5e000000000000001800000000000000"),
    (lambda: pr_in_cdb(0x1F, 0xFFFF), "5e1f0000000000ffff00000000000000"),
    (lambda: pr_out_cdb(9, 0xFFFF, 0x35), "5f093500000000ffff00000000000000"),
])
def test_probe_cdbs_take_any_value_their_field_holds(build: Callable[[], bytes],
                                                     expected: str) -> None:
    assert build().hex() == expected
