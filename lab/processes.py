"""Helper processes for tests, the lab, the demo and the benchmarks: start prguard or
qemu-pr-helper on a socket, wait until it serves, stop it, and read its state from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


C_HELPER = "/usr/bin/qemu-pr-helper"


PRGUARD = [sys.executable, "-m", "prguard"]
#: The console script next to this interpreter (the venv's, as `make` installs it), else
#: -m prguard: what the benchmark and the lab guest run.
_SCRIPT = Path(sys.executable).parent / "prguard"
INSTALLED_PRGUARD: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else PRGUARD


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

    def pids(self) -> list[int]:
        """The helper's processes: for prguard the broker and its worker."""
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the helper's processes so far."""
        return cpu_seconds(self.pids())

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


def start_helper(cmd: Sequence[str], path: str, *extra: str, timeout: float = 10.0) -> Helper:
    """`cmd -k path extra...`, once it serves; stopped again if it does not in time."""
    argv = [*cmd, "-k", path, *extra]
    stderr_file = Path(path + ".stderr")
    with open(stderr_file, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, cwd=REPO)
    try:
        wait_for_path(path, proc, timeout)
        wait_for_service(path, timeout)
    except BaseException:
        stop_process(proc)
        raise
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


def activated(listener_fd: int, argv: Sequence[str],
              pid_variables: Sequence[str] = ("LISTEN_PID",)) -> list[str]:
    """argv that runs `argv` as systemd would with one activated socket: the listening
    fd moved to 3, LISTEN_FDS=1 and LISTEN_PID (and any other of `pid_variables`, such
    as WATCHDOG_PID) naming the exec'd process itself. Pass `listener_fd` in pass_fds."""
    names = ",".join(repr(name) for name in pid_variables)
    script = ("import os,sys; os.dup2(int(sys.argv[1]), 3); "
              f"os.environ.update(dict.fromkeys([{names}], str(os.getpid()))); "
              "os.environ['LISTEN_FDS']='1'; "
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


def janitor_of(socket_path: str, timeout: float = 10.0) -> int:
    """The pid of the janitor that will remove `socket_path` (broker/janitor.py): nobody's
    child, named prguard-janitor, holding the socket's directory open."""
    directory = os.path.dirname(socket_path)
    deadline = time.monotonic() + timeout
    while True:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != "prguard-janitor":
                        continue
                if any(os.readlink(f"/proc/{entry}/fd/{fd}") == directory
                       for fd in os.listdir(f"/proc/{entry}/fd")):
                    return int(entry)
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"no janitor for {socket_path}")
        time.sleep(0.02)
