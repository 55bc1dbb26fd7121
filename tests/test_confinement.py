"""What a compromised broker or worker can still do, tried for real: each attack runs as
system calls injected into the live process (lab/inject.py), under its own seccomp filter
and Landlock domain, with its own fds and credentials. Each is either refused or kills the
process; a control in each test shows the same process still running calls it is
allowed, so a death means the filter, not the injection."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
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
from lab.processes import (
    PRGUARD,
    REPO,
    children,
    janitor_of,
    wait_for_path,
    wait_for_service,
)
from prguard.client.session import pr_out_cdb, send_with_fds
from prguard.shared import sandbox


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


def forbidden(role: str) -> list[str]:
    """`syscall#N` for each forbid line of a role's policy."""
    specs: list[str] = []
    seen: dict[str, int] = {}
    for rule in sandbox.load_seccomp_policy(role).forbidden:
        specs.append(f"{rule.syscall}#{seen.get(rule.syscall, 0)}")
        seen[rule.syscall] = seen.get(rule.syscall, 0) + 1
    return specs


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


# -- files anywhere -----------------------------------------------------------------------

AT_FDCWD = -100
AT_EMPTY_PATH, AT_REMOVEDIR = 0x1000, 0x200
O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_PATH, O_DIRECTORY = 0x1, 0x2, 0x40, 0x200, 0x200000, 0x10000


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned 0600 file in another root-owned directory: what the broker, root
    without capabilities in libvirt's managed mode, deleted through unlinkat."""
    directory = Path(tempfile.mkdtemp(prefix="pgv", dir="/tmp"))
    os.chmod(directory, 0o700)
    path = directory / "secret"
    path.write_text("do not touch\n")
    os.chmod(path, 0o600)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("dirfd", ["cwd", "pinned"])
def test_broker_cannot_unlink_a_file_anywhere(pair: Pair, victim: Path, dirfd: str) -> None:
    """The issue's attack: unlinkat with an absolute path, whose dirfd the kernel ignores.
    The broker holds no directory at all (the janitor holds the socket's)."""
    held = fd_table(pair.pid).values()
    assert os.path.dirname(pair.path) not in held and "/sys/dev/block" not in held
    fd = AT_FDCWD if dirfd == "cwd" else pair.fd_of("listener")
    with Injector(pair.pid) as inj:
        assert inj.call("fstat", 2, inj.put(bytes(144))) == 0  # the fd-only fstat: allowed
        assert killed_by_sigsys(inj, "unlinkat", fd, inj.string(str(victim)), 0)
    assert victim.read_text() == "do not touch\n"


@pytest.mark.parametrize("call", ["newfstatat", "newfstatat-empty", "statx", "openat",
                                  "readlinkat", "getdents64"])
def test_broker_reaches_no_file_by_path(pair: Pair, victim: Path, call: str) -> None:
    """Not even metadata: stat of a path is what Landlock cannot confine, so the broker
    has no such call at all (its fstat is fstat(2) itself)."""
    with Injector(pair.pid) as inj:
        path, buf = inj.string(str(victim)), inj.put(bytes(512))
        args = {"newfstatat": ("newfstatat", AT_FDCWD, path, buf, AT_EMPTY_PATH),
                "newfstatat-empty": ("newfstatat", 2, inj.string(""), buf, AT_EMPTY_PATH),
                "statx": (332, AT_FDCWD, path, 0, 0xFFF, buf),
                "openat": ("openat", AT_FDCWD, path, 0),
                "readlinkat": (267, AT_FDCWD, inj.string("/proc/self/exe"), buf, 256),
                "getdents64": ("getdents64", pair.fd_of("stderr"), buf, 512)}[call]
        assert killed_by_sigsys(inj, *args)


