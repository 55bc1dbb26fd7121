"""Device conformance suite: runs INSIDE the lab guest (tests/test_lab.py boots it).

Two identical LIO set-ups (lio_setup.sh): side "p" is only ever reached through prguard,
side "c" only through /usr/bin/qemu-pr-helper. Each side has one LU behind two I_T
nexuses (A, B: two cluster nodes, RTPI 1 and 2, the same initiator names on both sides)
and a LU behind one nexus (S). Every step of STEPS is one PERSISTENT RESERVE IN/OUT
request sent over the QEMU wire protocol with a fresh fd of the step's device, first to
the C helper on side c, then to prguard on side p, and the two replies (status, 96 sense
bytes, data) are compared. Since both sides see the same commands in the same order,
their state (keys, generation, reservation, pending unit attentions) stays identical, and
any difference in a reply is a difference between the helpers.

Steps marked with a deviation are the ones docs/COMPATIBILITY.md lists: they are compared
the way the deviation says, and the detail says what differed.

After the steps, the fencing story (Pacemaker fence_scsi) runs through prguard alone on a
third LU (f): real WRITEs through the preempted node's block device must fail with
RESERVATION CONFLICT, the survivor's must succeed. Last, CLOCK_CASE starts another
prguard with a clocksource the vDSO cannot read (hpet): every clock_gettime is then a
real system call, which the seccomp policies must allow.

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
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lab.processes import stop_process, wait_for_path, wait_for_service
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.errors import QemuProtocolError

REPO = Path(__file__).resolve().parent.parent.parent
LIO_SETUP = Path(__file__).resolve().parent / "lio_setup.sh"
C_HELPER = "/usr/bin/qemu-pr-helper"
# the console script next to the interpreter running this (the venv's), as `make` installs it
_SCRIPT = Path(sys.executable).parent / "prguard"
PRGUARD: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prguard"]
P_SOCK = "/tmp/p.sock"
C_SOCK = "/tmp/c.sock"
REQUEST_TIMEOUT_S = 40.0

GOOD, CHECK, CONFLICT = 0x00, 0x02, 0x18

# PR IN / PR OUT service actions
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
(REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_AND_IGNORE,
 REGISTER_AND_MOVE, REPLACE_LOST) = range(9)
# parameter list byte 20
APTPL, ALL_TG_PT, SPEC_I_PT = 0x01, 0x04, 0x08

# reservation keys
KA = 0xA1A1A1A1A1A1A1A1
KA2 = 0xA2A2A2A2A2A2A2A2
KB = 0xB2B2B2B2B2B2B2B2
KS = 0x5353535353535353
KX = 0xDEADBEEF00000001  # never registered

# initiator port names (lio_setup.sh): SAS addresses in the TransportIDs
INI_A = 0x50014050000000B1
INI_B = 0x50014050000000C1
INI_S = 0x50014050000000A1
INI_NONE = 0x5001405000000099  # no such initiator
RTPI_A, RTPI_B = 1, 2

Node = Literal["A", "B", "S"]
Dev = Literal["sd", "sg"]
Compare = Literal["same", "sense18", "own_invalid_field"]
Reply = tuple[int, bytes, bytes]


def sas_tid(address: int) -> bytes:
    """SPC-4 SAS TransportID, format 0: protocol identifier 6, SAS address in bytes 4-11."""
    return bytes([0x06, 0, 0, 0]) + address.to_bytes(8, "big") + bytes(12)


def plist(key: int = 0, sakey: int = 0, flags: int = 0, tids: bytes | None = None) -> bytes:
    """Basic PR OUT parameter list (24 bytes), plus a TransportID list when given."""
    base = key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes(4) + bytes([flags, 0, 0, 0])
    if tids is None:
        return base
    return base + len(tids).to_bytes(4, "big") + tids


def move_list(key: int, sakey: int, rtpi: int, tid: bytes, unreg: bool = False,
              aptpl: bool = False) -> bytes:
    """REGISTER AND MOVE parameter list (SPC-4 6.16.4)."""
    flags = (0x02 if unreg else 0) | (0x01 if aptpl else 0)
    return (key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes([0, flags])
            + rtpi.to_bytes(2, "big") + len(tid).to_bytes(4, "big") + tid)


@dataclass(frozen=True)
class Want:
    """What the target must answer on both sides (a sanity check of the step design)."""

    status: int
    sense: tuple[int, int, int] | None = None  #: key, ASC, ASCQ

    def describe(self) -> str:
        text = {GOOD: "GOOD", CHECK: "CHECK CONDITION", CONFLICT: "RESERVATION CONFLICT"}
        name = text.get(self.status, f"{self.status:#04x}")
        return name + (" {:02x}/{:02x}/{:02x}".format(*self.sense) if self.sense else "")


W_GOOD = Want(GOOD)
W_CONFLICT = Want(CONFLICT)


def w_check(key: int, asc: int, ascq: int) -> Want:
    return Want(CHECK, (key, asc, ascq))


@dataclass(frozen=True)
class Step:
    name: str
    cdb: bytes
    params: bytes = b""
    node: Node = "A"
    dev: Dev = "sd"
    read_only: bool = False
    compare: Compare = "same"
    want: Want | None = None
    why: str = ""


def pr_in(name: str, action: int, alloc: int, node: Node = "A", dev: Dev = "sd",
          want: Want | None = None, read_only: bool = False, compare: Compare = "same",
          why: str = "") -> Step:
    return Step(name, pr_in_cdb(action, alloc), b"", node, dev, read_only, compare, want, why)


def pr_out(name: str, action: int, params: bytes, prtype: int = 0, node: Node = "A",
           dev: Dev = "sd", want: Want | None = None, scope: int = 0,
           read_only: bool = False, compare: Compare = "same", why: str = "") -> Step:
    cdb = pr_out_cdb(action, len(params), (scope << 4) | prtype)
    return Step(name, cdb, params, node, dev, read_only, compare, want, why)


def set_cdb_bits(step: Step, index: int, bits: int) -> Step:
    cdb = bytearray(step.cdb)
    cdb[index] |= bits
    return dataclasses.replace(step, cdb=bytes(cdb))


LIO_COMM_FAILURE = w_check(2, 0x08, 0x00)
LIO_UNREG_WHY = ("LIO 6.1 answers LOGICAL UNIT COMMUNICATION FAILURE to an unregistered nexus "
                 "where SPC-4 says RESERVATION CONFLICT")
SENSE_18_WHY = ("COMPATIBILITY #2: the C helper's 05/20/00 reply carries uninitialised stack "
                "bytes in sense bytes 18-95; only bytes 0-17 are compared, prguard's 18-95 "
                "must be zero")
OWN_WHY = ("COMPATIBILITY #11: prguard answers an undefined service action (or a PR OUT "
           "parameter list length with bits in CDB bytes 5-6) itself with CHECK CONDITION "
           "05/24/00 without touching the device; the C helper passes it to LIO")


def _steps() -> Iterator[Step]:
    invalid_param = w_check(5, 0x26, 0)
    # -- a fresh LU: every PR IN service action with allocation lengths 0, 8, small, 8192
    names = {READ_KEYS: "read-keys", READ_RESERVATION: "read-reservation",
             REPORT_CAPABILITIES: "report-capabilities", READ_FULL_STATUS: "read-full-status"}
    for action, small in ((READ_KEYS, 24), (READ_RESERVATION, 24), (REPORT_CAPABILITIES, 6),
                          (READ_FULL_STATUS, 40)):
        lengths: tuple[tuple[int, Dev], ...] = ((0, "sd"), (8, "sg"), (small, "sd"), (8192, "sg"))
        for alloc, dev in lengths:
            want = w_check(5, 0x24, 0) if alloc == 0 else W_GOOD
            yield pr_in(f"fresh.{names[action]}-alloc{alloc}-{dev}", action, alloc, dev=dev,
                        want=want, why="LIO 6.1 refuses allocation length 0 with 05/24/00"
                        if alloc == 0 else "")
    yield pr_in("fresh.read-keys-ro-sd", READ_KEYS, 8192, read_only=True, want=W_GOOD)
    yield pr_in("fresh.read-keys-ro-sg", READ_KEYS, 8192, dev="sg", read_only=True, want=W_GOOD)
    yield set_cdb_bits(pr_in("fresh.read-keys-sa-high-bits", READ_KEYS, 8192, want=W_GOOD,
                             why="CDB byte 1 bits 5-7 are not part of the service action"),
                       1, 0xE0)

    # -- unregistered nexus, malformed lists, read-only fds
    yield pr_out("unreg.reserve", RESERVE, plist(KA), 1, want=LIO_COMM_FAILURE,
                 why=LIO_UNREG_WHY)
    yield pr_out("unreg.release", RELEASE, plist(KA), 1, want=LIO_COMM_FAILURE,
                 why=LIO_UNREG_WHY)
    yield pr_out("unreg.clear", CLEAR, plist(KA), dev="sg", want=LIO_COMM_FAILURE,
                 why=LIO_UNREG_WHY)
    yield pr_out("unreg.preempt", PREEMPT, plist(KA, KB), 1, want=W_CONFLICT)
    yield pr_out("unreg.register-nonzero-key", REGISTER, plist(KX, KA), want=W_CONFLICT)
    yield pr_out("unreg.register-list16", REGISTER, plist(0, KA)[:16], dev="sg",
                 want=w_check(5, 0x1A, 0))
    yield pr_out("unreg.register-list0", REGISTER, b"", want=w_check(5, 0x1A, 0))
    yield pr_out("unreg.register-list32", REGISTER, plist(0, KA) + bytes(8),
                 want=w_check(5, 0x1A, 0))
    yield pr_out("unreg.register-ro-sd", REGISTER, plist(0, KA), read_only=True,
                 compare="sense18", want=w_check(5, 0x20, 0), why=SENSE_18_WHY)
    yield pr_out("unreg.register-ro-sg", REGISTER, plist(0, KA), dev="sg", read_only=True,
                 compare="sense18", want=w_check(5, 0x20, 0), why=SENSE_18_WHY)
    yield pr_out("unreg.undefined-sa-ro", 0x1F, plist(0, KA), read_only=True,
                 compare="sense18", want=w_check(5, 0x20, 0),
                 why="the read-only check comes first in both helpers; " + SENSE_18_WHY)

    # -- both nodes register
    yield pr_out("reg.register-A", REGISTER, plist(0, KA), want=W_GOOD)
    yield pr_out("reg.register-B-sg", REGISTER, plist(0, KB), node="B", dev="sg", want=W_GOOD)
    yield pr_in("reg.read-keys-A", READ_KEYS, 8192, want=W_GOOD)
    yield pr_in("reg.read-keys-B-alloc16", READ_KEYS, 16, node="B", want=W_GOOD)
    yield pr_in("reg.read-keys-B-sg-alloc8", READ_KEYS, 8, node="B", dev="sg", want=W_GOOD)
    yield pr_in("reg.read-full-status-A", READ_FULL_STATUS, 8192, want=W_GOOD)
    yield pr_in("reg.read-full-status-B-alloc40", READ_FULL_STATUS, 40, node="B",
                want=W_GOOD)
    yield pr_out("reg.register-A-wrong-key", REGISTER, plist(KX, KA2), want=W_CONFLICT)
    yield pr_out("reg.register-B-sg-wrong-key", REGISTER, plist(KA, KA2), node="B", dev="sg",
                 want=W_CONFLICT)
    yield pr_out("reg.reregister-A-same-key", REGISTER, plist(KA, KA), want=W_GOOD)
    yield pr_out("reg.reserve-A-wrong-key", RESERVE, plist(KX), 1, want=W_CONFLICT)
    for bad in (0, 2, 4, 9, 0xF):
        yield pr_out(f"reg.reserve-bad-type{bad}", RESERVE, plist(KA), bad,
                     dev="sg" if bad % 2 else "sd", want=w_check(5, 0x24, 0))
    yield pr_out("reg.reserve-scope1", RESERVE, plist(KA), 1, scope=1,
                 want=w_check(5, 0x26, 0), why="LIO 6.1 answers INVALID FIELD IN PARAMETER LIST")

    # -- each reservation type held by A, and the other node's view of it
    for t in (1, 3, 5, 6, 7, 8):
        all_reg = t in (7, 8)
        other = 3 if t == 1 else 1
        p = f"type{t}."
        yield pr_out(p + "reserve-A", RESERVE, plist(KA), t, want=W_GOOD)
        yield pr_in(p + "read-reservation-B-sg", READ_RESERVATION, 8192, node="B", dev="sg",
                    want=W_GOOD)
        yield pr_in(p + "read-reservation-A-alloc8", READ_RESERVATION, 8, want=W_GOOD)
        yield pr_in(p + "read-full-status-B", READ_FULL_STATUS, 8192, node="B", want=W_GOOD)
        yield pr_out(p + "reserve-A-again", RESERVE, plist(KA), t, want=W_GOOD)
        yield pr_out(p + "reserve-B-same-type", RESERVE, plist(KB), t, node="B",
                     want=W_GOOD if all_reg else W_CONFLICT)
        yield pr_out(p + "reserve-B-other-type", RESERVE, plist(KB), other, node="B",
                     dev="sg", want=W_CONFLICT)
        yield pr_out(p + "reserve-A-other-type", RESERVE, plist(KA), other, want=W_CONFLICT)
        yield pr_out(p + "release-A-wrong-type", RELEASE, plist(KA), other,
                     want=W_CONFLICT, why="LIO 6.1 answers RESERVATION CONFLICT (SPC-2 style) "
                     "where SPC-4 says 05/26/04 INVALID RELEASE OF PERSISTENT RESERVATION")
        yield pr_out(p + "release-A-wrong-key", RELEASE, plist(KX), t, want=W_CONFLICT)
        yield pr_out(p + "release-B", RELEASE, plist(KB), t, node="B", want=W_GOOD,
                     why="B holds an all-registrants reservation: this releases it"
                     if all_reg else "B is no holder: GOOD, nothing released")
        released = w_check(6, 0x2A, 0x04)  # RESERVATIONS RELEASED, spent here
        yield pr_out(p + "release-A", RELEASE, plist(KA), t, dev="sg",
                     want=released if all_reg else W_GOOD,
                     why="B's release gave A the unit attention" if all_reg else "")
        yield pr_in(p + "read-reservation-A-after", READ_RESERVATION, 8192, want=W_GOOD)
        yield pr_in(p + "read-reservation-B-after", READ_RESERVATION, 8192, node="B",
                    want=released if t in (5, 6) else W_GOOD,
                    why="A's release of a registrants-only reservation gave B the unit "
                    "attention" if t in (5, 6) else "")
    yield pr_out("release.no-reservation", RELEASE, plist(KA), 1, want=W_GOOD)

    # -- ALL_TG_PT and APTPL on the single-nexus LU
    yield pr_out("flags.S-register-all-tg-pt", REGISTER, plist(0, KS, ALL_TG_PT), node="S",
                 want=W_GOOD)
    yield pr_in("flags.S-read-full-status-all-tg-pt", READ_FULL_STATUS, 8192, node="S",
                want=W_GOOD)
    yield pr_out("flags.S-unregister-without-all-tg-pt", REGISTER, plist(KS, 0), node="S",
                 want=w_check(5, 0x24, 0), why="LIO 6.1 wants ALL_TG_PT again to unregister")
    yield pr_out("flags.S-unregister-all-tg-pt", REGISTER, plist(KS, 0, ALL_TG_PT), node="S",
                 want=W_GOOD)
    yield pr_out("flags.S-register-aptpl", REGISTER, plist(0, KS, APTPL), node="S",
                 dev="sg", want=W_GOOD)
    yield pr_in("flags.S-report-capabilities-ptpl-a", REPORT_CAPABILITIES, 8192, node="S",
                want=W_GOOD)
    yield pr_out("flags.S-reserve-type1", RESERVE, plist(KS), 1, node="S", want=W_GOOD)
    yield pr_in("flags.S-read-reservation", READ_RESERVATION, 8192, node="S", want=W_GOOD)
    yield pr_out("flags.S-register-aptpl-off", REGISTER, plist(KS, KS), node="S",
                 want=W_GOOD)
    yield pr_in("flags.S-report-capabilities-ptpl-off", REPORT_CAPABILITIES, 8192,
                node="S", want=W_GOOD)
    yield pr_out("flags.S-spec-i-pt-while-registered", REGISTER,
                 plist(KS, KS, SPEC_I_PT, sas_tid(INI_S)), node="S", want=w_check(5, 0x26, 0))
    yield pr_out("flags.S-clear", CLEAR, plist(KS), node="S", want=W_GOOD)
    yield pr_in("flags.S-read-keys-after-clear", READ_KEYS, 8192, node="S", want=W_GOOD)

    # -- SPEC_I_PT: A registers itself and B in one command
    yield pr_out("spec.unregister-B", REGISTER, plist(KB, 0), node="B", want=W_GOOD)
    yield pr_out("spec.unregister-A", REGISTER, plist(KA, 0), want=W_GOOD)
    yield pr_out("spec.register-unknown-initiator", REGISTER,
                 plist(0, KA, SPEC_I_PT, sas_tid(INI_NONE)), want=invalid_param)
    yield pr_out("spec.register-bad-tid-length", REGISTER,
                 plist(0, KA, SPEC_I_PT) + (48).to_bytes(4, "big") + sas_tid(INI_B),
                 want=invalid_param)
    yield pr_out("spec.register-and-ignore-with-spec-i-pt", REGISTER_AND_IGNORE,
                 plist(0, KA, SPEC_I_PT, sas_tid(INI_B)), want=invalid_param)
    yield pr_out("spec.register-A-and-B", REGISTER, plist(0, KA, SPEC_I_PT, sas_tid(INI_B)),
                 dev="sg", want=W_GOOD)
    yield pr_in("spec.read-full-status", READ_FULL_STATUS, 8192, node="B", want=W_GOOD)
    yield pr_in("spec.read-keys", READ_KEYS, 8192, want=W_GOOD)
    # whatever SPEC_I_PT did, get back to A=KA, B=KB
    yield pr_out("spec.B-register-and-ignore-KB", REGISTER_AND_IGNORE, plist(0, KB),
                 node="B", want=W_GOOD)
    yield pr_out("spec.A-register-and-ignore-KA", REGISTER_AND_IGNORE, plist(0, KA),
                 want=W_GOOD)

    # -- REGISTER AND IGNORE EXISTING KEY
    yield pr_out("ignore.A-to-KA2", REGISTER_AND_IGNORE, plist(KX, KA2), want=W_GOOD)
    yield pr_in("ignore.read-keys-KA2", READ_KEYS, 8192, node="B", want=W_GOOD)
    yield pr_out("ignore.A-unregister", REGISTER_AND_IGNORE, plist(KX, 0), dev="sg",
                 want=W_GOOD)
    yield pr_in("ignore.read-keys-A-gone", READ_KEYS, 8192, want=W_GOOD)
    yield pr_out("ignore.A-register-KA", REGISTER_AND_IGNORE, plist(0, KA), want=W_GOOD)
    yield pr_out("ignore.A-with-aptpl", REGISTER_AND_IGNORE, plist(0, KA, APTPL), want=W_GOOD)
    yield pr_out("ignore.A-aptpl-off", REGISTER_AND_IGNORE, plist(0, KA), want=W_GOOD)
    yield pr_in("ignore.read-keys-final", READ_KEYS, 8192, want=W_GOOD)

    # -- PREEMPT: A holds WRITE EXCLUSIVE, B preempts A; A's next command gets the UA
    yield pr_out("preempt.A-reserve-type1", RESERVE, plist(KA), 1, want=W_GOOD)
    yield pr_out("preempt.B-wrong-own-key", PREEMPT, plist(KX, KA), 1, node="B",
                 want=W_CONFLICT)
    yield pr_out("preempt.B-no-match", PREEMPT, plist(KB, KX), 1, node="B", dev="sg",
                 want=W_CONFLICT)
    yield pr_out("preempt.B-abort-no-match", PREEMPT_AND_ABORT, plist(KB, KX), 1, node="B",
                 want=W_CONFLICT, why="a real PREEMPT AND ABORT deadlocks LIO 6.1 (LAB.md)")
    yield pr_out("preempt.B-abort-wrong-own-key", PREEMPT_AND_ABORT, plist(KX, KA), 1,
                 node="B", dev="sg", want=W_CONFLICT)
    yield pr_out("preempt.B-bad-type", PREEMPT, plist(KB, KA), 2, node="B",
                 want=w_check(5, 0x24, 0))
    yield pr_out("preempt.B-preempts-A", PREEMPT, plist(KB, KA), 1, node="B", want=W_GOOD)
    yield pr_in("preempt.A-read-keys-unit-attention", READ_KEYS, 8192, dev="sg",
                want=w_check(6, 0x2A, 0x05), why="REGISTRATIONS PREEMPTED, spent here")
    yield pr_in("preempt.A-read-keys-after", READ_KEYS, 8192, dev="sg", want=W_GOOD)
    yield pr_in("preempt.A-read-reservation", READ_RESERVATION, 8192, want=W_GOOD)
    yield pr_out("preempt.A-register-old-key", REGISTER, plist(KA, KA), want=W_CONFLICT)
    yield pr_out("preempt.A-reserve", RESERVE, plist(KA), 1, want=W_CONFLICT)

    # -- REGISTER AND MOVE: B (holder) moves the reservation to A (unregistered)
    move = REGISTER_AND_MOVE
    yield pr_out("move.A-unregistered", move, move_list(KA, KB, RTPI_B, sas_tid(INI_B)), 1,
                 want=W_CONFLICT)
    yield pr_out("move.B-wrong-key", move, move_list(KX, KA, RTPI_A, sas_tid(INI_A)), 1,
                 node="B", want=W_CONFLICT)
    yield pr_out("move.B-to-itself", move, move_list(KB, KA, RTPI_B, sas_tid(INI_B)), 1,
                 node="B", want=invalid_param)
    yield pr_out("move.B-bad-rtpi", move, move_list(KB, KA, 9, sas_tid(INI_A)), 1, node="B",
                 want=invalid_param)
    yield pr_out("move.B-unknown-initiator", move,
                 move_list(KB, KA, RTPI_A, sas_tid(INI_NONE)), 1, node="B", want=invalid_param)
    yield pr_out("move.B-no-tid", move, move_list(KB, KA, RTPI_A, b""), 1, node="B",
                 dev="sg", want=invalid_param)
    yield pr_out("move.B-tid-length-too-long", move,
                 move_list(KB, KA, RTPI_A, sas_tid(INI_A))[:20] + (48).to_bytes(4, "big")
                 + sas_tid(INI_A), 1, node="B", want=invalid_param)
    yield pr_out("move.B-sakey-zero", move, move_list(KB, 0, RTPI_A, sas_tid(INI_A)), 1,
                 node="B", want=invalid_param)
    yield pr_out("move.B-to-A", move, move_list(KB, KA, RTPI_A, sas_tid(INI_A)), 1,
                 node="B", want=W_GOOD)
    yield pr_in("move.read-full-status-after", READ_FULL_STATUS, 8192, want=W_GOOD)
    yield pr_in("move.read-reservation-after", READ_RESERVATION, 8192, node="B", dev="sg",
                want=W_GOOD)
    yield pr_out("move.A-to-B-unreg-aptpl", move,
                 move_list(KA, KB, RTPI_B, sas_tid(INI_B), unreg=True, aptpl=True), 1,
                 want=W_GOOD)
    yield pr_in("move.read-full-status-after-unreg", READ_FULL_STATUS, 8192, node="B",
                want=W_GOOD)
    yield pr_in("move.A-read-keys", READ_KEYS, 8192, want=W_GOOD)
    yield pr_in("move.A-read-keys-again", READ_KEYS, 8192, want=W_GOOD)
    yield pr_out("move.A-register-KA", REGISTER_AND_IGNORE, plist(0, KA), want=W_GOOD)
    yield pr_out("move.B-register-KB", REGISTER_AND_IGNORE, plist(0, KB), node="B",
                 want=W_GOOD)

    # -- CLEAR; the other registrant's next command gets RESERVATIONS CLEARED
    yield pr_out("clear.A-wrong-key", CLEAR, plist(KX), want=W_CONFLICT)
    yield pr_out("clear.B", CLEAR, plist(KB), node="B", dev="sg", want=W_GOOD)
    yield pr_in("clear.A-read-keys-unit-attention", READ_KEYS, 8192,
                want=w_check(6, 0x2A, 0x03), why="RESERVATIONS CLEARED, spent here")
    yield pr_in("clear.A-read-keys-after", READ_KEYS, 8192, dev="sg", want=W_GOOD)
    yield pr_in("clear.B-read-reservation", READ_RESERVATION, 8192, node="B", want=W_GOOD)

    # -- REPLACE LOST RESERVATION, undefined service actions, framing corner cases
    yield pr_out("misc.replace-lost-reservation", REPLACE_LOST, plist(0, KA), 1,
                 want=w_check(5, 0x24, 0), why="LIO 6.1 does not implement it (RLR_C 0)")
    yield pr_in("misc.pr-in-undefined-sa4", 0x04, 8192, compare="own_invalid_field",
                why=OWN_WHY)
    yield pr_in("misc.pr-in-undefined-sa1f-sg", 0x1F, 8192, dev="sg",
                compare="own_invalid_field", why=OWN_WHY)
    yield pr_out("misc.pr-out-undefined-sa9", 0x09, plist(0, KA), compare="own_invalid_field",
                 why=OWN_WHY)
    yield pr_out("misc.pr-out-undefined-sa1f-sg", 0x1F, plist(0, KA), dev="sg",
                 compare="own_invalid_field", why=OWN_WHY)
    yield set_cdb_bits(pr_out("misc.pr-out-length-bytes5-6", REGISTER, plist(0, KA),
                              compare="own_invalid_field", why=OWN_WHY), 6, 0x01)
    yield pr_in("misc.read-keys-after-corner-cases", READ_KEYS, 8192, node="B", want=W_GOOD)
    yield pr_in("misc.read-keys-ro-sg-final", READ_KEYS, 8192, node="B", dev="sg",
                read_only=True, want=W_GOOD)


STEPS: list[Step] = list(_steps())

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
CASES: list[str] = [SETUP_CASE, *(s.name for s in STEPS), *FENCE_CASES, CLOCK_CASE]
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
    devices: dict[str, dict[str, str]]  #: node -> {"sd": path, "sg": path}
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None

    def start(self, log_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        with open(log_dir / f"{self.label}.stderr", "wb") as log:
            self.proc = subprocess.Popen([*self.argv, "-k", self.sock],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=REPO)
        wait_for_path(self.sock, self.proc, timeout=60)
        wait_for_service(self.sock, timeout=60)

    def request(self, step: Step) -> Reply | str:
        path = self.devices[step.node][step.dev]
        flags = (os.O_RDONLY if step.read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as e:
            return f"cannot open {path}: {e}"
        try:
            if self.client is None:
                self.client = Client(self.sock, timeout=REQUEST_TIMEOUT_S)
            reply = self.client.request(step.cdb, fd, step.params)
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


def dd_write(device: str) -> subprocess.CompletedProcess[str]:
    """One real 512-byte WRITE through the block layer, bypassing the page cache."""
    return subprocess.run(["dd", "if=/dev/zero", f"of={device}", "bs=512", "count=1",
                           "seek=8", "oflag=direct", "conv=notrunc", "status=none"],
                          capture_output=True, text=True, timeout=60, check=False)


def run_fence(prguard: Endpoint) -> list[dict[str, Any]]:
    """fence_scsi: A and B register, A reserves type 5, B preempts A; A's writes fail."""
    out: list[dict[str, Any]] = []
    names = iter(FENCE_CASES)

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


