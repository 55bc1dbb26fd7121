"""The shipped units, and prguard started the way systemd starts it."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

from lab.processes import REPO, activated, children, proc_status, wait_for_path
from lab.systemd_like import start, tasks_max, unit_setting
from prguard import cli
from prguard.broker.main import RESERVED_FDS
from prguard.client.session import Client, pr_in_cdb

PRGUARD_SCRIPT = str(Path(sys.executable).parent / "prguard")
UNITS = REPO / "systemd"


def exposure(unit: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out[-500:]
    return float(match.group(1))


def test_service_unit_exposure_is_at_most_1_5() -> None:
    assert exposure(UNITS / "prguard.service") <= 1.5


def test_units_say_what_the_issue_requires() -> None:
    service = (UNITS / "prguard.service").read_text()
    sock = (UNITS / "prguard.socket").read_text()
    for line in ("Type=notify", "Restart=on-failure", "ProtectSystem=strict",
                 "RestrictAddressFamilies=AF_UNIX", "DevicePolicy=closed",
                 "SystemCallFilter=seccomp", "MemoryDenyWriteExecute=yes",
                 "SystemCallArchitectures=native", "PrivateNetwork=yes"):
        assert f"\n{line}\n" in service, line
    assert re.search(r"\nExecStart=\S*prguard -u \S+ -g \S+( --\S+)*\n", service)
    # In comments only: both would take CAP_SYS_RAWIO away.
    assert not re.search(r"^(PrivateDevices|PrivateUsers)=", service, re.M)
    for line in ("ListenStream=/run/qemu-pr-helper.sock", "SocketMode=0660",
                 "RemoveOnStop=yes"):
        assert f"\n{line}\n" in sock, line
    assert re.search(r"\nSocketGroup=\S+\n", sock)


def test_started_like_systemd_it_notifies_ready_once_it_serves(
        tmp_path: Path, fd_zoo: dict[str, int]) -> None:
    notify_path = "/tmp/" + os.urandom(4).hex() + ".notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    sock_path = "/tmp/" + os.urandom(4).hex() + ".sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(16)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(activated(listener.fileno(),
                                      [PRGUARD_SCRIPT, "-u", "nobody", "-g", "nogroup"]),
                            pass_fds=(listener.fileno(),), env=env, stderr=subprocess.PIPE)
    listener.close()
    try:
        message = notify.recv(4096).decode()
        # At READY=1 the pair is up and confined, and a client is served at once.
        assert message.startswith("READY=1\n")
        assert f"MAINPID={proc.pid}" in message
        (worker,) = children(proc.pid)
        assert proc_status(proc.pid)["Seccomp"] == proc_status(worker)["Seccomp"] == "2"
        with Client(sock_path) as client:
            assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2
        proc.terminate()
        while (state := notify.recv(4096)).startswith(b"STATUS="):  # reports meanwhile
            pass
        assert state == b"STOPPING=1"
        assert proc.wait(10) == 0
        assert os.path.exists(sock_path)  # an activated socket is systemd's to remove
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
        os.unlink(notify_path)
        os.unlink(sock_path)


# -- the unit's limits -------------------------------------------------------------------

def exec_start_options() -> cli.Options:
    """ExecStart='s options, but for -u/-g (whose user need not exist here)."""
    line = unit_setting("ExecStart", UNITS / "prguard.service")
    assert line is not None
    words = line.split()[1:]
    kept = [w for i, w in enumerate(words)
            if w not in ("-u", "-g") and (i == 0 or words[i - 1] not in ("-u", "-g"))]
    return cli.parse(kept, warn=lambda text: None)


def unit_int(name: str) -> int:
    value = unit_setting(name, UNITS / "prguard.service")
    assert value is not None and value.isdigit(), (name, value)
    return int(value)


def test_unit_limits_are_derived_from_its_options() -> None:
    """LimitNOFILE= lets --max-connections clients in (each: socket + device fd in
    flight, plus the broker's own); TasksMax= lets the worker start --sg-threads."""
    opts = exec_start_options()
    assert unit_int("LimitNOFILE") == 2 * opts.max_connections + RESERVED_FDS
    assert opts.sg_threads + 1 <= unit_int("TasksMax") <= opts.sg_threads + 8


