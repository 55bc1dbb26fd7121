"""Serving a dm-multipath map: the path opener checks the map and opens its paths, the
translation (broker/mpath_translate.py) decides what each path is sent, the worker runs
each SG_IO on a path fd.

The routing hook in broker/requests.py sends here every request on a block device whose
major number is not known to be another driver's: the broker reads no sysfs, so which
major is device-mapper's (it is given out when dm loads) is learnt from the opener. The
first device of any other major the opener says is certainly no device-mapper device
goes back to the ordinary path, and so does every later device of that major at once.

Requests for one map are served one at a time, in order (a fan-out must not interleave
with another); the SG_IOs of one step go to the worker together. Path fds are kept per
map (closing a path fd opened for writing makes udev re-probe the disk) and dropped when
the path leaves the map or fails. What each map's paths must carry (the key, which paths
owe it) is kept per dm uuid while prguard runs.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from prguard.broker.admission import Peer
from prguard.broker.mpath_translate import (
    Memory,
    Path,
    PathOutcome,
    Result,
    Send,
    Translation,
    translate,
    without_atp_c,
)
from prguard.broker.opener_client import MapAnswer, NotAMap, OpenedMap, OpenerClient
from prguard.broker.stats import Outcome
from prguard.broker.worker_client import Answer, NoAnswer, WorkerClient, WorkerLost
from prguard.shared import fdpass
from prguard.shared.messages import Refused
from prguard.shared.qemu_protocol import PrRequest
from prguard.shared.rules import FdFacts, FdKind
from prguard.shared.scsi import Opcode, PrReply, Sense, Status, service_action

log = logging.getLogger("prguard.broker")

#: The answer for a map prguard does not serve: what a partition gets (spec: the C
#: helper's answer to SG_IO failing with ENOTTY).
NOT_SERVED = PrReply.generated(Status.CHECK_CONDITION, Sense.IO_ERROR)
UNKNOWN_OUTCOME = PrReply.generated(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE)
#: Maps whose memory and path fds are kept; the least recently used beyond are dropped.
MAX_MAPS = 256

#: (reply, logged, outcome) to the request's owner: outcome None when the device answered,
#: else how it ended as the metrics name it (broker/stats.py Outcome)
Done = Callable[[PrReply, bool, str | None], None]


@dataclass
class _Job:
    request: PrRequest
    facts: FdFacts
    peer: Peer
    #: the connection as the worker knows it (0: clients are not identified)
    client: int
    done: Done
    #: serve it as any disk (it is no device-mapper device); takes over the fd
    otherwise: Callable[[], None]


@dataclass
class _Map:
    """One map's state, by its device number."""

    fds: dict[int, int] = field(default_factory=dict)  #: path rdev -> fd
    queue: deque[_Job] = field(default_factory=deque)
    busy: bool = False


