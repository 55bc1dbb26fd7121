"""The worker's audit and tenant policy around one SG_IO: who asked (the client the
broker registered for the connection), for which device (resolved here from the fd),
whether the policy allows it, and the records.

For a request that passed the request rules:

1. the policy decides (its identity conditions on the client the broker vouches for,
   its device and action conditions on what the worker itself sees); a refusal is
   recorded and answered CHECK CONDITION, ILLEGAL REQUEST, ACCESS DENIED - NO ACCESS
   RIGHTS (05/20/02), a failed command to any guest;
2. a PR OUT's `issuing` record is written before the ioctl. If it cannot be, the
   command is not issued: CHECK CONDITION, HARDWARE ERROR, INTERNAL TARGET FAILURE
   (04/44/00);
3. after the ioctl, the `done` record (for PR OUT, and PR IN with --audit-reads). If a
   PR OUT's cannot be written, QEMU is not given the device's answer (no record, no
   reply) but LOGICAL UNIT COMMUNICATION FAILURE (0b/08/00), the answer for an outcome
   the guest must check for itself, and an error line says what the device answered.

A request the rules refuse is recorded by `rules_refusal`.

Nothing here runs, and nothing is formatted, unless a policy or an audit sink is
configured; a PR IN without --audit-reads and without a policy costs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prguard.shared import pr_fields
from prguard.shared.audit_record import ClientIdentity, DeviceIdentity, Record
from prguard.shared.policy import Policy
from prguard.shared.scsi import Opcode, Sense, SenseCode, Status
from prguard.worker import audit_records as records
from prguard.worker.device_identity import DeviceIdentities
from prguard.worker.recorder import Recorder
from prguard.worker.sgio import SgIoOutcome

log = logging.getLogger("prguard.worker")

ACCESS_DENIED = Sense.ACCESS_DENIED
NO_RECORD = Sense.TARGET_FAILURE
UNRECORDED_OUTCOME = Sense.LUN_COMM_FAILURE
#: The client when the broker registered none for the connection (it always does when
#: auditing; a compromised broker might not): recorded as such, matching no rule that
#: names a client.
UNKNOWN_CLIENT = ClientIdentity(pid=0, uid=2**32 - 1, gid=2**32 - 1)
#: Clients a broker may register at once (its own limit on connections is lower).
MAX_CLIENTS = 65536


class Clients:
    """The client identity of each connection, as the broker registered it."""

    def __init__(self) -> None:
        self._by_id: dict[int, ClientIdentity] = {}
        self._lock = threading.Lock()

    def add(self, connection: int, identity: ClientIdentity) -> bool:
        with self._lock:
            if len(self._by_id) >= MAX_CLIENTS and connection not in self._by_id:
                return False
            self._by_id[connection] = identity
            return True

    def remove(self, connection: int) -> None:
        with self._lock:
            self._by_id.pop(connection, None)

    def get(self, connection: int) -> ClientIdentity:
        return self._by_id.get(connection, UNKNOWN_CLIENT)

    def __len__(self) -> int:
        return len(self._by_id)


class PolicyHolder:
    """The policy in force; a reload swaps it whole (readers see the old or the new)."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy


@dataclass(frozen=True)
class Refusal:
    """Answer without the device."""

    status: int
    sense: SenseCode
    reason: str


@dataclass(frozen=True)
class Admitted:
    """The request may go to the device; what its records need afterwards."""

    client: ClientIdentity
    device: DeviceIdentity | None
    pr_out: bool
    issuing: Record | None  #: the request's record, as written before the ioctl
    issued_seq: int | None
    started_ns: int


Clock = Callable[[], int]


class Guard:
    def __init__(self, recorder: Recorder | None, audit_reads: bool,
                 policy: PolicyHolder | None, identities: DeviceIdentities,
                 clock: Clock = time.time_ns, monotonic: Clock = time.monotonic_ns) -> None:
        self.recorder = recorder
        self.audit_reads = audit_reads
        self.policy = policy
        self.identities = identities
        self._clock = clock
        self._monotonic = monotonic

    def _device(self, mode: int, rdev: int) -> DeviceIdentity:
        return self.identities.resolve(mode, rdev)

    def rules_refusal(self, client: ClientIdentity, cdb: bytes, data: bytes,
                      mode: int | None, rdev: int, status: int, sense: SenseCode,
                      reason: str) -> None:
        """Record a request the request rules refused (the answer is theirs)."""
        if self.recorder is None:
            return
        device = self._device(mode, rdev) if mode is not None else None
        self.recorder.write(records.request_record(
            self._clock(), "refused", client, device, records.command_of(cdb, data),
            answer=records.answer_of(status, sense.fixed_format()),
            cause=records.refusal(records.BY_RULES, reason)))

    def before(self, client: ClientIdentity, cdb: bytes, data: bytes, mode: int,
               rdev: int) -> Admitted | Refusal:
        pr_out = cdb[0] == Opcode.PERSISTENT_RESERVE_OUT
        policy = self.policy.current if self.policy is not None else None
        device = None
        if (self.recorder is not None or (policy is not None and policy.needs_device)):
            device = self._device(mode, rdev)
        if policy is not None:
            seen = device or DeviceIdentity(dev=f"{os.major(rdev)}:{os.minor(rdev)}")
            decision = policy.decide(client, seen, pr_fields.decode(cdb, data))
            if not decision.allowed:
                if self.recorder is not None:
                    self.recorder.write(records.request_record(
                        self._clock(), "refused", client, device,
                        records.command_of(cdb, data),
                        answer=records.answer_of(Status.CHECK_CONDITION,
                                                 ACCESS_DENIED.fixed_format()),
                        cause=records.refusal(records.BY_POLICY, decision.reason,
                                              decision.rule)))
                return Refusal(Status.CHECK_CONDITION, ACCESS_DENIED, decision.reason)
        issuing = None
        issued_seq = None
        if self.recorder is not None and (pr_out or self.audit_reads):
            issuing = records.request_record(self._clock(), "command", client, device,
                                             records.command_of(cdb, data), phase="issuing")
            if pr_out:
                issued_seq = self.recorder.write(issuing)
                if issued_seq is None:
                    self.recorder.refused_pr_out()
                    return Refusal(Status.CHECK_CONDITION, NO_RECORD,
                                   "no audit record could be written: PR OUT not issued")
        return Admitted(client, device, pr_out, issuing, issued_seq, self._monotonic())

    def after(self, admitted: Admitted, outcome: SgIoOutcome, status: int,
              sense: bytes) -> Refusal | None:
        """Record the outcome. A replacement answer when a PR OUT's outcome could not be
        recorded, else None (QEMU gets the device's answer)."""
        if self.recorder is None or admitted.issuing is None:
            return None
        duration_us = (self._monotonic() - admitted.started_ns) // 1000
        answer = records.answer_of(status, sense)
        done = records.done(admitted.issuing, self._clock(), admitted.issued_seq, answer,
                            records.cause_of(outcome), duration_us)
        if self.recorder.write(done) is not None or not admitted.pr_out:
            return None
        command = admitted.issuing.command
        log.error("audit: request sent to the device, outcome not recorded: %s %s on %s "
                  "answered %s%s (audit record %s); QEMU is answered LOGICAL UNIT "
                  "COMMUNICATION FAILURE", command.op if command else "?",
                  command.action if command else "?",
                  admitted.device.wwn or admitted.device.dev if admitted.device else "?",
                  answer.status, f" {answer.sense}" if answer.sense else "",
                  admitted.issued_seq)
        return Refusal(Status.CHECK_CONDITION, UNRECORDED_OUTCOME,
                       "outcome could not be recorded")
