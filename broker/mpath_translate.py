"""One guest PERSISTENT RESERVE command on a dm-multipath map, as SG_IO on the map's paths
(docs/MULTIPATH.md "The translation"). Pure code: a generator that yields batches of
per-path commands and is sent their outcomes, and returns the guest's reply.

    step = translate(cdb, data, paths, memory)
    batch = next(step)
    while True:
        try:
            batch = step.send([outcome of each command in batch])
        except StopIteration as done:
            result = done.value; break

The commands of one batch go to different paths and may run in parallel. Paths are the
map's live paths in device-number order (`live`) and the others (`down`); the primary is
the first live path that has not failed during this command. `memory` is what prguard
knows of the map's registrations: the key every path must carry and which paths owe it
(they were down when it was set); owed paths that are live again are repaired first.

Every answer the guest gets is a path's own (status, sense, data), except where the
translation speaks itself: RESERVE by a holder whose reservation is held through another
of its paths (GOOD), RELEASE whose holder path cannot be reached (0b/08/00), REGISTER with
ALL_TG_PT (05/26/00) and REGISTER AND MOVE (05/24/00), both with a field pointer, and
REPORT CAPABILITIES (ATP_C cleared).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace

from prguard.broker.stats import sense_key
from prguard.shared.scsi import (
    CDB_SIZE,
    Opcode,
    PrInAction,
    PrOutAction,
    PrReply,
    Sense,
    SenseCode,
    SenseKey,
    Status,
    service_action,
)

#: What the broker answers when a path's outcome is unknown (worker lost, no answer).
UNKNOWN = PrReply.generated(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE)
#: The worker's own answers for a path whose device is gone (ENODEV, DID_NO_CONNECT, an
#: errno it has no entry for such as ENXIO): the command did not reach the LU, so the
#: next path may be tried. Compared on all 96 bytes (the kernel wrote no sense then); a
#: LU that answers one of these codes with exactly these bytes is taken for a failed
#: path too (docs/COMPATIBILITY.md).
GONE_SENSE = frozenset(code.fixed_format() for code in (
    Sense.TARGET_FAILURE, Sense.LUN_NOT_RESPONDING, Sense.IO_ERROR))
GOOD_REPLY = PrReply(int(Status.GOOD), bytes(96))

# PR OUT parameter list (SPC-4 6.16.3): reservation key, service action reservation key,
# flags in byte 20.
SPEC_I_PT, ALL_TG_PT, APTPL = 0x08, 0x04, 0x01
FLAGS_BYTE = 20
#: REPORT CAPABILITIES byte 2, bit 2: ALL_TG_PT supported.
ATP_C = 0x04
ALL_REGISTRANTS_TYPES = (7, 8)


@dataclass(frozen=True)
class Path:
    rdev: int
    name: str  #: the kernel's name, for log lines (sdb)

    def __str__(self) -> str:
        return f"{self.name} ({os.major(self.rdev)}:{os.minor(self.rdev)})"


@dataclass(frozen=True)
class Memory:
    """What every path of a map must carry: `key` (0: no registration), registered with
    `aptpl`; `owed`: device numbers of paths that did not get it yet."""

    key: int = 0
    aptpl: bool = False
    owed: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Send:
    """One SG_IO of the translation: this CDB and parameter list on the path `rdev`."""

    rdev: int
    cdb: bytes
    data: bytes = b""


@dataclass(frozen=True)
class PathOutcome:
    """What became of one Send: the reply, or None when nobody can say (`why`)."""

    reply: PrReply | None
    why: str = ""

    @property
    def gone(self) -> bool:
        r = self.reply
        return (r is not None and r.status == Status.CHECK_CONDITION
                and r.sense in GONE_SENSE)

    @property
    def good(self) -> bool:
        return self.reply is not None and self.reply.status == Status.GOOD

    @property
    def unit_attention(self) -> bool:
        return (self.reply is not None and self.reply.status == Status.CHECK_CONDITION
                and sense_key(self.reply.sense) == SenseKey.UNIT_ATTENTION)


@dataclass(frozen=True)
class Result:
    reply: PrReply
    #: the map's memory afterwards (None: unchanged)
    memory: Memory | None = None
    #: what happened on paths other than the answer says, one line each (for the log)
    notes: tuple[str, ...] = ()
    #: paths that failed at the transport (their cached fd is dropped)
    failed: frozenset[int] = frozenset()


Translation = Generator[list[Send], list[PathOutcome], Result]


def sense_with_field_pointer(code: SenseCode, in_cdb: bool, byte: int,
                             bit: int | None = None) -> bytes:
    """Fixed-format sense with SPC's sense-key specific field pointer (bytes 15-17)."""
    sense = bytearray(code.fixed_format())
    sense[15] = 0x80 | (0x40 if in_cdb else 0) | (0x08 | bit if bit is not None else 0)
    sense[16:18] = byte.to_bytes(2, "big")
    return bytes(sense)


