"""Pinned fd numbers (shared/fdpin.py): after seal, no number below the boundary is free,
so every new fd lands above; fds 0-2 are always open before anything else is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lab.processes import PRGUARD, REPO, wait_for_path, wait_for_service

SEAL = """\
import json, os
from prguard.shared import fdpin
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(6)]
for fd in fds[:2] + fds[3:5]:
    os.close(fd)  # holes below the named fd
named = fds[5]
before = fdpin.free_slots_below(named)
boundary = fdpin.seal([named])
after = fdpin.free_slots_below(boundary)
new = os.open("/dev/null", os.O_RDONLY)
kinds = sorted({os.readlink(f"/proc/self/fd/{fd}")[:5] for fd in before})
print(json.dumps([named, before, boundary, after, new, kinds]))
"""


def test_seal_fills_every_free_number_below_the_boundary() -> None:
    out = subprocess.run([sys.executable, "-c", SEAL], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    named, before, boundary, after, new, kinds = json.loads(out)
    assert len(before) == 4 and boundary == named + 1
    assert after == []
    assert new == boundary  # the next fd lands at the boundary, never below
    assert kinds == ["pipe:"]  # the holes hold placeholders: a pipe with no writer


CLOSED_STDIO = """\
import os, sys
from prguard.shared import fdpin
fdpin.ensure_standard_fds()
sock = os.open("/dev/zero", os.O_RDONLY)
print(os.readlink("/proc/self/fd/0"), os.readlink("/proc/self/fd/2"), sock, file=sys.stdout)
"""


def _close_stdin_and_stderr() -> None:
    os.close(0)
    os.close(2)


def test_closed_standard_fds_are_reopened_on_dev_null() -> None:
    out = subprocess.run([sys.executable, "-c", CLOSED_STDIO], cwd=REPO, capture_output=True,
                         text=True, check=True, stdin=subprocess.DEVNULL,
                         preexec_fn=_close_stdin_and_stderr).stdout
    assert out.split() == ["/dev/null", "/dev/null", "3"]


def test_prguard_started_without_stderr_keeps_fd_2_for_logs(sockdir: Path) -> None:
    """A launcher that closed fd 2: the listening socket must not become "stderr", which
    the policies let both processes write to."""
    path = str(sockdir / "n.sock")
    proc = subprocess.Popen([*PRGUARD, "-k", path], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    try:
        wait_for_path(path, proc)
        wait_for_service(path)
        assert os.readlink(f"/proc/{proc.pid}/fd/2") == "/dev/null"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
