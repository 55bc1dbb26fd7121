"""prguard run the way systemd runs a Type=notify service, for tests on a host without
systemd as PID 1: an activated listening socket (LISTEN_FDS), NOTIFY_SOCKET, optionally
stderr connected to a stream socket named by JOURNAL_STREAM (as journald's stdout
stream) and WATCHDOG_USEC/WATCHDOG_PID; its own session and process group (the unit's
control group), and a stop done as the unit's KillMode= says.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.processes import REPO, activated, children

PRGUARD_SCRIPT = str(Path(sys.executable).parent / "prguard")
UNIT = REPO / "systemd" / "prguard.service"


def unit_setting(name: str, unit: Path = UNIT) -> str | None:
    """The last value of `name=` in the unit (systemd's rule for single-valued keys)."""
    values = re.findall(rf"^{name}=(.*)$", unit.read_text(), re.M)
    return values[-1].strip() if values else None


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    socket_path: str
    notify: socket.socket
    notify_path: str
    stderr_path: Path | None
    journal: socket.socket | None
    journal_lines: list[bytes] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker(self) -> int:
        (pid,) = children(self.pid)
        return pid

    def next_notification(self, timeout: float = 20.0) -> str:
        self.notify.settimeout(timeout)
        message = self.notify.recv(4096).decode()
        self.notifications.append(message)
        return message

    def wait_notification(self, predicate: str, timeout: float = 20.0) -> str:
        """The next notification containing `predicate` (others are recorded)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next_notification(max(deadline - time.monotonic(), 0.01))
            if predicate in message:
                return message

    def collect(self, seconds: float) -> list[str]:
        """Every notification that comes within `seconds`."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next_notification(left))
            except TimeoutError:
                break
        return got

    def stderr_text(self) -> str:
        if self.journal is not None:
            if self._reader is not None:
                self._reader.join(10)
            return b"".join(self.journal_lines).decode(errors="replace")
        assert self.stderr_path is not None
        return self.stderr_path.read_text(errors="replace")

    def stop(self, kill_mode: str | None = None, order: Sequence[str] = ("main",),
             timeout: float = 20.0, between: Callable[[], None] | None = None) -> int:
        """Stop as systemd does for `kill_mode` (default: the unit's KillMode=).

        control-group: SIGTERM to every process of the unit; `order` says how: "group"
        (one killpg), or "main" and "worker" in the order given (two kill()s).
        mixed: SIGTERM to the main process; once it has exited, SIGKILL to whatever is
        left. `between` runs after the signals, before waiting. Returns the main
        process's exit status; raises if a process was left after the main one exited.
        """
        mode = kill_mode or unit_setting("KillMode") or "control-group"
        worker = children(self.pid)
        if mode == "control-group":
            for who in order:
                if who == "group":
                    os.killpg(self.pid, signal.SIGTERM)
                elif who == "main":
                    os.kill(self.pid, signal.SIGTERM)
                else:
                    for pid in worker:
                        os.kill(pid, signal.SIGTERM)
        elif mode in ("mixed", "process"):
            os.kill(self.pid, signal.SIGTERM)
        else:
            raise ValueError(f"KillMode={mode}")
        if between is not None:
            between()
        code = self.proc.wait(timeout)
        left = [pid for pid in worker if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            raise AssertionError(f"processes left after the main one exited: {left}")
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        for path in (self.notify_path, self.socket_path):
            if os.path.exists(path):
                os.unlink(path)
        if self.journal is not None:
            self.journal.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def start(directory: Path, args: Sequence[str] = ("-u", "nobody", "-g", "nogroup"), *,
          journal: bool = False, watchdog_usec: int | None = None,
          env: dict[str, str] | None = None, ready: bool = True,
          preexec: Callable[[], None] | None = None, ready_timeout: float = 20.0
          ) -> Service:
    """Start prguard in `directory` (short: socket paths) and wait for READY=1.
    `preexec` runs in the child before prguard (resource limits, a cgroup)."""
    tag = os.urandom(4).hex()
    notify_path = str(directory / f"{tag}.notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    socket_path = str(directory / f"{tag}.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen(64)
    environ = dict(os.environ if env is None else env, NOTIFY_SOCKET=notify_path)
    stderr_path: Path | None = None
    journal_end: socket.socket | None = None
    child_end: socket.socket | None = None
    if journal:
        journal_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        st = os.fstat(child_end.fileno())
        environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        stderr: int = child_end.fileno()
    else:
        stderr_path = directory / f"{tag}.stderr"
        stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid_variables = ["LISTEN_PID"]
    if watchdog_usec is not None:
        environ["WATCHDOG_USEC"] = str(watchdog_usec)
        pid_variables.append("WATCHDOG_PID")
    argv = activated(listener.fileno(), [PRGUARD_SCRIPT, *args], pid_variables)
    try:
        proc = subprocess.Popen(argv, pass_fds=(listener.fileno(),), env=environ,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True, cwd=REPO,
                                preexec_fn=preexec)
    finally:
        listener.close()
        if child_end is not None:
            child_end.close()
        else:
            os.close(stderr)
    service = Service(proc, socket_path, notify, notify_path, stderr_path, journal_end)
    if journal_end is not None:
        service._reader = threading.Thread(target=_collect, args=(journal_end, service),
                                           daemon=True)
        service._reader.start()
    if ready:
        try:
            message = service.wait_notification("READY=1", ready_timeout)
        except BaseException:
            service.close()
            raise
        assert f"MAINPID={proc.pid}" in message, message
    return service


@contextlib.contextmanager
def tasks_max(limit: int) -> Iterator[Callable[[], None]]:
    """A pids cgroup with pids.max = `limit`, as systemd makes for TasksMax=; yields the
    preexec function that moves the child into it. cgroup v2 if the pids controller is
    there, else the v1 pids hierarchy."""
    name = f"prguard-test-{os.getpid()}-{os.urandom(3).hex()}"
    v2 = Path("/sys/fs/cgroup")
    if "pids" in _read(v2 / "cgroup.subtree_control").split():
        group = v2 / name
    elif (Path("/sys/fs/cgroup/pids") / "tasks").exists():
        group = Path("/sys/fs/cgroup/pids") / name
    else:
        raise RuntimeError("no cgroup pids controller to emulate TasksMax=")
    group.mkdir()
    try:
        (group / "pids.max").write_text(str(limit))

        def join() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        yield join
    finally:
        for _ in range(100):  # the processes in it must have exited (and been reaped)
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _collect(sock: socket.socket, service: Service) -> None:
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        service.journal_lines.append(chunk)