def test_worker_opens_sysfs_and_nothing_else(pair: Pair, loop_disk: str,
                                             victim: Path) -> None:
    """The worker reads sysfs (is a device a partition?): Landlock lets it open files
    beneath /sys/devices, read-only, and nothing else, whatever the path. What remains is
    an existence oracle: a missing path answers ENOENT, an existing one EACCES."""
    rdev = os.stat(loop_disk).st_rdev
    sysfs_size = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/size"
    with Injector(pair.worker) as inj:
        fd = inj.call("openat", AT_FDCWD, inj.string(sysfs_size), 0x80000)  # O_CLOEXEC
        assert fd > 0
        assert inj.call("close", fd) == 0
        for path in (str(victim), "/etc/hostname", "/proc/self/environ", "/dev/null",
                     "/sys/kernel/mm/transparent_hugepage/enabled"):
            assert errno_name(inj.call("openat", AT_FDCWD, inj.string(path), 0)) == "EACCES"
        # Directories: a map's slaves/ beneath /sys/devices, nothing else.
        fd = inj.call("openat", AT_FDCWD, inj.string(sysfs_size.rsplit("/", 1)[0]),
                      O_DIRECTORY)
        assert fd > 0 and inj.call("getdents64", fd, inj.put(bytes(4096)), 4096) > 0
        assert inj.call("close", fd) == 0
        for path in ("/etc", "/", str(victim.parent)):
            assert errno_name(inj.call("openat", AT_FDCWD, inj.string(path),
                                       O_DIRECTORY)) == "EACCES"
        assert errno_name(inj.call("openat", AT_FDCWD, inj.string(f"{victim}.not"), 0)) \
            == "ENOENT"


@pytest.mark.parametrize("call", [("openat", O_WRONLY), ("openat", O_RDWR),
                                  ("openat", O_WRONLY | O_CREAT), ("openat", O_PATH),
                                  ("openat", O_TRUNC), ("newfstatat", 0), ("unlinkat", 0),
                                  ("unlinkat", AT_REMOVEDIR), ("statx", 0)])
def test_worker_has_no_other_file_access(pair: Pair, victim: Path,
                                         call: tuple[str, int]) -> None:
    name, flags = call
    with Injector(pair.worker) as inj:
        path, buf = inj.string(str(victim)), inj.put(bytes(512))
        args = {"openat": ("openat", AT_FDCWD, path, flags),
                "newfstatat": ("newfstatat", AT_FDCWD, path, buf, 0),
                "unlinkat": ("unlinkat", AT_FDCWD, path, flags),
                "statx": (332, AT_FDCWD, path, 0, 0xFFF, buf)}[name]
        assert killed_by_sigsys(inj, *args)
    assert victim.read_text() == "do not touch\n"


# -- the janitor ----------------------------------------------------------------------------

def test_the_janitor_removes_nothing_outside_the_socket_directory(pair: Pair,
                                                                  victim: Path) -> None:
    """Its unlinkat takes the directory's fd, and an absolute path would ignore it: Landlock
    refuses any name outside that directory."""
    janitor = janitor_of(pair.path)
    (dir_fd,) = [fd for fd, t in fd_table(janitor).items()
                 if t == os.path.dirname(pair.path)]
    with Injector(janitor) as inj:
        assert errno_name(inj.call("unlinkat", dir_fd, inj.string(str(victim)), 0)) \
            == "EACCES"
        assert killed_by_sigsys(inj, "unlinkat", AT_FDCWD, inj.string(str(victim)), 0)
    assert victim.read_text() == "do not touch\n"


def test_what_a_compromised_janitor_can_remove(pair: Pair) -> None:
    """What remains, as docs/SECURITY.md says: a file beside the socket (libvirt's
    per-domain directory holds others); not a directory, and nothing by another path."""
    sibling = Path(os.path.dirname(pair.path)) / "beside"
    sibling.write_text("x")
    (sibling.parent / "sub").mkdir()
    janitor = janitor_of(pair.path)
    (dir_fd,) = [fd for fd, t in fd_table(janitor).items() if t == str(sibling.parent)]
    with Injector(janitor) as inj:
        assert inj.call("unlinkat", dir_fd, inj.string("beside"), 0) == 0
        assert killed_by_sigsys(inj, "unlinkat", dir_fd, inj.string("sub"), AT_REMOVEDIR)
    assert not sibling.exists() and (sibling.parent / "sub").is_dir()


@pytest.mark.parametrize("spec", forbidden("janitor"))
def test_janitor_dies_on_each_forbidden_syscall(pair: Pair, spec: str) -> None:
    rule = sandbox.find_forbidden(sandbox.load_seccomp_policy("janitor"), spec)
    with Injector(janitor_of(pair.path)) as inj:
        assert killed_by_sigsys(inj, rule.syscall, *sandbox.probe_arguments(rule))


