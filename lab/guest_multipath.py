"""The multipath cases of the device suite: run INSIDE the lab guest by
lab/guest_suite.py (tests/test_lab.py boots it), last, on lio_setup.sh's multipath layout
added to the running target: LU m behind mA and mB (one host's two
paths, RTPI 1 and 2) joined by the dm-multipath map mpatha, mC (a second node, RTPI 3)
and mO (RTPI 4, a nexus that only observes); LU r, the single-path reference, behind rA
(the first host) and rC (the second).

The same boot as the rest of the suite, after it: the suite's helpers are started before
dm_multipath is loaded (multipath auto stays off for them, as on a host without maps), and
the multipath LUs get a set-up of their own (added to the suite's, they made one set-up
overrun its time limit on two shared cores).

One prguard runs as the systemd unit runs it: `-u nobody -g nogroup`, multipath on (its
path opener keeps the group `disk`). What each path registered is read directly from the
LU (READ FULL STATUS by SG_IO on a path's sg node, as root): prguard's answers are not
their own witness. The cases:

- REGISTER through the map registers both nexuses; CLEAR through the map leaves none;
- the same sequence of every PR OUT service action (each PR OUT of the host twice, so
  that a map's round-robin would have taken both paths) through the map and on the
  single-path LU r: the same status, sense and data where the semantics are the same
  (READ KEYS and READ FULL STATUS list one registration per path, REPORT CAPABILITIES
  clears ATP_C: compared as such), and what the target must answer;
- the fenced host's WRITEs fail with RESERVATION CONFLICT through the map, whichever path
  dm takes, and through each path;
- a path offline (`echo offline > /sys/block/sdX/device/state`) during REGISTER, RESERVE,
  RELEASE: answered from the live path, the log says what the down path owes; back, the
  next command repairs it; a host preempted while its path was down gets no key back
  there, and a WRITE through that path then conflicts; multipath-tools' `mpathpersist`
  in the same situation, as the reference for "every path";
- maps whose paths are a partition, a loop device, or a linear map over half a LU are
  refused, and the LU is untouched;
- prguard stops cleanly (exit 0).

Output: the cases' verdicts ({"case", "ok", "detail"}), which the suite writes to
$LAB_RESULTS/results.json; lio-multipath.json and prguard-mpath-cases.stderr beside it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import lio
from lab.lio import Devices, dd_write, quiesce_udev
from lab.processes import (
    INSTALLED_PRGUARD,
    children,
    proc_status,
    stop_process,
    wait_for_path,
    wait_for_service,
)
from prguard.client.decode import DecodeError, decode_read_full_status, decode_read_keys
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.errors import QemuProtocolError
from prguard.worker import sgio

GOOD, CHECK, CONFLICT = 0x00, 0x02, 0x18
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
(REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_AND_IGNORE,
 REGISTER_AND_MOVE, REPLACE_LOST) = range(9)
ALL_TG_PT = 0x04
KA, KA2, KC, KM, KZ = (0xA1A1A1A1A1A1A1A1, 0xA2A2A2A2A2A2A2A2, 0xC1C1C1C1C1C1C1C1,
                       0x4D4D4D4D4D4D4D4D, 0x5A5A5A5A5A5A5A5A)
MAP = "mpatha"
SOCK_DIR = "/run/prguard-mp"
SOCK = f"{SOCK_DIR}/mp.sock"
TIMEOUT_S = 60.0
Reply = tuple[int, bytes, bytes]

SETUP_CASE = "mpath.setup"
EQUIVALENCE_STEPS: list[str] = []  # filled below, with the step table


def plist(key: int = 0, sakey: int = 0, flags: int = 0) -> bytes:
    return key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes(4) + bytes([flags]) \
        + bytes(3)


def sense_code(sense: bytes) -> tuple[int, int, int] | None:
    if not sense or sense[0] & 0x7F not in (0x70, 0x71):
        return None
    return sense[2] & 0x0F, sense[12], sense[13]


def describe(reply: Reply | str) -> str:
    if isinstance(reply, str):
        return f"no reply ({reply})"
    status, sense, data = reply
    code = sense_code(sense)
    text = f"status {status:#04x}"
    if status == CHECK and code is not None:
        text += " sense {:02x}/{:02x}/{:02x}".format(*code)
    return text + (f", {len(data)} bytes {data[:32].hex()}" if data else "")


# ------------------------------------------------------------------- the lab's state

@dataclass
class Lab:
    devices: Devices
    client: Client | None = None

    @property
    def map(self) -> str:
        return str(self.devices[MAP]["map"])

    def node(self, name: str, kind: str = "sd") -> str:
        return str(self.devices[name][kind])

    def kname(self, name: str) -> str:
        hctl = self.devices[name]["hctl"]
        return os.listdir(f"/sys/bus/scsi/devices/{hctl}/block")[0]

    def dev_t(self, name: str) -> str:
        return Path(f"/sys/block/{self.kname(name)}/dev").read_text().strip()

    def via_prguard(self, node: str, cdb: bytes, params: bytes = b"",
                    flags: int = os.O_RDWR) -> Reply | str:
        """One request through prguard on `node` (a path, an sd node or the map)."""
        try:
            fd = os.open(node, flags | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot open {node}: {exc}"
        try:
            if self.client is None:
                self.client = Client(SOCK, timeout=TIMEOUT_S)
            reply = self.client.request(cdb, fd, params)
            return reply.status, reply.sense, reply.data
        except (OSError, QemuProtocolError) as exc:
            if self.client is not None:
                self.client.close()
                self.client = None
            return f"{type(exc).__name__}: {exc}"
        finally:
            os.close(fd)

    def direct(self, name: str, cdb: bytes, params: bytes = b"") -> Reply:
        """SG_IO as root on a path's sg node: the LU's own answer, prguard not involved."""
        fd = os.open(self.node(name, "sg"), os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            out = sgio.issue(fd, cdb, params, 30_000)
        finally:
            os.close(fd)
        data = out.data[:len(out.data) - out.resid] if out.status == GOOD else b""
        return out.status, out.sense, data

    def registrations(self, via: str = "mO") -> list[tuple[int, int, bool]]:
        """(relative target port, key, holder) of every registered nexus, read by SG_IO
        on `via`'s sg node: by default mO, the nexus that only observes (a read takes the
        UNIT ATTENTIONs queued for its nexus)."""
        status, _, data = self.direct(via, pr_in_cdb(READ_FULL_STATUS, 8192))
        while status == CHECK:  # a UNIT ATTENTION of our own doing: read again
            status, _, data = self.direct(via, pr_in_cdb(READ_FULL_STATUS, 8192))
        assert status == GOOD, f"READ FULL STATUS on {via}: status {status:#x}"
        return sorted((r.relative_target_port, r.key, r.reservation_holder)
                      for r in decode_read_full_status(data).registrations)

    def reset(self, lu: str) -> None:
        """No registration and no reservation on LU m or r (CLEAR from a fresh key)."""
        via = {"m": "mC", "r": "rC"}[lu]
        for _ in range(3):
            self.direct(via, pr_out_cdb(REGISTER_AND_IGNORE, 24), plist(0, KZ))
            status, _, _ = self.direct(via, pr_out_cdb(CLEAR, 24), plist(KZ))
            if status == GOOD:
                break
        for name in self.devices:  # spend the unit attentions the CLEAR raised
            if name[0] == lu and "sg" in self.devices[name]:
                for _ in range(3):
                    if self.direct(name, pr_in_cdb(READ_KEYS, 8))[0] == GOOD:
                        break

    def state(self, name: str, value: str) -> None:
        # the kernel takes a state only with its newline
        Path(f"/sys/block/{self.kname(name)}/device/state").write_text(value + "\n")

    def reinstate(self, name: str) -> None:
        """dm has failed the path (a failed I/O, or mpathpersist): without multipathd
        nothing reinstates it but this."""
        subprocess.run(["dmsetup", "message", MAP, "0", f"reinstate_path {self.dev_t(name)}"],
                       capture_output=True, check=False)


def case(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"case": name, "ok": ok, "detail": detail, "c": None, "prguard": None}


# --------------------------------------------------------- the single-path comparison

@dataclass(frozen=True)
class Step:
    """One request of the host (A: the map, or rA) or the other node (C: mC, or rC),
    compared between LU m and LU r as `compare` says, with what the target must answer."""

    name: str
    who: str
    cdb: bytes
    params: bytes = b""
    want: int = GOOD
    want_sense: tuple[int, int, int] | None = None
    #: same: status, sense and data identical; keys: READ KEYS' distinct keys (one per
    #: path through a map); status: data not compared (READ FULL STATUS lists a nexus per
    #: path); caps: REPORT CAPABILITIES with ATP_C masked; reservation: READ RESERVATION
    #: without its generation; deviation: the map's answer is prguard's own (the row of
    #: docs/COMPATIBILITY.md), LU r's only recorded
    compare: str = "same"


def out(name: str, who: str, sa: int, params: bytes, prtype: int = 0, want: int = GOOD,
        sense: tuple[int, int, int] | None = None, twice: bool = False,
        want_again: int | None = None,
        sense_again: tuple[int, int, int] | None = None) -> list[Step]:
    first = Step(name, who, pr_out_cdb(sa, len(params), prtype), params, want, sense)
    if not twice:
        return [first]
    again = Step(f"{name}-again", who, first.cdb, params,
                 want if want_again is None else want_again,
                 sense if want_again is None else sense_again)
    return [first, again]


def pr_in(name: str, who: str, sa: int, compare: str, want: int = GOOD,
          sense: tuple[int, int, int] | None = None) -> Step:
    return Step(name, who, pr_in_cdb(sa, 8192), b"", want, sense, compare)


UA_RELEASED, UA_PREEMPTED = (6, 0x2A, 0x04), (6, 0x2A, 0x05)
STEPS: list[Step] = [
    *out("register", "A", REGISTER, plist(0, KA), twice=True, want_again=CONFLICT),
    *out("register-other-node", "C", REGISTER, plist(0, KC)),
    pr_in("read-keys", "A", READ_KEYS, "keys"),
    *out("register-ignore", "A", REGISTER_AND_IGNORE, plist(0, KA2), twice=True),
    *out("reserve-type5", "A", RESERVE, plist(KA2), 5, twice=True),
    *out("reserve-other-node-conflicts", "C", RESERVE, plist(KC), 5, want=CONFLICT),
    pr_in("read-reservation", "A", READ_RESERVATION, "reservation"),
    pr_in("report-capabilities", "A", REPORT_CAPABILITIES, "caps"),
    pr_in("read-full-status", "A", READ_FULL_STATUS, "status"),
    *out("release-wrong-type", "A", RELEASE, plist(KA2), 1, want=CONFLICT, twice=True),
    *out("release", "A", RELEASE, plist(KA2), 5, twice=True),
    *out("other-node-sees-the-release", "C", RESERVE, plist(KC), 5, want=CHECK,
         sense=UA_RELEASED),
    *out("other-node-reserves", "C", RESERVE, plist(KC), 5),
    *out("preempt", "A", PREEMPT, plist(KA2, KC), 5, twice=True, want_again=CONFLICT),
    *out("preempted-node-sees-it", "C", REGISTER, plist(0, KC), want=CHECK,
         sense=UA_PREEMPTED),
    *out("preempted-node-registers", "C", REGISTER, plist(0, KC)),
    # a PREEMPT AND ABORT that aborts something deadlocks LIO 6.1 (LAB.md): no match only
    *out("preempt-and-abort-no-match", "A", PREEMPT_AND_ABORT, plist(KA2, KZ), 5,
         want=CONFLICT),
    *out("preempt-own-key", "A", PREEMPT, plist(KA2, KA2), 5, twice=True),
    pr_in("read-keys-after-own-preempt", "A", READ_KEYS, "keys"),
    Step("register-all-tg-pt", "A", pr_out_cdb(REGISTER_AND_IGNORE, 24),
         plist(0, KA2, ALL_TG_PT), CHECK, (5, 0x26, 0x00), "deviation"),
    Step("register-and-move", "A", pr_out_cdb(REGISTER_AND_MOVE, 24), plist(KA2, KC),
         CHECK, (5, 0x24, 0x00), "deviation"),
    *out("replace-lost-reservation", "A", REPLACE_LOST, plist(KA2), 5, want=CHECK,
         sense=(5, 0x24, 0x00)),
    # LIO's answer to an unregistered nexus's CLEAR: 02/08/00
    *out("clear", "A", CLEAR, plist(KA2), twice=True, want_again=CHECK,
         sense_again=(2, 0x08, 0x00)),
    pr_in("other-node-after-clear", "C", READ_KEYS, "keys", want=CHECK,
          sense=(6, 0x2A, 0x03)),
    pr_in("nothing-left", "C", READ_KEYS, "keys"),
]
EQUIVALENCE_STEPS += [f"mpath.same-as-one-path.{s.name}" for s in STEPS]


def field_pointer_ok(reply: Reply, in_cdb: bool, byte: int, bit: int | None) -> bool:
    sense = reply[1]
    want = 0x80 | (0x40 if in_cdb else 0) | (0x08 | bit if bit is not None else 0)
    return sense[15] == want and int.from_bytes(sense[16:18], "big") == byte


def judge(step: Step, m: Reply | str, r: Reply | str) -> tuple[bool, str]:
    head = f"map: {describe(m)}; single path: {describe(r)}"
    if isinstance(m, str) or isinstance(r, str):
        return False, "no reply. " + head
    want = (step.want, step.want_sense)
    got_m = (m[0], sense_code(m[1]) if step.want_sense is not None else None)
    if step.compare == "deviation":
        pointer = (field_pointer_ok(m, False, 20, 2) if step.want_sense == (5, 0x26, 0)
                   else field_pointer_ok(m, True, 1, None))
        ok = got_m == want and pointer
        return ok, (f"prguard's own answer on a map (docs/COMPATIBILITY.md), field pointer "
                    f"{'as documented' if pointer else 'WRONG'}. " + head)
    got_r = (r[0], sense_code(r[1]) if step.want_sense is not None else None)
    problems = []
    if got_m != want or got_r != want:
        problems.append(f"the target must answer {want}")
    if m[0] != r[0] or m[1] != r[1]:
        problems.append("status or sense differ")
    data_m, data_r = m[2], r[2]
    if problems or m[0] != GOOD:
        pass  # data only with GOOD, and only worth comparing if the rest agrees
    elif step.compare == "keys":
        try:
            keys_m = sorted(set(decode_read_keys(data_m).keys))
            keys_r = sorted(set(decode_read_keys(data_r).keys))
        except DecodeError as exc:
            keys_m = keys_r = []
            problems.append(f"READ KEYS data: {exc}")
        if keys_m != keys_r:
            problems.append(f"keys differ: {[hex(k) for k in keys_m]} vs "
                            f"{[hex(k) for k in keys_r]}")
    elif step.compare == "reservation" and data_m[4:] != data_r[4:]:
        problems.append("reservation differs")
    elif step.compare == "caps" and (data_r[:2] + bytes([data_r[2] & ~0x04 & 0xFF])
                                     + data_r[3:]) != data_m:
        problems.append("capabilities differ beyond ATP_C")
    elif step.compare == "same" and data_m != data_r:
        problems.append("data differ")
    note = {"keys": " (distinct keys compared: a map lists one registration per path)",
            "reservation": " (generation not compared)",
            "caps": " (ATP_C cleared on the map: ALL_TG_PT is not served there)",
            "status": " (data not compared: a nexus per path)"}.get(step.compare, "")
    return not problems, ("; ".join(problems) + ". " if problems else "identical"
                          + note + ". ") + head


def run_equivalence(lab: Lab, log: Path) -> list[dict[str, Any]]:
    lab.reset("m")
    lab.reset("r")
    results = []
    for step in STEPS:
        m_node = lab.map if step.who == "A" else lab.node("mC")
        r_node = lab.node("rA" if step.who == "A" else "rC")
        m = lab.via_prguard(m_node, step.cdb, step.params)
        r = lab.via_prguard(r_node, step.cdb, step.params)
        ok, detail = judge(step, m, r)
        if ok and step.who == "A" and step.cdb[0] == 0x5F:
            # one LU whatever path dm picks: both of the host's nexuses agree
            regs = lab.registrations()
            mine = {port: (key, holder) for port, key, holder in regs if port in (1, 2)}
            if len(mine) == 1 or (len(mine) == 2 and mine[1][0] != mine[2][0]):
                ok = False
                detail += f"; the host's two nexuses disagree: {regs}"
        results.append(case(f"mpath.same-as-one-path.{step.name}", ok, detail))
    return results


# -------------------------------------------------------------------------- the cases

def check_registrations(lab: Lab, name: str, want: list[tuple[int, int, bool]],
                        via: tuple[str, ...] = ("mA", "mB")) -> dict[str, Any]:
    seen = {v: lab.registrations(v) for v in via}
    ok = all(regs == want for regs in seen.values())
    return case(name, ok, f"READ FULL STATUS (port, key, holder) on {', '.join(via)}: {seen}; "
                          f"want {want}")


def run_register_clear(lab: Lab, log: Path) -> list[dict[str, Any]]:
    lab.reset("m")
    reg = lab.via_prguard(lab.map, pr_out_cdb(REGISTER, 24), plist(0, KA))
    one = check_registrations(lab, "mpath.register-reaches-every-path",
                              [(1, KA, False), (2, KA, False)])
    one["detail"] = f"REGISTER through the map: {describe(reg)}; " + one["detail"]
    one["ok"] = one["ok"] and not isinstance(reg, str) and reg[0] == GOOD
    clear = lab.via_prguard(lab.map, pr_out_cdb(CLEAR, 24), plist(KA))
    two = check_registrations(lab, "mpath.clear-leaves-none", [])
    two["detail"] = f"CLEAR through the map: {describe(clear)}; " + two["detail"]
    two["ok"] = two["ok"] and not isinstance(clear, str) and clear[0] == GOOD
    return [one, two]


def write_refused(node: str) -> tuple[bool, str]:
    r = dd_write(node)
    return (r.returncode != 0 and "Invalid exchange" in r.stderr,
            f"{node}: rc {r.returncode} {r.stderr.strip()!r}")


def run_fenced_writes(lab: Lab, log: Path) -> list[dict[str, Any]]:
    """fence_scsi on the map: the host registers and reserves type 5 through the map, the
    other node preempts it; the host's WRITEs then fail whichever path they take."""
    lab.reset("m")
    steps = [lab.via_prguard(lab.map, pr_out_cdb(REGISTER, 24), plist(0, KA)),
             lab.via_prguard(lab.node("mC"), pr_out_cdb(REGISTER, 24), plist(0, KC)),
             lab.via_prguard(lab.map, pr_out_cdb(RESERVE, 24, 5), plist(KA))]
    before = [write_refused(lab.map) for _ in range(2)]
    steps.append(lab.via_prguard(lab.node("mC"), pr_out_cdb(PREEMPT, 24, 5), plist(KC, KA)))
    after = [write_refused(lab.map) for _ in range(4)]
    paths = [write_refused(lab.node(p)) for p in ("mA", "mB")]
    survivor = write_refused(lab.node("mC"))
    ok = (all(not isinstance(s, str) and s[0] == GOOD for s in steps)
          and not any(refused for refused, _ in before)
          and all(refused for refused, _ in after + paths) and not survivor[0])
    return [case("mpath.fenced-writes-fail-on-every-path", ok,
                 f"PR through prguard: {[describe(s) for s in steps]}; writes through the "
                 f"map before: {[d for _, d in before]}; after the preemption, through the "
                 f"map (round robin): {[d for _, d in after]}; through each path: "
                 f"{[d for _, d in paths]}; the other node's: {survivor[1]}")]


