"""The multipath translation as pure code: what each path is sent for each guest command,
and what the guest is answered, against scripted path replies (broker/mpath_translate.py).
The same commands on a real map in the lab: tests/test_lab.py (the multipath cases)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from prguard.broker.mpath_translate import (
    ALL_TG_PT_REFUSED,
    MOVE_REFUSED,
    NO_PATH,
    UNKNOWN,
    Memory,
    Path,
    PathOutcome,
    Result,
    Send,
    translate,
)
from prguard.shared.scsi import PrReply, Sense, SenseCode, Status

A = Path(os.makedev(8, 0), "sda")
B = Path(os.makedev(8, 16), "sdb")
C = Path(os.makedev(8, 32), "sdc")
NAMES = {p.rdev: p.name for p in (A, B, C)}
K, K2, KO = 0xA1A1A1A1A1A1A1A1, 0xA2A2A2A2A2A2A2A2, 0xC1C1C1C1C1C1C1C1


def check(code: SenseCode) -> PrReply:
    """A device's CHECK CONDITION (its own sense, not one the worker builds)."""
    sense = bytearray(96)
    sense[0], sense[2], sense[7], sense[12], sense[13] = 0x70, code.key, 0x0A, code.asc, \
        code.ascq
    sense[20] = 0x55  # a device's sense need not end at byte 17
    return PrReply(int(Status.CHECK_CONDITION), bytes(sense))


GOOD = PrReply(0, bytes(96))
CONFLICT = PrReply(int(Status.RESERVATION_CONFLICT), bytes(96))
UA = check(SenseCode(6, 0x2A, 0x03))
INVALID_RELEASE = check(SenseCode(5, 0x26, 0x04))
#: what the worker answers for SG_IO on a path whose device is gone (ENODEV)
GONE = PrReply.generated(Status.CHECK_CONDITION, Sense.TARGET_FAILURE)


def out_cdb(sa: int, prtype: int = 0, length: int = 24) -> bytes:
    return (bytes([0x5F, sa, prtype, 0, 0, 0, 0]) + length.to_bytes(2, "big")).ljust(16, b"\0")


