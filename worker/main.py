"""The worker process: drop to CAP_SYS_RAWIO, then serve the channel until it closes.

Runs in a child forked by the launcher before any thread exists. Exits 0 when the broker
closes the channel in an orderly way, 1 when the broker died under it or on any fault.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

from shared import fdcheck, fdpass, privileges
from shared.errors import ChannelError
from shared.messages import Malformed, Ready
from shared.privileges import Identity
from worker import handler, sgio
from worker.scheduler import Scheduler

log = logging.getLogger("prguard.worker")

KEEP_CAPS = ("sys_rawio",)


@dataclass(frozen=True)
class WorkerConfig:
    identity: Identity | None
    sg_timeout_ms: int
    threads: int
    per_device: int


def _die(message: str, code: int = 1) -> NoReturn:
    log.error("%s", message)
    logging.shutdown()
    os._exit(code)


def _send(channel: socket.socket, payload: bytes) -> None:
    try:
        fdpass.send_message(channel, payload)
    except OSError as exc:
        _die(f"worker: cannot answer the broker ({exc.strerror}); exiting")


def serve(channel: socket.socket, config: WorkerConfig) -> NoReturn:
    """Never returns: the process ends here."""
    broker_pid = os.getppid()
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the broker owns orderly shutdown

    def on_term(signum: int, frame: object) -> None:
        if os.getppid() != broker_pid:
            _die("worker: the broker died; exiting")
        _die("worker: terminated by signal")

    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        sysfs_block = fdcheck.open_sysfs_block()
        privileges.drop(config.identity, KEEP_CAPS)
        import prctl
        prctl.set_pdeathsig(signal.SIGTERM)
    except (OSError, privileges.PrivilegeError) as exc:
        _die(str(exc))
    if os.getppid() != broker_pid:
        _die("worker: the broker died during start-up")
    run_sg_io = partial(sgio.issue, timeout_ms=config.sg_timeout_ms)

    def execute(job: handler.Job) -> None:
        try:
            result = handler.run(job, run_sg_io)
        except Exception as exc:  # noqa: BLE001  (pool-thread boundary: log, then exit)
            _die(f"worker: internal error running request {job.request.id}: {exc!r}", 70)
        finally:
            os.close(job.fd)
        _send(channel, result.encode())

    scheduler = Scheduler(config.threads, config.per_device, execute)
    scheduler.start()
    log.debug("worker: pid %d serving; SG_IO timeout %d ms, %d threads, %d per device",
              os.getpid(), config.sg_timeout_ms, config.threads, config.per_device)
    _send(channel, Ready(os.getpid()).encode())
    while True:
        try:
            got = fdpass.recv_message(channel)
        except ChannelError as exc:
            _send(channel, Malformed(str(exc)).encode())
            continue
        except OSError as exc:
            _die(f"worker: channel read failed ({exc.strerror}); exiting")
        if got is None:
            if os.getppid() != broker_pid:
                _die("worker: the broker died; exiting")
            logging.shutdown()
            os._exit(0)
        datagram, fd = got
        facts = None
        if fd is not None:
            try:
                facts = fdcheck.inspect_fd(fd, sysfs_block)
            except OSError:
                facts = None
        outcome = handler.screen(datagram, fd, facts)
        if isinstance(outcome, handler.Job):
            scheduler.submit(outcome)
            continue
        if fd is not None:
            os.close(fd)
        _send(channel, outcome.encode())
