"""Landlock: which files a process may still reach by path, decided from the inside.

seccomp cannot look at paths: once a path-taking call such as openat is allowed, it is
allowed for every path. Landlock (Linux 5.13+, no privilege needed once no_new_privs is
set) confines file access by hierarchy for the calling thread and everything it starts
later. prguard handles every filesystem right the running kernel knows, so anything not
granted by a rule here is refused with EACCES. Each process builds its rules in one
place (`landlock_rules` of broker/main.py, worker/main.py and opener/main.py; the
janitor's in broker/janitor.py): a few rights beneath a directory or two, more in the
worker only with the audit or the policy on (docs/SECURITY.md has the table).

Only filesystem rights are used: the network rights are moot (no socket or connect in
any policy) and the scopes would forbid the broker's SIGKILL of its worker.

A thread that exists before `restrict` is not confined by it (unlike seccomp's TSYNC):
call it before starting threads. Requires no_new_privs (privileges.drop sets it).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

SYS_LANDLOCK_CREATE_RULESET = 444  #: the same number on every architecture (since 5.13)
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  #: ABI 2
TRUNCATE = 1 << 14  #: ABI 3
IOCTL_DEV = 1 << 15  #: ABI 5

#: Filesystem rights each ABI version knows (ABI 4 added network rights, 6 scopes,
#: 7 logging flags: no new filesystem rights).
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1,
                     4: (1 << 15) - 1, 5: (1 << 16) - 1}


class LandlockError(Exception):
    """Landlock is not available, or the ruleset could not be applied."""


UNAVAILABLE = ("Landlock is not available: Linux 5.13 or later with landlock among its "
               "LSMs (lsm=) is required, and a service's SystemCallFilter= must allow "
               "landlock_create_ruleset, landlock_add_rule and landlock_restrict_self")


class _RulesetAttr(ctypes.Structure):
    # Only the first field: the kernel takes a shorter struct as "the rest is zero".
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class Beneath:
    """Grant `access` to what lies beneath the directory `path` (or the open `fd`)."""

    access: int
    path: str | None = None
    fd: int | None = None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result: int = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    try:
        return _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(CREATE_RULESET_VERSION))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            return 0  # EPERM: an outer seccomp filter (a unit's SystemCallFilter=)
        raise LandlockError(f"Landlock version probe failed: {exc.strerror}") from None


def require() -> int:
    """The ABI version; LandlockError (one line, saying why) when there is none."""
    abi = abi_version()
    if abi < 1:
        raise LandlockError(UNAVAILABLE)
    return abi


def handled_rights(abi: int) -> int:
    return _FS_RIGHTS_BY_ABI[min(abi, max(_FS_RIGHTS_BY_ABI))]


def restrict(rules: Sequence[Beneath]) -> int:
    """Confine this thread (and threads and children started later) to `rules`.

    Returns the rights handled (all the running kernel knows). Raises LandlockError when
    Landlock is unavailable or any step fails: the caller must then not serve (prguard
    never runs half-confined).
    """
    handled = handled_rights(require())
    attr = _RulesetAttr(handled)
    try:
        ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    except OSError as exc:
        raise LandlockError(f"Failed to create a Landlock ruleset: {exc.strerror}") from None
    try:
        for rule in rules:
            _add_rule(ruleset, rule, handled)
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    except OSError as exc:
        raise LandlockError(f"Failed to apply the Landlock ruleset: {exc.strerror}") from None
    finally:
        os.close(ruleset)
    return handled


def _add_rule(ruleset: int, rule: Beneath, handled: int) -> None:
    if rule.access & ~handled:
        raise OSError(errno.EINVAL, "right not known to this kernel")
    fd = rule.fd
    if fd is None:
        assert rule.path is not None
        try:
            fd = os.open(rule.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"{rule.path}: {exc.strerror}") from None
    try:
        attr = _PathBeneathAttr(rule.access, fd)
        _syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                 ctypes.byref(attr), ctypes.c_uint32(0))
    finally:
        if rule.fd is None:
            os.close(fd)
