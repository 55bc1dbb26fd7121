"""Device conformance suite: runs INSIDE the lab guest (tests/test_lab.py boots it).

Two identical LIO set-ups (lio_setup.sh): side "p" is only ever reached through prguard,
side "c" only through /usr/bin/qemu-pr-helper. Each side has one LU behind two I_T
nexuses (A, B: two cluster nodes, RTPI 1 and 2, the same initiator names on both sides)
and a LU behind one nexus (S). Every step of STEPS (lab/guest_steps.py) is one
PERSISTENT RESERVE IN/OUT request sent over the QEMU wire protocol with a fresh fd of the
step's device, first to the C helper on side c, then to prguard on side p, and the two
replies (status, 96 sense bytes, data) are compared. Since both sides see the same
commands in the same order, their state (keys, generation, reservation, pending unit
attentions) stays identical, and any difference in a reply is a difference between the
helpers.

Steps marked with a deviation are the ones docs/COMPATIBILITY.md lists: they are compared
the way the deviation says, and the detail says what differed.

After the steps, the fencing story (Pacemaker fence_scsi) runs through prguard alone on a
third LU (f): real WRITEs through the preempted node's block device must fail with
RESERVATION CONFLICT, the survivor's must succeed. On that LU, prguard-client and
sg_persist then ask the same questions (lab/sg_persist_side_by_side.py) and must print the
same keys, reservation, capabilities and full status, and exit alike. Then CLOCK_CASE
starts another prguard with a clocksource the vDSO cannot read (hpet): every
clock_gettime is then a real system call, which the seccomp policies must allow. After
it, lab/dm_maps.py makes device-mapper maps over LU d (through node dA) and sends a
REGISTER through each, to prguard with multipath off and on and, as the control, to the
C helper: only a multipath map may reach the LU through prguard. Last, lio_setup.sh adds
its multipath layout (LUs m and r, the dm-multipath map mpatha) to the running target
and lab/guest_multipath.py runs its cases on it with a prguard of its own (`-u nobody -g
nogroup`, multipath on), with a set-up time of its own.

udevd is stopped once LIO is up: it re-reads the partition table of every sd node an fd
opened for writing was closed on, and those READs spend pending unit attentions at
moments that differ between the sides.

Output: $LAB_RESULTS/results.json, a list of {"case", "ok", "detail", "c", "prguard"}
("c"/"prguard": [status, sense hex, data hex] or null), plus timings.json, lio.json and
the helpers' stderr. Exit status 0 once results.json is written, whatever the verdicts.

Run as: PYTHONPATH=<repo> <repo>/.venv/bin/python -m lab.guest_suite
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import dm_maps, guest_audit, guest_multipath, lio, sg_persist_side_by_side
from lab.guest_steps import (
    CHECK,
    GOOD,
    KA,
    KB,
    PREEMPT,
    READ_KEYS,
    READ_RESERVATION,
    REGISTER,
    RESERVE,
    STEPS,
    W_GOOD,
    Node,
    Reply,
    Step,
    Want,
    plist,
    pr_in,
    pr_out,
)
from lab.lio import Devices, dd_write, quiesce_udev
from lab.processes import (
    C_HELPER,
    INSTALLED_PRGUARD,
    REPO,
    stop_process,
    wait_for_path,
    wait_for_service,
)
from prguard.client.session import Client
from prguard.shared.errors import QemuProtocolError

PRGUARD = INSTALLED_PRGUARD
P_SOCK = "/tmp/p.sock"
C_SOCK = "/tmp/c.sock"
M_SOCK = "/tmp/m.sock"
REQUEST_TIMEOUT_S = 40.0
#: prguard's start under TCG took 50 s, and over 60 s with the hpet clocksource or with
#: multipath on, while another guest ran on the same two cores
START_TIMEOUT_S = 180.0

FENCE_CASES: list[str] = [
    "fence.A-registers",
    "fence.B-registers",
    "fence.A-reserves-type5",
    "fence.A-writes-before",
    "fence.B-writes-before",
    "fence.B-preempts-A",
    "fence.A-write-refused",
    "fence.B-write-succeeds",
    "fence.read-keys-only-B",
    "fence.read-reservation-B-holds",
]

SETUP_CASE = "setup.lio-and-helpers"
#: prguard started while the clocksource has no vDSO support (clock_gettime becomes a real
#: system call, as on hosts with hpet/acpi_pm/Xen clocks): see tests/test_lab.py
CLOCK_CASE = "clock.prguard-serves-without-vdso-clock"
CASES: list[str] = [SETUP_CASE, *(s.name for s in STEPS), *FENCE_CASES,
                    *sg_persist_side_by_side.CASES, *dm_maps.CASES, CLOCK_CASE,
                    *guest_audit.CASES, *guest_multipath.CASES]
if len(set(CASES)) != len(CASES):
    raise AssertionError("duplicate case names in the step table")
# Agreement alone proves little if both sides failed the same way: every compared step
# also says what the target must answer.
if any(s.want is None for s in STEPS if s.compare != "own_invalid_field"):
    raise AssertionError("a compared step without an expected answer")


# ---------------------------------------------------------------------------- comparing

def sense_code(sense: bytes) -> tuple[int, int, int] | None:
    if not sense or sense[0] & 0x7F not in (0x70, 0x71, 0x72, 0x73):
        return None
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2], sense[3]
    return sense[2] & 0x0F, sense[12], sense[13]


def describe(reply: Reply | str) -> str:
    if isinstance(reply, str):
        return f"no reply ({reply})"
    status, sense, data = reply
    text = f"status {status:#04x}"
    code = sense_code(sense)
    if code is not None:
        key, asc, ascq = code
        text += f" sense {key:02x}/{asc:02x}/{ascq:02x} [{sense.rstrip(bytes(1)).hex()}]"
    elif any(sense):
        text += f" sense [{sense.rstrip(bytes(1)).hex()}]"
    return text + f", {len(data)} data bytes" + (f" {data[:48].hex()}" if data else "")


def as_json(reply: Reply | str | None) -> list[Any] | None:
    if reply is None or isinstance(reply, str):
        return None
    return [reply[0], reply[1].hex(), reply[2].hex()]


def own_invalid_field_reply() -> Reply:
    sense = bytearray(96)
    sense[0], sense[2], sense[7], sense[12] = 0x70, 0x05, 0x0A, 0x24
    return CHECK, bytes(sense), b""


def _diff_positions(a: bytes, b: bytes) -> str:
    pos = [i for i in range(max(len(a), len(b))) if a[i:i + 1] != b[i:i + 1]]
    return ",".join(map(str, pos[:16])) + ("..." if len(pos) > 16 else "")


def judge(step: Step, c: Reply | str, p: Reply | str) -> tuple[bool, str]:
    """(ok, detail) for one step."""
    head = f"C: {describe(c)}; prguard: {describe(p)}"
    if isinstance(c, str) or isinstance(p, str):
        return False, "a helper did not answer. " + head
    if step.compare == "own_invalid_field":
        expected = own_invalid_field_reply()
        if p != expected:
            return False, f"prguard should answer CHECK CONDITION 05/24/00 itself. {head}"
        if c == p:
            return True, f"expected deviation ({step.why}); here the C helper's (LIO's) reply " \
                         f"is byte-identical: {describe(c)}"
        where = "status" if c[0] != p[0] else f"sense bytes {_diff_positions(c[1], p[1])}" \
            if c[1] != p[1] else "data"
        return True, f"expected deviation ({step.why}); differs in {where}. {head}"
    problems: list[str] = []
    if c[0] != p[0]:
        problems.append("status differs")
    if step.compare == "sense18":
        if c[1][:18] != p[1][:18]:
            problems.append(f"sense bytes 0-17 differ at {_diff_positions(c[1][:18], p[1][:18])}")
        if any(p[1][18:]):
            problems.append("prguard's sense bytes 18-95 are not zero")
    elif c[1] != p[1]:
        problems.append(f"sense differs at bytes {_diff_positions(c[1], p[1])}")
    if c[2] != p[2]:
        problems.append(f"data differs at bytes {_diff_positions(c[2], p[2])}")
    if problems:
        return False, "; ".join(problems) + ". " + head
    if step.want is not None:
        got = Want(c[0], sense_code(c[1]) if step.want.sense is not None else None)
        if got != step.want:
            return False, (f"both helpers agree, but the target answered {describe(c)} where "
                           f"the step expects {step.want.describe()} (step design or target "
                           f"behaviour changed)")
    note = ""
    if step.compare == "sense18":
        note = (f" (compared sense bytes 0-17 only: {step.why}; C helper bytes 18-95 "
                f"{'non-zero' if any(c[1][18:]) else 'zero'} this time)")
    elif step.why:
        note = f" ({step.why})"
    return True, f"identical: {describe(p)}{note}"


# ------------------------------------------------------------------------------ running

@dataclass
class Endpoint:
    """One helper and the devices of its side."""

    label: str
    argv: list[str]
    sock: str
    devices: Devices  #: node -> {"sd": path, "sg": path}
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    #: a connection per node, when the nodes are to be told apart (made by the caller)
    node_clients: dict[str, Client] = field(default_factory=dict)

    def start(self, log_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        with open(log_dir / f"{self.label}.stderr", "wb") as log:
            self.proc = subprocess.Popen([*self.argv, "-k", self.sock],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=REPO)
        wait_for_path(self.sock, self.proc, timeout=START_TIMEOUT_S)
        wait_for_service(self.sock, timeout=START_TIMEOUT_S)

    def request(self, step: Step) -> Reply | str:
        path = self.devices[step.node][step.dev]
        flags = (os.O_RDONLY if step.read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as e:
            return f"cannot open {path}: {e}"
        try:
            client = self.node_clients.get(step.node)
            if client is None:
                if self.client is None:
                    self.client = Client(self.sock, timeout=REQUEST_TIMEOUT_S)
                client = self.client
            reply = client.request(step.cdb, fd, step.params)
            return reply.status, reply.sense, reply.data
        except (OSError, QemuProtocolError) as e:
            if self.client is not None:
                self.client.close()
                self.client = None
            return f"{type(e).__name__}: {e}"
        finally:
            os.close(fd)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for client in self.node_clients.values():
            client.close()
        if self.proc is not None:
            stop_process(self.proc)



def _case(name: str, ok: bool, detail: str, c: Reply | str | None = None,
          p: Reply | str | None = None) -> dict[str, Any]:
    return {"case": name, "ok": ok, "detail": detail, "c": as_json(c), "prguard": as_json(p)}


def run_steps(c_side: Endpoint, p_side: Endpoint) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    hung = 0
    for step in STEPS:
        if hung >= 2:
            out.append(_case(step.name, False, "not run: a helper stopped answering earlier"))
            continue
        c = c_side.request(step)
        p = p_side.request(step)
        hung += sum(isinstance(r, str) and "timed out" in r for r in (c, p))
        ok, detail = judge(step, c, p)
        out.append(_case(step.name, ok, detail, c, p))
    return out


def run_fence(prguard: Endpoint) -> list[dict[str, Any]]:
    """fence_scsi: A and B register, A reserves type 5, B preempts A; A's writes fail.

    Each node's requests go through a connection made from its own machine scope, as
    two VMs' QEMUs would (lab/guest_audit.py reads the story back from the audit log)."""
    out: list[dict[str, Any]] = []
    names = iter(FENCE_CASES)
    for node in ("A", "B"):
        with guest_audit.as_node(node):
            prguard.node_clients[node] = Client(prguard.sock, timeout=REQUEST_TIMEOUT_S)

    def pr(step: Step) -> Reply | str:
        reply = prguard.request(step)
        assert step.want is not None
        ok = isinstance(reply, tuple) and reply[0] == step.want.status
        out.append(_case(next(names), ok, f"prguard: {describe(reply)}", None, reply))
        return reply

    def write(node: Node, must_succeed: bool) -> None:
        device = prguard.devices[node]["sd"]
        r = dd_write(device)
        err = r.stderr.strip()
        # RESERVATION CONFLICT reaches dd as EBADE, "Invalid exchange"
        refused = r.returncode != 0 and "Invalid exchange" in err
        ok = r.returncode == 0 if must_succeed else refused
        detail = f"dd oflag=direct to {device} ({node}): rc {r.returncode} {err!r}"
        out.append(_case(next(names), ok, detail))

    pr(pr_out("fence-register-A", REGISTER, plist(0, KA), want=W_GOOD))
    pr(pr_out("fence-register-B", REGISTER, plist(0, KB), node="B", want=W_GOOD))
    pr(pr_out("fence-reserve-A", RESERVE, plist(KA), 5, want=W_GOOD))
    write("A", True)
    write("B", True)
    pr(pr_out("fence-preempt", PREEMPT, plist(KB, KA), 5, node="B", want=W_GOOD))
    write("A", False)
    write("B", True)
    keys = pr(pr_in("fence-read-keys", READ_KEYS, 8192, node="B", want=W_GOOD))
    if isinstance(keys, tuple) and keys[2][8:] != KB.to_bytes(8, "big"):
        out[-1]["ok"] = False
        out[-1]["detail"] += f"; registered keys should be only B's {KB:#x}"
    resv = pr(pr_in("fence-read-reservation", READ_RESERVATION, 8192, node="B", want=W_GOOD))
    if isinstance(resv, tuple) and (resv[2][8:16] != KB.to_bytes(8, "big")
                                    or len(resv[2]) < 22 or resv[2][21] != 0x05):
        out[-1]["ok"] = False
        out[-1]["detail"] += f"; B ({KB:#x}) should hold a type 5 reservation"
    return out


CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0")


def clocksource() -> str:
    return (CLOCKSOURCE / "current_clocksource").read_text().strip()


def run_clock_case(devices: Devices, log_dir: Path) -> dict[str, Any]:
    """Start a second prguard with a clocksource the vDSO cannot read, serve one request."""
    before = clocksource()
    available = (CLOCKSOURCE / "available_clocksource").read_text().split()
    other = next((c for c in ("hpet", "acpi_pm") if c in available), None)
    if other is None:
        return _case(CLOCK_CASE, False, f"no clocksource without vDSO support in {available}")
    (CLOCKSOURCE / "current_clocksource").write_text(other)
    ep = Endpoint(f"prguard-{other}", PRGUARD, "/tmp/p2.sock", side(devices, "p"))
    try:
        ep.start(log_dir)
        reply = ep.request(pr_in("clock-read-keys", READ_KEYS, 8192, node="S"))
        ok = isinstance(reply, tuple) and reply[0] == GOOD
        detail = f"clocksource {other}: prguard: {describe(reply)}"
    except Exception as e:  # noqa: BLE001 - the verdict is the detail
        ok = False
        detail = f"clocksource {other}: prguard did not serve: {e}"
    finally:
        ep.stop()
        (CLOCKSOURCE / "current_clocksource").write_text(before)
    err = log_dir / f"{ep.label}.stderr"
    if not ok and err.exists():
        detail += f"; its stderr: {err.read_text()[-1000:]!r}"
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
        detail += "; kernel: " + " | ".join(
            line for line in dmesg.splitlines() if "type=1326" in line)[-1000:]
    return _case(CLOCK_CASE, ok, detail)


