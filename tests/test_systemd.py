"""The shipped units, and prguard started the way systemd starts it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from lab.processes import REPO, activated, children, proc_status
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
    assert re.search(r"\nExecStart=\S*prguard -u \S+ -g \S+\n", service)
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
        assert notify.recv(4096) == b"STOPPING=1"
        assert proc.wait(10) == 0
        assert os.path.exists(sock_path)  # an activated socket is systemd's to remove
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
        os.unlink(notify_path)
        os.unlink(sock_path)
