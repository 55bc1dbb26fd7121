"""The worker process: drop to CAP_SYS_RAWIO, lock down, serve the channel until it closes.

Runs in a child forked by the launcher before any thread exists. Order: signals,
privileges, parent-death signal (after the uid change, which resets it), Landlock (read
beneath /sys/devices, nothing else, unless the audit or the policy needs more: see
`landlock_rules`; before any thread), the pinned fds, the receiving
threads (each receives a request and runs its SG_IO itself), a warm-up of every code
path they use, the seccomp filter (all threads), then Ready.
Exits 0 when the broker closes the channel in an orderly way, 1 when the broker died
under it or on any fault.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import prctl

from prguard.shared import fdcheck, fdpass, fdpin, landlock, privileges, sandbox, sysfs
from prguard.shared.errors import ChannelError
from prguard.shared.messages import Malformed, Probe, Ready, SgIoRequest, decode
from prguard.shared.policy_file import GROUP, PASSWD
from prguard.shared.privileges import Identity
from prguard.worker import guard as audit_guard
from prguard.worker import handler, sgio
from prguard.worker.audit_file import AuditFile
from prguard.worker.client_identity import PROC
from prguard.worker.device_gate import DeviceGate
from prguard.worker.guard import AuditSetup, Guard
from prguard.worker.journal import SOCKET as JOURNAL_SOCKET
from prguard.worker.journal import JournalSink
from prguard.worker.outcome import map_outcome

#: All the launcher uses of the worker.
__all__ = ["JOURNAL_SOCKET", "AuditFile", "AuditSetup", "JournalSink", "WorkerConfig",
           "serve"]

log = logging.getLogger("prguard.worker")

KEEP_CAPS = ("sys_rawio",)
#: What the worker may still reach by path: sysfs attributes of block devices, read-only.
LANDLOCK_RULES = (landlock.Beneath(landlock.READ_FILE | landlock.READ_DIR,
                                   path=sysfs.SYS_DEVICES),)
#: mallopt(M_ARENA_MAX): glibc would read /sys/devices/system/cpu/online the first time
#: a pool thread allocates; with one arena it never does (and never opens a file).
M_ARENA_MAX = -8


@dataclass(frozen=True)
class WorkerConfig:
    identity: Identity | None
    sg_timeout_ms: int
    threads: int
    per_device: int
    #: the audit sinks and the policy, opened and read by the launcher (None: neither)
    audit: AuditSetup | None = None
    #: tests only: a forbidden syscall to attempt once confined (docs/SECURITY.md)
    seccomp_probe: str | None = None


def landlock_rules(audit: AuditSetup | None) -> tuple[list[landlock.Beneath], list[int]]:
    """What the worker may reach by path once confined: sysfs attributes of devices, read
    only; with the audit or the policy also /proc (the clients' identities, read-only),
    the audit log's directory (create and append: a rotated log's new file), the policy
    file's directory and the account files (read-only: a reload). Also the fds opened
    for the rules, to close once they are in force."""
    rules = list(LANDLOCK_RULES)
    opened: list[int] = []
    if audit is None:
        return rules, opened
    rules.append(landlock.Beneath(landlock.READ_FILE, path=PROC))
    if audit.file is not None:
        rules.append(landlock.Beneath(landlock.WRITE_FILE | landlock.MAKE_REG,
                                      fd=audit.file.dir_fd))
    if audit.policy_path is not None:
        rules.append(landlock.Beneath(landlock.READ_FILE,
                                      path=os.path.dirname(os.path.abspath(audit.policy_path))))
        for accounts in (PASSWD, GROUP):
            try:
                fd = os.open(accounts, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # no such file: names in a policy then resolve to nothing
            opened.append(fd)
            rules.append(landlock.Beneath(landlock.READ_FILE, fd=fd))
    return rules, opened


def _die(message: str, code: int = 1) -> NoReturn:
    log.error("%s", message)
    os._exit(code)


def _send(channel: socket.socket, payload: bytes, broker_pid: int) -> None:
    try:
        fdpass.send_message(channel, payload)
    except (BrokenPipeError, ConnectionResetError):
        # The broker has shut the channel down: it is stopping (and no longer waits for
        # this answer, a liveness probe's say) or it died.
        _end_of_channel(broker_pid)
    except OSError as exc:
        _die(f"worker: cannot answer the broker ({exc.strerror}); exiting")


def _warm_up(timeout_ms: int, guard: Guard | None = None) -> None:
    """Run each code path once so nothing is imported or first-touched once confined."""
    facts = fdcheck.inspect_fd(2, with_sysfs=True)
    sysfs.warm_up()  # under Landlock already: as a request's lookups
    request = SgIoRequest(1, b"\x5e" + bytes(15), b"")
    decode(request.encode())
    handler.screen(request.encode(), None, None)
    handler.screen(request.encode(), 2, facts)
    handler.screen(b"\xc1", None, None)
    alive = handler.screen(Probe(1).encode(), None, None)
    assert alive is not None and not isinstance(alive, handler.Job)
    alive.encode()
    outcome = sgio.issue(2, request.cdb, b"", timeout_ms)  # ENOTTY on stderr: the whole path
    map_outcome(outcome, 24, pr_in=True)
    if guard is not None:
        audit_guard.warm_up(guard, outcome)  # under Landlock already, as requests are
    log.debug("worker: warm-up done")


def serve(channel: socket.socket, config: WorkerConfig) -> NoReturn:
    """Never returns: the process ends here."""
    broker_pid = os.getppid()
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the broker owns orderly shutdown

    def on_term(signum: int, frame: object) -> None:
        # The broker decides when the worker ends (it finishes the requests in flight
        # first, then closes the channel): a SIGTERM sent to the whole unit, or to this
        # process alone, is ignored while the broker lives. It is also the parent-death
        # signal, and then the worker has nobody left to answer.
        if os.getppid() != broker_pid:
            _die("worker: the broker died; exiting")

    signal.signal(signal.SIGTERM, on_term)
    if config.audit is not None and config.audit.policy is not None:
        # The broker relays a reload over the channel; a SIGUSR1 sent to the whole
        # unit must not end the worker.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    audit_fds = {fd for fd in (config.audit.fds() if config.audit else {}).values()
                 if fd is not None}
    # The worker needs stdio, its channel and the audit sinks; whatever else it inherited
    # (the listening socket's directory, a pidfile a parent holds locked, ...) is closed.
    fdpin.close_all_but({0, 1, 2, channel.fileno(), *audit_fds})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    run_sg_io = partial(sgio.issue, timeout_ms=config.sg_timeout_ms)
    guard = Guard.from_setup(config.audit) if config.audit is not None else None

    def execute(job: handler.Job) -> None:
        try:
            result = handler.run(job, run_sg_io, guard)
        except Exception as exc:  # noqa: BLE001  (pool-thread boundary: log, then exit)
            _die(f"worker: internal error running request {job.request.id}: {exc!r}", 70)
        finally:
            os.close(job.fd)
        _send(channel, result.encode(), broker_pid)

    try:
        seccomp_policy = sandbox.load_seccomp_policy("worker")
        probe = (sandbox.find_forbidden(seccomp_policy, config.seccomp_probe)
                 if config.seccomp_probe else None)
        privileges.drop(config.identity, KEEP_CAPS)
        prctl.set_pdeathsig(signal.SIGTERM)
        if os.getppid() != broker_pid:
            _die("worker: the broker died during start-up")
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
        # Before any thread: a Landlock domain covers the calling thread and those it
        # starts later, not threads that already exist.
        rules, opened = landlock_rules(config.audit)
        try:
            landlock.restrict(rules)
        finally:
            for fd in opened:
                os.close(fd)
        fdpin.hold(channel, config.audit)
        variables: sandbox.Variables = {"CHANNEL_FD": channel.fileno(),
                                        **(config.audit.fds() if config.audit else {})}
        # While single-threaded: every fd a thread receives lands above the boundary.
        variables["FD_BOUNDARY"] = fdpin.seal([2, channel.fileno(), *audit_fds])
        gate = DeviceGate(config.per_device, execute)
        receivers = [threading.Thread(target=_receive_loop, name=f"sgio-{i}", daemon=True,
                                      args=(channel, gate, broker_pid, guard))
                     for i in range(config.threads - 1)]
        for started, thread in enumerate(receivers, 1):  # no clone once confined
            try:
                thread.start()
            except RuntimeError as exc:  # EAGAIN from clone: a task or process limit
                _die(f"worker: cannot start SG_IO thread {started + 1} of {config.threads} "
                     f"({exc}): the unit's TasksMax= (or RLIMIT_NPROC) must allow "
                     f"--sg-threads + 1 tasks")
        _warm_up(config.sg_timeout_ms, guard)
        sandbox.lock_down(seccomp_policy, variables)
    except (OSError, privileges.PrivilegeError, sandbox.SandboxError,
            landlock.LandlockError) as exc:
        _die(str(exc))
    if probe is not None:
        sandbox.probe(probe)
        _die(f"worker: seccomp let {probe} through", 3)
    log.debug("worker: pid %d serving; SG_IO timeout %d ms, %d threads, %d per device",
              os.getpid(), config.sg_timeout_ms, config.threads, config.per_device)
    if guard is not None and config.audit is not None:  # under the filter: records work
        guard.start(config.audit.version, os.getpid())
    _send(channel, Ready(os.getpid()).encode(), broker_pid)
    _receive_loop(channel, gate, broker_pid, guard)  # the main thread is one more


#: Seconds an EOF waits to tell a broker that stopped from one that died: the kernel
#: closes a dying process's fds before it hands its children to a new parent, so just
#: after EOF getppid() may still name a broker that is dying. A broker that stops waits
#: for its worker to exit; a dying one is gone well within this.
DEATH_GRACE = 0.1


def _end_of_channel(broker_pid: int) -> NoReturn:
    """Exit 0 if the broker closed the channel and lives on, 1 if it died."""
    deadline = time.monotonic() + DEATH_GRACE
    while os.getppid() == broker_pid and time.monotonic() < deadline:
        select.poll().poll(10)  # a sleep the filter allows (no clock_nanosleep)
    if os.getppid() != broker_pid:
        _die("worker: the broker died; exiting")
    os._exit(0)


def _receive_loop(channel: socket.socket, gate: DeviceGate, broker_pid: int,
                  guard: Guard | None) -> NoReturn:
    """One of the worker's threads: receive a request, check it, run it (or park it)."""
    while True:
        try:
            got = fdpass.recv_message(channel)
        except ChannelError as exc:
            _send(channel, Malformed(str(exc)).encode(), broker_pid)
            continue
        except OSError as exc:
            _die(f"worker: channel read failed ({exc.strerror}); exiting")
        if got is None:
            _end_of_channel(broker_pid)
        datagram, fd = got
        facts = None
        if fd is not None:
            try:
                facts = fdcheck.inspect_fd(fd, with_sysfs=True)
            except OSError:
                facts = None
        outcome = handler.screen(datagram, fd, facts, guard)
        if isinstance(outcome, handler.Job):
            gate.run(outcome)
            continue
        if fd is not None:
            os.close(fd)
        if outcome is not None:
            _send(channel, outcome.encode(), broker_pid)
