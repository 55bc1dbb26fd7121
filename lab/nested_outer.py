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
  3a. The guest's second disk is scsi-block over a dm-multipath map (mpathn over nmA and
     nmB): its REGISTER there, then READ FULL STATUS here on each path: both nexuses.
  4. Back within QEMU's reconnect window: prguard stopped (SIGTERM, socket removed), the
     guest sends READ KEYS, QEMU's PR_MANAGER_STATUS_CHANGED connected=false shows it
     found the socket dead and is retrying (5 attempts, 1 s apart); a helper appears on
     the path at once; the guest's command must succeed. A cold start of prguard in
     this emulated guest takes longer than that window (measured each run: step 6's
     restart_cold_s; cold_start times the interpreter alone and prguard --version), so
     that helper is a spare started at the beginning and moved onto the path by rename:
     to QEMU, the path answers again within a second. This step shows QEMU's side of a
     quick restart, not a quick restart of prguard.
  5. Down for longer: prguard stopped, the guest's READ KEYS must fail (spec 4.3), QMP
     query-pr-managers must say connected: false.
  6. A real restart: a new prguard process started on the path (over the stale socket
     file step 5 left), timed from its start until it serves; the guest's next command
     reconnects and succeeds.
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

from lab import lio
from lab.nested_qmp import QMP
from lab.processes import INSTALLED_PRGUARD, wait_for_path, wait_for_service

PRGUARD = INSTALLED_PRGUARD
PR_SOCK = "/tmp/nested-pr.sock"
# the spare helper, started ahead (see step 4) and moved onto PR_SOCK by rename
SPARE_SOCK = "/tmp/nested-pr-spare.sock"
QMP_SOCK = "/tmp/nested-qmp.sock"
CTL_SOCK = "/tmp/nested-ctl.sock"
KEY = "0xabc1"
MAP_KEY = "0xabc2"  #: the guest's key on its second disk, the dm-multipath map
#: a hang guard: the nested boot is emulation inside emulation, minutes on a busy host
BOOT_TIMEOUT_S = 900.0
COMMAND_TIMEOUT_S = 60.0
QMP_TIMEOUT_S = 120.0

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
        # --multipath=on: started before LIO loads dm_multipath, where auto would say off
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*PRGUARD, "-k", path, "-v", "--multipath=on"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)

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


def timed(argv: list[str]) -> float:
    """Seconds a command takes to run to its end (it must succeed)."""
    t0 = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True,
                   timeout=120)
    return round(time.monotonic() - t0, 2)


def sg_persist(*args: str) -> dict[str, Any]:
    r = subprocess.run(["sg_persist", "-n", *args], capture_output=True, text=True,
                       check=False, timeout=60)
    return {"cmd": "sg_persist -n " + " ".join(args), "rc": r.returncode,
            "out": r.stdout + r.stderr}


