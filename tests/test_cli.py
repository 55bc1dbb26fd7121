"""The command line against qemu-pr-helper's: same exit status, same stderr.

Both programs run with the same arguments; their own name is normalised away (PROG for
argv[0], NAME for its basename) before comparing.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.processes import C_HELPER, REPO, activated, wait_for_path, wait_for_service

PRGUARD_SCRIPT = str(Path(sys.executable).parent / "prguard")


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def normalise(text: str, program: str) -> str:
    return text.replace(program, "PROG").replace(os.path.basename(program), "NAME")


def run(program: str, args: list[str], env: dict[str, str] | None = None,
        cwd: str | None = None, pass_fds: tuple[int, ...] = (), timeout: float = 20) -> Run:
    proc = subprocess.run([program, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd or str(REPO), pass_fds=pass_fds)
    return Run(proc.returncode, normalise(proc.stdout, program),
               normalise(proc.stderr, program))


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgc", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def cases(tmp: Path) -> dict[str, list[str]]:
    (tmp / "isdir.sock").mkdir(exist_ok=True)
    long_name = "s" * (108 - len(str(tmp)) - 1 - 5)
    return {
        "invalid short option": ["-x"],
        "invalid option after an operand": ["extra", "-x"],
        "unrecognized long option": ["--bogus"],
        "unrecognized long option with value": ["--bogus=1"],
        "ambiguous abbreviation": ["--ver"],
        "flag given a value": ["--help=x"],
        "missing argument, short": ["-k"],
        "missing argument, long": ["--socket"],
        "missing argument -T": ["-T"],
        "relative socket": ["-k", "rel.sock"],
        "empty socket": ["--socket="],
        "abbreviated long option": ["--sock=rel"],
        "first bad option wins": ["-k", "rel", "-u", "nosuchuser"],
        "unknown user": ["-u", "nosuchuser"],
        "unknown group": ["-g", "nosuchgroup"],
        "empty user": ["-u", ""],
        "user over 32 bits": ["-u", "4294967296"],
        "negative user": ["-u", "-1"],
        "hex user": ["-u", "0x10"],
        "user with trailing junk": ["-u", "5x"],
        "trace bad key": ["-T", "bogus=1"],
        "trace events file missing": ["-T", "events=/nonexistent"],
        "trace empty events file name": ["-T", "events="],
        "trace warning then error": ["-T", "enable=foo", "-k", "rel"],
        "trace logfile cannot open": ["-T", "file=/nonexistent/x", "-k", "/nonexistent/y.s"],
        "socket path 109 bytes": ["-k", f"{tmp}/{long_name}xx.sock"],
        "socket directory missing": ["-k", f"{tmp}/nodir/x.sock"],
        "socket path is a directory": ["-k", f"{tmp}/isdir.sock"],
        "verbose and quiet then bad socket": ["--verbose", "--quiet", "-k", "rel"],
        "after -- nothing is an option": ["-k", "rel", "--", "-x"],
    }


CASE_NAMES = list(cases(Path("/tmp")).keys())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_start_up_errors_match_the_c_helper(tmp: Path, name: str) -> None:
    args = cases(tmp)[name]
    ours, theirs = run(PRGUARD_SCRIPT, args), run(C_HELPER, args)
    assert theirs.code == 1
    assert ours == theirs


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    path: str


def serve(program: str, args: list[str], path: str, env: dict[str, str] | None = None,
          pass_fds: tuple[int, ...] = ()) -> Served:
    proc = subprocess.Popen([program, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, pass_fds=pass_fds, cwd=str(REPO))
    wait_for_path(path, proc)
    wait_for_service(path)
    return Served(proc, path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_signals_stop_cleanly_unlink_socket_keep_pidfile(tmp: Path, program: str,
                                                          sig: int) -> None:
    sock, pid = str(tmp / "s.sock"), tmp / "s.pid"
    served = serve(program, ["-k", sock, "-f", str(pid)], sock)
    assert pid.read_text() == f"{served.proc.pid}\n"
    assert stat.S_IMODE(pid.stat().st_mode) == 0o600
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(sock)  # an idle client does not delay the exit
    served.proc.send_signal(sig)
    assert served.proc.wait(10) == 0
    assert not os.path.exists(sock)
    assert pid.exists()
    idle.close()
    assert served.proc.stderr is not None and served.proc.stderr.read() == b""


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_second_instance_cannot_take_the_pidfile(tmp: Path, program: str) -> None:
    first = serve(program, ["-k", str(tmp / "a.sock"), "-f", str(tmp / "p.pid")],
                  str(tmp / "a.sock"))
    try:
        second = run(program, ["-k", str(tmp / "b.sock"), "-f", str(tmp / "p.pid")])
        assert second.code == 1
        assert second.stderr == "NAME: Cannot lock pid file: Resource temporarily unavailable\n"
    finally:
        first.proc.terminate()
        first.proc.wait(10)


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_pidfile_in_a_missing_directory(tmp: Path, program: str) -> None:
    result = run(program, ["-k", str(tmp / "a.sock"), "-f", str(tmp / "no" / "p.pid")])
    assert result.code == 1
    assert result.stderr == f"NAME: Could not create '{tmp}/no/p.pid': No such file or directory\n"


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_socket_path_of_exactly_108_bytes_works(tmp: Path, program: str) -> None:
    path = f"{tmp}/" + "s" * (108 - len(str(tmp)) - 1)
    assert len(path) == 108
    served = serve(program, ["-k", path], path)
    served.proc.terminate()
    assert served.proc.wait(10) == 0


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_a_stale_socket_at_the_path_is_replaced(tmp: Path, program: str) -> None:
    path = tmp / "stale.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # bound, never listening: a dead helper's
        stale.bind(str(path))
    served = serve(program, ["-k", str(path)], str(path))  # connect() succeeds there now
    assert stat.S_ISSOCK(path.stat().st_mode)
    served.proc.terminate()
    served.proc.wait(10)


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_daemon_parent_exits_zero_and_the_pidfile_names_the_daemon(tmp: Path,
                                                                  program: str) -> None:
    sock, pid = tmp / "d.sock", tmp / "d.pid"
    result = run(program, ["-d", "-k", str(sock), "-f", str(pid)])
    assert result.code == 0 and result.stderr == ""
    deadline = time.monotonic() + 10
    while not (pid.exists() and pid.read_text().endswith("\n")):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    daemon_pid = int(pid.read_text())
    wait_for_service(str(sock))
    assert os.readlink(f"/proc/{daemon_pid}/cwd") == "/"
    os.kill(daemon_pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while sock.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def activation(program: str, fds: list[int], listen_fds: str, args: list[str]) -> Run:
    """Start `program` the way systemd does: listening fds from 3 on, LISTEN_PID = its own
    pid (set in the child, as systemd sets it for the exec'd process)."""
    env = dict(os.environ, LISTEN_FDS=listen_fds)

    def place_fds() -> None:
        for index, fd in enumerate(fds):
            os.dup2(fd, 3 + index)

    script = ("import os,sys; os.environ['LISTEN_PID']=str(os.getpid()); "
              "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", script, program, *args], env=env,
                          capture_output=True, text=True, timeout=20,
                          preexec_fn=place_fds, close_fds=False)
    return Run(proc.returncode, normalise(proc.stdout, program),
               normalise(proc.stderr, program))


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_activation_errors(tmp: Path, program: str) -> None:
    a = socket.socket(socket.AF_UNIX)
    a.bind(str(tmp / "act.sock"))
    a.listen(4)
    b = socket.socket(socket.AF_UNIX)
    b.bind(str(tmp / "act2.sock"))
    b.listen(4)
    regular = os.open(tmp / "regular", os.O_RDWR | os.O_CREAT)
    results = {
        "with -k": activation(program, [a.fileno()], "1", ["-k", str(tmp / "x.sock")]),
        "two fds": activation(program, [a.fileno(), b.fileno()], "2", []),
        "not a socket": activation(program, [regular], "1", []),
    }
    assert results["with -k"] == Run(
        1, "", "NAME: Unix socket can't be set when using socket activation\n")
    assert results["two fds"] == Run(
        1, "", "NAME: PROG does not support socket activation with LISTEN_FDS > 1\n")
    assert results["not a socket"] == Run(
        1, "", "NAME: Failed to use socket activation: Unable to query remote socket address:"
        " Socket operation on non-socket\n")
    os.close(regular)
    a.close()
    b.close()


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_started_without_privileges_it_refuses(tmp: Path, program: str) -> None:
    os.chmod(tmp, 0o777)
    result = run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                      program, "-k", str(tmp / "np.sock")])
    assert result.code == 1
    assert result.stderr.endswith("Failed to drop privileges: Operation not permitted\n")
    assert result.stderr.count("\n") == 1


