"""In the lab guest: SG_IO stuck in the kernel, and prguard watched as systemd watches
it. `python -m lab.hung_device` (as root, in the guest); writes results.json in the
current directory.

The stuck device is a dm-multipath map (lio_setup.sh's multipath layout) set to
queue_if_no_path with both its paths failed: device-mapper then retries an SG_IO on the
map every 10 ms until a path comes back, and the calling thread stays in the kernel,
past any SG_IO timeout. prguard runs with multipath off, so that SG_IO goes to the map
itself (its worker lets a multipath map through). A loop device stands for every other
device.

1. --sg-threads=4 --sg-per-device=2: two requests on the map hold two threads for good;
   the other two take the liveness probes and the loop device's requests. WATCHDOG=1
   keeps coming (the service is not restarted); the two requests are answered 0b/08/00
   at the worker deadline.
2. --sg-threads=2 --sg-per-device=2: the same two requests hold every thread. Once the
   probe has waited for the worker deadline, WATCHDOG=1 stops and STATUS= says so; the
   paths back, the threads return, and WATCHDOG=1 with them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

from lab import lio
from lab.loopdev import detach, losetup
from lab.systemd_like import Service, start
from prguard.client.session import Client, pr_in_cdb
from prguard.shared.errors import QemuProtocolError

SG_TIMEOUT = 3  #: the worker deadline is this + 5 s
WATCHDOG_USEC = 6_000_000  #: a report every 2 s


def request(path: str, fd: int, timeout: float) -> tuple[float, str]:
    started = time.monotonic()
    try:
        with Client(path, timeout=timeout) as client:
            reply = client.request(pr_in_cdb(), fd)
        outcome = f"status {reply.status} sense {reply.sense[2] & 0xF:02x}/" \
                  f"{reply.sense[12]:02x}/{reply.sense[13]:02x}"
    except (OSError, QemuProtocolError) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    return time.monotonic() - started, outcome


class Map:
    """The multipath map, and its paths failed or back."""

    def __init__(self, devices: lio.Devices) -> None:
        entry = devices["mpatha"]
        self.name = "mpatha"
        self.device = entry["map"]
        members = cast(list[str], entry["paths"])  # lio_setup.sh: a list of path names
        self.paths = [f"{os.major(r)}:{os.minor(r)}" for r in
                      (os.stat(devices[name]["sd"]).st_rdev for name in members)]
        self._message("queue_if_no_path")

    def _message(self, *words: str) -> None:
        subprocess.run(["dmsetup", "message", self.name, "0", *words], check=True,
                       capture_output=True)

    def paths_down(self) -> None:
        for path in self.paths:
            self._message("fail_path", path)

    def paths_back(self) -> None:
        for path in self.paths:
            self._message("reinstate_path", path)


def phase(directory: Path, threads: int, stuck_fd: int, loop_fd: int, down: Map,
          watched: float) -> dict[str, Any]:
    # Multipath off: with it on, prguard sends each command down a path of its own choice,
    # never into the map's queue.
    service: Service = start(directory, ("--multipath=off", f"--sg-timeout={SG_TIMEOUT}",
                                         f"--sg-threads={threads}", "--sg-per-device=2"),
                             watchdog_usec=WATCHDOG_USEC, ready_timeout=180)
    try:
        down.paths_down()
        stuck: list[tuple[float, str]] = []
        holders = [threading.Thread(target=lambda: stuck.append(
            request(service.socket_path, stuck_fd, 120))) for _ in range(2)]
        for thread in holders:
            thread.start()
        others: list[tuple[float, str]] = []

        def serve_others() -> None:
            deadline = time.monotonic() + watched
            while time.monotonic() < deadline:
                time.sleep(2)
                others.append(request(service.socket_path, loop_fd, 5))

        other_thread = threading.Thread(target=serve_others)
        other_thread.start()
        notifications = service.collect(watched)
        other_thread.join()
        down.paths_back()
        after = service.collect(6)
        for thread in holders:
            thread.join(60)
        return {"notifications": notifications, "after": after, "others": others,
                "stuck": stuck, "still_stuck": sum(t.is_alive() for t in holders),
                "exit_status": service.stop(timeout=60), "stderr": service.stderr_text()}
    finally:
        service.close()


def main() -> int:
    work = Path.cwd()
    lio.quiesce_udev()
    devices = lio.set_up("multipath", log=work / "lio.log")
    down = Map(devices)
    subprocess.run(["modprobe", "loop"], check=True)
    # The guest's /tmp: the results directory is a host share, where neither a loop
    # device's backing file nor a unix socket can live.
    scratch = Path(tempfile.mkdtemp(prefix="pghung"))
    loop = losetup(scratch / "loop.img", 1 << 20)
    stuck_fd = os.open(down.device, os.O_RDWR)
    loop_fd = os.open(loop, os.O_RDWR)
    try:
        result = {"one_device": phase(scratch, 4, stuck_fd, loop_fd, down, 16.0),
                  "every_thread": phase(scratch, 2, stuck_fd, loop_fd, down, 16.0)}
    finally:
        os.close(stuck_fd)
        os.close(loop_fd)
        detach(loop)
        shutil.rmtree(scratch, ignore_errors=True)
    (work / "results.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
