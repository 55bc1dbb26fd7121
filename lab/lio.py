"""The LIO target inside the lab guest: lio_setup.sh's layouts, a quiet udev, a real WRITE.

Used by the device suite, the nested-QEMU run, the demo and the guest benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

LIO_SETUP = Path(__file__).resolve().parent / "lio_setup.sh"
#: name ("pA", "fB", "nA", ...) -> {"sd": /dev/sdX, "sg": /dev/sgN, "serial": ..., ...}
Devices = dict[str, dict[str, str]]


class LioError(RuntimeError):
    """lio_setup.sh failed; the message ends with its stderr."""


def set_up(layout: str = "suite", json_file: Path | None = None, log: Path | None = None,
           timeout: float = 180.0) -> Devices:
    """Run lio_setup.sh with LIO_LAYOUT=`layout` (suite, fencing, nested); its devices.

    `json_file` also receives them; `log` receives the script's stderr."""
    argv = ["bash", str(LIO_SETUP), *([str(json_file)] if json_file is not None else [])]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                         env={**os.environ, "LIO_LAYOUT": layout})
    if log is not None:
        log.write_text(run.stderr)
    if run.returncode != 0:
        raise LioError(f"lio_setup.sh exited {run.returncode}: {run.stderr[-2000:]}")
    devices: Devices = json.loads(run.stdout.strip().splitlines()[-1])
    return devices


def quiesce_udev() -> str:
    """Stop udevd: it must not touch the LUNs while requests run.

    udevd watches sd nodes: when an fd opened for writing is closed it re-reads the
    partition table itself (BLKRRPART: READs), whatever its event queue does. Such a READ on
    a nexus with a pending unit attention spends it (the kernel retries), at a moment that
    differs between runs. lio_setup.sh needs no udev (devtmpfs, mknod fallback).
    """
    if shutil.which("udevadm") is None:
        return "not installed"
    subprocess.run(["udevadm", "settle", "--timeout=30"], capture_output=True, check=False)
    r = subprocess.run(["udevadm", "control", "--exit"], capture_output=True, text=True,
                       check=False)
    return "udevd stopped" if r.returncode == 0 else f"not running ({r.stderr.strip()})"


def dd_write(device: str) -> subprocess.CompletedProcess[str]:
    """One real 512-byte WRITE through the block layer, bypassing the page cache."""
    return subprocess.run(["dd", "if=/dev/zero", f"of={device}", "bs=512", "count=1",
                           "seek=8", "oflag=direct", "conv=notrunc", "status=none"],
                          capture_output=True, text=True, timeout=60, check=False)