def test_the_janitor_outlives_stop_signals_and_a_killed_broker(pair: Pair) -> None:
    janitor = janitor_of(pair.path)
    os.kill(janitor, signal.SIGTERM)
    os.kill(janitor, signal.SIGHUP)
    time.sleep(0.2)
    assert os.path.exists(f"/proc/{janitor}") and os.path.exists(pair.path)
    pair.proc.kill()  # the broker dies: the janitor still removes the socket, then ends
    pair.proc.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(pair.path) or os.path.exists(f"/proc/{janitor}"):
        assert time.monotonic() < deadline
        time.sleep(0.02)


# -- the audited worker (--audit-log, --policy) ----------------------------------------------

AUDIT_OPEN = 0xA0441  # O_WRONLY|O_APPEND|O_CREAT|O_NOFOLLOW|O_CLOEXEC: the rotation check


@pytest.fixture
def audited_pair(sockdir: Path) -> Iterator[tuple[Pair, Path]]:
    logs = sockdir / "logs"
    logs.mkdir()
    (sockdir / "policy").mkdir()
    (sockdir / "policy" / "policy.toml").write_text('[default]\nallow = "pr-out"\n')
    target = Pair(sockdir, "--audit-log", str(logs / "audit.log"), "--policy",
                  str(sockdir / "policy" / "policy.toml"))
    yield target, logs
    target.stop()


def worker_fd_of(pair: Pair, path: Path) -> int:
    (fd,) = [fd for fd, target in fd_table(pair.worker).items() if target == str(path)]
    return fd


def test_the_audited_worker_creates_files_in_the_log_directory_and_nowhere_else(
        audited_pair: tuple[Pair, Path], victim: Path) -> None:
    """Its rotation check opens the log's name with O_CREAT on the directory's fd: an
    absolute path ignores that fd, a relative one can climb out; Landlock refuses both."""
    pair, logs = audited_pair
    dir_fd = worker_fd_of(pair, logs)
    with Injector(pair.worker) as inj:
        fd = inj.call("openat", dir_fd, inj.string("audit.log"), AUDIT_OPEN, 0o640)
        assert fd > 0 and inj.call("close", fd) == 0
        fd = inj.call("openat", dir_fd, inj.string("new.log"), AUDIT_OPEN, 0o640)
        assert fd > 0 and inj.call("close", fd) == 0
        for path in (str(victim), f"{victim.parent}/made", "../escape", "/etc/prguard-made"):
            assert errno_name(inj.call("openat", dir_fd, inj.string(path), AUDIT_OPEN,
                                       0o640)) == "EACCES", path
        # other flags on the same directory fd: killed
        assert killed_by_sigsys(inj, "openat", dir_fd, inj.string("audit.log"), O_WRONLY)
    assert (logs / "new.log").exists()
    assert not (victim.parent / "made").exists() and not Path("/etc/prguard-made").exists()
    assert victim.read_text() == "do not touch\n"


def test_the_audited_worker_reads_proc_and_its_policy_and_nothing_more(
        audited_pair: tuple[Pair, Path], victim: Path, sockdir: Path) -> None:
    pair, _ = audited_pair
    with Injector(pair.worker) as inj:
        for path in ("/proc/self/status", f"/proc/{pair.pid}/cgroup",
                     str(sockdir / "policy" / "policy.toml"), "/etc/passwd", "/etc/group"):
            fd = inj.call("openat", AT_FDCWD, inj.string(path), 0x80000)
            assert fd > 0, (path, errno_name(fd))
            assert inj.call("close", fd) == 0
        for path in (str(victim), "/etc/hostname", "/etc/shadow", str(sockdir / "p.sock")):
            assert errno_name(inj.call("openat", AT_FDCWD, inj.string(path), 0x80000)) == \
                "EACCES", path


def test_the_audit_fd_can_be_replaced_only_by_dup3_onto_it(
        audited_pair: tuple[Pair, Path]) -> None:
    """dup3 is allowed onto the audit fd's number alone (a rotated log's new file); onto
    the channel or stderr it is fatal."""
    pair, logs = audited_pair
    audit_fd = worker_fd_of(pair, logs / "audit.log")
    with Injector(pair.worker) as inj:
        assert killed_by_sigsys(inj, "dup3", audit_fd, 2, 0x80000)
