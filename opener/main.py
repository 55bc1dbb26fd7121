"""The path opener process: given a dm-multipath map's fd, check the map and open its
paths for the broker (docs/MULTIPATH.md).

The -u/-g user cannot open the path nodes (root:disk 0660 on a real host); the opener
can, and can do nothing else with them: no capability, the -u/-g ids plus one
supplementary group (the nodes' group, `disk` by default), no ioctl, no write but to fd 2,
and Landlock lets it read beneath /sys and open files beneath /dev for writing only.

Forked by the launcher before any thread exists, like the worker. Order: signals, fds,
the seccomp policy, privileges, parent-death signal, Landlock, pinned fds, a warm-up of
every code path, the filter, then Ready. Serves one request at a time until the broker
closes the channel (exit 0) or dies (exit 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import NoReturn

import prctl

from prguard.opener import handler
from prguard.shared import fdpass, fdpin, landlock, privileges, sandbox, sysfs
from prguard.shared.errors import ChannelError
from prguard.shared.messages import Malformed, MapRequest, Ready
from prguard.shared.privileges import Identity

#: All the launcher uses of the opener.
__all__ = ["OpenerConfig", "serve"]

log = logging.getLogger("prguard.opener")

#: Seconds an EOF waits to tell a broker that stopped from one that died (as the worker).
DEATH_GRACE = 0.1


@dataclass(frozen=True)
class OpenerConfig:
    identity: Identity | None
    #: the supplementary groups it keeps: the group that owns the path nodes
    groups: tuple[int, ...]
    #: tests only: a forbidden syscall to attempt once confined (docs/SECURITY.md)
    seccomp_probe: str | None = None


def landlock_rules() -> list[landlock.Beneath]:
    """Read sysfs; open device nodes for writing only; nothing else by path."""
    return [landlock.Beneath(landlock.READ_FILE | landlock.READ_DIR, path="/sys"),
            landlock.Beneath(landlock.WRITE_FILE, path=handler.DEV)]


def _die(message: str, code: int = 1) -> NoReturn:
    log.error("%s", message)
    os._exit(code)


def _send(channel: socket.socket, message: bytes, fd: int | None = None) -> None:
    try:
        fdpass.send_message(channel, message, fd)
    except OSError as exc:
        _die(f"opener: cannot answer the broker ({exc.strerror}); exiting")


def _warm_up(io: handler.Io) -> None:
    """Run each code path once so nothing is imported or first-touched once confined."""
    request = MapRequest(1, (0,)).encode()
    handler.answer(request, None, io)
    handler.answer(b"\xc1", None, io)
    handler.answer(request, os.dup(2), io)  # not a block device
    with contextlib.suppress(sysfs.MapProblem):
        sysfs.multipath_map(os.makedev(0, 0))
    sysfs.warm_up()  # an attribute read, a directory listed
    log.debug("opener: warm-up done")


def serve(channel: socket.socket, config: OpenerConfig) -> NoReturn:
    """Never returns: the process ends here."""
    broker_pid = os.getppid()
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the broker owns orderly shutdown

    def on_term(signum: int, frame: object) -> None:
        # As the worker: ignored while the broker lives (it ends the opener by closing
        # the channel); also the parent-death signal.
        if os.getppid() != broker_pid:
            _die("opener: the broker died; exiting")

    signal.signal(signal.SIGTERM, on_term)
    fdpin.close_all_but({0, 1, 2, channel.fileno()})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    io = handler.Io()
    try:
        seccomp_policy = sandbox.load_seccomp_policy("opener")
        probe = (sandbox.find_forbidden(seccomp_policy, config.seccomp_probe)
                 if config.seccomp_probe else None)
        privileges.drop(config.identity, (), config.groups)
        prctl.set_pdeathsig(signal.SIGTERM)
        if os.getppid() != broker_pid:
            _die("opener: the broker died during start-up")
        landlock.restrict(landlock_rules())
        fdpin.hold(channel)
        variables: sandbox.Variables = {"CHANNEL_FD": channel.fileno()}
        variables["FD_BOUNDARY"] = fdpin.seal([2, channel.fileno()])
        _warm_up(io)
        sandbox.lock_down(seccomp_policy, variables)
    except (OSError, privileges.PrivilegeError, sandbox.SandboxError,
            landlock.LandlockError) as exc:
        _die(f"opener: {exc}")
    if probe is not None:
        sandbox.probe(probe)
        _die(f"opener: seccomp let {probe} through", 3)
    log.debug("opener: pid %d serving", os.getpid())
    _send(channel, Ready(os.getpid()).encode())
    _serve(channel, io, broker_pid)


def _serve(channel: socket.socket, io: handler.Io, broker_pid: int) -> NoReturn:
    while True:
        try:
            got = fdpass.recv_message(channel)
        except ChannelError as exc:
            _send(channel, Malformed(str(exc)[:200]).encode())
            continue
        except OSError as exc:
            _die(f"opener: channel read failed ({exc.strerror}); exiting")
        if got is None:
            _end_of_channel(broker_pid)
        datagram, fd = got
        for message, path_fd in handler.answer(datagram, fd, io):
            _send(channel, message.encode(), path_fd)
            if path_fd is not None:
                os.close(path_fd)  # the broker has its own now


def _end_of_channel(broker_pid: int) -> NoReturn:
    """Exit 0 if the broker closed the channel and lives on, 1 if it died."""
    deadline = time.monotonic() + DEATH_GRACE
    while os.getppid() == broker_pid and time.monotonic() < deadline:
        select.poll().poll(10)  # a sleep the filter allows (no clock_nanosleep)
    if os.getppid() != broker_pid:
        _die("opener: the broker died; exiting")
    os._exit(0)