def test_help_version_and_trace_help_act_at_once() -> None:
    assert run(PRGUARD_SCRIPT, ["-h", "-x"]).code == 0
    helped = run(PRGUARD_SCRIPT, ["--help"])
    assert helped.stdout.startswith("Usage: PROG [OPTIONS] FILE\n")
    for option in ("--socket=PATH", "--pidfile=PATH", "--user=USER", "--sg-timeout"):
        assert option in helped.stdout
    version = run(PRGUARD_SCRIPT, ["-V"])
    assert version.code == 0 and version.stdout.startswith("PROG (NAME) ")
    listing = subprocess.run([PRGUARD_SCRIPT, "-T", "help"], capture_output=True, text=True,
                             check=True)
    assert "prguard_request" in listing.stdout.split()
    assert run(PRGUARD_SCRIPT, ["-k", "rel", "-T", "help"]).code == 1


def test_trace_events_go_to_the_trace_file(tmp: Path, fd_zoo: dict[str, int]) -> None:
    from prguard.client.session import Client, pr_in_cdb
    sock, out = str(tmp / "t.sock"), tmp / "trace.out"
    served = serve(PRGUARD_SCRIPT, ["-k", sock, "-T", "enable=prguard_re*,file=" + str(out)],
                   sock)
    with Client(sock) as client:
        client.request(pr_in_cdb(), fd_zoo["loop"])
    served.proc.terminate()
    assert served.proc.wait(10) == 0
    names = [line.split()[0] for line in out.read_text().splitlines()]
    assert names == ["prguard_request", "prguard_reply"]


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_activated_socket_is_served_and_left_in_place(tmp: Path, program: str) -> None:
    path = str(tmp / "act.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    proc = subprocess.Popen(activated(listener.fileno(), [program]),
                            pass_fds=(listener.fileno(),), stderr=subprocess.PIPE)
    listener.close()
    wait_for_service(path)
    proc.terminate()
    assert proc.wait(10) == 0
    assert os.path.exists(path)  # systemd owns an activated socket's path


@pytest.mark.parametrize("program", [PRGUARD_SCRIPT, C_HELPER])
def test_user_and_group_switch(tmp: Path, program: str) -> None:
    sock = str(tmp / "ug.sock")
    served = serve(program, ["-k", sock, "-u", "nobody", "-g", "nogroup"], sock)
    pids = [served.proc.pid]
    kids = Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text().split()
    pids += [int(k) for k in kids]
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        assert "Uid:\t65534\t65534\t65534\t65534\n" in status
        assert "Gid:\t65534\t65534\t65534\t65534\n" in status
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert groups[len("Groups:"):].strip() == ""
    served.proc.terminate()
    assert served.proc.wait(10) == 0
    assert served.proc.stderr is not None
    # After the switch neither can remove a socket from a root-owned directory.
    assert served.proc.stderr.read().decode().endswith(
        f"Failed to unlink socket {sock}: Permission denied\n")
