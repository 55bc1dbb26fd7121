"""What a compromised broker or worker can still do, tried for real: each attack runs as
system calls injected into the live process (lab/inject.py), under its own seccomp filter
and Landlock domain, with its own fds and credentials. Each is either refused or kills the
process; a control in each test shows the same process still running calls it is
allowed, so a death means the filter, not the injection."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.inject import (
    LISTENING,
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    Injector,
    Killed,
    errno_name,
    fd_table,
    msghdr,
    sockaddr_un,
    unix_sockets,
)
from lab.processes import PRGUARD, REPO, children, wait_for_path, wait_for_service
from prguard.client.session import pr_out_cdb, send_with_fds


class Pair:
    """A running prguard with a notify socket and a trace file, as a test target."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.path = str(directory / "p.sock")
        self.notify_path = str(directory / "notify")
        self.trace_path = str(directory / "trace")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        self.stderr = directory / "stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [*PRGUARD, "-k", self.path, "-T", f"prguard_reply,file={self.trace_path}",
                 *extra], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err)
        wait_for_path(self.path, self.proc)
        wait_for_service(self.path)
        assert self.notify.recv(4096).startswith(b"READY=1")
        (self.worker,) = children(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sockets(self) -> dict[int, tuple[int, str]]:
        return unix_sockets(self.pid)

    def fd_of(self, kind: str) -> int:
        """The broker's fd for `kind`: what its policy names by number."""
        socks = self.sockets()
        if kind == "stderr":
            return 2
        if kind == "trace":
            (fd,) = [fd for fd, t in fd_table(self.pid).items() if t == self.trace_path]
            return fd
        if kind == "channel":
            (fd,) = [fd for fd, (kind_, _) in socks.items() if kind_ == SOCK_SEQPACKET]
            return fd
        if kind == "notify":
            (fd,) = [fd for fd, (kind_, _) in socks.items() if kind_ == SOCK_DGRAM]
            return fd
        if kind == "listener":
            (fd,) = [fd for fd, (kind_, _) in socks.items() if kind_ == LISTENING]
            return fd
        if kind == "wakeup":  # asyncio's self-pipe: a socketpair; the write end is newer
            pair = [fd for fd, (kind_, path) in socks.items()
                    if kind_ == SOCK_STREAM and not path]
            return max(pair)
        raise ValueError(kind)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()


@pytest.fixture
def pair(sockdir: Path) -> Iterator[Pair]:
    target = Pair(sockdir)
    yield target
    target.stop()


def killed_by_sigsys(inj: Injector, *call: int | str) -> bool:
    name, *args = call
    try:
        inj.call(name, *[int(a) for a in args])
    except Killed as dead:
        return dead.signal == signal.SIGSYS
    return False


# -- fds a rule names by number ----------------------------------------------------------

def test_no_free_fd_number_below_the_pinned_ones(pair: Pair) -> None:
    """Idle, the broker's and the worker's fds are exactly 0..N-1: a new fd can only land
    above every fd a rule names."""
    for pid in (pair.pid, pair.worker):
        table = fd_table(pid)
        assert sorted(table) == list(range(len(table))), table
    named = [pair.fd_of(k) for k in ("stderr", "trace", "channel", "wakeup")]
    assert max(named) < len(fd_table(pair.pid))


@pytest.mark.parametrize("kind", ["stderr", "trace", "channel", "wakeup", "notify"])
def test_broker_cannot_close_a_pinned_fd(pair: Pair, kind: str) -> None:
    """The issue's attack: close(2), then the next fd a client sends lands on 2 and is
    written to. The close itself is fatal, for every fd the policy names."""
    fd = pair.fd_of(kind)
    with Injector(pair.pid) as inj:
        assert errno_name(inj.call("close", 4000)) == "EBADF"  # closes above: allowed
        assert killed_by_sigsys(inj, "close", fd)


@pytest.mark.parametrize("call", [
    ("close", 2 | 1 << 32),  # the kernel reads fd 2
    ("dup2", 0, 2), ("dup3", 0, 2, 0),
    ("fcntl", 0, 0, 2),  # F_DUPFD
    ("fcntl", 0, 0x406, 2)])  # F_DUPFD_CLOEXEC
def test_broker_cannot_replace_a_pinned_fd_any_other_way(pair: Pair,
                                                         call: tuple[int | str, ...]) -> None:
    with Injector(pair.pid) as inj:
        assert killed_by_sigsys(inj, *call)


@pytest.mark.parametrize("call", [("close", 2), ("close", 2 | 1 << 32), ("dup2", 0, 2),
                                  ("dup3", 0, 2, 0), ("fcntl", 0, 0, 2)])
def test_worker_cannot_replace_a_pinned_fd(pair: Pair, call: tuple[int | str, ...]) -> None:
    with Injector(pair.worker) as inj:
        assert errno_name(inj.call("close", 4000)) == "EBADF"
        assert killed_by_sigsys(inj, *call)
    assert pair.proc.wait(10) == 1  # the broker saw its worker die


# -- sending fds or datagrams somewhere else ------------------------------------------------

@pytest.fixture
def outside(sockdir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket of an outside process, where a compromised broker would send
    its listening socket."""
    path = str(sockdir / "outside")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    os.chmod(path, 0o777)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> tuple[bytes, int] | None:
    try:
        data, ancillary, _, _ = sock.recvmsg(256, socket.CMSG_SPACE(64))
    except BlockingIOError:
        return None
    fds = [fd for level, kind, payload in ancillary if kind == socket.SCM_RIGHTS
           for fd in memoryview(payload).cast("i")]
    for fd in fds:
        os.close(fd)
    return data, len(fds)


def test_the_notify_socket_is_no_way_out(pair: Pair,
                                         outside: tuple[socket.socket, str]) -> None:
    """The issue's attack: sendmsg on the notify socket with the listener as SCM_RIGHTS
    and an outside address: the outside process would accept QEMU's connections."""
    sock, path = outside
    notify = pair.fd_of("notify")
    listener = pair.fd_of("listener")
    with Injector(pair.pid) as inj:
        hello = inj.put(b"STATUS=injected")
        assert inj.call("sendto", notify, hello, 15, 0, 0, 0) == 15  # to its peer: allowed
        while (state := pair.notify.recv(4096)) != b"STATUS=injected":
            assert state.startswith(b"STATUS=serving")  # the broker's own reports
        inj.put(sockaddr_un(path))
        message = msghdr(inj, b"x", sockaddr_un(path), (listener,))
        assert killed_by_sigsys(inj, "sendmsg", notify, message, 0)
    assert received(sock) is None


def test_the_notify_socket_sends_to_no_address(pair: Pair,
                                               outside: tuple[socket.socket, str]) -> None:
    sock, path = outside
    with Injector(pair.pid) as inj:
        address = inj.put(sockaddr_un(path))
        data = inj.put(b"out")
        assert killed_by_sigsys(inj, "sendto", pair.fd_of("notify"), data, 3, 0, address,
                                len(sockaddr_un(path)))
    assert received(sock) is None


def test_the_channel_carries_fds_to_the_worker_only(pair: Pair,
                                                    outside: tuple[socket.socket, str]) -> None:
    """sendmsg is allowed on the channel alone, and a connected SEQPACKET socket ignores
    any address: the listener goes to the worker (which refuses the datagram), never to
    the outside socket named in the message."""
    sock, path = outside
    listener = pair.fd_of("listener")
    with Injector(pair.pid) as inj:
        message = msghdr(inj, b"not a request", sockaddr_un(path), (listener,))
        assert inj.call("sendmsg", pair.fd_of("channel"), message, 0) == 13
    assert received(sock) is None
    # The worker answers Malformed; the broker takes that as a broken pair and exits.
    assert pair.proc.wait(10) == 1


@pytest.mark.parametrize("target", ["stderr", "listener"])
def test_broker_sendmsg_elsewhere_is_fatal(pair: Pair, target: str) -> None:
    fd = pair.fd_of(target)
    with Injector(pair.pid) as inj:
        assert killed_by_sigsys(inj, "sendmsg", fd, msghdr(inj, b"x"), 0)


def test_worker_sendmsg_elsewhere_is_fatal(pair: Pair) -> None:
    with Injector(pair.worker) as inj:
        assert killed_by_sigsys(inj, "sendmsg", 2, msghdr(inj, b"x"), 0)


# -- memory: anonymous only -------------------------------------------------------------

PROT_READ_WRITE, MAP_SHARED = 0x3, 0x1


def held_disk_fd(pair: Pair, loop_disk: str) -> tuple[socket.socket, int]:
    """Make the broker hold a client's device fd: a PR OUT whose parameter list is
    withheld keeps it there (until the message deadline). The client and the fd number."""
    client = socket.socket(socket.AF_UNIX)
    client.connect(pair.path)
    assert client.recv(4) == bytes(4)
    client.send(bytes(4))
    fd = os.open(loop_disk, os.O_RDWR)
    send_with_fds(client, pr_out_cdb(0, 24), [fd])  # and no parameter list
    os.close(fd)
    deadline = time.monotonic() + 3
    while True:
        held = [n for n, t in fd_table(pair.pid).items() if t == loop_disk]
        if held:
            return client, held[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["mmap", "read", "pread64", "write"])
def test_broker_cannot_read_or_write_a_clients_disk(pair: Pair, loop_disk: str,
                                                    how: str) -> None:
    """The issue's attack: hold a client's device fd, map it shared and writable,
    overwrite sector 0. Nor can it read or write the fd with plain system calls."""
    with open(loop_disk, "rb") as disk:
        sector0 = disk.read(512)
    client, held = held_disk_fd(pair, loop_disk)
    with Injector(pair.pid) as inj:  # its own scratch memory is an anonymous mapping
        buf = inj.put(bytes(512))
        call = {"mmap": ("mmap", 0, 4096, PROT_READ_WRITE, MAP_SHARED, held, 0),
                "read": ("read", held, buf, 512), "pread64": ("pread64", held, buf, 512, 0),
                "write": ("write", held, buf, 512)}[how]
        assert killed_by_sigsys(inj, *call)
    client.close()
    with open(loop_disk, "rb") as disk:
        assert disk.read(512) == sector0


def test_worker_cannot_map_a_file(pair: Pair) -> None:
    with Injector(pair.worker) as inj:
        assert killed_by_sigsys(inj, "mmap", 0, 4096, PROT_READ_WRITE, MAP_SHARED, 2, 0)


@pytest.mark.parametrize("role", ["broker", "worker"])
def test_no_memory_becomes_executable(pair: Pair, role: str) -> None:
    pid = pair.pid if role == "broker" else pair.worker
    with Injector(pid) as inj:
        address = inj.call("mmap", 0, 4096, PROT_READ_WRITE, 0x22, -1, 0)  # PRIVATE|ANON
        assert address > 0
        assert inj.call("mprotect", address, 4096, 0x1) == 0  # read-only: allowed
        assert killed_by_sigsys(inj, "mprotect", address, 4096, 0x5)  # READ|EXEC