#: REGISTER with ALL_TG_PT: refused, field pointer at parameter byte 20, bit 2.
ALL_TG_PT_REFUSED = PrReply(int(Status.CHECK_CONDITION),
                            sense_with_field_pointer(Sense.INVALID_PARAM, False, FLAGS_BYTE, 2))
#: REGISTER AND MOVE: refused, field pointer at CDB byte 1 (the service action).
MOVE_REFUSED = PrReply(int(Status.CHECK_CONDITION),
                       sense_with_field_pointer(Sense.INVALID_FIELD, True, 1))
NO_PATH = PrReply.generated(Status.CHECK_CONDITION, Sense.TARGET_FAILURE)


def pr_out_cdb(action: PrOutAction, length: int = 24, prtype: int = 0) -> bytes:
    return (bytes([Opcode.PERSISTENT_RESERVE_OUT, action, prtype & 0x0F, 0, 0, 0, 0])
            + length.to_bytes(2, "big")).ljust(CDB_SIZE, b"\0")


def pr_in_cdb(action: PrInAction, allocation: int = 24) -> bytes:
    return (bytes([Opcode.PERSISTENT_RESERVE_IN, action, 0, 0, 0, 0, 0])
            + allocation.to_bytes(2, "big")).ljust(CDB_SIZE, b"\0")


def register_ignore(key: int, aptpl: bool) -> tuple[bytes, bytes]:
    """REGISTER AND IGNORE EXISTING KEY to `key` (0 removes the registration)."""
    data = bytes(8) + key.to_bytes(8, "big") + bytes(4) + bytes([APTPL if aptpl else 0]) \
        + bytes(3)
    return pr_out_cdb(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY), data


READ_KEYS_SHORT = pr_in_cdb(PrInAction.READ_KEYS, 8)
READ_RESERVATION = pr_in_cdb(PrInAction.READ_RESERVATION, 24)


def without_atp_c(cdb: bytes, reply: PrReply) -> PrReply:
    """REPORT CAPABILITIES with ATP_C cleared: ALL_TG_PT is not served on a map."""
    if (cdb[0] == Opcode.PERSISTENT_RESERVE_IN
            and service_action(cdb) == PrInAction.REPORT_CAPABILITIES
            and reply.status == Status.GOOD and len(reply.data) > 2):
        data = bytearray(reply.data)
        data[2] &= ~ATP_C & 0xFF
        return replace(reply, data=bytes(data))
    return reply


def translate(cdb: bytes, data: bytes, live: Sequence[Path], down: Sequence[Path],
              memory: Memory | None) -> Translation:
    """The translation of one guest command (a CDB that passed the request rules)."""
    return _Run(cdb, data, live, down, memory).run()


