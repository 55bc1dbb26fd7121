"""The broker process: drop every privilege, lock down, serve until stopped.

Order: wait for the worker to be up (if it cannot drop privileges it says so, once),
drop to the -u/-g ids with no capability, start the janitor (which alone keeps the socket
file's directory, to remove the file at the end: broker/janitor.py), apply a Landlock
ruleset that grants no file by path (but the metrics file's swap, when configured), start
the event loop, warm up, pin the fds the filter names (shared/fdpin.py), load the seccomp
filter, tell systemd READY=1, then serve. Returns the exit status: 0 after an
orderly stop (SIGTERM, SIGINT, SIGHUP), 1 if the worker failed to start or was lost.

Once confined, nothing that existed at lock-down is closed (not the listener, the
channel, the notify socket or the event loop): the policy allows closing only what came
later. The worker learns of the end by shutdown() of the channel; the rest goes with the
process (os._exit).
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import TextIO

from prguard.broker.janitor import Janitor, JanitorError
from prguard.broker.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_PEER,
    DEFAULT_MESSAGE_DEADLINE,
    WORKER_GRACE,
    Limits,
)
from prguard.broker.loop import Loop
from prguard.broker.metrics_file import MetricsFile, MetricsFileError
from prguard.broker.multipath import Multipath
from prguard.broker.notify import Notifier
from prguard.broker.opener_client import OpenerClient
from prguard.broker.reporting import LastErrorHandler, Publisher, Reporter
from prguard.broker.server import Server, warm_up
from prguard.broker.stats import Stats
from prguard.broker.trace import Tracer
from prguard.broker.watchdog import Watchdog, tick_period, watchdog_interval
from prguard.broker.worker_client import Reply, WorkerClient, await_ready
from prguard.shared import fdpin, landlock, privileges, sandbox
from prguard.shared.messages import PolicyReloaded
from prguard.shared.privileges import Identity
from prguard.shared.seccomp_policy import Rule, SeccompPolicy
from prguard.shared.socket_file import SocketFile

#: All the launcher uses of the broker: run() with its configuration, and the limits'
#: defaults its options show.
__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_PER_PEER", "DEFAULT_MESSAGE_DEADLINE",
           "WORKER_GRACE", "BrokerConfig", "Limits", "OpenerLink", "load_metrics", "run"]

log = logging.getLogger("prguard.broker")

WORKER_EXIT_GRACE = 2.0
WORKER_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class OpenerLink:
    """The path opener (multipath on): its pid and the broker's end of its channel."""

    pid: int
    channel: socket.socket


@dataclass(frozen=True)
class BrokerConfig:
    identity: Identity | None
    #: the socket file to remove at exit; None when the socket came by activation
    socket_file: SocketFile | None
    worker_pid: int
    #: the -T events to write, and where (None: nowhere)
    trace_events: frozenset[str] = frozenset()
    trace_sink: TextIO | None = None
    limits: Limits = field(default_factory=Limits)
    #: --metrics-file: where to publish the numbers (None: nowhere)
    metrics_path: str | None = None
    #: prguard's version, as the metrics show it
    version: str = ""
    #: the launcher's: report the log lines its rate limit dropped (the periodic tick)
    flush_logs: Callable[[], None] = lambda: None
    #: introduce each client to the worker (audit records and the policy need it)
    identify_clients: bool = False
    #: send refused requests to the worker too, which records them (an audit sink is on)
    forward_refusals: bool = False
    #: SIGUSR1 has the worker read the --policy file again
    relay_policy_reload: bool = False
    #: tests only: a forbidden syscall to attempt once confined (docs/SECURITY.md)
    seccomp_probe: str | None = None
    opener: OpenerLink | None = None


