"""The channel's datagrams: at most one fd each, nothing cut, every surplus fd closed."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator

import pytest

from prguard.shared.errors import ChannelError
from prguard.shared.fdpass import close_all, fds_from_ancillary, recv_message, send_message
from prguard.shared.messages import MAX_MESSAGE_SIZE


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def send_raw(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                              array.array("i", fds).tobytes())] if fds else [])


def test_a_datagram_and_its_fd_arrive_together(
        channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    r, w = os.pipe()
    try:
        send_message(a, b"hello", r)
        got = recv_message(b)
        assert got is not None
        payload, fd = got
        assert payload == b"hello" and fd is not None and fd not in (r, w)
        assert os.get_inheritable(fd) is False  # MSG_CMSG_CLOEXEC
        os.write(w, b"x")
        assert os.read(fd, 1) == b"x"  # the same pipe
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_without_an_fd_and_empty(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    send_message(a, b"no fd")
    assert recv_message(b) == (b"no fd", None)
    send_message(a, b"")
    assert recv_message(b) == (b"", None)  # an empty datagram is not EOF


def test_eof_when_the_peer_closes(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    a.close()
    assert recv_message(b) is None


def test_two_fds_are_refused_and_both_closed(
        channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    r, w = os.pipe()
    before = open_fds()
    try:
        send_raw(a, b"x", [r, w])
        with pytest.raises(ChannelError, match="2 fds in one datagram"):
            recv_message(b)
        assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def test_a_cut_datagram_is_refused_and_its_fd_closed(
        channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    r, w = os.pipe()
    before = open_fds()
    try:
        send_raw(a, bytes(MAX_MESSAGE_SIZE + 2), [r])
        with pytest.raises(ChannelError, match="truncated"):
            recv_message(b)
        assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def test_an_oversize_message_is_not_sent(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    with pytest.raises(ChannelError, match="too large"):
        send_message(a, bytes(MAX_MESSAGE_SIZE + 1))
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing went out


def test_fds_from_ancillary_reads_only_scm_rights() -> None:
    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [5, 6]).tobytes())
    other = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, bytes(12))
    ragged = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [7]).tobytes() + b"\0")
    assert fds_from_ancillary([rights, other, ragged]) == [5, 6, 7]


def test_close_all_survives_fds_already_closed() -> None:
    r, w = os.pipe()
    os.close(w)
    close_all([r, w])
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)
