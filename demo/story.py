"""The two-node fencing story (Pacemaker's fence_scsi), told through prguard-client.

Runs INSIDE the lab guest, as root (demo/run.py boots it): LIO's fencing pair from
lab/lio_setup.sh (one LU "f" behind two I_T nexuses, fA and fB) plays cluster nodes A
and B; prguard runs as nobody:nogroup with -v on its own socket; every PERSISTENT RESERVE
command is a `prguard-client` command line, shown with its output and prguard's log lines
for it; the WRITEs are plain `dd oflag=direct` through each node's /dev/sdX.

The second act tells the story again on LU "g", which node A reaches as a SAN host does:
through two paths (gA, gA2: two initiator ports) joined by the dm-multipath map mpathg.
A's commands and writes go through /dev/mapper/mpathg; prguard registers every path, and
once B has preempted A, A's writes fail whichever path dm sends them down (each write's
path is shown from the paths' request counters).

Each prguard-client command runs in this process, through the console script's own entry
point (prguard.client.cli.main with the argv shown): under TCG, with the host's root
filesystem shared over 9p, every new Python process costs 5-15 s of start-up, which a
dozen commands cannot afford. DEMO_SPAWN=1 runs the console script itself each time
(slower, same output). prguard is started before LIO is set up, so that its own start-up
overlaps lio_setup.sh's.

Everything goes to stdout, unbuffered, a line at a time (the host shows it live). A step
whose outcome is not the expected one ends the story: "DEMO FAILED in step N (...): why",
prguard stopped, exit status 1.

Run as: PYTHONPATH=<repo> <repo>/.venv/bin/python -m demo.story
"""

from __future__ import annotations

import contextlib
import grp
import io
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import lio
from lab.lio import dd_write, quiesce_udev
from lab.processes import children, proc_status, stop_process, wait_for_path, wait_for_service
from prguard.client import cli as client_cli

BIN = Path(sys.executable).parent  # the venv's: prguard and prguard-client are next to it
PRGUARD = BIN / "prguard"
CLIENT = BIN / "prguard-client"
# in a directory of prguard's user, as systemd's RuntimeDirectory= would make it: once it
# is nobody, prguard can still remove its socket on the way out
SOCK_DIR = Path("/run/prguard")
SOCK = str(SOCK_DIR / "prguard.sock")
SPAWN = os.environ.get("DEMO_SPAWN") == "1"
T0 = time.monotonic()
LOG = Path(os.environ.get("LAB_RESULTS", "/tmp")) / "prguard.log"
USER, GROUP = "nobody", "nogroup"
COMMAND_TIMEOUT_S = 60.0

# fence_scsi-style keys: one per node, registered by each node on its own path
KEY_A = 0xAAAA0001
KEY_B = 0xBBBB0002
WE_RO = 5  # WRITE EXCLUSIVE - REGISTRANTS ONLY, the type fence_scsi reserves
WE_RO_NAME = "WRITE EXCLUSIVE – REGISTRANTS ONLY"
CAP_SYS_RAWIO = 17
RULE = "=" * 78


class StoryError(Exception):
    """A step did not end as the story needs: the demo stops here."""


@dataclass(frozen=True)
class Node:
    name: str  #: "A" or "B"
    sd: str
    sg: str
    initiator: str  #: naa.<hex>: also the SAS address in this node's TransportID
    target: str
    key: int

    @property
    def sas_address(self) -> str:
        return "0x" + self.initiator.removeprefix("naa.").lower()


def say(text: str = "") -> None:
    print(text, flush=True)


_current_step = ["set-up"]


def heading(number: int, title: str) -> None:
    _current_step[0] = f"step {number} ({title})"
    say()
    say(RULE)
    say(f"Step {number}: {title}")
    say(f"{RULE[:-12]} guest +{time.monotonic() - T0:4.0f} s")


def note(text: str) -> None:
    say(f"  → {text}")


def hexkey(key: int) -> str:
    return f"{key:#x}"


# -- prguard and its log ----------------------------------------------------------------

