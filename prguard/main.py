"""`prguard`: the start-up sequence, in the C helper's order where it is visible.

1. options; 2. tracing; 3. the socket (activation or -k); 4. -d; 5. pidfile (with -d or
-f); 6. fork: the child becomes the worker, this process the broker; each drops its own
privileges; 7. serve. Any start-up error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import TextIO

from broker import main as broker_main
from broker import trace
from prguard import __version__, cli, daemon, listen, logs
from shared.privileges import Identity
from worker import main as worker_main


def _identity(opts: cli.Options) -> Identity | None:
    if opts.uid is None and opts.gid is None:
        return None
    return Identity(uid=os.getuid() if opts.uid is None else opts.uid,
                    gid=os.getgid() if opts.gid is None else opts.gid)


def _tracer(spec: trace.TraceSpec) -> trace.Tracer:
    """Open the -T file= sink (start-up step 2); UsageError if it cannot be opened."""
    if not spec.enabled and spec.output is None:
        return trace.Tracer.disabled()
    sink: TextIO = sys.stderr
    if spec.output is not None:
        try:
            sink = open(spec.output, "a", encoding="utf-8")  # noqa: SIM115 (process lifetime)
        except OSError as exc:
            raise cli.UsageError(f"Error opening logfile {spec.output}: {exc.strerror}"
                                 ) from None
    return trace.Tracer(frozenset(spec.enabled), sink)


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


def main(argv: list[str] | None = None) -> int:
    # Held back until each process has its handlers: a stop request during start-up
    # then ends in the orderly way (socket removed, exit 0), never by the default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    argv = sys.argv if argv is None else argv
    prog = argv[0] if argv else "prguard"
    name = os.path.basename(prog)
    try:
        opts = cli.parse(argv[1:], warn=lambda text: logs.line(f"{name}:{text}"))
        if opts.help:
            logs.out(cli.usage(prog))
            return 0
        if opts.version:
            logs.out(cli.version_text(prog, __version__))
            return 0
        if opts.trace.want_help:
            logs.out(trace.help_text())
            return 0
        tracer = _tracer(opts.trace)
    except cli.UsageError as exc:
        _report(prog, exc)
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
            if listener.created_path is not None:  # unlike the C helper, leave nothing
                os.unlink(listener.created_path)
            return 1
    return _fork_pair(opts, listener, tracer, pidfile_fd)


def _fork_pair(opts: cli.Options, listener: listen.Listener, tracer: trace.Tracer,
               pidfile_fd: int | None) -> int:
    identity = _identity(opts)
    broker_end, worker_end = socket.socketpair(
        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
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
        ))
    worker_end.close()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return broker_main.run(listener.sock, broker_end, broker_main.BrokerConfig(
        identity=identity, created_path=listener.created_path, tracer=tracer,
    ), worker_pid=pid)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