def test_with_the_units_limits_it_starts_without_a_warning_and_serves(
        sockdir: Path, fd_zoo: dict[str, int]) -> None:
    nofile = unit_int("LimitNOFILE")
    with tasks_max(unit_int("TasksMax")) as join:
        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            join()

        service = start(sockdir, preexec=limits)
        try:
            assert int(proc_status(service.worker())["Threads"]) == \
                exec_start_options().sg_threads
            with Client(service.socket_path) as client:
                assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2
            assert service.stop() == 0
            assert service.stderr_text() == ""  # no "RLIMIT_NOFILE ... allows" line
        finally:
            service.close()


def test_too_low_a_tasks_max_is_one_clear_line_not_a_silent_cap(sockdir: Path) -> None:
    with tasks_max(8) as join:
        service = start(sockdir, ready=False, preexec=join)
        try:
            assert service.proc.wait(20) == 1
            assert re.fullmatch(
                r"prguard: worker: cannot start SG_IO thread \d+ of 16 \(can't start new "
                r"thread\): the unit's TasksMax= \(or RLIMIT_NPROC\) must allow --sg-threads "
                r"\+ 1 tasks\n", service.stderr_text()), service.stderr_text()
        finally:
            service.close()


def test_the_metrics_file_is_where_the_tmpfiles_entry_and_the_client_expect_it() -> None:
    """--metrics-file in the unit: its directory made (owned by the -u user) by the
    tmpfiles.d entry and writable in the unit; prguard-client --daemon-status reads it
    there by default."""
    from prguard.client.daemon_status import DEFAULT_METRICS_FILE
    assert exec_start_options().metrics_file == DEFAULT_METRICS_FILE
    directory = os.path.dirname(DEFAULT_METRICS_FILE)
    tmpfiles = (UNITS / "prguard.tmpfiles").read_text()
    assert re.search(rf"^d {directory} 0755 prguard prguard -$", tmpfiles, re.M)
    assert unit_setting("ReadWritePaths", UNITS / "prguard.service") == directory
    assert unit_setting("WatchdogSec", UNITS / "prguard.service") == "30s"


def _syscall_group(name: str, seen: dict[str, set[str]]) -> set[str]:
    """A systemd syscall group, nested groups expanded (`systemd-analyze syscall-filter`)."""
    if name not in seen:
        out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                             text=True, check=True).stdout
        seen[name] = set()
        for line in out.splitlines()[1:]:
            item = line.strip()
            if item and not item.startswith("#"):
                seen[name] |= _syscall_group(item, seen) if item.startswith("@") else {item}
    return seen[name]


def unit_syscall_allowlist(unit: Path) -> set[str]:
    """The system calls a unit's SystemCallFilter= lines leave allowed, in their order
    (the first list is an allow-list; `~` removes, a later plain list adds)."""
    seen: dict[str, set[str]] = {}
    allowed: set[str] = set()
    for line in re.findall(r"^SystemCallFilter=(.*)$", unit.read_text(), re.M):
        remove = line.startswith("~")
        names: set[str] = set()
        for item in line.lstrip("~").split():
            names |= _syscall_group(item, seen) if item.startswith("@") else {item}
        allowed = allowed - names if remove else allowed | names
    return allowed


UNIT_FILTER = """\
import json, os, sys, pyseccomp as s
f = s.SyscallFilter(s.ERRNO(1))  # SystemCallErrorNumber=EPERM
for name in json.load(open(sys.argv[1])):
    if s.resolve_syscall(s.Arch.NATIVE, name) >= 0:
        f.add_rule(s.ALLOW, name)
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_the_units_system_call_filter_lets_prguard_start_and_serve(
        tmp_path: Path, fd_zoo: dict[str, int]) -> None:
    """prguard under the service's SystemCallFilter= (as systemd would apply it, EPERM for
    the rest): its own seccomp filters and Landlock rulesets must be allowed by it."""
    allowed = unit_syscall_allowlist(UNITS / "prguard.service")
    assert {"seccomp", "landlock_create_ruleset", "landlock_add_rule",
            "landlock_restrict_self"} <= allowed
    names = tmp_path / "allowed.json"
    names.write_text(json.dumps(sorted(allowed)))
    path = str(tmp_path / "u.sock")
    proc = subprocess.Popen([sys.executable, "-c", UNIT_FILTER, str(names), PRGUARD_SCRIPT,
                             "-k", path, "-u", "nobody", "-g", "nogroup"],
                            stderr=subprocess.PIPE, cwd=REPO)
    os.chmod(tmp_path, 0o777)  # so that the -u user could remove its socket
    try:
        wait_for_path(path, proc)
        with Client(path) as client:
            assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    assert not os.path.exists(path)
