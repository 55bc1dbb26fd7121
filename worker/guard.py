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

from prguard.shared import policy_file, pr_fields
from prguard.shared.audit_record import (
    GENESIS,
    NEW_CHAIN,
    ClientIdentity,
    DeviceIdentity,
    PolicyChange,
    Record,
    Start,
    utc_text,
)
from prguard.shared.policy import Policy, PolicyError
from prguard.shared.scsi import Opcode, Sense, SenseCode, Status
from prguard.worker import audit_records as records
from prguard.worker import client_identity
from prguard.worker.audit_file import AuditFile
from prguard.worker.device_identity import DeviceIdentities
from prguard.worker.journal import JournalSink
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


@dataclass(frozen=True)
class AuditSetup:
    """What the launcher opened and read before the fork, for the worker: the audit
    sinks (--audit-log, --audit-journal), --audit-sync, --audit-reads, the --policy."""

    file: AuditFile | None = None
    journal: JournalSink | None = None
    sync: bool = False
    reads: bool = False
    policy: Policy | None = None
    policy_path: str | None = None
    #: prguard's version, for the `start` record
    version: str = ""

    def close(self) -> None:
        """In a process that does not write records (the broker, after the fork)."""
        if self.file is not None:
            os.close(self.file.fd)
            os.close(self.file.dir_fd)
        if self.journal is not None:
            self.journal.sock.close()

    def fds(self) -> dict[str, int | None]:
        """The fds the worker's seccomp policy names."""
        return {"AUDIT_FD": self.file.fd if self.file else None,
                "AUDIT_DIR_FD": self.file.dir_fd if self.file else None,
                "JOURNAL_FD": self.journal.fileno() if self.journal else None}


class Guard:
    def __init__(self, recorder: Recorder | None, audit_reads: bool,
                 policy: PolicyHolder | None, identities: DeviceIdentities,
                 clock: Clock = time.time_ns, monotonic: Clock = time.monotonic_ns,
                 policy_path: str | None = None) -> None:
        self.recorder = recorder
        self.audit_reads = audit_reads
        self.policy = policy
        self.policy_path = policy_path
        self.identities = identities
        self.clients = Clients()
        self._clock = clock
        self._monotonic = monotonic

    @classmethod
    def from_setup(cls, setup: AuditSetup) -> Guard:
        recorder = (Recorder(setup.file, setup.journal, setup.sync)
                    if setup.file is not None or setup.journal is not None else None)
        holder = PolicyHolder(setup.policy) if setup.policy is not None else None
        return cls(recorder, setup.reads, holder, DeviceIdentities(),
                   policy_path=setup.policy_path)

    # -- the worker's life -----------------------------------------------------------------

    def start(self, version: str, pid: int) -> None:
        """The `start` record: where the chain continues from, what is in force."""
        if self.recorder is None:
            return
        continues = (self.recorder.continues_from if self.recorder.continues_from
                     else NEW_CHAIN)
        self.recorder.write(Record(
            seq=1, prev=GENESIS, time=utc_text(self._clock()), kind="start",
            start=Start(version=version, pid=pid, continues=continues,
                        audit_reads=self.audit_reads, audit_sync=self.recorder.syncs,
                        policy=self.policy.current.sha256 if self.policy else None)))

    def identify(self, connection: int, pid: int, uid: int, gid: int,
                 pidfd: int | None) -> ClientIdentity:
        """A connection the broker introduces: read who it is, remember it."""
        identity = client_identity.identify(pid, uid, gid, pidfd,
                                            client_identity.boot_ticks())
        if not self.clients.add(connection, identity):
            log.warning("worker: %d client connections known already; connection %d is "
                        "recorded as an unknown client", len(self.clients), connection)
        return identity

    def reload_policy(self) -> tuple[bool, str]:
        """Read --policy again; on any problem the policy in force stays."""
        if self.policy is None or self.policy_path is None:
            return False, "no --policy was given"
        try:
            policy = policy_file.read_policy(self.policy_path)
        except (PolicyError, policy_file.PolicyFileError) as exc:
            log.error("policy reload refused, the policy in force stays: %s", exc)
            if self.recorder is not None:
                self.recorder.write(Record(
                    seq=1, prev=GENESIS, time=utc_text(self._clock()), kind="policy",
                    policy=PolicyChange(result="refused", reason=str(exc)[:1000])))
            return False, str(exc)
        self.policy.current = policy
        log.warning("policy reloaded: %s, %d rule(s) and the default, sha256 %s",
                    policy.source, len(policy.rules), policy.sha256)
        if self.recorder is not None:
            self.recorder.write(Record(
                seq=1, prev=GENESIS, time=utc_text(self._clock()), kind="policy",
                policy=PolicyChange(result="loaded", sha256=policy.sha256,
                                    rules=len(policy.rules))))
        return True, ""

    # -- requests --------------------------------------------------------------------------

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
        recorded = self.recorder is not None and (pr_out or self.audit_reads)
        if not recorded and policy is None:
            return Admitted(client, None, pr_out, None, None, 0)  # a PR IN: nothing to do
        device = None
        if recorded or (policy is not None and policy.needs_device):
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
        if self.recorder is not None and recorded:
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


def warm_up(guard: Guard, outcome: SgIoOutcome) -> None:
    """Every code path of the guard once, before lockdown, writing nothing: imports,
    the JSON encoder, hashing, the journal's fields, the policy, /proc and sysfs reads."""
    from prguard.shared import audit_render
    from prguard.shared.audit_chain import Head, chained
    from prguard.worker.journal import datagram, record_fields

    client = client_identity.identify(os.getpid(), 0, 0, None, client_identity.boot_ticks())
    device = guard.identities.resolve(0o60000, os.makedev(7, 1 << 19))
    for cdb, data in ((b"\x5f" + bytes(6) + b"\x00\x18" + bytes(7), bytes(24)),
                      (b"\x5e" + bytes(15), b"")):
        command = records.command_of(cdb, data)
        if guard.policy is not None:
            guard.policy.current.decide(client, device, pr_fields.decode(cdb, data))
        record = records.request_record(guard._clock(), "command", client, device, command,
                                        phase="issuing")
        done = records.done(record, guard._clock(), 1, records.answer_of(
            int(Status.CHECK_CONDITION), Sense.INVALID_FIELD.fixed_format()),
            records.cause_of(outcome), 1)
        linked, line, head = chained(done, Head())
        datagram(record_fields(linked, line[:-1], head.hash, audit_render.line(linked)))
    records.refusal(records.BY_POLICY, "warm-up")
    chained(Record(seq=1, prev=GENESIS, time=utc_text(0), kind="policy",
                   policy=PolicyChange(result="loaded")), Head())
