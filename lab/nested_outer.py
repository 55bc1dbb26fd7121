"""Runs INSIDE the lab guest (tests/test_qemu_interop.py boots it): a real QEMU, nested
(TCG inside TCG), whose guest issues PERSISTENT RESERVE commands with sg_persist on a
scsi-block disk backed by a LIO LUN, through prguard.

    PYTHONPATH=<repo> <venv python> -m lab.nested_outer <dir with vmlinux, initramfs>

Sequence (each step's raw outcome goes to $LAB_RESULTS/nested.json; the host judges):
  1. LIO (lio_setup.sh, LIO_LAYOUT=nested: one LU, two nexuses nA and nB), prguard -v on
     /tmp/nested-pr.sock, the nested QEMU on nA's sd node with -object pr-manager-helper
     and file.pr-manager; QMP query-pr-managers.
  2. In the nested guest: a throw-away READ KEYS (QEMU's bus reports a UNIT ATTENTION
     first), REGISTER, RESERVE (write exclusive), READ KEYS, READ RESERVATION.
  3. Here, on the device itself: READ KEYS / READ RESERVATION with sg_persist through the
     other nexus (nB, a second "cluster node") and through the same one (nA).
  4. Back within QEMU's reconnect window: prguard stopped (SIGTERM, socket removed), the
     guest sends READ KEYS, QEMU's PR_MANAGER_STATUS_CHANGED connected=false shows it
     found the socket dead and is retrying (5 attempts, 1 s apart); a helper appears on
     the path at once; the guest's command must succeed. prguard's cold start takes
     20-35 s in this emulated guest, so that helper is a spare started at the beginning
     and moved onto the path by rename: to QEMU, the path answers again within a second.
  5. Down for longer: prguard stopped, the guest's READ KEYS must fail (spec 4.3), QMP
     query-pr-managers must say connected: false.
  6. A helper back on the path (the second spare): the guest's next command succeeds.
The guest is driven over its second serial port (lab/nested_init.sh's protocol).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lab.nested_qmp import QMP
from lab.processes import wait_for_path, wait_for_service

HERE = Path(__file__).resolve().parent
LIO_SETUP = HERE / "lio_setup.sh"
_SCRIPT = Path(sys.executable).parent / "prguard"
PRGUARD: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prguard"]
PR_SOCK = "/tmp/nested-pr.sock"
# spare helpers, started ahead (see step 4) and moved onto PR_SOCK by rename
SPARE_SOCKS = ("/tmp/nested-pr-spare1.sock", "/tmp/nested-pr-spare2.sock")
QMP_SOCK = "/tmp/nested-qmp.sock"
CTL_SOCK = "/tmp/nested-ctl.sock"
KEY = "0xabc1"
BOOT_TIMEOUT_S = 200.0
COMMAND_TIMEOUT_S = 60.0

# QEMU as LAB.md measured it fastest when nested; -no-reboot: poweroff/panic end it.
KERNEL_APPEND = ("console=ttyS0 mitigations=off cryptomgr.notests panic=-1 "
                 "loglevel=4 tsc=reliable no_timer_check")


class Guest:
    """The nested guest's command channel (a unix socket chardev behind its ttyS1)."""

    def __init__(self, path: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""

    def read_line(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("the nested guest's serial channel closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.1, deadline - time.monotonic()))
            if line.startswith("@@READY"):
                return line

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode() + b"\n")

    def result(self, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.1, deadline - time.monotonic()))
            if line.startswith("@@END "):
                return int(line.split()[1]), "\n".join(lines)
            lines.append(line)

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        t0 = time.monotonic()
        self.send(command)
        rc, out = self.result(timeout)
        return {"cmd": command, "rc": rc, "out": out, "s": round(time.monotonic() - t0, 2)}


class Prguard:
    """One prguard process on `path`, logging (-v) into `log`."""

    def __init__(self, path: str, log: Path) -> None:
        self.path = path
        self.t0 = time.monotonic()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*PRGUARD, "-k", path, "-v"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out)

    def wait_serving(self) -> float:
        """Seconds from its start until it served a handshake."""
        wait_for_path(self.path, self.proc, 120)
        wait_for_service(self.path, 120)
        return round(time.monotonic() - self.t0, 2)

    def move_to(self, path: str) -> None:
        """Make it reachable at `path` at once (its socket renamed there)."""
        os.rename(self.path, path)
        self.path = path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def sg_persist(*args: str) -> dict[str, Any]:
    r = subprocess.run(["sg_persist", "-n", *args], capture_output=True, text=True,
                       check=False, timeout=60)
    return {"cmd": "sg_persist -n " + " ".join(args), "rc": r.returncode,
            "out": r.stdout + r.stderr}