class NestedRun:
    """The sequence of the module docstring; each step's raw outcome lands in `out`."""

    def __init__(self, images: Path, results_dir: Path) -> None:
        self.images = images
        self.results_dir = results_dir
        self.out: dict[str, Any] = {"steps": {}, "timings": {}}
        self.steps: dict[str, Any] = self.out["steps"]
        self.timings: dict[str, float] = self.out["timings"]
        self.t_start = time.monotonic()
        self.helpers: list[Prguard] = []
        self.qemu: subprocess.Popen[bytes] | None = None
        self.qmp: QMP | None = None
        self.map = ""
        self.map_paths: list[str] = []

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.t_start, 1)

    def run(self) -> None:
        try:
            disk, other = self.set_up()
            qmp, guest = self.start_qemu(disk)
            dev = self.disk_at(guest, 0)  # sd names follow probe order, not SCSI ids
            self.guest_pr(guest, dev)
            self.outer_view(disk, other)
            self.multipath_pr(guest)
            current, spare = self.helpers
            self.restart_in_window(qmp, guest, dev, current, spare)
            self.down_long(qmp, guest, dev, spare)
            self.back(qmp, guest, dev)
            self.measure_cold_start()
        except Exception:  # noqa: BLE001  (everything goes back to the host, which judges)
            self.out["error"] = traceback.format_exc()
        finally:
            self.tear_down()

    def set_up(self) -> tuple[str, str]:
        """1. LIO and the helpers; the device QEMU gets and the other node's."""
        # The helpers start while LIO is set up: a cold start of prguard takes longer in
        # this emulated guest than QEMU's reconnect window, so step 4's comeback is a
        # spare started now (step 6 restarts for real, and times it).
        log = self.results_dir / "prguard.log"
        self.helpers = [Prguard(path, log) for path in (PR_SOCK, SPARE_SOCK)]
        devices = lio.set_up("nested", log=self.results_dir / "lio.stderr")
        disk, other = devices["nA"]["sd"], devices["nB"]["sd"]
        self.map = str(devices["mpathn"]["map"])
        self.map_paths = [devices[p]["sg"] for p in ("nmA", "nmB")]
        self.out["devices"] = {"qemu": disk, "other_node": other, "map": self.map,
                               "map_paths": self.map_paths}
        self.mark("lio")
        self.out["prguard_start_s"] = [h.wait_serving() for h in self.helpers]
        self.mark("prguard")
        return disk, other

    def qemu_argv(self, disk: str) -> list[str]:
        return [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "qemu64", "-m", "256",
            "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", "/usr/share/qemu/qboot.rom",
            "-kernel", str(self.images / "vmlinux"),
            "-initrd", str(self.images / "initramfs.cpio.gz"),
            "-append", KERNEL_APPEND,
            "-serial", f"file:{self.results_dir / 'nested-console.log'}",
            "-chardev", f"socket,id=ctl,path={CTL_SOCK},server=on,wait=off",
            "-serial", "chardev:ctl",
            "-qmp", f"unix:{QMP_SOCK},server=on,wait=off",
            "-object", f"pr-manager-helper,id=pr0,path={PR_SOCK}",
            "-drive", f"if=none,id=hd0,file={disk},format=raw,file.pr-manager=pr0",
            "-drive", f"if=none,id=hd1,file={self.map},format=raw,file.pr-manager=pr0",
            "-device", "virtio-scsi-pci,id=scsi0",
            "-device", "scsi-block,bus=scsi0.0,drive=hd0,scsi-id=0,lun=0",
            "-device", "scsi-block,bus=scsi0.0,drive=hd1,scsi-id=1,lun=0",
            "-trace", "pr_manager_run",
        ]

    def start_qemu(self, disk: str) -> tuple[QMP, Guest]:
        """1. The nested QEMU on `disk`, through prguard; until its guest is ready."""
        argv = self.qemu_argv(disk)
        self.out["qemu_argv"] = argv
        with open(self.results_dir / "nested-qemu.stderr", "wb") as err:
            qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.qemu = qemu
        # a QEMU that emulates its CPU inside an emulated CPU can take a minute to answer
        # its first command when the host is busy
        self.qmp = qmp = QMP.connect(QMP_SOCK, lambda: qemu.poll() is None, QMP_TIMEOUT_S)
        self.steps["qmp_after_start"] = qmp.execute("query-pr-managers")
        self.steps["qemu_pid"] = qemu.pid
        guest = Guest(CTL_SOCK, qemu)
        self.steps["ready"] = guest.wait_ready(BOOT_TIMEOUT_S)
        self.mark("nested_ready")
        return qmp, guest

    def guest_pr(self, guest: Guest, dev: str) -> None:
        """2. The guest's own PR commands, through QEMU and prguard."""
        self.steps["throwaway"] = guest.run(f"sg_persist -n -i -k {dev}")
        self.steps["register"] = guest.run(f"sg_persist -n -o -G -S {KEY} {dev}")
        self.steps["reserve"] = guest.run(f"sg_persist -n -o -R -K {KEY} -T 1 {dev}")
        self.steps["guest_keys"] = guest.run(f"sg_persist -n -i -k {dev}")
        self.steps["guest_reservation"] = guest.run(f"sg_persist -n -i -r {dev}")
        self.mark("guest_pr_done")

    def outer_view(self, disk: str, other: str) -> None:
        """3. The same state, read on the device by the outer guest."""
        self.steps["outer_keys_other_node"] = sg_persist("-i", "-k", other)
        self.steps["outer_reservation_other_node"] = sg_persist("-i", "-r", other)
        self.steps["outer_reservation_same_node"] = sg_persist("-i", "-r", disk)

    def disk_at(self, guest: Guest, target: int) -> str:
        """The guest's node of the scsi-block disk at SCSI target `target` (scsi-id)."""
        where = f"/sys/bus/scsi/devices/*:0:{target}:0/block"
        found = guest.run(f"i=0; while ! ls {where} >/dev/null 2>&1 && [ $i -lt 300 ]; do "
                          f"sleep 0.1; i=$((i+1)); done; ls {where}")
        self.steps[f"disk_at_{target}"] = found
        names = str(found.get("out", "")).split()
        if found.get("rc") != 0 or not names:
            raise RuntimeError(f"no disk at SCSI target {target}: {found}")
        return f"/dev/{names[0]}"

    def multipath_pr(self, guest: Guest) -> None:
        """3a. The guest registers on its disk that is a map; each path shows it."""
        disk = self.disk_at(guest, 1)
        self.steps["mpath_disk"] = guest.run(f"ls -l {disk}")
        self.steps["mpath_register"] = guest.run(f"sg_persist -n -o -G -S {MAP_KEY} {disk}")
        self.steps["mpath_full_status"] = [sg_persist("-i", "-s", path)
                                           for path in self.map_paths]
        self.mark("multipath_done")

    def restart_in_window(self, qmp: QMP, guest: Guest, dev: str, current: Prguard,
                          spare: Prguard) -> None:
        """4. Helper gone, back within the reconnect window."""
        self.steps["stop1_rc"] = current.stop()
        self.steps["path_after_stop1"] = os.path.exists(PR_SOCK)
        qmp.poll_events()
        first_event = len(qmp.events)
        t0 = time.monotonic()
        guest.send(f"sg_persist -n -i -k {dev}")
        down = qmp.wait_event("PR_MANAGER_STATUS_CHANGED", COMMAND_TIMEOUT_S, first_event,
                              lambda e: e["data"]["connected"] is False)
        t_down = time.monotonic()
        spare.move_to(PR_SOCK)
        t_up = time.monotonic()
        rc, text = guest.result()
        self.steps["restart_in_window"] = {"rc": rc, "out": text, "down_event": down,
                                           "back_after_s": round(t_up - t_down, 2),
                                           "command_s": round(time.monotonic() - t0, 2)}
        qmp.poll_events(0.5)
        self.steps["restart_events"] = qmp.events[first_event:]
        self.mark("restart_in_window")

    def down_long(self, qmp: QMP, guest: Guest, dev: str, current: Prguard) -> None:
        """5. Helper gone for longer than the window."""
        self.steps["stop2_rc"] = current.stop()
        # the helper removes the socket it created (the spare's name, moved away): what
        # remains is a stale socket file on PR_SOCK, as a crashed helper leaves
        self.steps["stale_socket_left"] = os.path.exists(PR_SOCK)
        qmp.poll_events()
        second_event = len(qmp.events)
        self.steps["down_long"] = guest.run(f"sg_persist -n -v -i -k {dev}")
        qmp.poll_events(0.5)
        self.steps["down_long_events"] = qmp.events[second_event:]
        self.steps["qmp_while_down"] = qmp.execute("query-pr-managers")
        self.mark("down_long")

    def back(self, qmp: QMP, guest: Guest, dev: str) -> None:
        """6. A new prguard on the path: the next command reconnects; then all stops."""
        restarted = Prguard(PR_SOCK, self.results_dir / "prguard.log")
        self.helpers.append(restarted)
        self.steps["restart_cold_s"] = restarted.wait_serving()
        self.steps["restarted_pid"] = restarted.proc.pid
        self.steps["earlier_pids"] = [h.proc.pid for h in self.helpers[:-1]]
        third_event = len(qmp.events)
        self.steps["after_restart"] = guest.run(f"sg_persist -n -i -r {dev}")
        qmp.poll_events(0.5)
        self.steps["after_restart_events"] = qmp.events[third_event:]
        self.steps["qmp_after_restart"] = qmp.execute("query-pr-managers")
        self.mark("after_restart")
        guest.send("@@POWEROFF")
        assert self.qemu is not None
        self.steps["qemu_exit"] = self.qemu.wait(60)
        self.steps["stop3_rc"] = restarted.stop()

    def measure_cold_start(self) -> None:
        """Where a cold start's time goes, with nothing else running: the interpreter
        alone, and prguard's imports (--version) on top of it."""
        self.out["cold_start"] = {"python -c pass": timed([sys.executable, "-c", "pass"]),
                                  "prguard --version": timed([*PRGUARD, "--version"])}

    def tear_down(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()
        for helper in self.helpers:
            with contextlib.suppress(Exception):
                helper.stop()
        self.mark("end")
        (self.results_dir / "nested.json").write_text(json.dumps(self.out, indent=1))


def main() -> int:
    NestedRun(Path(sys.argv[1]), Path(os.environ.get("LAB_RESULTS", "."))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