def run_clock_case(devices: dict[str, dict[str, str]], log_dir: Path) -> dict[str, Any]:
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


def quiesce_udev() -> str:
    """Stop udevd: it must not touch the LUNs while the steps run.

    udevd watches sd nodes: when an fd opened for writing is closed it re-reads the
    partition table itself (BLKRRPART: READs), whatever its event queue does. Such a READ on
    a nexus with a pending unit attention spends it (the kernel retries), at a moment that
    differs between the two sides. lio_setup.sh needs no udev (devtmpfs, mknod fallback).
    """
    if shutil.which("udevadm") is None:
        return "not installed"
    subprocess.run(["udevadm", "settle", "--timeout=30"], capture_output=True, check=False)
    r = subprocess.run(["udevadm", "control", "--exit"], capture_output=True, text=True,
                       check=False)
    return "udevd stopped" if r.returncode == 0 else f"not running ({r.stderr.strip()})"


def side(devices: dict[str, dict[str, str]], prefix: str) -> dict[str, dict[str, str]]:
    return {node: devices[prefix + node] for node in ("A", "B", "S") if prefix + node in devices}


def main() -> int:
    results_dir = Path(os.environ.get("LAB_RESULTS", "."))
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    endpoints: list[Endpoint] = []
    results: list[dict[str, Any]] = []
    try:
        try:
            lio = subprocess.run(["bash", str(LIO_SETUP), str(results_dir / "lio.json")],
                                 capture_output=True, text=True, timeout=180, check=False)
            (results_dir / "lio_setup.log").write_text(lio.stderr)
            if lio.returncode != 0:
                raise RuntimeError(f"lio_setup.sh exited {lio.returncode}: {lio.stderr[-2000:]}")
            devices: dict[str, dict[str, str]] = json.loads(lio.stdout)
            udev = quiesce_udev()
            timings["lio_setup_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            c_side = Endpoint("qemu-pr-helper", [C_HELPER], C_SOCK, side(devices, "c"))
            p_side = Endpoint("prguard", PRGUARD, P_SOCK, side(devices, "p"))
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
        t4 = time.monotonic()
        results.append(run_clock_case(devices, results_dir))
        timings["clock_case_s"] = time.monotonic() - t4
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
