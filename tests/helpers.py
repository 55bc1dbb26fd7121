"""Test support: real helper processes, real devices, and a wire-level QEMU client.

Nothing here is mocked: helpers are started as processes on temporary sockets, devices
are loop devices (SG_IO reaches the loop driver and fails there with EINVAL), and the
client speaks the protocol with real SCM_RIGHTS.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
C_HELPER = "/usr/bin/qemu-pr-helper"
PRGUARD = [sys.executable, "-m", "prguard"]


def wait_for_path(path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"helper exited {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.005)


@dataclass
class Helper:
    """A running helper (prguard or the C one) on its own socket. Its stderr goes to a
    file: a pipe nobody reads would fill and block the helper's logging."""

    argv: list[str]
    path: str
    proc: subprocess.Popen[bytes]
    stderr_file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr_text(self) -> str:
        return self.stderr_file.read_text(errors="replace")


def start_helper(cmd: Sequence[str], path: str, *extra: str) -> Helper:
    argv = [*cmd, "-k", path, *extra]
    stderr_file = Path(path + ".stderr")
    with open(stderr_file, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, cwd=REPO)
    wait_for_path(path, proc)
    wait_for_service(path)
    return Helper(argv, path, proc, stderr_file)


def wait_for_service(path: str, timeout: float = 10.0) -> None:
    """Until a connection gets the 4-byte feature word: the helper is serving."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _handshake_once(path, timeout)
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _handshake_once(path: str, timeout: float) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if len(path.encode()) < 108:
            sock.connect(path)
        else:  # a full 108-byte sun_path: Python refuses it, a relative name fits
            here = os.getcwd()
            os.chdir(os.path.dirname(path))
            try:
                sock.connect(os.path.basename(path))
            finally:
                os.chdir(here)
        got = b""
        while len(got) < 4:
            chunk = sock.recv(4 - len(got))
            if not chunk:
                raise RuntimeError("helper closed the connection before its handshake")
            got += chunk


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str],
                 timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def activated(listener_fd: int, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` as systemd would with one activated socket: the listening
    fd moved to 3, LISTEN_FDS=1 and LISTEN_PID naming the exec'd process itself.
    Pass `listener_fd` in pass_fds."""
    script = ("import os,sys; os.dup2(int(sys.argv[1]), 3); "
              "os.environ['LISTEN_PID']=str(os.getpid()); os.environ['LISTEN_FDS']='1'; "
              "os.execv(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", script, str(listener_fd), *argv]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# -- devices ----------------------------------------------------------------------------

def losetup(image: Path, size: int, partitions: bool = False) -> str:
    with open(image, "wb") as f:
        f.truncate(size)
    if partitions:
        subprocess.run(["sfdisk", "-q", str(image)], input=b"label: dos\n,4M\n,4M\n",
                       check=True)
    args = ["losetup", "-f", "--show"] + (["-P"] if partitions else []) + [str(image)]
    dev = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
    if partitions:
        # The partition scan of losetup -P is asynchronous here; partx adds them now.
        subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
    return dev


def detach(dev: str) -> None:
    subprocess.run(["losetup", "-d", dev], check=False)


def partition_node(disk: str, number: int, directory: Path) -> str:
    """A device node for partition `number` of `disk` (no udev here: mknod from sysfs)."""
    name = f"{os.path.basename(disk)}p{number}"
    sysdev = Path(f"/sys/block/{os.path.basename(disk)}/{name}/dev")
    deadline = time.monotonic() + 5
    while not sysdev.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sysdev} did not appear")
        time.sleep(0.05)
    major, minor = (int(x) for x in sysdev.read_text().split(":"))
    node = directory / name
    if not node.exists():
        os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
    return str(node)


# -- the wire ---------------------------------------------------------------------------

def pr_in_cdb(action: int = 0, alloc: int = 24) -> bytes:
    return bytes([0x5E, action, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + bytes(7)


def pr_out_cdb(action: int = 0, length: int = 24, scope_type: int = 0) -> bytes:
    return bytes([0x5F, action, scope_type, 0, 0, 0, 0]) + length.to_bytes(2, "big") + bytes(7)


def send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], anc)


@dataclass(frozen=True)
class Send:
    """Send `data`, with the fds named in `fds` attached."""

    data: bytes
    fds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recv:
    """Read up to `size` bytes (until that many, EOF, or a quiet period)."""

    size: int


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Shutdown:
    """Half-close: the helper reads EOF, we can still read its answer."""


@dataclass
class Transcript:
    """What a helper did in answer to a script: bytes per Recv, and whether it closed."""

    received: list[bytes] = field(default_factory=list)
    closed: bool = False
    closed_at_step: int | None = None


def _recv_some(sock: socket.socket, size: int, quiet: float) -> tuple[bytes, bool]:
    got = bytearray()
    while len(got) < size:
        ready, _, _ = select.select([sock], [], [], quiet)
        if not ready:
            break
        try:
            chunk = sock.recv(size - len(got))
        except ConnectionResetError:
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


Step = Send | Recv | Pause | Shutdown


def run_script(path: str, steps: Sequence[Step], fds: dict[str, int],
               quiet: float = 1.0, eof_wait: float = 1.0) -> Transcript:
    """Connect, run the steps, then wait `eof_wait` seconds to see whether it closes."""
    t = Transcript()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        for index, step in enumerate(steps):
            if isinstance(step, Pause):
                time.sleep(step.seconds)
            elif isinstance(step, Shutdown):
                sock.shutdown(socket.SHUT_WR)
            elif isinstance(step, Send):
                try:
                    send_with_fds(sock, step.data, [fds[n] for n in step.fds])
                except (BrokenPipeError, ConnectionResetError):
                    t.closed, t.closed_at_step = True, index
                    return t
            else:
                data, closed = _recv_some(sock, step.size, quiet)
                t.received.append(data)
                if closed:
                    t.closed, t.closed_at_step = True, index
                    return t
        data, closed = _recv_some(sock, 1 << 16, eof_wait)
        if data:
            t.received.append(data)
        if closed:
            t.closed, t.closed_at_step = True, len(steps)
    return t


class Client:
    """A blocking QEMU-like client: handshake, then one request at a time."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)  # blocking, as QEMU's: waits for room in a full backlog
        self.sock.settimeout(timeout)
        self.features = int.from_bytes(self._exact(4), "big")
        self.sock.sendall(bytes(4))

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def request(self, cdb: bytes, fd: int, data: bytes = b"") -> tuple[int, bytes, bytes]:
        """(status, 96-byte sense, payload)."""
        send_with_fds(self.sock, cdb, [fd])
        if data:
            self.sock.sendall(data)
        header = self._exact(104)
        status = int.from_bytes(header[:4], "big", signed=True)
        size = int.from_bytes(header[4:8], "big")
        return status, header[8:], self._exact(size)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def opened(path: str, flags: int = os.O_RDWR) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
