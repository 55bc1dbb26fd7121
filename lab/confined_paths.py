"""Run one error or exit path of a prguard process under that process's real seccomp
filter: `python -m lab.confined_paths ROLE PATH` (as root).

The process is prepared as the broker or the worker prepares itself (the same modules
imported, the same warm-up, the logging of the launcher, an event loop and its signal
wake-up fd for the broker, threads started before the filter for the worker), then
confined as the process confines itself (Landlock, its fds pinned as shared/fdpin.py
describes, sandbox.lock_down with the role's policy file), then runs PATH. Every path
must end with one line per report on stderr and the exit status the test expects; a path
that reaches for a file or any other call outside the policy dies of SIGSYS.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import socket
import sys
import threading
import traceback
import warnings
from collections.abc import Callable

from prguard import logs
from prguard.broker import main as broker_main
from prguard.broker import metrics
from prguard.broker.loop import EPOLLIN, Loop
from prguard.broker.metrics_file import MetricsFile
from prguard.broker.server import warm_up as broker_warm_up
from prguard.broker.stats import Outcome, Stats
from prguard.shared import fdpin, landlock, sandbox
from prguard.worker import main as worker_main

log = logging.getLogger("prguard.test")


class Boom(Exception):
    """The stand-in for a bug."""


class RaisesWhenCollected:
    def __del__(self) -> None:
        raise Boom("in a finalizer")


def traceback_logged() -> None:
    try:
        raise Boom("caught")
    except Boom:
        log.exception("handled with a traceback")
        text = traceback.format_exc()
    assert "Boom: caught" in text, text


def uncaught() -> None:
    raise Boom("nobody caught this")


def interrupt() -> None:
    raise KeyboardInterrupt


def unraisable() -> None:
    obj = RaisesWhenCollected()
    del obj


def warning() -> None:
    warnings.warn("a warning once confined", RuntimeWarning, stacklevel=1)


def bad_log_call() -> None:
    log.warning("%d requests", "not a number")


def run_paths(*paths: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for path in paths:
            path()
    return run


def main(role: str, path: str) -> None:
    logs.setup("prguard", 1)
    policy = sandbox.load_seccomp_policy(role)  # read before Landlock, as the processes do
    variables: sandbox.Variables = {}
    release = threading.Event()
    paths: dict[str, Callable[[], None]] = {
        "traceback-logged": traceback_logged, "uncaught": uncaught, "interrupt": interrupt,
        "unraisable": unraisable, "warning": warning, "bad-log-call": bad_log_call,
    }
    if role == "broker":
        broker_warm_up()
        loop = Loop()
        loop.catch_signals((signal.SIGTERM,), lambda signum: None)
        wakeup_fd = loop.wakeup_fd()
        variables["WAKEUP_FD"] = wakeup_fd
        ready = socket.socketpair()
        fdpin.hold(loop, ready)
        metrics_path = os.environ.get("PRGUARD_TEST_METRICS_FILE")
        if metrics_path:
            # As the broker with --metrics-file: opened, rendered and published once
            # before the filter, then rewritten under it.
            file = MetricsFile.create(metrics_path, None)
            stats = Stats()
            registry = metrics.registry_for(metrics.StatsCollector(
                stats, "test"))
            file.publish(metrics.render(registry))
            variables.update(zip(("METRICS_DIR_FD", "METRICS_A_FD", "METRICS_B_FD"),
                                 file.fds(), strict=True))

            def publish() -> None:
                for n in range(3):
                    stats.request_done(0x5E, 0, Outcome.GOOD, -1, 0.001)
                    file.publish(metrics.render(registry) + f"# {n}\n".encode())

            paths["metrics"] = publish
        landlock.restrict(broker_main.landlock_rules(variables.get("METRICS_DIR_FD")))
        variables["FD_BOUNDARY"] = fdpin.seal(
            [2, wakeup_fd, *(s.fileno() for s in ready),
             *(v for k, v in variables.items() if k.startswith("METRICS") and v is not None)])
        # Above the boundary, as a client's socket is: only those may be closed once
        # confined (what existed at lock-down is pinned, and held until the end).
        leaked = list(socket.socketpair())

        def event_loop() -> None:
            """A bug in a loop handler is not survivable: the loop does not go on with
            state a handler left half-changed."""
            def fail(events: int) -> None:
                raise Boom("in a loop handler")

            loop.register(ready[0].fileno(), EPOLLIN, fail)
            ready[1].send(b"x")
            loop.run()

        def leaked_socket() -> None:
            warnings.simplefilter("always")  # as with PYTHONWARNINGS=always
            leaked.clear()
            gc.collect()

        paths["event-loop"] = event_loop
        paths["leaked-socket"] = leaked_socket
    else:
        landlock.restrict(worker_main.LANDLOCK_RULES)
        worker_main._warm_up(1000)
        variables["FD_BOUNDARY"] = fdpin.seal([2])

        def raise_later() -> None:
            release.wait()
            raise Boom("in a worker thread")

        thread = threading.Thread(target=raise_later, name="sgio-0", daemon=True)
        thread.start()  # as the worker's threads: before the filter

        def in_thread() -> None:
            release.set()
            thread.join()

        paths["thread"] = in_thread
    paths["all-survivable"] = run_paths(*[paths[name] for name in (
        "traceback-logged", "unraisable", "warning", "bad-log-call",
        *(("leaked-socket",) if role == "broker" else ()))])
    run = paths[path]
    atexit.register(os.open, "/etc/hostname", os.O_RDONLY)  # must never run
    sandbox.lock_down(policy, variables)
    run()
    os._exit(0)  # as prguard.main.entry ends every process


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