def in_cdb(sa: int, alloc: int = 8192) -> bytes:
    return (bytes([0x5E, sa, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big")).ljust(16, b"\0")


def plist(key: int = 0, sakey: int = 0, flags: int = 0) -> bytes:
    return key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes(4) + bytes([flags]) \
        + bytes(3)


def reservation(key: int, prtype: int) -> PrReply:
    return PrReply(0, bytes(96), bytes(4) + (16).to_bytes(4, "big") + key.to_bytes(8, "big")
                   + bytes(5) + bytes([prtype]) + bytes(2))


NO_RESERVATION = PrReply(0, bytes(96), bytes(8))

SA_NAMES = {(0x5F, 0): "REGISTER", (0x5F, 1): "RESERVE", (0x5F, 2): "RELEASE",
            (0x5F, 3): "CLEAR", (0x5F, 4): "PREEMPT", (0x5F, 5): "PREEMPT_ABORT",
            (0x5F, 6): "REGISTER_IGNORE", (0x5F, 8): "REPLACE_LOST",
            (0x5E, 0): "READ_KEYS", (0x5E, 1): "READ_RESERVATION", (0x5E, 2): "CAPS",
            (0x5E, 3): "FULL_STATUS"}


def label(send: Send) -> str:
    """`sdb REGISTER_IGNORE ->0xa1..` : who got what."""
    text = f"{NAMES[send.rdev]} {SA_NAMES[(send.cdb[0], send.cdb[1] & 0x1F)]}"
    if send.cdb[0] == 0x5F and send.cdb[1] in (0, 6):
        text += f" ->{int.from_bytes(send.data[8:16], 'big'):#x}"
        if send.data[20]:
            text += f" flags {send.data[20]:#x}"
    return text


@dataclass
class Paths:
    """Scripted replies: by (path name, command name), consumed in order; GOOD after."""

    script: dict[tuple[str, str], list[PrReply | None]] = field(default_factory=dict)
    default: PrReply = GOOD
    sent: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)

    def reply(self, send: Send) -> PathOutcome:
        key = (NAMES[send.rdev], SA_NAMES[(send.cdb[0], send.cdb[1] & 0x1F)])
        queue = self.script.get(key)
        reply = queue.pop(0) if queue else self.default
        return PathOutcome(reply, "worker lost" if reply is None else "")

    def run(self, cdb: bytes, data: bytes = b"", live: tuple[Path, ...] = (A, B),
            down: tuple[Path, ...] = (), memory: Memory | None = None) -> Result:
        step = translate(cdb, data, live, down, memory)
        outcomes: list[PathOutcome] | None = None
        while True:
            try:
                batch = next(step) if outcomes is None else step.send(outcomes)
            except StopIteration as done:
                result: Result = done.value
                return result
            self.batches.append([label(s) for s in batch])
            self.sent += self.batches[-1]
            outcomes = [self.reply(s) for s in batch]


def paths(**script: list[PrReply | None]) -> Paths:
    """paths(sda_RESERVE=[CONFLICT]) scripts sda's first RESERVE."""
    return Paths({tuple(k.split("_", 1)): v for k, v in script.items()})  # type: ignore[misc]


# --------------------------------------------------------------------------- PR IN

def test_pr_in_goes_to_the_primary_alone_and_answers_exactly() -> None:
    keys = PrReply(0, bytes(96), bytes(4) + (16).to_bytes(4, "big") + K.to_bytes(8, "big") * 2)
    net = paths(sda_READ_KEYS=[keys])
    result = net.run(in_cdb(0))
    assert net.sent == ["sda READ_KEYS"]
    assert result.reply == keys and result.memory is None and not result.notes


def test_pr_in_on_a_failed_path_is_answered_by_the_next() -> None:
    net = paths(sda_READ_KEYS=[GONE])
    result = net.run(in_cdb(0))
    assert net.sent == ["sda READ_KEYS", "sdb READ_KEYS"]
    assert result.reply == GOOD and result.failed == {A.rdev}
    assert result.notes == ("sda (8:0): path failed (04/44/00)",)


def test_a_device_answer_with_more_sense_than_the_workers_is_the_devices() -> None:
    """Only the worker's own sense bytes mean "not sent" (documented: a LU answering with
    exactly those bytes is taken for a failed path)."""
    device_failure = check(Sense.TARGET_FAILURE)
    net = paths(sda_READ_KEYS=[device_failure])
    assert net.run(in_cdb(0)).reply == device_failure
    assert net.sent == ["sda READ_KEYS"]


def test_report_capabilities_through_a_map_says_all_tg_pt_is_not_supported() -> None:
    caps = PrReply(0, bytes(96), bytes([0, 8, 0x1D, 0x81, 0xFF, 0xFF, 0, 0]))
    result = paths(sda_CAPS=[caps]).run(in_cdb(2))
    assert result.reply.data == bytes([0, 8, 0x19, 0x81, 0xFF, 0xFF, 0, 0])


def test_no_live_path() -> None:
    net = Paths()
    result = net.run(in_cdb(0), live=(), down=(A, B))
    assert net.sent == [] and result.reply == NO_PATH
    assert result.reply.sense[:14] == Sense.TARGET_FAILURE.fixed_format()[:14]


def test_every_path_gone_answers_the_last_ones_failure() -> None:
    net = paths(sda_READ_KEYS=[GONE], sdb_READ_KEYS=[GONE])
    result = net.run(in_cdb(0))
    assert result.reply == NO_PATH and result.failed == {A.rdev, B.rdev}


# ------------------------------------------------------------------------ REGISTER

def test_register_reaches_every_live_path() -> None:
    net = Paths()
    result = net.run(out_cdb(0), plist(0, K, 0x01), live=(A, B, C))
    assert net.batches == [["sda REGISTER ->0xa1a1a1a1a1a1a1a1 flags 0x1"],
                           ["sdb REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1 flags 0x1",
                            "sdc REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1 flags 0x1"]]
    assert result.reply == GOOD
    assert result.memory == Memory(K, True, frozenset())


def test_register_sends_the_guests_exact_list_to_the_primary_and_no_spec_i_pt_after() -> None:
    transport_id = bytes([0x06, 0, 0, 0]) + bytes(20)
    data = plist(0, K, 0x08)[:24] + len(transport_id).to_bytes(4, "big") + transport_id
    net = Paths()
    sent: list[Send] = []
    original = net.reply

    def record(send: Send) -> PathOutcome:
        sent.append(send)
        return original(send)

    net.reply = record  # type: ignore[method-assign]
    net.run(out_cdb(0, length=len(data)), data)
    assert sent[0].data == data and sent[0].cdb == out_cdb(0, length=len(data))
    assert sent[1].data == plist(0, K) and sent[1].cdb == out_cdb(6)


def test_register_refused_by_the_primary_goes_nowhere_else() -> None:
    net = paths(sda_REGISTER=[CONFLICT])
    result = net.run(out_cdb(0), plist(K2, K), memory=Memory(K2))
    assert net.sent == ["sda REGISTER ->0xa1a1a1a1a1a1a1a1"]
    assert result.reply == CONFLICT and result.memory == Memory(K2)


def test_a_unit_attention_on_another_path_is_retried_once() -> None:
    net = paths(sdb_REGISTER_IGNORE=[UA])
    result = net.run(out_cdb(6), plist(0, K))
    assert net.sent == ["sda REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1",
                        "sdb REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1",
                        "sdb REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1"]
    assert result.memory == Memory(K, False, frozenset())


def test_register_while_a_path_is_down_remembers_what_it_owes() -> None:
    net = Paths()
    result = net.run(out_cdb(6), plist(0, K2), live=(A,), down=(B,), memory=Memory(K))
    assert net.sent == ["sda REGISTER_IGNORE ->0xa2a2a2a2a2a2a2a2"]
    assert result.reply == GOOD
    assert result.memory == Memory(K2, False, frozenset({B.rdev}))
    assert result.notes == ("sdb (8:16): down; owes key 0xa2a2a2a2a2a2a2a2, registered "
                            "when it is back",)


def test_register_when_the_primary_fails_takes_the_next_as_primary() -> None:
    net = paths(sda_REGISTER=[GONE])
    result = net.run(out_cdb(0), plist(0, K), live=(A, B, C))
    assert net.sent == ["sda REGISTER ->0xa1a1a1a1a1a1a1a1", "sdb REGISTER ->0xa1a1a1a1a1a1a1a1",
                        "sdc REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1"]
    assert result.memory == Memory(K, False, frozenset({A.rdev}))
    assert result.failed == {A.rdev}


def test_all_tg_pt_is_refused_with_its_field_pointer() -> None:
    net = Paths()
    result = net.run(out_cdb(0), plist(0, K, 0x04))
    assert net.sent == [] and result.reply == ALL_TG_PT_REFUSED
    sense = result.reply.sense
    assert (sense[2], sense[12], sense[13]) == (5, 0x26, 0)
    assert sense[15] == 0x8A and sense[16:18] == b"\x00\x14"  # SKSV, BPV bit 2, byte 20


def test_register_and_move_is_refused_with_its_field_pointer() -> None:
    net = Paths()
    result = net.run(out_cdb(7, length=24 + 24), plist(K, K2) + bytes(24))
    assert net.sent == [] and result.reply == MOVE_REFUSED
    sense = result.reply.sense
    assert (sense[2], sense[12], sense[13]) == (5, 0x24, 0)
    assert sense[15] == 0xC0 and sense[16:18] == b"\x00\x01"  # SKSV, C/D, byte 1


def test_unknown_outcome_of_a_register_answers_never_good_and_trusts_no_path() -> None:
    net = paths(sda_REGISTER=[None])
    result = net.run(out_cdb(0), plist(0, K), memory=Memory(K2))
    assert result.reply == UNKNOWN
    assert result.memory == Memory(K2, False, frozenset({A.rdev, B.rdev}))


# ------------------------------------------------------------------ RESERVE, RELEASE

def test_reserve_held_through_another_of_our_paths_is_good() -> None:
    net = paths(sda_RESERVE=[CONFLICT], sda_READ_RESERVATION=[reservation(K, 5)])
    result = net.run(out_cdb(1, 5), plist(K))
    assert net.sent == ["sda RESERVE", "sda READ_RESERVATION"]
    assert result.reply == GOOD
    assert "held through another path" in result.notes[0]


@pytest.mark.parametrize("held", [reservation(KO, 5), reservation(K, 1), NO_RESERVATION])
def test_reserve_conflicting_with_anyone_else_stays_a_conflict(held: PrReply) -> None:
    net = paths(sda_RESERVE=[CONFLICT], sda_READ_RESERVATION=[held])
    assert net.run(out_cdb(1, 5), plist(K)).reply == CONFLICT


def test_release_reaches_every_path_and_spends_the_unit_attentions_it_raised() -> None:
    net = paths(sda_READ_RESERVATION=[NO_RESERVATION])
    result = net.run(out_cdb(2, 5), plist(K), live=(A, B, C))
    assert net.batches == [["sda RELEASE"], ["sdb RELEASE", "sdc RELEASE"],
                           ["sda READ_RESERVATION"], ["sdb READ_KEYS", "sdc READ_KEYS"]]
    assert result.reply == GOOD


def test_release_by_the_holder_path_behind_the_primary_answers_its_error() -> None:
    net = paths(sdb_RELEASE=[INVALID_RELEASE])
    assert net.run(out_cdb(2, 1), plist(K)).reply == INVALID_RELEASE


def test_release_whose_holder_path_is_down_is_never_good() -> None:
    net = paths(sda_READ_RESERVATION=[reservation(K, 5)])
    result = net.run(out_cdb(2, 5), plist(K), live=(A,), down=(B,))
    assert result.reply == UNKNOWN
    assert result.notes == ("the reservation is still held, through a path that is down: "
                            "sdb (8:16)",)


def test_release_answered_by_the_primary_with_a_unit_attention_goes_no_further() -> None:
    net = paths(sda_RELEASE=[UA])
    result = net.run(out_cdb(2, 5), plist(K))
    assert net.sent == ["sda RELEASE"] and result.reply == UA


# -------------------------------------------------------------- CLEAR, PREEMPT, ...

def test_clear_goes_to_the_primary_and_forgets_every_owed_key() -> None:
    net = Paths()
    result = net.run(out_cdb(3), plist(K), live=(A, B), down=(C,),
                     memory=Memory(K, False, frozenset({C.rdev})))
    assert net.batches == [["sda CLEAR"], ["sdb READ_KEYS"]]
    assert result.memory == Memory()


def test_preempting_its_own_key_registers_its_other_paths_again() -> None:
    net = Paths()
    result = net.run(out_cdb(4, 5), plist(K, K), live=(A, B), down=(C,), memory=Memory(K))
    assert net.batches == [["sda PREEMPT"], ["sdb REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1"],
                           ["sdb READ_KEYS"]]
    assert result.memory == Memory(K, False, frozenset({C.rdev}))


def test_preempting_another_key_touches_no_other_path_of_ours() -> None:
    net = Paths()
    result = net.run(out_cdb(4, 5), plist(K, KO), memory=Memory(K))
    assert net.batches == [["sda PREEMPT"], ["sdb READ_KEYS"]]
    assert result.memory == Memory(K)


@pytest.mark.parametrize("sa", [3, 4, 5, 8])
def test_a_refusal_of_the_primary_is_the_answer(sa: int) -> None:
    """CLEAR, PREEMPT, PREEMPT AND ABORT, REPLACE LOST RESERVATION: one path."""
    net = Paths(default=CONFLICT)
    result = net.run(out_cdb(sa, 5), plist(K, KO))
    assert result.reply == CONFLICT and len(net.sent) == 1


# ---------------------------------------------------------------------- returning paths

def owed_b(key: int = K) -> Memory:
    return Memory(key, False, frozenset({B.rdev}))


def test_a_returning_path_gets_the_key_it_missed_before_the_command() -> None:
    net = Paths()
    result = net.run(in_cdb(0), memory=owed_b())
    assert net.batches == [["sda REGISTER ->0xa1a1a1a1a1a1a1a1"],
                           ["sdb REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1"], ["sda READ_KEYS"]]
    assert result.memory == Memory(K, False, frozenset())
    assert result.notes == ("sdb (8:16): back; registered with 0xa1a1a1a1a1a1a1a1",)


def test_a_host_preempted_while_its_path_was_down_gets_no_key_back_on_it() -> None:
    net = paths(sda_REGISTER=[CONFLICT])
    result = net.run(in_cdb(0), memory=owed_b())
    assert net.batches == [["sda REGISTER ->0xa1a1a1a1a1a1a1a1"], ["sdb REGISTER_IGNORE ->0x0"],
                           ["sda READ_KEYS"]]
    assert result.memory == Memory(0, False, frozenset())
    assert "preempted meanwhile" in result.notes[0]


def test_a_stale_key_is_removed_from_a_returning_path_without_asking() -> None:
    net = Paths()
    result = net.run(in_cdb(0), memory=owed_b(0))
    assert net.batches == [["sdb REGISTER_IGNORE ->0x0"], ["sda READ_KEYS"]]
    assert result.memory == Memory()


def test_the_witness_of_a_repair_is_a_path_that_did_not_miss_the_key() -> None:
    net = Paths()
    owed_a = Memory(K, False, frozenset({A.rdev}))
    net.run(in_cdb(0), memory=owed_a)
    assert net.batches[0] == ["sdb REGISTER ->0xa1a1a1a1a1a1a1a1"]
    assert net.batches[1] == ["sda REGISTER_IGNORE ->0xa1a1a1a1a1a1a1a1"]


def test_a_path_still_down_keeps_owing() -> None:
    net = Paths()
    result = net.run(in_cdb(0), live=(A,), down=(B,), memory=owed_b())
    assert net.sent == ["sda READ_KEYS"]
    assert result.memory == owed_b()



def test_a_unit_attention_drawn_by_the_repair_is_the_guests_answer() -> None:
    """Preempted while a path was down: the question meets the UNIT ATTENTION that on one
    path the guest's own command would meet. It gets it; the repair waits."""
    net = paths(sda_REGISTER=[UA])
    result = net.run(in_cdb(0), memory=owed_b())
    assert net.sent == ["sda REGISTER ->0xa1a1a1a1a1a1a1a1"]
    assert result.reply == UA and result.memory == owed_b()


def test_prguards_own_questions_ask_again_after_a_unit_attention() -> None:
    net = paths(sdb_RELEASE=[GOOD], sda_READ_RESERVATION=[UA, reservation(K, 5)])
    result = net.run(out_cdb(2, 5), plist(K), live=(A, B))
    assert net.sent[2:4] == ["sda READ_RESERVATION", "sda READ_RESERVATION"]
    assert result.reply == UNKNOWN  # the second answer counts: still held, never GOOD