class Prguard:
    """prguard on SOCK as nobody:nogroup with -v, its stderr in LOG."""

    def __init__(self) -> None:
        # --multipath=on: started before LIO loads dm_multipath, where auto would say off
        self.argv = [str(PRGUARD), "-k", SOCK, "-u", USER, "-g", GROUP, "-v",
                     "--multipath=on"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen = 0

    def start(self) -> None:
        """Start it; `wait` waits until it serves."""
        SOCK_DIR.mkdir(mode=0o755, exist_ok=True)
        os.chown(SOCK_DIR, pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCK)
        with open(LOG, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)

    def wait(self) -> None:
        assert self.proc is not None
        try:
            wait_for_path(SOCK, self.proc, timeout=60)
            wait_for_service(SOCK, timeout=60)
        except (RuntimeError, OSError) as err:
            raise StoryError(f"prguard did not start: {err}; its log: "
                             f"{LOG.read_text(errors='replace')[-1500:]!r}") from err

    def new_log_lines(self) -> list[str]:
        """prguard's log lines since the last call (a request is logged before its reply)."""
        try:
            lines = LOG.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        fresh, self._seen = lines[self._seen:], len(lines)
        return fresh

    def show_log(self) -> None:
        for line in self.new_log_lines():
            say(f"    prguard log │ {line}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc)


def describe_process(role: str, pid: int) -> str:
    st = proc_status(pid)
    uid, gid = st["Uid"].split()[0], st["Gid"].split()[0]
    cap = int(st["CapEff"], 16)
    caps = ("none" if cap == 0 else "CAP_SYS_RAWIO only" if cap == 1 << CAP_SYS_RAWIO
            else f"{cap:#x}")
    groups = " ".join(grp.getgrgid(int(g)).gr_name for g in st["Groups"].split())
    return (f"{role:<6} pid {pid:<5} uid {uid} gid {gid}"
            f"{f' groups {groups}' if groups else ''}, effective capabilities: {caps}, "
            f"seccomp mode {st.get('Seccomp', '?')}")


def show_processes(prguard: Prguard) -> None:
    assert prguard.proc is not None
    broker = prguard.proc.pid
    deadline = time.monotonic() + 10
    while len(kids := children(broker)) < 2:
        if time.monotonic() > deadline:
            raise StoryError(f"prguard's worker and path opener did not appear: {kids}")
        time.sleep(0.05)
    worker = next((k for k in kids if int(proc_status(k)["CapEff"], 16)), kids[0])
    opener = next(k for k in kids if k != worker)
    for role, pid in (("broker", broker), ("worker", worker), ("opener", opener)):
        say(f"  {describe_process(role, pid)}")
        if proc_status(pid)["Uid"].split()[0] != "65534":
            raise StoryError(f"prguard's {role} does not run as {USER}")
    say("  (the path opener, with the group disk and no capability, opens the paths of "
        "dm-multipath maps)")


# -- commands ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str


def run_client(argv: list[str]) -> Run:
    """prguard-client with `argv`: its entry point here, or the console script."""
    if SPAWN:
        try:
            r = subprocess.run([str(CLIENT), *argv], capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as err:
            raise StoryError(f"prguard-client did not finish within "
                             f"{COMMAND_TIMEOUT_S:g} s") from err
        return Run(r.returncode, r.stdout, r.stderr)
    out, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
        rc = int(client_cli.main(argv))  # has its own --timeout: 60 s by default
    return Run(rc, out.getvalue(), errors.getvalue())


def client(prguard: Prguard, node: Node, *args: str, expect_rc: int = 0) -> Run:
    """One prguard-client run through `node`'s block device, shown with prguard's log."""
    argv = ["--socket", SOCK, *args, node.sd]
    shown = shlex.join(["prguard-client", *argv])
    say()
    say(f"  [node {node.name}] $ {shown}")
    run = run_client(argv)
    for line in (run.stdout + run.stderr).splitlines():
        say(f"    {line}")
    if run.rc:
        say(f"    (exit status {run.rc})")
    prguard.show_log()
    if run.rc != expect_rc:
        raise StoryError(f"`{shown}` exited {run.rc}, expected {expect_rc}: "
                         f"{(run.stderr or run.stdout).strip()}")
    return run


def read_keys(prguard: Prguard, node: Node) -> list[int]:
    out = client(prguard, node, "--read-keys").stdout
    return [int(k, 16) for k in re.findall(r"^  (0x[0-9a-f]+)$", out, re.M)]


@dataclass(frozen=True)
class Held:
    key: int
    type: int


def read_reservation(prguard: Prguard, node: Node) -> Held | None:
    out = client(prguard, node, "--read-reservation").stdout
    if "no reservation held" in out:
        return None
    key = re.search(r"^  key (0x[0-9a-f]+)$", out, re.M)
    kind = re.search(r"type .*\((\d+)\)$", out, re.M)
    if key is None or kind is None:
        raise StoryError(f"cannot read the reservation from: {out!r}")
    return Held(int(key.group(1), 16), int(kind.group(1)))


@dataclass(frozen=True)
class Registration:
    key: int
    holder: bool
    type: int | None
    port: int
    initiator: str  #: the TransportID line as the client shows it


def read_full_status(prguard: Prguard, node: Node) -> list[Registration]:
    out = client(prguard, node, "--read-full-status").stdout
    regs: list[Registration] = []
    for block in re.split(r"^(?=  key )", out, flags=re.M)[1:]:
        key = re.match(r"  key (0x[0-9a-f]+)", block)
        holder = re.search(r"reservation holder: (yes|no)(?:.*\((\d+)\))?", block)
        port = re.search(r"relative target port (\d+)", block)
        lines = block.rstrip().splitlines()
        if key is None or holder is None or port is None or len(lines) < 4:
            raise StoryError(f"cannot read a registration from: {block!r}")
        regs.append(Registration(int(key.group(1), 16), holder.group(1) == "yes",
                                 int(holder.group(2)) if holder.group(2) else None,
                                 int(port.group(1)), lines[3].strip()))
    return regs


def whose(key: int, nodes: Sequence[Node]) -> str:
    return next((f"node {n.name}" for n in nodes if n.key == key), "an unknown node")


def by_initiator(text: str, nodes: Sequence[Node]) -> str:
    return next((f"node {n.name}" for n in nodes if n.sas_address in text.lower()),
                "an unknown initiator")


def write(node: Node, must_succeed: bool) -> str:
    """One 512-byte O_DIRECT WRITE through `node`'s /dev/sdX; returns dd's error text."""
    argv = ["dd", "if=/dev/zero", f"of={node.sd}", "bs=512", "count=1", "seek=8",
            "oflag=direct", "conv=notrunc", "status=none"]
    say()
    say(f"  [node {node.name}] $ {shlex.join(argv)}")
    before = len(dmesg())
    r = dd_write(node.sd)  # the same command, as the lab suite runs it
    err = r.stderr.strip()
    for line in err.splitlines():
        say(f"    {line}")
    for line in dmesg()[before:]:
        say(f"    kernel │ {line}")
    if r.returncode == 0:
        say("    write OK")
    else:
        say(f"    (exit status {r.returncode})")
    if must_succeed and r.returncode != 0:
        raise StoryError(f"the write through node {node.name}'s {node.sd} failed: {err}")
    if not must_succeed:
        if r.returncode == 0:
            raise StoryError(f"the write through node {node.name}'s {node.sd} succeeded; "
                             f"it must end in RESERVATION CONFLICT")
        # the block layer turns RESERVATION CONFLICT into EBADE, "Invalid exchange"
        if "Invalid exchange" not in err:
            raise StoryError(f"the write through node {node.name}'s {node.sd} failed, but "
                             f"not with RESERVATION CONFLICT (EBADE): {err}")
    return err


def dmesg() -> list[str]:
    r = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    return r.stdout.splitlines()


# -- the story --------------------------------------------------------------------------

def set_up_lio() -> tuple[Node, Node, lio.Devices]:
    try:
        devices = lio.set_up("fencing")  # the f pair, and LU g with its map for act two
    except lio.LioError as exc:
        raise StoryError(str(exc)) from None
    nodes = []
    for name, key in (("A", KEY_A), ("B", KEY_B)):
        d = devices[f"f{name}"]
        nodes.append(Node(name, d["sd"], d["sg"], d["initiator_wwn"], d["target_wwn"], key))
    a, b = nodes
    udev = quiesce_udev()
    lu = devices["fA"]
    say(f"  LU: LIO fileio backstore {lu['backstore']} (unit serial {lu['serial']}), "
        f"reached through two tcm_loop targets:")
    for n in nodes:
        say(f"  node {n.name}: {n.sd} ({n.sg}): initiator {n.initiator} → target {n.target}, "
            f"key {hexkey(n.key)}")
    say(f"  udev: {udev} (it would re-read partition tables and spend unit attentions)")
    if devices["fA"]["serial"] != devices["fB"]["serial"]:
        raise StoryError("fA and fB are not the same LU")
    return a, b, devices


def story(prguard: Prguard) -> None:
    heading(1, "two cluster nodes, A and B: two I_T nexuses to one LU")
    say(f"  $ {shlex.join(['prguard', *prguard.argv[1:]])} 2> prguard.log &")
    prguard.start()
    say("  (started first: its start-up overlaps the LIO set-up below)")
    say("  $ lab/lio_setup.sh    # LIO: tcm_loop targets over fileio backstores")
    a, b, devices = set_up_lio()
    nodes = (a, b)
    say()
    prguard.wait()
    say(f"  prguard serves on {SOCK}; its two processes:")
    show_processes(prguard)
    prguard.show_log()
    say("  (the connection closed in its handshake above is the demo's check that prguard "
        "serves)")
    if not SPAWN:
        say(f"  (each prguard-client command below runs in this process, pid {os.getpid()}, "
            f"through the")
        say("   command's own entry point: a new Python costs 5-15 s under TCG; "
            "DEMO_SPAWN=1 spawns it)")
    keys = read_keys(prguard, a)
    if keys:
        raise StoryError(f"the LU should start with no registrations, it has {keys}")
    note("a fresh LU: no keys registered, no reservation")

    heading(2, "A and B each register their key through prguard")
    client(prguard, a, "--out", "--register", "--param-sark", hexkey(KEY_A))
    client(prguard, b, "--out", "--register", "--param-sark", hexkey(KEY_B))
    keys = read_keys(prguard, a)
    if sorted(keys) != sorted([KEY_A, KEY_B]):
        raise StoryError(f"expected keys A and B, READ KEYS shows {[hex(k) for k in keys]}")
    note(f"both nodes are registrants: {hexkey(KEY_A)} (A) and {hexkey(KEY_B)} (B)")

    heading(3, f"A reserves {WE_RO_NAME} (type {WE_RO})")
    client(prguard, a, "--out", "--reserve", "--param-rk", hexkey(KEY_A), "--prout-type",
           str(WE_RO))
    held = read_reservation(prguard, b)
    if held != Held(KEY_A, WE_RO):
        raise StoryError(f"expected A's key holding type {WE_RO}, READ RESERVATION: {held}")
    regs = read_full_status(prguard, b)
    holders = [r for r in regs if r.holder]
    if len(regs) != 2 or len(holders) != 1 or holders[0].key != KEY_A:
        raise StoryError(f"expected two registrations with A holding: {regs}")
    h = holders[0]
    if by_initiator(h.initiator, nodes) != "node A":
        raise StoryError(f"the holder's TransportID is not A's initiator: {h.initiator}")
    note(f"holder: key {hexkey(h.key)} = node A, initiator {a.sas_address}, "
         f"relative target port {h.port}, type {h.type}")
    for r in regs:
        if not r.holder:
            note(f"registered, not holding: key {hexkey(r.key)} = {whose(r.key, nodes)}, "
                 f"relative target port {r.port}")

    heading(4, "writes through A's and through B's path both succeed (registrants only)")
    write(a, must_succeed=True)
    write(b, must_succeed=True)
    note("type 5 lets every registrant write: A (holder) and B (registered) both may")

    heading(5, f"node A fails; B preempts A's key (PREEMPT, type {WE_RO})")
    say("  (fence_scsi on B: PREEMPT with B's key as RESERVATION KEY and A's as SERVICE "
        "ACTION RESERVATION KEY)")
    client(prguard, b, "--out", "--preempt", "--param-rk", hexkey(KEY_B), "--param-sark",
           hexkey(KEY_A), "--prout-type", str(WE_RO))
    keys = read_keys(prguard, b)
    if keys != [KEY_B]:
        raise StoryError(f"expected only B's key, READ KEYS shows {[hex(k) for k in keys]}")
    note(f"only B's key {hexkey(KEY_B)} is left")
    held = read_reservation(prguard, b)
    if held != Held(KEY_B, WE_RO):
        raise StoryError(f"expected B's key holding type {WE_RO}, READ RESERVATION: {held}")
    regs = read_full_status(prguard, b)
    if len(regs) != 1 or not regs[0].holder or by_initiator(regs[0].initiator, nodes) != "node B":
        raise StoryError(f"expected B alone, holding: {regs}")
    note(f"B holds the reservation now: key {hexkey(KEY_B)}, initiator {b.sas_address}, "
         f"relative target port {regs[0].port}, type {regs[0].type}")

    heading(6, "A's writes now fail with RESERVATION CONFLICT; B's succeed")
    say("  A's first command since the preemption gets the UNIT ATTENTION the LU queued for "
        "it;")
    say("  spend it with a READ KEYS through A, so that the WRITE after it shows the "
        "conflict itself:")
    ua = client(prguard, a, "--read-keys", expect_rc=6)  # sg_persist's UNIT ATTENTION
    if "UNIT ATTENTION" not in ua.stderr or "registrations preempted" not in ua.stderr:
        raise StoryError(f"A's first command should get UNIT ATTENTION, REGISTRATIONS "
                         f"PREEMPTED (6/2a/05): {ua.stderr.strip()}")
    note("A learns it was preempted (UNIT ATTENTION 06/2a/05); the attention is spent")
    write(a, must_succeed=False)
    note("A's WRITE was refused by the LU: RESERVATION CONFLICT (EBADE, 'Invalid exchange')")
    write(b, must_succeed=True)
    note("B, the reservation holder, still writes")

    heading(7, "verdict")
    say(f"  node A is fenced: its key {hexkey(KEY_A)} is gone, node B ({hexkey(KEY_B)}) holds "
        f"{WE_RO_NAME}, A's writes end in RESERVATION CONFLICT and B's succeed.")
    act_two(prguard, devices)


# -- act two: node A on a dm-multipath map ------------------------------------------------

KEY_A2 = 0xAAAA0011
KEY_B2 = 0xBBBB0022


def path_requests(paths: dict[str, str]) -> dict[str, int]:
    """SCSI commands each path's device has seen (its iorequest_cnt)."""
    return {name: int(Path(f"/sys/block/{kname}/device/iorequest_cnt").read_text(), 16)
            for name, kname in paths.items()}


def map_write(node: Node, paths: dict[str, str], must_succeed: bool) -> str:
    """A WRITE through the map, and the path dm sent it down."""
    before = path_requests(paths)
    write(node, must_succeed)
    after = path_requests(paths)
    taken = [name for name in paths if after[name] > before[name]]
    note(f"dm sent it down {', '.join(taken) or 'no path'}")
    return taken[0] if taken else ""


def act_two(prguard: Prguard, devices: lio.Devices) -> None:
    mpath = devices["mpathg"]
    paths = {name: os.path.basename(devices[name]["sd"]) for name in mpath["paths"]}
    for name in paths:  # the kernel's names (a node may be a mknod copy)
        paths[name] = os.listdir(f"/sys/bus/scsi/devices/{devices[name]['hctl']}/block")[0]
    gb = devices["gB"]
    a = Node("A", mpath["map"], "", devices["gA"]["initiator_wwn"], "", KEY_A2)
    b = Node("B", gb["sd"], gb["sg"], gb["initiator_wwn"], gb["target_wwn"], KEY_B2)
    a2_initiator = devices["gA2"]["initiator_wwn"]

    heading(8, "act two: node A reaches LU g through two paths, one dm-multipath map")
    table = subprocess.run(["dmsetup", "table", "mpathg"], capture_output=True, text=True,
                           check=False).stdout.strip()
    say(f"  $ dmsetup table mpathg\n    {table}")
    for name, kname in paths.items():
        say(f"  path {name}: /dev/{kname}, initiator {devices[name]['initiator_wwn']} → "
            f"target {devices[name]['target_wwn']}")
    say(f"  node A uses {a.sd} (uuid {mpath['uuid']}); node B uses {b.sd}")
    say("  Without multipath support a REGISTER through the map reaches one path: the next "
        "command")
    say("  dm sends down the other one finds node A unregistered, and its cluster fences "
        "itself.")

    heading(9, "A registers through the map: prguard registers both of A's paths")
    client(prguard, a, "--out", "--register", "--param-sark", hexkey(KEY_A2))
    client(prguard, b, "--out", "--register", "--param-sark", hexkey(KEY_B2))
    regs = read_full_status(prguard, b)
    mine = [r for r in regs if r.key == KEY_A2]
    initiators = {i.removeprefix("naa.").lower() for i in (a.initiator, a2_initiator)}
    if len(mine) != 2 or {r.initiator.lower().split("0x")[-1][:16] for r in mine} != initiators:
        raise StoryError(f"expected A's key on both of A's initiator ports: {regs}")
    note(f"A's key {hexkey(KEY_A2)} is registered on both nexuses: relative target ports "
         f"{', '.join(str(r.port) for r in mine)}")

    heading(10, f"A reserves {WE_RO_NAME} through the map; its writes take both paths")
    client(prguard, a, "--out", "--reserve", "--param-rk", hexkey(KEY_A2), "--prout-type",
           str(WE_RO))
    taken = {map_write(a, paths, must_succeed=True) for _ in range(2)}
    note(f"A's writes succeeded through {', '.join(sorted(taken))}")

    heading(11, "node A fails; B preempts A's key")
    client(prguard, b, "--out", "--preempt", "--param-rk", hexkey(KEY_B2), "--param-sark",
           hexkey(KEY_A2), "--prout-type", str(WE_RO))
    keys = read_keys(prguard, b)
    if keys != [KEY_B2]:
        raise StoryError(f"expected only B's key, READ KEYS shows {[hex(k) for k in keys]}")
    note("B preempted A's key on every nexus it was registered on: both of A's paths")

    heading(12, "A's writes through the map fail whichever path they take")
    ua = client(prguard, a, "--read-keys", expect_rc=6)
    if "registrations preempted" not in ua.stderr:
        raise StoryError(f"A's first command should get UNIT ATTENTION, REGISTRATIONS "
                         f"PREEMPTED: {ua.stderr.strip()}")
    taken = {map_write(a, paths, must_succeed=False) for _ in range(4)}
    if len(taken) != 2:
        raise StoryError(f"four writes through the map took {taken}, not both paths")
    note(f"refused through {' and '.join(sorted(taken))}: RESERVATION CONFLICT on each")
    write(b, must_succeed=True)
    say()
    say("  node A is fenced on every path it has: a map is no way around the reservation.")


def main() -> int:
    prguard = Prguard()
    failed = False
    try:
        story(prguard)
    except StoryError as err:
        failed = True
        say()
        say(f"DEMO FAILED in {_current_step[0]}: {err}")
    except Exception as err:  # noqa: BLE001 - whatever broke, the story says where
        failed = True
        traceback.print_exc()
        say()
        say(f"DEMO FAILED in {_current_step[0]}: {type(err).__name__}: {err} "
            f"(traceback on stderr)")
    finally:
        rc = prguard.stop()
        if rc is not None:
            say()
            say(f"  prguard stopped (SIGTERM), exit status {rc}")
            prguard.show_log()
    if failed:
        return 1
    say()
    say(f"(story told in {time.monotonic() - T0:.1f} s inside the guest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