@contextlib.contextmanager
def offline(lab: Lab, name: str) -> Iterator[None]:
    lab.state(name, "offline")
    try:
        yield
    finally:
        lab.state(name, "running")
        lab.reinstate(name)


def log_since(log: Path, mark: int) -> str:
    return log.read_text(errors="replace")[mark:]


def run_path_down(lab: Lab, log: Path) -> list[dict[str, Any]]:
    results = []
    lab.reset("m")
    lab.via_prguard(lab.map, pr_out_cdb(REGISTER, 24), plist(0, KA))
    mark = len(log.read_text(errors="replace"))
    with offline(lab, "mB"):
        reg = lab.via_prguard(lab.map, pr_out_cdb(REGISTER_AND_IGNORE, 24), plist(0, KA2))
        down_regs = lab.registrations()
        res = lab.via_prguard(lab.map, pr_out_cdb(RESERVE, 24, 5), plist(KA2))
        held = lab.registrations()
        rel = lab.via_prguard(lab.map, pr_out_cdb(RELEASE, 24, 5), plist(KA2))
        released = lab.registrations()
        said = log_since(log, mark)
    mb = lab.kname("mB")
    ok = (not isinstance(reg, str) and reg[0] == GOOD and down_regs == [(1, KA2, False),
                                                                           (2, KA, False)]
          and f"{mb} (" in said and "owes key 0xa2a2a2a2a2a2a2a2" in said)
    results.append(case("mpath.path-down.register-answers-from-the-live-path", ok,
                        f"REGISTER AND IGNORE ->KA2 with {mb} offline: {describe(reg)}; "
                        f"registrations (port, key, holder): {down_regs}; prguard said: "
                        f"{said.strip()[-600:]!r}"))
    ok = (not isinstance(res, str) and res[0] == GOOD and (1, KA2, True) in held
          and not isinstance(rel, str) and rel[0] == GOOD
          and all(not holder for _, _, holder in released))
    results.append(case("mpath.path-down.reserve-and-release", ok,
                        f"RESERVE type 5: {describe(res)}, then {held}; RELEASE: "
                        f"{describe(rel)}, then {released}"))
    mark = len(log.read_text(errors="replace"))
    keys = lab.via_prguard(lab.map, pr_in_cdb(READ_KEYS, 8192))
    back = check_registrations(lab, "mpath.path-back.registered-on-the-next-command",
                               [(1, KA2, False), (2, KA2, False)], via=("mO",))
    said = log_since(log, mark)
    back["ok"] = back["ok"] and f"{mb} (" in said and "back; registered with" in said
    back["detail"] = (f"{mb} running again; READ KEYS through the map: {describe(keys)}; "
                      f"prguard said {said.strip()[-400:]!r}; " + back["detail"])
    results.append(back)
    return results


