"""Dropping to the -u/-g ids with exactly the capabilities a process keeps.

The recipe (order matters, each step measured on Linux 6.x):
1. refuse unless single-threaded: capabilities are per thread;
2. lock `noroot` securebits and keep_caps, empty the bounding set: needs CAP_SETPCAP,
   so before anything else is given up;
3. set the supplementary groups (none, or the path opener's one), then switch gid and
   uid;
4. inheritable and ambient sets emptied, permitted cut to `keep`, effective re-raised to
   `keep` (keep_caps preserves permitted only);
5. keep_caps off, non-dumpable, no_new_privs; the caller sets its parent-death signal
   after this, because the uid change resets it.
The result is read back from /proc/self/status and any difference is fatal.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import prctl

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_BITS = {"sys_rawio": 17, "sys_admin": 21}


class PrivilegeError(Exception):
    """The process could not reach the privilege state it must run in."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int


def _libc_prctl(option: int, arg2: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def clear_ambient() -> None:
    """python-prctl has no ambient-capability call."""
    _libc_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def proc_status() -> dict[str, str]:
    # Binary read: a text-mode codec lookup could import after the uid switch.
    with open("/proc/self/status", "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def drop(identity: Identity | None, keep: tuple[str, ...],
         groups: tuple[int, ...] = ()) -> None:
    """Become `identity` (or stay as we are) holding exactly `keep` (cap names), with
    exactly the supplementary `groups`."""
    if _thread_count() != 1:
        raise PrivilegeError("Failed to drop privileges: more than one thread")
    try:
        if keep:
            prctl.securebits.keep_caps = True
        prctl.securebits.noroot = True
        prctl.securebits.noroot_locked = True
        prctl.capbset.limit()
        clear_ambient()
        os.setgroups(list(groups))
        if identity is not None:
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)
        prctl.cap_inheritable.limit()
        for cap in keep:
            setattr(prctl.cap_effective, cap, True)
        prctl.cap_effective.limit(*keep)
        prctl.cap_permitted.limit(*keep)
        clear_ambient()
        prctl.set_keepcaps(False)
        prctl.set_dumpable(False)
        prctl.set_no_new_privs(1)
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PrivilegeError(f"Failed to drop privileges: {detail}") from None
    verify(identity, keep, groups)


def expected_mask(keep: tuple[str, ...]) -> int:
    mask = 0
    for cap in keep:
        mask |= 1 << CAP_BITS[cap]
    return mask


def verify(identity: Identity | None, keep: tuple[str, ...],
           groups: tuple[int, ...] = ()) -> None:
    status = proc_status()
    want = expected_mask(keep)
    problems = []
    for field, value in (("CapPrm", want), ("CapEff", want), ("CapInh", 0), ("CapBnd", 0),
                         ("CapAmb", 0)):
        if int(status[field], 16) != value:
            problems.append(f"{field} {status[field]}")
    if status.get("NoNewPrivs") != "1":
        problems.append("NoNewPrivs not set")
    if sorted(int(g) for g in status.get("Groups", "").split()) != sorted(set(groups)):
        problems.append(f"supplementary groups {status.get('Groups', '').strip() or 'none'}")
    if identity is not None:
        if set(status["Uid"].split()) != {str(identity.uid)}:
            problems.append(f"Uid {status['Uid']}")
        if set(status["Gid"].split()) != {str(identity.gid)}:
            problems.append(f"Gid {status['Gid']}")
    if problems:
        raise PrivilegeError("Failed to drop privileges: " + ", ".join(problems))
