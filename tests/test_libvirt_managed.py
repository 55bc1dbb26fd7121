"""libvirt's managed mode (`<reservations managed='yes'/>`), reproduced as libvirt does it.

`libvirt_start` below follows qemuProcessStartManagedPRDaemon and virExec (spec 6.2):
remove a stale socket; fork; in the child: stderr to a pipe, every other fd closed,
setsid, chdir /, fork again; the intermediate waits until the grandchild has taken the
pidfile (opened, locked with a POSIX lock, pid written, close-on-exec cleared: the helper
inherits the locked fd) and exits; the grandchild runs the pre-exec hook (libvirt: join
QEMU's mount namespace) and execs exactly [helper, "-k", path], as root. The parent reads
the pid from the pidfile and polls for the socket path with exponential back-off from
1 ms, checking kill(pid, 0) in between; a dead helper's stderr (up to 1023 bytes) becomes
the error. Then it closes its end of the stderr pipe. `libvirt_kill` follows
virPidFileForceCleanupPath + virProcessKillPainfully: kill only if the pidfile is still
locked, SIGTERM, SIGKILL after a grace period, remove the pidfile.

Each test names, in its docstring, the expectation of spec section 6 it checks.

The test process is made a child subreaper while these tests run: the daemonized helper
is re-parented to it (as, on a real host, to systemd, which reaps it), so kill(pid, 0)
stops succeeding once the helper has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pwd
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.processes import C_HELPER, children, janitor_of, wait_for_service
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.errors import QemuProtocolError
from prguard.shared.scsi import Sense, Status

HELPER = Path(sys.executable).parent / "prguard"  # the console script, as qemu.conf names it
ERRBUF = 1024  # libvirt: char errbuf[1024]; reads sizeof - 1
BACKOFF_LIMIT_S = 30.0  # libvirt: 500000 "ms"; a test must end sooner
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18

libc = ctypes.CDLL(None, use_errno=True)


class HelperDied(RuntimeError):
    """libvirt's "pr helper died and reported: ..." """

    def __init__(self, report: str) -> None:
        super().__init__(f"pr helper died and reported: {report}")
        self.report = report


@dataclass
class Managed:
    pid: int
    socket_path: str
    pidfile: str
    ready_after_s: float
    polls: int


def alive(pid: int) -> bool:
    """kill(pid, 0), after reaping the helper if it is ours (see the module docstring)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _acquire_pidfile(path: str) -> int:
    """virPidFileAcquirePath(path, false, getpid()): open, lock, truncate, write pid."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}".encode())
    return fd


def libvirt_start(socket_path: str, pidfile: str, argv: list[str] | None = None,
                  pre_exec: Callable[[], None] | None = None,
                  on_ready: Callable[[Managed], None] | None = None) -> Managed:
    """qemuProcessStartManagedPRDaemon. `argv` defaults to libvirt's exact argv."""
    argv = argv or [str(HELPER), "-k", socket_path]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # "Remove stale socket"
    err_r, err_w = os.pipe()
    sync_r, sync_w = os.pipe()
    child = os.fork()
    if child == 0:  # virExec's child: nothing but system calls and _exit from here
        code = 127
        try:
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err_w, 2)
            os.closerange(3, sync_r)
            os.closerange(sync_w + 1, 65536)
            os.setsid()
            os.chdir("/")
            if os.fork() > 0:  # the intermediate: exit once the pidfile is written
                os.close(sync_w)
                code = 0 if os.read(sync_r, 1) == b"1" else 1
                os._exit(code)
            os.close(sync_r)
            fd = _acquire_pidfile(pidfile)
            os.set_inheritable(fd, True)  # "pidfilefd is intentionally leaked"
            os.write(sync_w, b"1")
            os.close(sync_w)
            if pre_exec is not None:
                pre_exec()
            os.execv(argv[0], argv)
        except BaseException:  # noqa: BLE001  (a forked child: only _exit)
            os._exit(code)
    os.close(err_w)
    os.close(sync_r)
    os.close(sync_w)
    try:
        assert os.waitpid(child, 0)[1] == 0, "virCommandRun: the daemonizing child failed"
        pid = int(Path(pidfile).read_text())  # virPidFileReadPath
        # virTimeBackOffStart(&timebackoff, 1, timeout): 1 ms, doubling
        start = time.monotonic()
        delay, polls = 0.001, 0
        while True:
            polls += 1
            if os.path.exists(socket_path):
                break
            if not alive(pid):
                report = os.read(err_r, ERRBUF - 1).decode(errors="replace")
                raise HelperDied(report)
            if time.monotonic() - start > BACKOFF_LIMIT_S:
                raise TimeoutError("pr helper socked did not show up")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        managed = Managed(pid, socket_path, pidfile, time.monotonic() - start, polls)
        if on_ready is not None:  # libvirt: cgroup, security label of the socket
            on_ready(managed)
        return managed
    finally:
        os.close(err_r)  # VIR_FORCE_CLOSE(errfd)


