"""The janitor: the one process that may remove the socket file, and only at the end.

Removing the socket at exit takes a name in its directory (unlinkat), and the directory
may be /run or libvirt's per-domain directory, which holds other root-owned files. Rather
than give the broker that power for its whole life, the broker starts a janitor right
after dropping its privileges and before confining itself: it keeps the directory's fd
(the broker closes its own copy) and waits; it removes the socket only once the broker
is done with it (it stops accepting, or dies), and only if the name still refers to the
socket this instance created.

- Identity: forked by the broker after its drop: the -u/-g ids, no capability,
  no_new_privs, non-dumpable. Forked twice, so it is nobody's child once started: the
  broker's only child is its worker, and a SIGKILL of the broker leaves it to do its job.
- Stop signals are ignored: systemd (KillMode=control-group) and test harnesses signal
  every process; the janitor ends when the broker ends, not before.
- Confined (seccomp/janitor.policy): it can read its end of a socket pair, read its
  directory's entries, unlink a name in that directory (Landlock: nothing outside it,
  whatever the path) and write its one log line; no open, no stat, no new fd, no close.
- The broker tells it to go by shutting its end of the pair (or by dying: EOF either
  way), then waits for the pair to close, so the socket is gone when the broker exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import NoReturn

import prctl

from prguard.shared import dirents, fdpin, landlock, sandbox
from prguard.shared.seccomp_policy import SeccompPolicy
from prguard.shared.socket_file import SocketFile

log = logging.getLogger("prguard.broker")

#: How long the broker waits for the janitor to remove the socket at exit.
FINISH_TIMEOUT = 2.0
START_TIMEOUT = 10.0
NAME = "prguard-janitor"


class JanitorError(Exception):
    """The janitor could not be started."""


@dataclass
class Janitor:
    """The broker's side: its end of the pair, which the policy names ($JANITOR_FD)."""

    sock: socket.socket
    pid: int

    @classmethod
    def start(cls, socket_file: SocketFile, policy: SeccompPolicy) -> Janitor:
        """Fork the janitor; the broker keeps no fd of the socket's directory. Call it
        single-threaded, after the broker's privilege drop, before its Landlock."""
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                ours.close()
                if os.fork() == 0:
                    _serve(theirs, socket_file, policy)
            finally:
                os._exit(0)
        theirs.close()
        os.waitpid(child, 0)
        ours.settimeout(START_TIMEOUT)
        try:
            pid = ours.recv(16)  # the janitor's first word: its pid, once it is confined
        except OSError:
            pid = b""
        if not pid:
            ours.close()
            raise JanitorError("the janitor failed to start")
        ours.settimeout(None)
        os.close(socket_file.dir_fd)
        return cls(ours, int(pid))

    def finish(self) -> None:
        """The broker is done with the socket: let the janitor remove it, and wait (at
        most FINISH_TIMEOUT) until it has."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(FINISH_TIMEOUT)
            while self.sock.recv(16):
                pass


def _serve(sock: socket.socket, socket_file: SocketFile, policy: SeccompPolicy) -> NoReturn:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fdpin.close_all_but({0, 1, 2, sock.fileno(), socket_file.dir_fd})
    try:
        prctl.set_name(NAME)
        landlock.restrict([landlock.Beneath(landlock.REMOVE_FILE, fd=socket_file.dir_fd)])
        list(dirents.entries(socket_file.dir_fd))  # warm-up: the removal's code path
        sandbox.lock_down(policy, {"CONN_FD": sock.fileno(), "DIR_FD": socket_file.dir_fd})
    except (OSError, landlock.LandlockError, sandbox.SandboxError) as exc:
        log.error("janitor: %s", exc)
        os._exit(1)
    sock.send(str(os.getpid()).encode())
    with contextlib.suppress(OSError):
        while sock.recv(16):  # nothing is expected: EOF when the broker is done or dead
            pass
    socket_file.remove()
    os._exit(0)
