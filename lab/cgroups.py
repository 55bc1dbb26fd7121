"""cgroups made by hand through cgroupfs (systemd is not PID 1 everywhere the tests run):
a directory in the unified (v2) hierarchy, a process moved into it, removal."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def unified_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (alone, or beside v1 ones)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    raise RuntimeError("no cgroup2 hierarchy is mounted")


def move(pid: int, cgroup: Path) -> None:
    (cgroup / "cgroup.procs").write_text(f"{pid}\n")


@contextmanager
def cgroups(*paths: str) -> Iterator[list[Path]]:
    """Create these cgroups (paths relative to the hierarchy's root, e.g.
    `machine.slice/machine-qemu\\x2d1\\x2dweb01.scope`), removed afterwards once empty."""
    root = unified_root()
    made: list[Path] = []
    try:
        for path in paths:
            target = root / path
            missing = [p for p in (target, *target.parents) if not p.exists()
                       and root in p.parents]
            for directory in reversed(missing):
                directory.mkdir()
                made.append(directory)
        yield [root / path for path in paths]
    finally:
        for directory in reversed(made):
            deadline = time.monotonic() + 5
            while True:
                try:
                    os.rmdir(directory)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # the last process may not be reaped yet


def path_of(cgroup: Path) -> str:
    """The path /proc/<pid>/cgroup shows for a process in `cgroup`."""
    return "/" + str(cgroup.relative_to(unified_root()))