def main() -> int:
    images = Path(sys.argv[1])
    results_dir = Path(os.environ.get("LAB_RESULTS", "."))
    out: dict[str, Any] = {"steps": {}, "timings": {}}
    steps: dict[str, Any] = out["steps"]
    timings: dict[str, float] = out["timings"]
    t_start = time.monotonic()

    def mark(name: str) -> None:
        timings[name] = round(time.monotonic() - t_start, 1)

    log = results_dir / "prguard.log"
    helpers: list[Prguard] = []
    qemu: subprocess.Popen[bytes] | None = None
    qmp: QMP | None = None
    try:
        # The helpers start while LIO is set up: a cold start of prguard takes 20-35 s
        # in this emulated guest (against 0.3 s on the host), far beyond QEMU's reconnect
        # window, so the restarts of steps 4 and 6 use spares started now.
        helpers = [Prguard(path, log) for path in (PR_SOCK, *SPARE_SOCKS)]
        current, spare1, spare2 = helpers
        lio = subprocess.run(["bash", str(LIO_SETUP)], capture_output=True, text=True,
                             check=False, timeout=180,
                             env={**os.environ, "LIO_LAYOUT": "nested"})
        (results_dir / "lio.stderr").write_text(lio.stderr)
        if lio.returncode != 0:
            raise RuntimeError(f"lio_setup.sh failed: {lio.stderr[-2000:]}")
        devices = json.loads(lio.stdout.strip().splitlines()[-1])
        disk, other = devices["nA"]["sd"], devices["nB"]["sd"]
        out["devices"] = {"qemu": disk, "other_node": other}
        mark("lio")
        out["prguard_start_s"] = [h.wait_serving() for h in helpers]
        mark("prguard")

        argv = [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "qemu64", "-m", "256",
            "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", "/usr/share/qemu/qboot.rom",
            "-kernel", str(images / "vmlinux"), "-initrd", str(images / "initramfs.cpio.gz"),
            "-append", KERNEL_APPEND,
            "-serial", f"file:{results_dir / 'nested-console.log'}",
            "-chardev", f"socket,id=ctl,path={CTL_SOCK},server=on,wait=off",
            "-serial", "chardev:ctl",
            "-qmp", f"unix:{QMP_SOCK},server=on,wait=off",
            "-object", f"pr-manager-helper,id=pr0,path={PR_SOCK}",
            "-drive", f"if=none,id=hd0,file={disk},format=raw,file.pr-manager=pr0",
            "-device", "virtio-scsi-pci,id=scsi0",
            "-device", "scsi-block,bus=scsi0.0,drive=hd0",
            "-trace", "pr_manager_run",
        ]
        out["qemu_argv"] = argv
        with open(results_dir / "nested-qemu.stderr", "wb") as err:
            qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        running = qemu
        qmp = QMP.connect(QMP_SOCK, lambda: running.poll() is None)
        steps["qmp_after_start"] = qmp.execute("query-pr-managers")
        steps["qemu_pid"] = qemu.pid
        guest = Guest(CTL_SOCK, qemu)
        steps["ready"] = guest.wait_ready(BOOT_TIMEOUT_S)
        mark("nested_ready")

        # -- 2. the guest's own PR commands, through QEMU and prguard
        dev = "/dev/sda"
        steps["throwaway"] = guest.run(f"sg_persist -n -i -k {dev}")
        steps["register"] = guest.run(f"sg_persist -n -o -G -S {KEY} {dev}")
        steps["reserve"] = guest.run(f"sg_persist -n -o -R -K {KEY} -T 1 {dev}")
        steps["guest_keys"] = guest.run(f"sg_persist -n -i -k {dev}")
        steps["guest_reservation"] = guest.run(f"sg_persist -n -i -r {dev}")
        mark("guest_pr_done")
        # -- 3. the same state, read on the device by the outer guest
        steps["outer_keys_other_node"] = sg_persist("-i", "-k", other)
        steps["outer_reservation_other_node"] = sg_persist("-i", "-r", other)
        steps["outer_reservation_same_node"] = sg_persist("-i", "-r", disk)

        # -- 4. helper gone, back within the reconnect window
        steps["stop1_rc"] = current.stop()
        steps["path_after_stop1"] = os.path.exists(PR_SOCK)
        qmp.poll_events()
        first_event = len(qmp.events)
        t0 = time.monotonic()
        guest.send(f"sg_persist -n -i -k {dev}")
        down = qmp.wait_event("PR_MANAGER_STATUS_CHANGED", COMMAND_TIMEOUT_S, first_event,
                              lambda e: e["data"]["connected"] is False)
        t_down = time.monotonic()
        spare1.move_to(PR_SOCK)
        t_up = time.monotonic()
        rc, text = guest.result()
        steps["restart_in_window"] = {"rc": rc, "out": text, "down_event": down,
                                      "back_after_s": round(t_up - t_down, 2),
                                      "command_s": round(time.monotonic() - t0, 2)}
        qmp.poll_events(0.5)
        steps["restart_events"] = qmp.events[first_event:]
        current = spare1
        mark("restart_in_window")

        # -- 5. helper gone for longer than the window
        steps["stop2_rc"] = current.stop()
        # the helper removes the socket it created (spare1's name, moved away): what
        # remains is a stale socket file on PR_SOCK, as a crashed helper leaves
        steps["stale_socket_left"] = os.path.exists(PR_SOCK)
        qmp.poll_events()
        second_event = len(qmp.events)
        steps["down_long"] = guest.run(f"sg_persist -n -v -i -k {dev}")
        qmp.poll_events(0.5)
        steps["down_long_events"] = qmp.events[second_event:]
        steps["qmp_while_down"] = qmp.execute("query-pr-managers")
        mark("down_long")

        # -- 6. helper back: the next command reconnects
        spare2.move_to(PR_SOCK)
        current = spare2
        third_event = len(qmp.events)
        steps["after_restart"] = guest.run(f"sg_persist -n -i -r {dev}")
        qmp.poll_events(0.5)
        steps["after_restart_events"] = qmp.events[third_event:]
        steps["qmp_after_restart"] = qmp.execute("query-pr-managers")
        mark("after_restart")
        guest.send("@@POWEROFF")
        steps["qemu_exit"] = qemu.wait(60)
        steps["stop3_rc"] = current.stop()
    except Exception:  # noqa: BLE001  (everything goes back to the host, which judges)
        out["error"] = traceback.format_exc()
    finally:
        if qmp is not None:
            with contextlib.suppress(Exception):
                qmp.close()
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        for helper in helpers:
            with contextlib.suppress(Exception):
                helper.stop()
        mark("end")
        (results_dir / "nested.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
