"""The step table of the device conformance suite (lab/guest_suite.py runs it): each step
one PERSISTENT RESERVE IN/OUT request, on a node's sd or sg device, with what the target
must answer and, for the deviations docs/COMPATIBILITY.md lists, how the two helpers'
replies are compared.

The phases run in order on the same LUs: each starts from the state the one before left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prguard.client.session import pr_in_cdb, pr_out_cdb

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


def _fresh_lu() -> Iterator[Step]:
    """A fresh LU: every PR IN service action with allocation lengths 0, 8, small, 8192."""
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


def _unregistered() -> Iterator[Step]:
    """Unregistered nexus, malformed lists, read-only fds."""
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


def _registration() -> Iterator[Step]:
    """Both nodes register."""
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


def _reservation_types() -> Iterator[Step]:
    """Each reservation type held by A, and the other node's view of it."""
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


def _flags() -> Iterator[Step]:
    """ALL_TG_PT and APTPL on the single-nexus LU."""
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


def _spec_i_pt() -> Iterator[Step]:
    """SPEC_I_PT: A registers itself and B in one command."""
    invalid_param = w_check(5, 0x26, 0)
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


def _register_and_ignore() -> Iterator[Step]:
    """REGISTER AND IGNORE EXISTING KEY."""
    yield pr_out("ignore.A-to-KA2", REGISTER_AND_IGNORE, plist(KX, KA2), want=W_GOOD)
    yield pr_in("ignore.read-keys-KA2", READ_KEYS, 8192, node="B", want=W_GOOD)
    yield pr_out("ignore.A-unregister", REGISTER_AND_IGNORE, plist(KX, 0), dev="sg",
                 want=W_GOOD)
    yield pr_in("ignore.read-keys-A-gone", READ_KEYS, 8192, want=W_GOOD)
    yield pr_out("ignore.A-register-KA", REGISTER_AND_IGNORE, plist(0, KA), want=W_GOOD)
    yield pr_out("ignore.A-with-aptpl", REGISTER_AND_IGNORE, plist(0, KA, APTPL), want=W_GOOD)
    yield pr_out("ignore.A-aptpl-off", REGISTER_AND_IGNORE, plist(0, KA), want=W_GOOD)
    yield pr_in("ignore.read-keys-final", READ_KEYS, 8192, want=W_GOOD)


def _preempt() -> Iterator[Step]:
    """PREEMPT: A holds WRITE EXCLUSIVE, B preempts A; A's next command gets the UA."""
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


def _register_and_move() -> Iterator[Step]:
    """REGISTER AND MOVE: B (holder) moves the reservation to A (unregistered)."""
    invalid_param = w_check(5, 0x26, 0)
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


def _clear() -> Iterator[Step]:
    """CLEAR; the other registrant's next command gets RESERVATIONS CLEARED."""
    yield pr_out("clear.A-wrong-key", CLEAR, plist(KX), want=W_CONFLICT)
    yield pr_out("clear.B", CLEAR, plist(KB), node="B", dev="sg", want=W_GOOD)
    yield pr_in("clear.A-read-keys-unit-attention", READ_KEYS, 8192,
                want=w_check(6, 0x2A, 0x03), why="RESERVATIONS CLEARED, spent here")
    yield pr_in("clear.A-read-keys-after", READ_KEYS, 8192, dev="sg", want=W_GOOD)
    yield pr_in("clear.B-read-reservation", READ_RESERVATION, 8192, node="B", want=W_GOOD)


def _corner_cases() -> Iterator[Step]:
    """REPLACE LOST RESERVATION, undefined service actions, framing corner cases."""
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


def _steps() -> Iterator[Step]:
    """In this order: each phase starts from the state the one before left."""
    for phase in (_fresh_lu, _unregistered, _registration, _reservation_types, _flags,
                  _spec_i_pt, _register_and_ignore, _preempt, _register_and_move, _clear,
                  _corner_cases):
        yield from phase()


STEPS: list[Step] = list(_steps())