@dataclass
class _Run:
    cdb: bytes
    data: bytes
    live: Sequence[Path]
    down: Sequence[Path]
    memory: Memory | None
    notes: list[str] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)

    # -------------------------------------------------------------- helpers

    def usable(self) -> list[Path]:
        return [p for p in self.live if p.rdev not in self.failed]

    def result(self, reply: PrReply, memory: Memory | None = None) -> Result:
        return Result(reply, memory, tuple(self.notes), frozenset(self.failed))

    def ask(self, path: Path, cdb: bytes) -> Generator[
            list[Send], list[PathOutcome], PathOutcome]:
        """A question of prguard's own (not the guest's): a UNIT ATTENTION it draws is
        one the guest's own command raised (a release through another path), so it is
        asked again."""
        outcome = yield from self.one(path, cdb)
        if outcome.unit_attention:
            outcome = yield from self.one(path, cdb)
        return outcome

    def one(self, path: Path, cdb: bytes, data: bytes = b"") -> Generator[
            list[Send], list[PathOutcome], PathOutcome]:
        (outcome,) = yield [Send(path.rdev, cdb, data)]
        if outcome.gone:
            self.failed.add(path.rdev)
            self.notes.append(f"{path}: path failed ({_sense_text(outcome)})")
        return outcome

    def each(self, paths: Sequence[Path], cdb: bytes, data: bytes = b"",
             retry_unit_attention: bool = True) -> Generator[
            list[Send], list[PathOutcome], dict[int, PathOutcome]]:
        """The same command on several paths at once; a UNIT ATTENTION is retried once
        (it reports an event the guest learns of through its primary path)."""
        got: dict[int, PathOutcome] = {}
        todo = list(paths)
        for attempt in (0, 1):
            if not todo:
                break
            outcomes = yield [Send(p.rdev, cdb, data) for p in todo]
            for path, outcome in zip(todo, outcomes, strict=True):
                got[path.rdev] = outcome
                if outcome.gone:
                    self.failed.add(path.rdev)
                    self.notes.append(f"{path}: path failed ({_sense_text(outcome)})")
            todo = [p for p in todo if retry_unit_attention and attempt == 0
                    and got[p.rdev].unit_attention]
        return got

    def on_primary(self, cdb: bytes, data: bytes = b"") -> Generator[
            list[Send], list[PathOutcome], tuple[Path, PathOutcome] | None]:
        """Send to the first usable path; a path that fails passes it to the next."""
        while True:
            paths = self.usable()
            if not paths:
                return None
            outcome = yield from self.one(paths[0], cdb, data)
            if not outcome.gone:
                return paths[0], outcome

    # ---------------------------------------------------------------- the run

    def run(self) -> Translation:
        memory = self.memory
        if memory is not None and memory.owed:
            repaired = yield from self.repair(memory)
            if isinstance(repaired, Result):
                return repaired
            memory = repaired
        if self.cdb[0] == Opcode.PERSISTENT_RESERVE_IN:
            return (yield from self.pr_in(memory))
        action = service_action(self.cdb)
        if action in (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
            return (yield from self.register(memory))
        if action == PrOutAction.REGISTER_AND_MOVE:
            self.notes.append("REGISTER AND MOVE is not served on a multipath map")
            return self.result(MOVE_REFUSED, memory)
        if action == PrOutAction.RESERVE:
            return (yield from self.reserve(memory))
        if action == PrOutAction.RELEASE:
            return (yield from self.release(memory))
        return (yield from self.primary_only(memory, action))

    def no_path(self, memory: Memory | None) -> Result:
        self.notes.append("no live path")
        return self.result(NO_PATH, memory)

    def pr_in(self, memory: Memory | None) -> Translation:
        sent = yield from self.on_primary(self.cdb, self.data)
        if sent is None:
            return self.no_path(memory)
        _, outcome = sent
        if outcome.reply is None:
            return self.result(UNKNOWN, memory)
        return self.result(without_atp_c(self.cdb, outcome.reply), memory)

    def register(self, memory: Memory | None) -> Translation:
        flags = self.data[FLAGS_BYTE] if len(self.data) > FLAGS_BYTE else 0
        if flags & ALL_TG_PT:
            self.notes.append("REGISTER with ALL_TG_PT is not served on a multipath map")
            return self.result(ALL_TG_PT_REFUSED, memory)
        sent = yield from self.on_primary(self.cdb, self.data)
        if sent is None:
            return self.no_path(memory)
        primary, outcome = sent
        if outcome.reply is None:
            return self.result(UNKNOWN, _all_owe(memory, self.live, self.down))
        if not outcome.good:
            return self.result(outcome.reply, memory)
        key = int.from_bytes(self.data[8:16], "big")
        aptpl = bool(flags & APTPL)
        others = [p for p in self.usable() if p != primary]
        cdb, data = register_ignore(key, aptpl)
        got = yield from self.each(others, cdb, data)
        owed = {p.rdev for p in self.down} | set(self.failed)
        for path in others:
            if not got[path.rdev].good:
                owed.add(path.rdev)
                if not got[path.rdev].gone:
                    self.notes.append(f"{path}: registration answered "
                                      f"{_sense_text(got[path.rdev])}")
        for path in [*self.down, *(p for p in self.live if p.rdev in self.failed)]:
            self.notes.append(f"{path}: down; owes key {key:#x}, registered when it is "
                              "back")
        return self.result(outcome.reply, Memory(key, aptpl, frozenset(owed)))

    def reserve(self, memory: Memory | None) -> Translation:
        sent = yield from self.on_primary(self.cdb, self.data)
        if sent is None:
            return self.no_path(memory)
        primary, outcome = sent
        if outcome.reply is None:
            return self.result(UNKNOWN, memory)
        if outcome.reply.status == Status.RESERVATION_CONFLICT:
            held = yield from self.ask(primary, READ_RESERVATION)
            if self.held_by_us(held):
                self.notes.append(f"{primary}: the reservation is held through another "
                                  "path of this map; answered GOOD")
                return self.result(GOOD_REPLY, memory)
        return self.result(outcome.reply, memory)

    def held_by_us(self, outcome: PathOutcome) -> bool:
        """READ RESERVATION says: held with the guest's key and the type asked for."""
        reply = outcome.reply
        if reply is None or not outcome.good or len(reply.data) < 22:
            return False
        if int.from_bytes(reply.data[4:8], "big") < 16:
            return False
        key = int.from_bytes(reply.data[8:16], "big")
        return (key == int.from_bytes(self.data[0:8], "big")
                and reply.data[21] == self.cdb[2] & 0x0F)

    def release(self, memory: Memory | None) -> Translation:
        # The primary alone first: its answer is the guest's, as on one path (a UNIT
        # ATTENTION included: the command was not run, the guest retries).
        sent = yield from self.on_primary(self.cdb, self.data)
        if sent is None:
            return self.no_path(memory)
        primary, outcome = sent
        if outcome.reply is None or not outcome.good:
            return self.result(outcome.reply or UNKNOWN, memory)
        # A non-holder path answers GOOD and releases nothing: the holder may be another.
        others = [p for p in self.usable() if p != primary]
        got = yield from self.each(others, self.cdb, self.data)
        for path in others:
            reply = got[path.rdev].reply
            if reply is None:
                return self.result(UNKNOWN, memory)
            if not got[path.rdev].good and not got[path.rdev].gone:
                return self.result(reply, memory)
        held = yield from self.ask(primary, READ_RESERVATION)
        if self.held_by_us(held):
            unreachable = [p for p in self.live if p.rdev in self.failed] + list(self.down)
            self.notes.append("the reservation is still held, through a path that is "
                              "down: " + (", ".join(map(str, unreachable)) or "unknown"))
            return self.result(UNKNOWN, memory)
        yield from self.spend_unit_attentions(others)
        return self.result(outcome.reply, memory)

    def primary_only(self, memory: Memory | None, action: int) -> Translation:
        """CLEAR, PREEMPT, PREEMPT AND ABORT, REPLACE LOST RESERVATION: one path."""
        sent = yield from self.on_primary(self.cdb, self.data)
        if sent is None:
            return self.no_path(memory)
        primary, outcome = sent
        if outcome.reply is None:
            return self.result(UNKNOWN, _all_owe(memory, self.live, self.down))
        if not outcome.good:
            return self.result(outcome.reply, memory)
        others = [p for p in self.usable() if p != primary]
        if action == PrOutAction.CLEAR:
            # The target removed every registration, those of paths that are down too.
            memory = Memory()
        elif action in (PrOutAction.PREEMPT, PrOutAction.PREEMPT_AND_ABORT):
            memory = yield from self.after_preempt(memory, others)
        yield from self.spend_unit_attentions(others)
        return self.result(outcome.reply, memory)

    def after_preempt(self, memory: Memory | None, others: list[Path]) -> Generator[
            list[Send], list[PathOutcome], Memory | None]:
        """Preempting its own key (or, in an all-registrants reservation, key 0) also
        removed this host's other paths: they are registered again with its key."""
        own = int.from_bytes(self.data[0:8], "big")
        target = int.from_bytes(self.data[8:16], "big")
        if target not in (own, 0):
            return memory
        aptpl = memory.aptpl if memory is not None else False
        cdb, data = register_ignore(own, aptpl)
        got = yield from self.each(others, cdb, data)
        owed = {p.rdev for p in self.down} | set(self.failed)
        owed |= {p.rdev for p in others if not got[p.rdev].good}
        for path in others:
            if got[path.rdev].good:
                self.notes.append(f"{path}: registered again with {own:#x} after the "
                                  "preemption removed it")
        return Memory(own, aptpl, frozenset(owed))

    def spend_unit_attentions(self, others: list[Path]) -> Generator[
            list[Send], list[PathOutcome], None]:
        """The UNIT ATTENTION our own command raised on our other paths is reported once,
        on the primary, as on one path: a READ KEYS on each of the others takes it."""
        if others:
            yield from self.each(others, READ_KEYS_SHORT, retry_unit_attention=False)

    def repair(self, memory: Memory) -> Generator[list[Send], list[PathOutcome],
                                                    Memory | Result]:
        """Paths that owe the map's key and are live again get it, unless the host lost
        its registration meanwhile (preempted): then they get none, so a path that kept
        an older key does not let a fenced host write. A UNIT ATTENTION the question
        draws is the guest's (on one path its command would have drawn it): it is the
        answer, nothing else is done, and the repair waits for the next command."""
        back = [p for p in self.live if p.rdev in memory.owed]
        if not back:
            return memory
        key = memory.key
        if key:
            witness = [p for p in self.live if p.rdev not in memory.owed]
            if not witness:
                return memory
            # REGISTER key -> key: GOOD only from a nexus registered with that key.
            probe = yield from self.one(witness[0], pr_out_cdb(PrOutAction.REGISTER),
                                        key.to_bytes(8, "big") * 2 + bytes(4)
                                        + bytes([APTPL if memory.aptpl else 0]) + bytes(3))
            if probe.reply is None or probe.gone:
                return memory
            if probe.unit_attention:
                return self.result(probe.reply, memory)
            if probe.reply.status == Status.RESERVATION_CONFLICT:
                self.notes.append(f"{witness[0]}: no longer registered with {key:#x} "
                                  "(preempted meanwhile): returning paths get no key")
                key = 0
            elif not probe.good:
                return memory
        cdb, data = register_ignore(key, memory.aptpl)
        got = yield from self.each(back, cdb, data)
        owed = set(memory.owed)
        for path in back:
            if got[path.rdev].good:
                owed.discard(path.rdev)
                self.notes.append(f"{path}: back; registered with {key:#x}" if key
                                  else f"{path}: back; its registration removed")
        return Memory(key, memory.aptpl, frozenset(owed))


def _all_owe(memory: Memory | None, live: Sequence[Path], down: Sequence[Path]
             ) -> Memory | None:
    """After an outcome nobody knows, no path can be assumed to carry the key."""
    if memory is None:
        return None
    return replace(memory, owed=frozenset(p.rdev for p in [*live, *down]))


def _sense_text(outcome: PathOutcome) -> str:
    reply = outcome.reply
    if reply is None:
        return f"no answer: {outcome.why}"
    if reply.status != Status.CHECK_CONDITION:
        return f"status {reply.status:#04x}"
    return f"{reply.sense[2] & 0xF:02x}/{reply.sense[12]:02x}/{reply.sense[13]:02x}"