def run_dm_cases(devices: Devices, log_dir: Path,
                 endpoints: list[Endpoint]) -> list[dict[str, Any]]:
    """Maps over LU d (lab/dm_maps.py), through the running prguard (multipath off: its
    worker decides), another started with multipath on (its broker refuses on the path
    opener's word) and, as the control, the C helper. Last: it loads dm_multipath, which
    changes what `--multipath=auto` chooses."""
    try:
        dm_maps.load_modules()
        audit_log = guest_audit.AUDIT_DIR / "multipath.log"
        multipath = Endpoint("prguard-multipath", [*PRGUARD, "--multipath=on",
                                                   "--audit-log", str(audit_log)], M_SOCK, {})
        endpoints.append(multipath)
        multipath.start(log_dir)
        return dm_maps.run(P_SOCK, M_SOCK, C_SOCK, devices["dA"]["sd"],
                           log_dir / f"{multipath.label}.stderr", audit_log)
    except Exception:  # noqa: BLE001 - every case must say why it did not run
        detail = "device-mapper cases aborted: " + traceback.format_exc()[-3000:]
        return [_case(n, False, detail) for n in dm_maps.CASES]


def _guarded_all(names: list[str], run: Any) -> list[dict[str, Any]]:
    """The cases `run` returns, or each of `names` failed with the traceback."""
    try:
        found: list[dict[str, Any]] = run()
    except Exception:  # noqa: BLE001 - every case must say why it did not run
        detail = "aborted: " + traceback.format_exc()[-3000:]
        return [_case(name, False, detail) for name in names]
    done = {r["case"] for r in found}
    return found + [_case(n, False, "not reported") for n in names if n not in done]


