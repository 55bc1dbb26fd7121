"""The broker process: drop every privilege, wait for the worker, serve until stopped.

Returns the process exit status: 0 after an orderly stop (SIGTERM, SIGINT, SIGHUP), 1 if
the worker failed to start or was lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.server import Broker
from broker.trace import Tracer
from broker.worker_client import WorkerClient, await_ready
from shared import fdcheck, privileges
from shared.privileges import Identity

log = logging.getLogger("prguard.broker")

WORKER_EXIT_GRACE = 2.0
WORKER_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class BrokerConfig:
    identity: Identity | None
    #: The socket path this process created (unlinked at exit); None when activated.
    created_path: str | None
    tracer: Tracer
    #: Called once the worker is ready and clients are being accepted.
    on_ready: Callable[[], None] = lambda: None


def run(listener: socket.socket, channel: socket.socket, config: BrokerConfig,
        worker_pid: int) -> int:
    """Wait for the worker first: if it cannot drop privileges it says so, once."""
    if await_ready(channel, WORKER_START_TIMEOUT) is None:
        _unlink(config.created_path)
        _reap(worker_pid)
        return 1
    try:
        sysfs_block = fdcheck.open_sysfs_block()
        privileges.drop(config.identity, ())
    except (OSError, privileges.PrivilegeError) as exc:
        log.error("%s", exc)
        channel.close()
        _unlink(config.created_path)
        _reap(worker_pid)
        return 1
    code = asyncio.run(_serve(listener, channel, config, sysfs_block))
    _reap(worker_pid)
    return code


async def _serve(listener: socket.socket, channel: socket.socket, config: BrokerConfig,
                 sysfs_block: int) -> int:
    loop = asyncio.get_running_loop()
    worker = WorkerClient(channel)
    worker.start()
    assert worker.lost is not None
    broker = Broker(worker, sysfs_block, config.tracer)
    broker.listen(listener)
    stop: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stop.done():
            stop.set_result(signum)

    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal, sig)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)  # blocked since start-up
    config.on_ready()
    waiters: set[asyncio.Future[int] | asyncio.Future[str]] = {stop, worker.lost}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if worker.lost.done():
        config.tracer.emit("prguard_worker_lost", reason=repr(worker.lost.result()))
        log.error("%s; exiting", worker.lost.result())
        code = 1
    else:
        log.info("signal %d: finishing requests in flight, then exiting", stop.result())
    broker.stop_accepting()
    _unlink(config.created_path)
    await broker.drain()
    await broker.cancel_clients()
    worker.close()
    return code


def _unlink(path: str | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("Failed to unlink socket %s: %s", path, exc.strerror)


def _reap(worker_pid: int) -> None:
    """Collect the worker; it exits by itself once the channel is closed."""
    deadline = time.monotonic() + WORKER_EXIT_GRACE
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(worker_pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        time.sleep(0.01)
    try:
        os.kill(worker_pid, signal.SIGKILL)
        os.waitpid(worker_pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