def pidfile_lock_owner(path: str) -> int | None:
    """The pid holding a POSIX write lock on `path` (F_GETLK), None if unlocked."""
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        kind, _, _, _, pid = struct.unpack("hhqqi", answer)
        return None if kind == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def libvirt_kill(pidfile: str, grace: float = 10.0) -> tuple[bool, list[int]]:
    """virPidFileForceCleanupPath: (was it killed?, signals sent). libvirt's grace is 10 s."""
    sent: list[int] = []
    fd = os.open(pidfile, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False, sent  # nobody holds it: nothing is killed
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        pid = int(os.read(fd, 64))
    finally:
        os.close(fd)
    os.kill(pid, signal.SIGTERM)
    sent.append(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid):
        if time.monotonic() > deadline and signal.SIGKILL not in sent:
            os.kill(pid, signal.SIGKILL)
            sent.append(signal.SIGKILL)
        if time.monotonic() > deadline + 5:
            raise TimeoutError(f"pr helper {pid} survived SIGKILL")
        time.sleep(0.2)
    os.unlink(pidfile)
    return True, sent


@pytest.fixture(autouse=True)
def subreaper() -> Iterator[None]:
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    if not HELPER.is_file():
        pytest.fail(f"{HELPER} missing: install prguard into the venv (pip install -e .)",
                    pytrace=False)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass


@pytest.fixture
def domain(sockdir: Path) -> Iterator[tuple[str, str]]:
    """(socket path, pidfile) as libvirt names them, under one test directory; anything
    still running at the end is stopped the libvirt way."""
    lib_dir = sockdir / "domain-1-vm"
    lib_dir.mkdir()
    pidfile = str(sockdir / "1-vm-pr-helper0.pid")
    yield str(lib_dir / "pr-helper0.sock"), pidfile
    if os.path.exists(pidfile):
        libvirt_kill(pidfile, grace=2.0)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def served(path: str, fd: int) -> None:
    """One PR IN through the helper: the loop driver's EINVAL comes back as 05/24/00."""
    with Client(path) as client:
        reply = client.request(pr_in_cdb(), fd)
    assert (reply.status, reply.sense) == (Status.CHECK_CONDITION,
                                           Sense.INVALID_FIELD.fixed_format())


# -- 6.2 How libvirt starts the managed helper ------------------------------------------

def fd_targets(pid: int) -> list[str]:
    """What the process's fds point to (fds closing while we look are skipped)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return targets


def test_exact_argv_as_root_serves_at_default_verbosity(
        domain: tuple[str, str], fd_zoo: dict[str, int]) -> None:
    """6.2: argv is exactly [helper, "-k", <libDir>/pr-helper0.sock], no -d/-f/-u/-g/-v:
    the helper runs as root with default verbosity, serves, and writes no pidfile of its
    own (the only pidfile fd it holds is the one libvirt gave it)."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile)
    assert cmdline(managed.pid)[-3:] == [str(HELPER), "-k", path]
    assert os.stat(f"/proc/{managed.pid}").st_uid == 0
    served(path, fd_zoo["loop"])
    pidfiles = fd_targets(managed.pid)
    assert [p for p in pidfiles if p.endswith(".pid")] == [pidfile]


def test_stale_socket_is_replaced(domain: tuple[str, str], fd_zoo: dict[str, int]) -> None:
    """6.2: "Removes a stale socket file first". A helper killed with SIGKILL together
    with its janitor (which otherwise removes the socket of a killed broker) leaves its
    socket; the next start on the same path serves (libvirt unlinks it; prguard would
    also replace it on its own, tests/test_lifecycle.py)."""
    path, pidfile = domain
    first = libvirt_start(path, pidfile)
    os.kill(janitor_of(path), signal.SIGKILL)
    os.kill(first.pid, signal.SIGKILL)
    assert gone(first.pid)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left behind
    os.unlink(pidfile)
    second = libvirt_start(path, pidfile)
    served(path, fd_zoo["loop"])
    assert second.pid != first.pid


def test_daemonized_by_libvirt_which_writes_and_locks_the_pidfile(
        domain: tuple[str, str], fd_zoo: dict[str, int]) -> None:
    """6.2: "libvirt daemonizes it itself and writes the pidfile itself". The helper
    inherits the pidfile fd with libvirt's POSIX lock (virCommandSetPidFile) and must
    keep it for its whole life: libvirt only kills a helper whose pidfile is still
    locked (virPidFileForceCleanupPath), so a helper that closed the fd would be left
    running when the domain stops."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile)
    assert Path(pidfile).read_text() == str(managed.pid)
    assert os.getsid(managed.pid) != managed.pid  # setsid in the intermediate, no -d
    assert os.getsid(managed.pid) != os.getsid(0)
    assert pidfile_lock_owner(pidfile) == managed.pid
    served(path, fd_zoo["loop"])
    (worker,) = children(managed.pid)
    assert pidfile_lock_owner(pidfile) == managed.pid  # still, after the worker's fork
    assert libvirt_kill(pidfile) == (True, [signal.SIGTERM])
    assert gone(worker)


def test_ready_when_the_socket_path_appears(domain: tuple[str, str]) -> None:
    """6.2: readiness is the socket path existing (back-off from 1 ms, kill(pid, 0) in
    between). The first connect after the path appears must be served: no retry."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile)
    assert managed.polls > 1  # it did not exist at once: the back-off really ran
    with Client(path, timeout=10) as client:  # connect once; the handshake answers
        assert client.features == 0
    print(f"ready after {managed.ready_after_s:.3f} s, {managed.polls} polls")


@pytest.mark.parametrize("where", ["missing directory", "path too long for sun_path"])
def test_start_up_failure_fits_in_what_libvirt_reports(sockdir: Path, where: str) -> None:
    """6.2: "if the process died, up to 1023 bytes of its stderr become the error (pr
    helper died and reported: ...)". prguard's message must fit, name the path, and be
    qemu-pr-helper's own text (docs/COMPATIBILITY.md); that is one line, except for a
    path too long for sun_path, where QEMU's text itself has a second line."""
    if where == "missing directory":
        path = str(sockdir / "no-such-dir" / "pr-helper0.sock")
    else:  # a long libvirt root (e.g. a session daemon's home): more than 107 bytes
        deep = sockdir / ("d" * 100)
        deep.mkdir()
        path = str(deep / "pr-helper0.sock")
    with pytest.raises(HelperDied) as died:
        libvirt_start(path, str(sockdir / "x-pr-helper0.pid"))
    report = died.value.report
    assert 0 < len(report.encode()) < ERRBUF - 1, report
    assert report.startswith("prguard: ") and path in report, report
    assert "Traceback" not in report
    c_helper = subprocess.run([C_HELPER, "-k", path], capture_output=True, text=True,
                              check=False, timeout=30, stdin=subprocess.DEVNULL)
    assert report == c_helper.stderr.replace("qemu-pr-helper: ", "prguard: ", 1)
    lines = report.splitlines()
    assert report.endswith("\n")
    if where == "missing directory":
        assert lines == [f"prguard: Failed to bind socket to {path}: No such file or directory"]
    else:
        assert lines == [f"prguard: UNIX socket path '{path}' is too long",
                         "Path must be less than 108 bytes"]


def _qemu_mount_namespace() -> None:
    """libvirt's pre-exec hook joins QEMU's mount namespace: a private /dev holding only
    what QEMU was given. Recreated here: a new namespace with a tmpfs on /dev."""
    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise OSError(ctypes.get_errno(), what)
    check(libc.unshare(CLONE_NEWNS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make-private")
    check(libc.mount(b"devfs", b"/dev", b"tmpfs", 0, b"mode=755,size=64k"), "tmpfs /dev")
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("ptmx", 5, 2)):
        os.mknod(f"/dev/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    os.mkdir("/dev/mapper")
    os.mknod("/dev/mapper/control", 0o600 | stat.S_IFCHR, os.makedev(10, 236))


def test_runs_in_qemus_mount_namespace(domain: tuple[str, str],
                                       fd_zoo: dict[str, int]) -> None:
    """6.2: "before exec it joins the mount namespace of the QEMU process (libvirt's
    private /dev ...)". prguard must start and serve fds from outside its /dev."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile, pre_exec=_qemu_mount_namespace)
    assert os.readlink(f"/proc/{managed.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    served(path, fd_zoo["loop"])
    with Client(path) as client:
        assert client.request(pr_in_cdb(), fd_zoo["part"]).sense == \
            Sense.IO_ERROR.fixed_format()  # the partition check still works (sysfs)


def test_socket_labelled_for_an_unprivileged_qemu(sockdir: Path,
                                                  fd_zoo: dict[str, int]) -> None:
    """6.2: "apply the domain's security label/ownership to the socket (so non-root QEMU
    can connect)". After libvirt chowns the socket, a QEMU running as that user is served."""
    nobody = pwd.getpwnam("nobody")
    lib_dir = sockdir / "domain-2-vm"
    lib_dir.mkdir()
    os.chmod(sockdir, 0o711)
    os.chown(lib_dir, nobody.pw_uid, nobody.pw_gid)
    path, pidfile = str(lib_dir / "pr-helper0.sock"), str(sockdir / "2-vm-pr-helper0.pid")

    def label(managed: Managed) -> None:
        os.chown(managed.socket_path, nobody.pw_uid, nobody.pw_gid)

    libvirt_start(path, pidfile, on_ready=label)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # "QEMU" as nobody, with the disk fd it was given
            code = 1
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with Client(path) as client:
                    answer = client.request(pr_in_cdb(), fd_zoo["loop"])
                os.write(write, bytes([answer.status]) + answer.sense[:14])
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        reply = os.read(read, 64)
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        assert reply == bytes([Status.CHECK_CONDITION]) + Sense.INVALID_FIELD.fixed_format()[:14]
    finally:
        libvirt_kill(pidfile, grace=2.0)


@pytest.mark.parametrize("verbosity", [[], ["-v"]], ids=["default", "-v"])
def test_serves_on_after_libvirt_closes_the_stderr_pipe(
        domain: tuple[str, str], fd_zoo: dict[str, int], verbosity: list[str]) -> None:
    """6.2: "close its end of the stderr pipe. Later helper writes to stderr hit a pipe
    without reader -> must not crash". At the default verbosity a protocol error is
    logged; at -v (not libvirt's argv, but what an operator may configure through a
    wrapper) every request is."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile, argv=[str(HELPER), "-k", path, *verbosity])
    for _ in range(3):
        served(path, fd_zoo["loop"])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:  # logged: bad opcode
            bad.connect(path)
            bad.recv(4)
            bad.sendall(bytes(4) + bytes(16))
            bad.settimeout(10)
            assert bad.recv(1) == b""
    assert alive(managed.pid)
    assert libvirt_kill(pidfile) == (True, [signal.SIGTERM])


# -- 6.3 Lifecycle ------------------------------------------------------------------------

def test_sigterm_stops_cleanly_and_it_restarts_on_the_same_path(
        domain: tuple[str, str], fd_zoo: dict[str, int]) -> None:
    """6.3: "Stop/kill: via the pidfile (lock check, SIGTERM then SIGKILL), pidfile
    removed" and the restart after PR_MANAGER_STATUS_CHANGED(connected=false): SIGTERM
    alone ends both processes and removes the socket; a new helper on the same path
    serves."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile)
    (worker,) = children(managed.pid)
    t0 = time.monotonic()
    assert libvirt_kill(pidfile) == (True, [signal.SIGTERM])
    assert time.monotonic() - t0 < 5
    assert gone(worker)
    assert not os.path.exists(path)
    assert not os.path.exists(pidfile)
    again = libvirt_start(path, pidfile)
    served(path, fd_zoo["loop"])
    assert again.pid != managed.pid


def test_sigkill_after_the_grace_period_leaves_nothing_running(
        domain: tuple[str, str], fd_zoo: dict[str, int]) -> None:
    """6.3: "SIGTERM then SIGKILL" (virProcessKillPainfully: SIGKILL after 10 s; 2 s
    here). A helper that cannot stop (a request in flight, its worker stopped) is killed;
    its worker must not outlive it, and the next start on the path serves."""
    path, pidfile = domain
    managed = libvirt_start(path, pidfile)
    served(path, fd_zoo["loop"])  # the worker is past its start-up before it is stopped
    (worker,) = children(managed.pid)
    os.kill(worker, signal.SIGSTOP)
    client = Client(path)

    def request() -> None:
        with contextlib.suppress(OSError, QemuProtocolError):
            client.request(pr_out_cdb(0, 24), fd_zoo["loop"], bytes(24))

    in_flight = threading.Thread(target=request, daemon=True)
    in_flight.start()
    time.sleep(0.3)
    try:
        assert libvirt_kill(pidfile, grace=2.0) == (True, [signal.SIGTERM, signal.SIGKILL])
        # The broker is gone; the worker got its parent-death signal (SIGTERM), which a
        # stopped process acts on once continued (as a worker stuck in SG_IO does once
        # the command returns).
        os.kill(worker, signal.SIGCONT)
        assert gone(worker)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGCONT)
        client.close()
        in_flight.join(5)
    again = libvirt_start(path, pidfile)
    served(path, fd_zoo["loop"])
    assert again.pid != managed.pid


def test_hotplug_starts_the_helper_then_object_add(domain: tuple[str, str],
                                                   sockdir: Path) -> None:
    """6.3: "Hotplug of the first managed-PR disk: start helper, object-add pr-helper0 ...
    Unplug of the last one: object-del, kill helper" - with a real QEMU."""
    from tests.test_qemu_interop import running_qemu
    path, pidfile = domain
    libvirt_start(path, pidfile)
    with running_qemu(sockdir) as qemu:
        qemu.qmp.execute("object-add", {"qom-type": "pr-manager-helper", "id": "pr-helper0",
                                        "path": path})
        assert qemu.qmp.execute("query-pr-managers") == [{"id": "pr-helper0",
                                                          "connected": True}]
        qemu.qmp.execute("object-del", {"id": "pr-helper0"})
        assert libvirt_kill(pidfile) == (True, [signal.SIGTERM])
        assert qemu.qmp.execute("query-pr-managers") == []


def test_libvirtd_restart_finds_the_running_helper(domain: tuple[str, str],
                                                   fd_zoo: dict[str, int]) -> None:
    """6.3: "libvirtd reconnect to running domains": the helper outlives the libvirtd
    that started it. Here a child process plays that libvirtd and exits; the helper
    keeps serving, and the pidfile (still locked by the helper) lets the next libvirtd
    find and stop it."""
    path, pidfile = domain
    libvirtd = os.fork()
    if libvirtd == 0:
        code = 1
        try:
            libvirt_start(path, pidfile)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(libvirtd, 0)[1] == 0
    pid = int(Path(pidfile).read_text())
    assert alive(pid)
    wait_for_service(path)
    served(path, fd_zoo["loop"])
    assert pidfile_lock_owner(pidfile) == pid
    assert libvirt_kill(pidfile) == (True, [signal.SIGTERM])


def test_helper_binary_runs_with_an_empty_environment() -> None:
    """6.2: "Binary: qemu.conf pr_helper ... looked up in $PATH plus /usr/libexec (older
    libvirt: must be an executable path)". The console script is an executable file that
    libvirt's virFileIsExecutable accepts, and it runs with no environment (libvirt
    clears it): no PATH, no PYTHONPATH."""
    assert os.access(HELPER, os.X_OK) and HELPER.is_file()
    r = subprocess.run([str(HELPER), "-V"], env={}, capture_output=True, text=True,
                       check=False, timeout=30)
    assert r.returncode == 0, r.stderr