def run(listener: socket.socket, channel: socket.socket, config: BrokerConfig) -> int:
    if await_ready(channel, WORKER_START_TIMEOUT) is None:
        _remove_socket_file(config)
        how = _reap(config.worker_pid)
        if not how.startswith("exit status"):  # an exit status means it said why itself
            log.error("the worker failed to start (%s); exiting", how)
        _end_opener(config, shut=True)
        return 1
    opener = config.opener
    if opener is not None and await_ready(opener.channel, WORKER_START_TIMEOUT) is None:
        _remove_socket_file(config)
        how = _reap(opener.pid)
        if not how.startswith("exit status"):
            log.error("the path opener failed to start (%s); exiting", how)
        channel.close()
        _reap(config.worker_pid)
        return 1
    notifier = Notifier.from_environ()  # connect while the socket is still reachable
    watchdog_sec = watchdog_interval(os.environ, os.getpid())
    stats = Stats()
    janitor: Janitor | None = None
    try:
        seccomp_policy = sandbox.load_seccomp_policy("broker")
        janitor_policy = sandbox.load_seccomp_policy("janitor")
        probe = (sandbox.find_forbidden(seccomp_policy, config.seccomp_probe)
                 if config.seccomp_probe else None)
        publisher = _metrics(config, stats)
        privileges.drop(config.identity, ())
        if config.socket_file is not None:  # after the drop: the janitor is us, unprivileged
            janitor = Janitor.start(config.socket_file, janitor_policy)
        # From here on the broker reaches no file by path (but the metrics file's swap).
        landlock.restrict(landlock_rules(publisher.fds()[0] if publisher else None))
    except (OSError, privileges.PrivilegeError, sandbox.SandboxError, MetricsFileError,
            JanitorError, landlock.LandlockError) as exc:
        log.error("%s", exc)
        channel.close()
        _remove_socket_file(config, janitor)
        _reap(config.worker_pid)
        _end_opener(config, shut=True)
        return 1
    tracer = Tracer(config.trace_events, config.trace_sink)
    loop = Loop()  # never closed: its fds are pinned
    fdpin.hold(loop, listener, channel, notifier, config.trace_sink, janitor,
               opener.channel if opener else None)
    return _serve(loop, listener, channel, config, tracer, seccomp_policy, probe, notifier,
                  stats, publisher, watchdog_sec, janitor)


def landlock_rules(metrics_dir_fd: int | None = None) -> list[landlock.Beneath]:
    """The broker reaches no file by path. With --metrics-file it swaps the file and its
    spare in their directory (renameat2 RENAME_EXCHANGE, which Landlock counts as
    removing and making a regular file there): nothing beneath any other directory."""
    if metrics_dir_fd is None:
        return []
    return [landlock.Beneath(landlock.MAKE_REG | landlock.REMOVE_FILE, fd=metrics_dir_fd)]


def load_metrics() -> None:
    """Import the metrics' module (and prometheus-client), only wanted with
    --metrics-file. The launcher calls this before it forks, so that the pages of these
    modules stay shared by the two processes (it freezes the garbage collector's view
    of them)."""
    importlib.import_module("prguard.broker.metrics")


def _metrics(config: BrokerConfig, stats: Stats) -> Publisher | None:
    """The metrics file, opened (created if need be) while still root; the numbers the
    previous instance left in it carried over."""
    if config.metrics_path is None:
        return None
    from prguard.broker import metrics  # here: only with --metrics-file (see load_metrics)
    file = MetricsFile.create(config.metrics_path, config.identity)
    carried = metrics.carried_over(file.previous())
    stats.starts = int(carried.get("prguard_starts", 0)) + 1
    stats.worker_deaths = int(carried.get("prguard_worker_deaths", 0))
    return metrics.Publisher(file, metrics.StatsCollector(stats, config.version))


def _variables(config: BrokerConfig, tracer: Tracer, channel: socket.socket, loop: Loop,
               publisher: Publisher | None, janitor: Janitor | None) -> sandbox.Variables:
    """The fds (and pid) the policy names; every fd here is pinned before lock-down."""
    metrics_fds: tuple[int | None, ...] = (None, None, None)
    if publisher is not None:
        metrics_fds = publisher.fds()
    return {
        "CHANNEL_FD": channel.fileno(),
        "JANITOR_FD": janitor.sock.fileno() if janitor else None,
        "WORKER_PID": config.worker_pid,
        "TRACE_FD": tracer.fileno(),
        "WAKEUP_FD": loop.wakeup_fd(),
        **dict(zip(("METRICS_DIR_FD", "METRICS_A_FD", "METRICS_B_FD"), metrics_fds,
                   strict=True)),
        "OPENER_FD": config.opener.channel.fileno() if config.opener else None,
        "OPENER_PID": config.opener.pid if config.opener else None,
    }