def run_fenced_while_down(lab: Lab, log: Path) -> list[dict[str, Any]]:
    """The stale key: KA on both paths; mB down; KA -> KA2 through mA; the other node
    fences KA2. mB comes back still holding KA: prguard must take it away."""
    lab.reset("m")
    lab.via_prguard(lab.map, pr_out_cdb(REGISTER, 24), plist(0, KA))
    lab.via_prguard(lab.node("mC"), pr_out_cdb(REGISTER, 24), plist(0, KC))
    with offline(lab, "mB"):
        lab.via_prguard(lab.map, pr_out_cdb(REGISTER_AND_IGNORE, 24), plist(0, KA2))
        lab.via_prguard(lab.node("mC"), pr_out_cdb(RESERVE, 24, 5), plist(KC))
        fence = lab.via_prguard(lab.node("mC"), pr_out_cdb(PREEMPT, 24, 5), plist(KC, KA2))
        stale = lab.registrations()
    mark = len(log.read_text(errors="replace"))
    # The host's first command meets the preemption's UNIT ATTENTION, as on one path
    # (the repair waits: its question drew it); the guest's next command repairs mB.
    first = lab.via_prguard(lab.map, pr_in_cdb(READ_KEYS, 8192))
    keys = lab.via_prguard(lab.map, pr_in_cdb(READ_KEYS, 8192))
    after = lab.registrations()
    write = write_refused(lab.node("mB"))
    said = log_since(log, mark)
    ok = (not isinstance(first, str) and (first[0], sense_code(first[1])) == (CHECK,
                                                                            UA_PREEMPTED)
          and not isinstance(keys, str) and keys[0] == GOOD
          and (2, KA, False) in stale and [r for r in after if r[0] in (1, 2)] == []
          and write[0] and "preempted meanwhile" in said)
    return [case("mpath.path-back.fenced-host-gets-no-key-back", ok,
                 f"preemption while mB was down: {describe(fence)}; registrations then "
                 f"(mB kept its old key): {stale}; READ KEYS through the map once mB is "
                 f"back: {describe(first)}, again: {describe(keys)}; registrations after: "
                 f"{after}; a WRITE through mB: {write[1]}; prguard said "
                 f"{said.strip()[-400:]!r}")]