def _name(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


class Multipath:
    def __init__(self, opener: OpenerClient, worker: WorkerClient, opener_pid: int) -> None:
        self.opener = opener
        self.opener_pid = opener_pid
        self._worker = worker
        self._maps: OrderedDict[int, _Map] = OrderedDict()
        self._memory: OrderedDict[str, Memory] = OrderedDict()
        #: majors of block devices the opener said are no device-mapper devices
        self._other_majors: set[int] = set()

    def routes(self, facts: FdFacts) -> bool:
        """Could this request's fd be a device-mapper map (served here, or refused)?"""
        return facts.kind == FdKind.BLOCK_DISK and os.major(facts.rdev) not in self._other_majors

    def answer(self, request: PrRequest, facts: FdFacts, peer: Peer, client: int,
               done: Done, otherwise: Callable[[], None]) -> None:
        """Serve `request` (whose fd this takes over); `done` gets the reply, or
        `otherwise` is called if it is no map after all. Each SG_IO on a path names
        `client` (for the audit and the policy)."""
        state = self._maps.get(facts.rdev)
        if state is None:
            state = self._maps[facts.rdev] = _Map()
            self._forget_old()
        self._maps.move_to_end(facts.rdev)
        state.queue.append(_Job(request, facts, peer, client, done, otherwise))
        if not state.busy:
            self._next(facts.rdev, state)

    def _forget_old(self) -> None:
        while len(self._maps) > MAX_MAPS:
            for rdev, state in self._maps.items():
                if not state.busy and not state.queue:
                    fdpass.close_all(list(state.fds.values()))
                    del self._maps[rdev]
                    break
            else:
                return

    def _next(self, rdev: int, state: _Map) -> None:
        while state.queue and os.major(rdev) in self._other_majors:
            state.queue.popleft().otherwise()
        if not state.queue:
            state.busy = False
            if os.major(rdev) in self._other_majors:
                self._maps.pop(rdev, None)
            return
        state.busy = True
        job = state.queue.popleft()
        self.opener.ask(job.request.fd, tuple(sorted(state.fds)),
                         lambda answer: self._on_map(rdev, state, job, answer))

    def _finish(self, rdev: int, state: _Map, job: _Job, reply: PrReply, logged: bool,
                outcome: str | None = None) -> None:
        os.close(job.request.fd)
        job.done(reply, logged, outcome)
        self._next(rdev, state)

    def _on_map(self, rdev: int, state: _Map, job: _Job, answer: MapAnswer) -> None:
        what = f"{job.peer}: {_command(job.request.cdb)} on map {_name(rdev)}"
        if isinstance(answer, NotAMap) and answer.not_device_mapper:
            if os.major(rdev) not in self._other_majors:
                log.info("block major %d is not device-mapper's: served as disks",
                         os.major(rdev))
                self._other_majors.add(os.major(rdev))
            job.otherwise()
            self._next(rdev, state)
            return
        if isinstance(answer, NotAMap):
            log.warning("%s refused: %s (served: dm-multipath maps whose paths are whole "
                        "SCSI disks)", what, answer.reason)
            self._finish(rdev, state, job, NOT_SERVED, True, Outcome.REFUSED_VALIDATION)
            return
        if not isinstance(answer, OpenedMap):
            log.error("%s: %s", what, answer.reason)
            self._finish(rdev, state, job, UNKNOWN_OUTCOME, True, Outcome.WORKER_LOST)
            return
        current = {p.rdev for p in answer.paths}
        for gone in [r for r in state.fds if r not in current]:
            os.close(state.fds.pop(gone))
        state.fds.update(answer.fds)
        if job.facts.read_only:  # PR IN only (the rules refused PR OUT): on the map fd
            self._on_map_fd(rdev, state, job, what, retried=False)
            return
        live = [Path(p.rdev, p.name) for p in answer.paths if p.live and p.rdev in state.fds]
        down = [Path(p.rdev, p.name) for p in answer.paths
                if not (p.live and p.rdev in state.fds)]
        memory = self._memory.get(answer.uuid)
        step = translate(job.request.cdb, job.request.parameter_list, live, down, memory)
        self._advance(rdev, state, job, what, answer.uuid, step, None)

    def _advance(self, rdev: int, state: _Map, job: _Job, what: str, uuid: str,
                 step: Translation, outcomes: list[PathOutcome] | None) -> None:
        try:
            batch = next(step) if outcomes is None else step.send(outcomes)
        except StopIteration as stop:
            self._done(rdev, state, job, what, uuid, stop.value)
            return
        got: list[PathOutcome | None] = [None] * len(batch)

        def collect(index: int, answer: Answer) -> None:
            got[index] = _outcome(answer)
            if all(o is not None for o in got):
                self._advance(rdev, state, job, what, uuid, step,
                              [o for o in got if o is not None])

        for index, send in enumerate(batch):
            self._send(state, send, job.client, partial(collect, index))

    def _send(self, state: _Map, send: Send, client: int,
              on_answer: Callable[[Answer], None]) -> None:
        fd = state.fds.get(send.rdev)
        if fd is None:  # the translation only names paths it was given
            on_answer(WorkerLost("no fd for a path"))
            return
        self._worker.forward(send.cdb, send.data, fd, on_answer, client, owned=False)

    def _done(self, rdev: int, state: _Map, job: _Job, what: str, uuid: str,
              result: Result) -> None:
        if result.memory is not None:
            self._memory[uuid] = result.memory
            self._memory.move_to_end(uuid)
            while len(self._memory) > MAX_MAPS:
                self._memory.popitem(last=False)
        for failed in result.failed:
            fd = state.fds.pop(failed, None)
            if fd is not None:
                os.close(fd)  # opened again once the path is running
        for note in result.notes:
            log.warning("%s (%s): %s", what, uuid, note)
        self._finish(rdev, state, job, result.reply, False)

    def _on_map_fd(self, rdev: int, state: _Map, job: _Job, what: str, retried: bool) -> None:
        """PR IN on a read-only map fd: the map's own path choice; a path dm has not yet
        failed answers as gone once, the next try goes down another path."""
        request = job.request

        def on_answer(answer: Answer) -> None:
            outcome = _outcome(answer)
            if outcome.gone and not retried:
                self._on_map_fd(rdev, state, job, what, retried=True)
                return
            reply = outcome.reply
            if reply is None:
                log.error("%s: outcome unknown (%s)", what, outcome.why)
                self._finish(rdev, state, job, UNKNOWN_OUTCOME, True, Outcome.WORKER_LOST)
                return
            self._finish(rdev, state, job, without_atp_c(request.cdb, reply), False)

        self._worker.forward(request.cdb, request.parameter_list, request.fd, on_answer,
                             job.client, owned=False)

    def close(self) -> None:
        for state in self._maps.values():
            fdpass.close_all(list(state.fds.values()))
            state.fds.clear()


def _outcome(answer: Answer) -> PathOutcome:
    if isinstance(answer, WorkerLost):
        return PathOutcome(None, f"worker lost: {answer.reason}")
    if isinstance(answer, NoAnswer):
        return PathOutcome(None, f"no answer from the worker within {answer.seconds:g} s")
    if isinstance(answer, Refused):
        return PathOutcome(PrReply(answer.status, answer.sense), answer.reason)
    return PathOutcome(answer.reply)


def _command(cdb: bytes) -> str:
    name = "PR IN" if cdb[0] == Opcode.PERSISTENT_RESERVE_IN else "PR OUT"
    return f"{name} sa {service_action(cdb):#04x}"