def _guarded(name: str, run: Any) -> dict[str, Any]:
    return _guarded_all([name], run)[0]


def side(devices: Devices, prefix: str) -> Devices:
    return {node: devices[prefix + node] for node in ("A", "B", "S") if prefix + node in devices}


def main() -> int:
    results_dir = Path(os.environ.get("LAB_RESULTS", "."))
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    endpoints: list[Endpoint] = []
    results: list[dict[str, Any]] = []
    try:
        try:
            devices = lio.set_up("suite", results_dir / "lio.json",
                                 results_dir / "lio_setup.log")
            udev = quiesce_udev()
            timings["lio_setup_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            c_side = Endpoint("qemu-pr-helper", [C_HELPER], C_SOCK, side(devices, "c"))
            # Multipath off, like the C helper's build: maps go to SG_IO (or are refused)
            p_side = Endpoint("prguard", [*PRGUARD, "--multipath=off",
                                          *guest_audit.audit_args()], P_SOCK,
                              side(devices, "p"))
            for ep in (c_side, p_side):
                endpoints.append(ep)
                ep.start(results_dir)
            timings["helpers_start_s"] = time.monotonic() - t1
        except Exception:  # noqa: BLE001 - every case must say why it did not run
            detail = "set-up failed: " + traceback.format_exc()[-3000:]
            results = [_case(name, False, detail) for name in CASES]
            return 0
        results.append(_case(SETUP_CASE, True, f"clocksource {clocksource()}; udev: {udev}; "
                                               f"devices: {json.dumps(devices)}"))
        t2 = time.monotonic()
        results += run_steps(c_side, p_side)
        timings["steps_s"] = time.monotonic() - t2
        results.append(_guarded(guest_audit.WWN_CASE,
                                lambda: [guest_audit.check_wwns(side(devices, "p"))]))
        t3 = time.monotonic()
        fence = Endpoint("prguard-fence", [], P_SOCK, side(devices, "f"))
        try:
            results += run_fence(fence)
        except Exception:  # noqa: BLE001
            done = {r["case"] for r in results}
            detail = "fencing aborted: " + traceback.format_exc()[-3000:]
            results += [_case(n, False, detail) for n in FENCE_CASES if n not in done]
        finally:
            fence.stop()
        timings["fence_s"] = time.monotonic() - t3
        results += _guarded_all([guest_audit.STORY_CASE, guest_audit.CHAIN_CASE],
                                lambda: guest_audit.check_story(devices["fA"]["sd"], KA, KB))
        t5 = time.monotonic()
        try:  # prguard-client beside sg_persist, on the fenced LU as the story left it
            results += sg_persist_side_by_side.run(P_SOCK, side(devices, "f"))
        except Exception:  # noqa: BLE001
            done = {r["case"] for r in results}
            detail = "sg_persist comparison aborted: " + traceback.format_exc()[-3000:]
            results += [_case(n, False, detail)
                        for n in sg_persist_side_by_side.CASES if n not in done]
        timings["sg_persist_s"] = time.monotonic() - t5

        def start_policy(extra: list[str]) -> Any:
            ep = Endpoint("prguard-policy", [*PRGUARD, *extra], "/tmp/p3.sock",
                          side(devices, "f"))
            ep.start(results_dir)
            return ep.stop

        results += _guarded_all(guest_audit.POLICY_CASES, lambda: guest_audit.run_policy(
            "/tmp/p3.sock", side(devices, "f"), KB, start_policy))
        t4 = time.monotonic()
        results.append(run_clock_case(devices, results_dir))
        timings["clock_case_s"] = time.monotonic() - t4
        t6 = time.monotonic()
        results += run_dm_cases(devices, results_dir, endpoints)
        timings["dm_maps_s"] = time.monotonic() - t6
        t7 = time.monotonic()
        results += guest_multipath.main_in_suite(results_dir, timings)
        timings["multipath_s"] = time.monotonic() - t7
        return 0
    finally:
        for ep in endpoints:
            ep.stop()
        timings["guest_total_s"] = time.monotonic() - t0
        (results_dir / "results.json").write_text(json.dumps(results, indent=1))
        (results_dir / "timings.json").write_text(json.dumps(timings, indent=1))
        failed = [r["case"] for r in results if not r["ok"]]
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed: {failed}")
        print(json.dumps(timings))


if __name__ == "__main__":
    sys.exit(main())