def run_mpathpersist(lab: Lab, log: Path) -> list[dict[str, Any]]:
    """multipath-tools' reference in the same situation: a register while a path is
    down reaches the live path; when the path is back it stays without the key."""
    Path("/etc/multipath").mkdir(exist_ok=True)
    Path("/etc/multipath.conf").write_text(
        "defaults {\n    user_friendly_names no\n    find_multipaths no\n}\n")
    lab.reset("m")
    with offline(lab, "mB"):
        t0 = time.monotonic()
        run = subprocess.run(["mpathpersist", "--out", "--register-ignore",
                              f"--param-sark={KM:#x}", lab.map], capture_output=True,
                             text=True, timeout=120, check=False)
        took = time.monotonic() - t0
        during = lab.registrations()
    after = lab.registrations()
    ok = run.returncode == 0 and during == [(1, KM, False)] and after == [(1, KM, False)]
    return [case("mpath.mpathpersist-reference", ok,
                 f"mpathpersist --register-ignore with mB offline: exit {run.returncode} "
                 f"in {took:.1f} s; registrations then {during}; once mB is back "
                 f"{after} (multipath-tools re-registers a returning path only through "
                 f"multipathd and reservation_key; prguard's repair: "
                 f"mpath.path-back.registered-on-the-next-command)")]