def _pin(variables: sandbox.Variables) -> sandbox.Variables:
    """Seal the fd table below the named fds (and stderr); add FD_BOUNDARY."""
    named = [v for k, v in variables.items() if k.endswith("_FD") and v is not None]
    return {**variables, "FD_BOUNDARY": fdpin.seal([2, *named])}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _serve(loop: Loop, listener: socket.socket, channel: socket.socket, config: BrokerConfig,
           tracer: Tracer, seccomp_policy: SeccompPolicy, probe: Rule | None,
           notifier: Notifier, stats: Stats, publisher: Publisher | None,
           watchdog_sec: float | None, janitor: Janitor | None) -> int:
    limits = fit_to_fd_limit(config.limits)
    worker = WorkerClient(channel, loop, limits.worker_deadline)
    worker.start()
    multipath = _multipath(config, loop, worker, limits)
    server = Server(loop, worker, tracer, limits, stats, multipath)
    server.identify_clients = config.identify_clients
    server.requests.forward_refusals = config.forward_refusals
    server.listen(listener)
    last_error = LastErrorHandler()
    logging.getLogger("prguard").addHandler(last_error)

    def gauges(numbers: Stats) -> None:
        numbers.clients = server.clients
        numbers.connections_open = server.connections
        numbers.in_flight = server.in_flight

    reporter = Reporter(stats, notifier, Watchdog(limits.worker_deadline),
                        watchdog_sec is not None, worker.probe, gauges, publisher,
                        config.flush_logs, last_error)
    worker.on_alive = lambda probe_id: reporter.alive(probe_id, loop.time())
    stop_signal: list[int] = []

    def on_signal(signum: int) -> None:
        if signum == signal.SIGUSR1:
            log.info("SIGUSR1: the worker reads the policy file again")
            worker.reload_policy(_policy_reloaded)
        elif not stop_signal:
            stop_signal.append(signum)
            loop.stop()

    loop.catch_signals(_signals(config), on_signal)
    worker.on_lost = lambda reason: loop.stop()
    if multipath is not None:
        multipath.opener.on_lost = lambda reason: loop.stop()
    try:
        warm_up()
        reporter.warm_up()
        variables = _pin(_variables(config, tracer, channel, loop, publisher, janitor))
        sandbox.lock_down(seccomp_policy, variables)
    except (OSError, sandbox.SandboxError, MetricsFileError) as exc:
        log.error("%s", exc)
        notifier.close()
        server.stop_accepting()
        _remove_socket_file(config, janitor)
        worker.close()
        _reap(config.worker_pid)
        _end_opener(config, shut=True)
        return 1
    if probe is not None:
        sandbox.probe(probe)
        log.error("seccomp let %s through", probe)
        return 3
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _signals(config))  # blocked since start-up
    period = tick_period(watchdog_sec)

    def on_tick(key: Hashable) -> None:
        reporter.tick(loop.time())
        ticks.add(key, loop.time())

    ticks = loop.deadlines(period, on_tick)
    ticks.add("report", loop.time() - period)  # the first report right after READY=1
    try:
        code = _until_stopped(config, tracer, notifier, loop, server, worker, multipath,
                              stop_signal, janitor)
        if worker.lost is not None:
            stats.worker_deaths += 1
        reporter.final()
        return code
    finally:
        # Blocked again: nothing handles them once the loop stops running, and the
        # process ends by os._exit.
        signal.pthread_sigmask(signal.SIG_BLOCK, _signals(config))


def _signals(config: BrokerConfig) -> tuple[int, ...]:
    """The signals the loop handles: the stop signals, and SIGUSR1 with --policy (without
    it SIGUSR1 keeps its default action, as in the C helper)."""
    return (*STOP_SIGNALS, signal.SIGUSR1) if config.relay_policy_reload else STOP_SIGNALS


def _policy_reloaded(reply: Reply) -> None:
    if isinstance(reply, PolicyReloaded):  # the worker has said how it went
        log.info("policy reload: %s", "done" if reply.ok else f"refused ({reply.reason})")
    else:
        log.error("policy reload: no answer from the worker (%s)", reply)


