"""Where prguard deliberately differs from qemu-pr-helper (docs/COMPATIBILITY.md),
measured side by side wherever the C helper can be run the same way."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.processes import (
    C_HELPER,
    PRGUARD,
    REPO,
    Helper,
    activated,
    start_helper,
    wait_for_path,
    wait_for_service,
)
from prguard.client.session import Client, pr_in_cdb

PRGUARD_SCRIPT = str(Path(sys.executable).parent / "prguard")


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgv", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.mark.parametrize(("program", "keeps_flags"), [(PRGUARD, True), ([C_HELPER], False)])
def test_received_fd_flags_are_left_alone(tmp: Path, loop_disk: str, program: list[str],
                                          keeps_flags: bool) -> None:
    helper = start_helper(program, str(tmp / "h.sock"))
    fd = os.open(loop_disk, os.O_RDWR | os.O_NONBLOCK)
    try:
        with Client(helper.path) as client:
            client.request(pr_in_cdb(), fd)
        still_nonblocking = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        assert still_nonblocking is keeps_flags
    finally:
        os.close(fd)
        helper.stop()


@pytest.mark.parametrize(("program", "all_accepted"), [(PRGUARD, True), ([C_HELPER], False)])
def test_a_burst_of_connects_queues_instead_of_failing(tmp: Path, program: list[str],
                                                       all_accepted: bool) -> None:
    helper = start_helper(program, str(tmp / "b.sock"))
    helper.proc.send_signal(19)  # SIGSTOP: nobody accepts while the burst arrives
    socks, refused = [], 0
    try:
        for _ in range(8):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(helper.path)
            except BlockingIOError:
                refused += 1
            socks.append(s)
        assert (refused == 0) is all_accepted
    finally:
        for s in socks:
            s.close()
        helper.proc.send_signal(18)  # SIGCONT
        helper.stop()


def test_socket_is_not_left_behind_when_start_up_fails(tmp: Path) -> None:
    proc = subprocess.run([PRGUARD_SCRIPT, "-k", str(tmp / "s.sock"), "-f",
                           str(tmp / "no" / "p.pid")], capture_output=True, cwd=REPO)
    assert proc.returncode == 1
    assert not (tmp / "s.sock").exists()  # the C helper leaves it


def test_path_appears_only_once_connect_succeeds(tmp: Path) -> None:
    path = str(tmp / "r.sock")
    for _ in range(5):
        proc = subprocess.Popen([*PRGUARD, "-k", path], stderr=subprocess.PIPE, cwd=REPO)
        wait_for_path(path, proc, timeout=20)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)  # never ECONNREFUSED: libvirt's readiness check is sound
        proc.terminate()
        assert proc.wait(10) == 0


def test_negative_listen_fds_is_ignored_not_fatal(tmp: Path) -> None:
    path = str(tmp / "n.sock")
    script = ("import os,sys; os.environ['LISTEN_PID']=str(os.getpid()); "
              "os.environ['LISTEN_FDS']='-1'; os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", script, PRGUARD_SCRIPT, "-k", path],
                            stderr=subprocess.PIPE)
    wait_for_path(path, proc)
    proc.terminate()
    assert proc.wait(10) == 0  # the C helper dies on an assertion (SIGABRT)


def test_activation_refuses_a_socket_it_cannot_serve(tmp: Path) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    proc = subprocess.run(activated(tcp.fileno(), [PRGUARD_SCRIPT]),
                          pass_fds=(tcp.fileno(),), capture_output=True, text=True, timeout=20)
    tcp.close()
    assert proc.returncode == 1  # the C helper serves TCP, or spins on an unbound socket
    assert proc.stderr == ("prguard: Failed to use socket activation: fd 3 is not a "
                           "listening unix stream socket\n")


def test_sg_timeout_reaches_the_worker(tmp: Path) -> None:
    path = str(tmp / "t.sock")
    helper = start_helper(PRGUARD, path, "--sg-timeout=2.5", "--sg-threads=3", "-vvv")
    assert helper.stop() == 0
    assert "SG_IO timeout 2500 ms, 3 threads, 4 per device" in helper.stderr_text()




@pytest.mark.parametrize("what", ["regular file", "symbolic link", "fifo"])
def test_a_socket_path_that_is_not_a_socket_is_refused(tmp: Path, what: str) -> None:
    """The C helper unlinks whatever is at -k's path (a mistyped path costs a file);
    prguard refuses with one line and exit 1, and leaves it as it was."""
    victim = tmp / "victim"
    victim.write_text("precious\n")
    results: dict[str, tuple[int, str, int] | None] = {}
    for program in (PRGUARD_SCRIPT, C_HELPER):
        path = tmp / f"{os.path.basename(program)}.sock"
        if what == "regular file":
            path.write_text("precious\n")
        elif what == "symbolic link":
            path.symlink_to(victim)
        else:
            os.mkfifo(path)
        proc = subprocess.Popen([program, "-k", str(path)], stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
        if program == C_HELPER:  # it serves: wait until its socket has replaced the file
            deadline = time.monotonic() + 20
            while not stat.S_ISSOCK(os.lstat(path).st_mode):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            wait_for_service(str(path))
            proc.terminate()
            proc.communicate(timeout=10)
            results[program] = None
        else:
            try:
                _, err = proc.communicate(timeout=20)
            finally:  # one that serves instead fails the test, and is stopped
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=10)
            results[program] = (proc.returncode, err, stat.S_IFMT(os.lstat(path).st_mode))
    assert results[PRGUARD_SCRIPT] == (
        1, f"prguard: {tmp}/prguard.sock exists and is not a socket: not replacing it\n",
        {"regular file": stat.S_IFREG, "symbolic link": stat.S_IFLNK,
         "fifo": stat.S_IFIFO}[what])
    if what == "regular file":
        assert (tmp / "prguard.sock").read_text() == "precious\n"
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_the_pidfile_is_never_written_through_a_link(tmp: Path, link: str) -> None:
    """A link planted at -f's path by whoever may write to its directory: the C helper
    truncates the file it names and writes its pid there; prguard refuses, one line,
    exit 1, and the file keeps its contents."""
    outcome: dict[str, tuple[int, str, str]] = {}
    for program in (PRGUARD_SCRIPT, C_HELPER):
        victim = tmp / f"{os.path.basename(program)}.victim"
        victim.write_text("precious\n")
        pidfile = tmp / f"{os.path.basename(program)}.pid"
        if link == "symbolic":
            pidfile.symlink_to(victim)
        else:
            os.link(victim, pidfile)
        sock = str(tmp / f"{os.path.basename(program)}.sock")
        proc = subprocess.Popen([program, "-k", sock, "-f", str(pidfile)],
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # it serves
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        outcome[program] = (proc.returncode, err, victim.read_text())
    assert outcome[C_HELPER][2].strip().isdigit()  # the C helper wrote its pid into the victim
    why = "it is a symbolic link" if link == "symbolic" else \
        "not a regular file with one link"
    assert outcome[PRGUARD_SCRIPT] == (
        1, f"prguard: Could not create '{tmp}/prguard.pid': {why}\n", "precious\n")
    assert not os.path.exists(tmp / "prguard.sock")  # nothing left behind either


def test_exit_leaves_a_newer_instance_socket_alone(tmp: Path) -> None:
    """Two instances on one path: the C helper's exit removes the newer one's socket."""
    path = str(tmp / "shared.sock")
    older = start_helper(PRGUARD, path)
    first = os.stat(path).st_ino
    proc = subprocess.Popen([*PRGUARD, "-k", path], cwd=REPO, stderr=subprocess.DEVNULL)
    newer = Helper([*PRGUARD, "-k", path], path, proc, tmp / "unused")
    deadline = time.monotonic() + 20
    while os.stat(path).st_ino == first:  # the newer one renames its socket over the path
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert older.stop() == 0
        with Client(newer.path) as client:  # still reachable
            assert client.features == 0
    finally:
        assert newer.stop() == 0
    assert not os.path.exists(path)  # and the newer one removes its own


def test_worker_keeps_only_stdio_and_its_channel(tmp: Path) -> None:
    """Inherited fds (libvirt's locked pidfile, say) stay with the broker, whose pid the
    pidfile names; the worker closes them."""
    inherited = os.open(tmp / "inherited", os.O_RDWR | os.O_CREAT)
    path = str(tmp / "fds.sock")
    proc = subprocess.Popen([*PRGUARD, "-k", path], pass_fds=(inherited,), cwd=REPO,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_path(path, proc)
        with Client(path) as client:
            assert client.features == 0
        (worker,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                     .read_text().split()]
        assert str(inherited) in os.listdir(f"/proc/{proc.pid}/fd")
        targets = sorted(os.readlink(f"/proc/{worker}/fd/{fd}")
                         for fd in os.listdir(f"/proc/{worker}/fd") if int(fd) > 2)
        # The channel; pipes only fill the free numbers below the pinned ones
        # (shared/fdpin.py).
        kept = [t for t in targets if not t.startswith("pipe:")]
        assert len(kept) == 1 and kept[0].startswith("socket:")
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(inherited)