def _dm_create(name: str, table: str, uuid: str | None) -> str:
    cmd = ["dmsetup", "create", name, "--noudevsync", "--table", table]
    if uuid:
        cmd[3:3] = ["--uuid", uuid]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode:
        raise RuntimeError(f"dmsetup create {name}: {run.stderr.strip()}")
    subprocess.run(["dmsetup", "mknodes", name], capture_output=True, check=False)
    return f"/dev/mapper/{name}"


def run_refused_maps(lab: Lab, log: Path) -> list[dict[str, Any]]:
    """Maps prguard does not serve, over LU r: a bio-based multipath map (uuid mpath-)
    over a partition, one over a loop device, a linear map over half the LU."""
    lab.reset("r")
    sd = lab.kname("rA")
    node = lab.node("rA")
    made: list[str] = []
    loop = ""
    results = []
    try:
        subprocess.run(["sfdisk", "-q", "--no-reread", node], input="2048,8192\n",
                       capture_output=True, text=True, check=True)
        subprocess.run(["blockdev", "--rereadpt", node], capture_output=True, check=False)
        part = Path(f"/sys/block/{sd}/{sd}1/dev")
        for _ in range(50):
            if part.exists():
                break
            time.sleep(0.1)
        subprocess.run(["modprobe", "loop"], capture_output=True, check=False)
        image = Path("/run/lio/mp-loop.img")
        image.write_bytes(bytes(1 << 20))
        made_loop = subprocess.run(["losetup", "-f", "--show", str(image)],
                                   capture_output=True, text=True, check=False)
        if made_loop.returncode:
            raise RuntimeError(f"losetup: {made_loop.stderr.strip()}")
        loop = made_loop.stdout.strip()
        loop_dev = Path(f"/sys/block/{os.path.basename(loop)}/dev").read_text().strip()
        size = int(Path(f"/sys/block/{sd}/size").read_text())
        maps = {
            "partition": _dm_create("mp_part", f"0 8192 multipath 2 queue_mode bio 0 1 1 "
                                    f"round-robin 0 1 1 {part.read_text().strip()} 1",
                                    "mpath-3prguardpart"),
            "loop": _dm_create("mp_loop", f"0 2048 multipath 2 queue_mode bio 0 1 1 "
                               f"round-robin 0 1 1 {loop_dev} 1", "mpath-3prguardloop"),
            # over rC's disk (the same LU): rA's is held by mp_part through its partition
            "linear-half": _dm_create("mp_half", f"0 {size // 2} linear {lab.dev_t('rC')} "
                                      "2048", "LVM-prguardhalf"),
        }
        made += ["mp_part", "mp_loop", "mp_half"]
        for what, dm_node in maps.items():
            reg = lab.via_prguard(dm_node, pr_out_cdb(REGISTER, 24), plist(0, KZ))
            keys = lab.via_prguard(dm_node, pr_in_cdb(READ_KEYS, 8192))
            on_lu = lab.registrations("rC")
            want = (CHECK, (0x0B, 0x00, 0x06))
            ok = all(not isinstance(r, str) and (r[0], sense_code(r[1])) == want
                     for r in (reg, keys)) and on_lu == []
            results.append(case(f"mpath.refused.{what}", ok,
                                f"REGISTER: {describe(reg)}; READ KEYS: {describe(keys)}; "
                                f"registrations on the LU afterwards: {on_lu}"))
    finally:
        for name in reversed(made):
            # --noudevsync: udev is stopped, and dmsetup would wait for it forever
            subprocess.run(["dmsetup", "remove", "--noudevsync", name], capture_output=True,
                           check=False, timeout=60)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False,
                           timeout=60)
        subprocess.run(["wipefs", "-a", "-q", node], capture_output=True, check=False,
                       timeout=60)
        subprocess.run(["blockdev", "--rereadpt", node], capture_output=True, check=False,
                       timeout=60)
    return results