def _until_stopped(config: BrokerConfig, tracer: Tracer, notifier: Notifier, loop: Loop,
                   server: Server, worker: WorkerClient, multipath: Multipath | None,
                   stop_signal: list[int], janitor: Janitor | None) -> int:
    """Serve until a stop signal or the loss of the worker or the path opener; then
    finish what is in flight. 0 after an orderly stop, 1 if the worker or the opener was
    lost or did not end cleanly."""
    notifier.send(f"READY=1\nSTATUS=serving, worker pid {config.worker_pid}\n"
                  f"MAINPID={os.getpid()}")
    loop.run()
    notifier.send("STOPPING=1")
    opener_lost = multipath.opener.lost if multipath is not None else None
    if worker.lost is None and opener_lost is None:
        log.info("signal %d: finishing requests in flight, then exiting", stop_signal[0])
    server.stop_accepting()
    _remove_socket_file(config, janitor)
    loop.run(until=lambda: server.in_flight == 0)  # the worker deadline bounds this
    server.close_all()
    code = 0
    if multipath is not None:
        multipath.close()
        multipath.opener.close()
        how = _reap(multipath.opener_pid)
        if multipath.opener.lost is not None:
            log.error("%s (%s); exiting", multipath.opener.lost, how)
            code = 1
        elif how != "exit status 0":
            log.error("the path opener did not end cleanly at stop (%s)", how)
            code = 1
    if worker.lost is not None:  # before the stop, or while finishing
        how = _reap(config.worker_pid)
        tracer.emit("prguard_worker_lost", reason=repr(worker.lost), how=how)
        log.error("%s (%s); exiting", worker.lost, how)
        return 1
    worker.close()
    how = _reap(config.worker_pid)
    if how != "exit status 0":
        log.error("the worker did not end cleanly at stop (%s)", how)
        return 1
    return code


def _multipath(config: BrokerConfig, loop: Loop, worker: WorkerClient, limits: Limits
               ) -> Multipath | None:
    opener = config.opener
    if opener is None:
        return None
    client = OpenerClient(opener.channel, loop, limits.worker_deadline)
    client.start()
    return Multipath(client, worker, opener.pid)


def _end_opener(config: BrokerConfig, shut: bool) -> None:
    """Start-up failed: the opener sees EOF and exits; collect it."""
    if config.opener is None:
        return
    if shut:
        config.opener.channel.close()
    _reap(config.opener.pid)


#: fds the broker keeps for itself (stdio, listener, channel, epoll, janitor, notify, trace).
RESERVED_FDS = 32


def fit_to_fd_limit(limits: Limits) -> Limits:
    """Never accept more clients than fds allow: each holds its socket and, while its
    request is in flight, the device fd. Beyond that, clients wait in the backlog
    rather than make accept() fail (and spin) with EMFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits
    budget = max((soft - RESERVED_FDS) // 2, 1)
    if budget >= limits.max_connections:
        return limits
    log.warning("RLIMIT_NOFILE %d allows %d clients at once, not %d", soft, budget,
                limits.max_connections)
    return replace(limits, max_connections=budget,
                   max_per_peer=min(limits.max_per_peer, budget))


def _remove_socket_file(config: BrokerConfig, janitor: Janitor | None = None) -> None:
    """Once the janitor runs it alone can (and the broker has no fd of the directory)."""
    if janitor is not None:
        janitor.finish()
    elif config.socket_file is not None:
        config.socket_file.remove()


def _reap(worker_pid: int) -> str:
    """Collect the worker or the path opener (each exits by itself once its channel is
    closed); how it ended."""
    deadline = time.monotonic() + WORKER_EXIT_GRACE
    while True:
        try:
            pid, status = os.waitpid(worker_pid, os.WNOHANG)
        except ChildProcessError:
            return "already collected"
        if pid:
            return _wait_status_text(status)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    try:
        os.kill(worker_pid, signal.SIGKILL)
        _, status = os.waitpid(worker_pid, 0)
    except (ProcessLookupError, ChildProcessError):
        return "gone"
    return _wait_status_text(status)


def _wait_status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS:
            return "killed by SIGSYS: a system call outside its seccomp policy"
        return f"killed by {signal.Signals(sig).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
