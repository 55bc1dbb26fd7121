"""`prguard`: the start-up sequence, in the C helper's order where it is visible.

1. options; 2. tracing; 3. the socket (activation or -k); 4. -d; 5. pidfile (with -d or
-f); 6. fork: the child becomes the worker (and, with multipath on, a second child the
path opener), this process the broker; each drops its own privileges; 7. serve. Any
start-up error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TextIO

from prguard import __version__, audit_setup, cli, daemon, listen, logs, trace_option
from prguard.broker import main as broker_main
from prguard.opener import main as opener_main
from prguard.shared import fdpin, landlock, policy_file, sandbox
from prguard.shared.policy import PolicyError
from prguard.shared.privileges import Identity
from prguard.worker import main as worker_main


def _identity(opts: cli.Options) -> Identity | None:
    if opts.uid is None and opts.gid is None:
        return None
    return Identity(uid=os.getuid() if opts.uid is None else opts.uid,
                    gid=os.getgid() if opts.gid is None else opts.gid)


@dataclass(frozen=True)
class MultipathSetup:
    #: the path opener's supplementary groups
    groups: tuple[int, ...]


SYS_MODULE_DM_MULTIPATH = "/sys/module/dm_multipath"


def _multipath(opts: cli.Options, identity: Identity | None) -> MultipathSetup | None:
    """--multipath resolved: None when off; UsageError for what cannot be served."""
    if opts.multipath == "off":
        return None
    if opts.multipath == "auto" and not os.path.isdir(SYS_MODULE_DM_MULTIPATH):
        return None
    groups: tuple[int, ...] = ()
    if identity is not None:
        try:
            groups = (cli.resolve_group(opts.multipath_group),)
        except cli.UsageError:
            raise cli.UsageError(f"--multipath-group: no group '{opts.multipath_group}' "
                                 "(the group of the path nodes, /dev/sdX)") from None
    return MultipathSetup(groups)


def _trace_sink(spec: trace_option.TraceSpec) -> TextIO | None:
    """Open the -T file= sink (start-up step 2); UsageError if it cannot be opened."""
    if not spec.enabled and spec.output is None:
        return None
    if spec.output is None:
        return sys.stderr
    try:
        return open(spec.output, "a", encoding="utf-8")  # open for the process lifetime
    except OSError as exc:
        raise cli.UsageError(f"Error opening logfile {spec.output}: {exc.strerror}") from None


def _report(prog: str, exc: cli.UsageError) -> None:
    name = os.path.basename(prog)
    if exc.getopt:
        logs.line(f"{prog}: {exc}")
        logs.line(f"{name}: Try `{prog} --help' for more information.")
    elif exc.located:
        logs.line(f"{name}:{exc}")
    else:
        logs.line(f"{name}: {exc}")


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: Tests only (docs/SECURITY.md): `broker:SYSCALL` (or worker:, opener:) makes that
#: process attempt a call its policy forbids right after loading its filter, and die of it.
PROBE_VARIABLE = "PRGUARD_SECCOMP_PROBE"
#: Stand-ins for the values each process fills in at start-up, in --print-seccomp output.
PRINT_VARIABLES: dict[str, int | None] = {
    "TRACE_FD": 1002, "WAKEUP_FD": 1003, "CHANNEL_FD": 1004, "METRICS_DIR_FD": 1005,
    "METRICS_A_FD": 1006, "METRICS_B_FD": 1007, "JANITOR_FD": 1008, "CONN_FD": 1009,
    "DIR_FD": 1010, "OPENER_FD": 1011, "AUDIT_FD": 1012, "AUDIT_DIR_FD": 1013,
    "JOURNAL_FD": 1014, "FD_BOUNDARY": 1024, "WORKER_PID": 99999, "OPENER_PID": 99998,
}


def main(argv: list[str] | None = None) -> int:
    # Held back until each process has its handlers: a stop request during start-up
    # then ends in the orderly way (socket removed, exit 0), never by the default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    # Before anything is opened: a socket must never become fd 2, which the policies
    # let both processes write to.
    fdpin.ensure_standard_fds()
    argv = sys.argv if argv is None else argv
    prog = argv[0] if argv else "prguard"
    name = os.path.basename(prog)
    try:
        opts = cli.parse(argv[1:], warn=lambda text: logs.line(f"{name}:{text}",
                                                                  logging.WARNING))
        if opts.help:
            logs.out(cli.usage(prog))
            return 0
        if opts.version:
            logs.out(cli.version_text(prog, __version__))
            return 0
        if opts.trace.want_help:
            logs.out(trace_option.help_text())
            return 0
        if opts.print_seccomp:
            logs.out("".join(f"# ${k} = {v} in this listing\n"
                             for k, v in PRINT_VARIABLES.items()))
            sandbox.export_pfc(opts.print_seccomp, PRINT_VARIABLES, sys.stdout)
            return 0
        if opts.check_policy is not None:
            logs.out(policy_file.read_policy(opts.check_policy).describe())
            return 0
        trace_sink = _trace_sink(opts.trace)
        multipath = _multipath(opts, _identity(opts))
        if opts.policy is not None:  # a reload, handled once the broker serves
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        audit = audit_setup.open_audit(opts)
    except audit_setup.AuditSetupError as exc:
        logs.line(f"{name}:{exc}" if exc.located else f"{name}: {exc}")
        return 1
    except cli.UsageError as exc:
        _report(prog, exc)
        return 1
    except PolicyError as exc:
        logs.line(f"{name}:{exc}")
        return 1
    except policy_file.PolicyFileError as exc:
        logs.line(f"{name}: {exc}")
        return 1
    logs.setup(name, opts.log_level)
    try:
        count = listen.activation_fd_count(dict(os.environ), os.getpid())
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
        if count:
            listener = listen.from_activation(count, opts.socket_given, prog)
        else:
            listener = listen.create(opts.socket_path)
    except listen.ListenError as exc:
        logs.line(f"{name}: {exc}")
        return 1
    if opts.daemon:
        daemon.daemonize()
    pidfile_fd = None
    if opts.daemon or opts.pidfile_given:
        try:
            pidfile_fd = daemon.write_pidfile(opts.pidfile)
        except daemon.PidfileError as exc:
            logs.line(f"{name}: {exc}")
            if listener.socket_file is not None:  # unlike the C helper, leave nothing
                listener.socket_file.remove()
            return 1
    try:
        # Every process confines file access with Landlock as well as seccomp, and never
        # serves without it: say so once, here, rather than from each process.
        landlock.require()
    except landlock.LandlockError as exc:
        logs.line(f"{name}: {exc}")
        if listener.socket_file is not None:
            listener.socket_file.remove()
        return 1
    return _fork_pair(opts, listener, trace_sink, pidfile_fd, multipath, audit)


def _fork_opener(identity: Identity | None, setup: MultipathSetup, probe: str | None,
                 ) -> tuple[int, socket.socket]:
    """The path opener, forked before the broker drops; its pid and the broker's end."""
    broker_end, opener_end = socket.socketpair(
        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        opener_main.serve(opener_end, opener_main.OpenerConfig(
            identity=identity, groups=setup.groups, seccomp_probe=probe))
    opener_end.close()
    return pid, broker_end


def _fork_pair(opts: cli.Options, listener: listen.Listener, trace_sink: TextIO | None,
               pidfile_fd: int | None, multipath: MultipathSetup | None,
               audit: worker_main.AuditSetup | None = None) -> int:
    identity = _identity(opts)
    probe = os.environ.pop(PROBE_VARIABLE, "")
    probe_role, _, probe_call = probe.partition(":")
    broker_end, worker_end = socket.socketpair(
        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    if opts.metrics_file is not None:
        broker_main.load_metrics()  # imported now, its pages shared (the worker uses none)
    # Everything imported so far is shared by the two processes after the fork; frozen,
    # the garbage collector never writes to those objects, so their pages stay shared.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        listener.sock.close()
        broker_end.close()
        if pidfile_fd is not None:
            os.close(pidfile_fd)
        worker_main.serve(worker_end, worker_main.WorkerConfig(
            identity=identity,
            sg_timeout_ms=int(opts.sg_timeout * 1000),
            threads=opts.sg_threads,
            per_device=opts.sg_per_device,
            audit=audit,
            seccomp_probe=probe_call if probe_role == "worker" else None,
        ))
    worker_end.close()
    if audit is not None:
        audit.close()  # the worker writes the records; the broker holds none of it
    opener = None
    if multipath is not None:
        opener_pid, opener_end = _fork_opener(
            identity, multipath, probe_call if probe_role == "opener" else None)
        opener = broker_main.OpenerLink(opener_pid, opener_end)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return broker_main.run(listener.sock, broker_end, broker_main.BrokerConfig(
        identity=identity, socket_file=listener.socket_file, worker_pid=pid,
        trace_events=frozenset(opts.trace.enabled), trace_sink=trace_sink,
        limits=broker_main.Limits(
            max_connections=opts.max_connections, max_per_peer=opts.max_per_peer,
            message_deadline=opts.client_timeout, reply_deadline=opts.client_timeout,
            worker_deadline=opts.sg_timeout + broker_main.WORKER_GRACE),
        metrics_path=opts.metrics_file, version=__version__, flush_logs=logs.flush_suppressed,
        identify_clients=audit is not None,
        forward_refusals=audit is not None and (audit.file is not None
                                                 or audit.journal is not None),
        relay_policy_reload=audit is not None and audit.policy is not None,
        seccomp_probe=probe_call if probe_role == "broker" else None,
        opener=opener,
    ))


def entry() -> None:
    """Console-script entry point, and the process boundary of both processes.

    os._exit: once confined, the interpreter's own finalisation would make system calls
    the policy does not allow. A bug anywhere ends here as one line, never a traceback
    (printing one reads source files, which a confined process may not open).
    """
    try:
        code = main()
    except Exception as exc:  # noqa: BLE001  (process boundary: log, then exit)
        logs.line(f"prguard: internal error: {exc!r}")
        code = 70
    os._exit(code)


if __name__ == "__main__":
    entry()