REFUSED = ["mpath.refused.partition", "mpath.refused.loop", "mpath.refused.linear-half"]
Phase = Callable[[Lab, Path], list[dict[str, Any]]]
PHASES: list[tuple[list[str], Phase]] = [
    (["mpath.register-reaches-every-path", "mpath.clear-leaves-none"], run_register_clear),
    (EQUIVALENCE_STEPS, run_equivalence),
    (["mpath.fenced-writes-fail-on-every-path"], run_fenced_writes),
    (["mpath.path-down.register-answers-from-the-live-path",
      "mpath.path-down.reserve-and-release",
      "mpath.path-back.registered-on-the-next-command"], run_path_down),
    (["mpath.path-back.fenced-host-gets-no-key-back"], run_fenced_while_down),
    (["mpath.mpathpersist-reference"], run_mpathpersist),
    (REFUSED, run_refused_maps),
]
STOP_CASE = "mpath.clean-stop"
CASES: list[str] = [SETUP_CASE, *(name for names, _ in PHASES for name in names), STOP_CASE]


def start(log: Path) -> subprocess.Popen[bytes]:
    os.makedirs(SOCK_DIR, exist_ok=True)
    os.chown(SOCK_DIR, 65534, 65534)  # the -u user removes its socket at exit
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCK)
    with open(log, "wb") as err:
        proc = subprocess.Popen([*INSTALLED_PRGUARD, "-k", SOCK, "-u", "nobody", "-g",
                                 "nogroup", "--multipath=on", "-v"], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)
    wait_for_path(SOCK, proc, timeout=120)
    wait_for_service(SOCK, timeout=60)
    return proc


