"""Pinned fd numbers: an fd a seccomp rule names by number can never be replaced.

seccomp sees fd numbers, not what they refer to. A rule such as "write only to fd 2"
holds only as long as fd 2 is still stderr: a process that closed fd 2 would receive
the next fd (a client's disk, say) as 2, and write to it. The same goes for every fd a
rule names (the channel, the trace file, the event loop's wake-up fd).

`seal` makes the numbers below a boundary permanent. Every fd a rule names is below the
boundary and every free slot below it is filled with a placeholder (the read end of a
pipe whose write end is closed), so an fd that arrives later (accept, SCM_RIGHTS, open)
always lands at or above it. The policy then allows `close` only at or above the
boundary (`arg0 >= $FD_BOUNDARY`) and allows no dup2, dup3, close_range or
fcntl(F_DUPFD...), so nothing below it can be closed, replaced or moved.

What the caller must do, whatever its event loop:
- create every fd a rule names before sealing (sockets, pipes, the loop's own fds), and
  seal right before loading the filter, while no other thread creates fds;
- once confined, never close an fd that existed at sealing time (that includes letting a
  socket object that owns one be garbage-collected, and closing an event loop): stop
  using it instead, or `shutdown()` it when the peer must see EOF; the process ends with
  os._exit and the kernel closes them then.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable


def is_open(fd: int) -> bool:
    try:
        os.get_inheritable(fd)  # fcntl(F_GETFD): no path, no allocation
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False
        raise
    return True


def ensure_standard_fds() -> None:
    """Open /dev/null on any of fds 0-2 that is closed, so that no socket or file the
    process opens later becomes its "stderr" (policies allow writes to fd 2)."""
    for fd in (0, 1, 2):
        if not is_open(fd):
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # a lower one was free after all: cannot happen in order
                os.close(opened)
                raise OSError(errno.EBADF, f"could not reopen fd {fd}")


def close_all_but(keep: Iterable[int]) -> None:
    """Close every fd except `keep` (for processes that inherit more than they need)."""
    kept = sorted({*keep, -1})
    for low, high in zip(kept, [*kept[1:], 2**31 - 1], strict=True):
        if high > low + 1:
            os.closerange(low + 1, high)


def seal(named: Iterable[int]) -> int:
    """Fill every free slot below max(named) + 1 and return that boundary.

    Afterwards, as long as nothing below the boundary is closed, every new fd gets a
    number at or above it.
    """
    boundary = max({*named, 2}) + 1
    read_end, write_end = os.pipe()  # inheritable=False: CLOEXEC
    os.close(write_end)
    placeholder = read_end
    while True:
        slot = os.dup(placeholder)  # the lowest free number
        if slot >= boundary:
            os.close(slot)
            break
    if placeholder >= boundary:
        os.close(placeholder)
    return boundary


def free_slots_below(boundary: int) -> list[int]:
    """Numbers below `boundary` that are free (none, once sealed)."""
    return [fd for fd in range(boundary) if not is_open(fd)]


_held: list[object] = []


def hold(*owners: object) -> None:
    """Keep objects that own pinned fds (sockets, files, the event loop) alive until the
    process ends: a garbage-collected socket closes its fd, and that close would be
    refused by the filter (SIGSYS)."""
    _held.extend(owners)