def setup_case(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    kids = children(proc.pid)
    states = {pid: proc_status(pid) for pid in [proc.pid, *kids]}
    disk = str(grp.getgrnam("disk").gr_gid)
    opener = [pid for pid in kids if states[pid]["Groups"].split() == [disk]]
    ok = (len(kids) == 2 and len(opener) == 1
          and int(states[opener[0]]["CapEff"], 16) == 0
          and all(s["Uid"].split()[0] == "65534" for s in states.values()))
    detail = "; ".join(f"pid {pid}: uid {s['Uid'].split()[0]} groups [{s['Groups'].strip()}] "
                       f"CapEff {s['CapEff']}" for pid, s in states.items())
    return case(SETUP_CASE, ok, f"prguard -u nobody -g nogroup --multipath=on: {detail}")


def run(devices: Devices, results_dir: Path) -> list[dict[str, Any]]:
    log = results_dir / "prguard-mpath-cases.stderr"
    lab = Lab(devices)
    try:
        proc = start(log)
    except Exception:  # noqa: BLE001 - every case must say why it did not run
        detail = "prguard did not start: " + traceback.format_exc()[-2000:]
        if log.exists():
            detail += " stderr: " + log.read_text(errors="replace")[-1000:]
        return [case(name, False, detail) for name in CASES]
    results = [setup_case(proc)]
    try:
        for names, phase in PHASES:
            try:
                results += phase(lab, log)
            except Exception:  # noqa: BLE001 - the verdict is the detail
                done = {r["case"] for r in results}
                detail = "aborted: " + traceback.format_exc()[-2500:]
                results += [case(n, False, detail) for n in names if n not in done]
    finally:
        if lab.client is not None:
            lab.client.close()
        code = stop_process(proc)
        text = log.read_text(errors="replace")
        bad = [line for line in text.splitlines()
               if "SIGSYS" in line or "internal error" in line or "Traceback" in line]
        results.append(case(STOP_CASE, code == 0 and not bad,
                            f"exit status {code}; lines of concern: {bad[:5]}"))
    return results


def main_in_suite(results_dir: Path, timings: dict[str, float]) -> list[dict[str, Any]]:
    """The multipath layout added to the running target, then every case; the verdicts."""
    t0 = time.monotonic()
    try:
        devices = lio.set_up("multipath", results_dir / "lio-multipath.json",
                             results_dir / "lio_setup-multipath.log")
        udev = quiesce_udev()
    except Exception:  # noqa: BLE001 - every case must say why it did not run
        detail = "multipath set-up failed: " + traceback.format_exc()[-3000:]
        return [case(name, False, detail) for name in CASES]
    finally:
        timings["multipath_lio_setup_s"] = time.monotonic() - t0
    disk_nodes_as_udev_makes_them(Lab(devices))
    results = run(devices, results_dir)
    results[0]["detail"] += f"; udev: {udev}"
    return results


def disk_nodes_as_udev_makes_them(lab: Lab) -> None:
    """root:disk 0660, as udev leaves a disk node on any host (and the path opener's group
    is meant to open): the suite stopped udev before these LUs appeared, and devtmpfs
    alone makes them root:root 0600."""
    disk = grp.getgrnam("disk").gr_gid
    for name, entry in lab.devices.items():
        if "hctl" in entry:
            node = f"/dev/{lab.kname(name)}"
            os.chown(node, 0, disk)
            os.chmod(node, 0o660)
