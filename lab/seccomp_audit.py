"""The kernel's own record of each process a seccomp filter killed: which system call.

A kill by SECCOMP_RET_KILL_PROCESS is logged by the kernel as an AUDIT_SECCOMP record
(type 1326: pid, signal, architecture, system call number). The kernel log (dmesg) shows
them as `audit: type=1326 ...`, but printed at most 10 per 5 s (printk_ratelimit): a run
of death tests loses most of them there. The audit netlink socket's read-only multicast
group (AUDIT_NLGRP_READLOG) gets every record, whether or not an audit daemon runs, and
takes nothing from one that does. It needs CAP_AUDIT_READ (root) and a kernel with
CONFIG_AUDIT (Debian's has it) not booted with audit=0, as the tests' CI has.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

NETLINK_AUDIT = 9  #: <linux/netlink.h>
AUDIT_NLGRP_READLOG = 1  #: <linux/audit.h>: read-only multicast of every record
AUDIT_SECCOMP = 1326
NLMSGHDR = struct.Struct("=IHHII")  #: length, type, flags, sequence, port id


class AuditUnavailable(Exception):
    """The audit multicast group cannot be joined (no root, no CONFIG_AUDIT)."""


@dataclass(frozen=True)
class SeccompKill:
    pid: int
    signal: int
    syscall: int
    arch: str
    record: str  #: the record's text, for messages


def parse_record(text: str) -> SeccompKill | None:
    """`audit(...): auid=... pid=123 comm="x" exe="/y" sig=31 arch=c000003e syscall=16 ...`"""
    fields = dict(word.split("=", 1) for word in text.split() if "=" in word)
    try:
        return SeccompKill(pid=int(fields["pid"]), signal=int(fields["sig"]),
                           syscall=int(fields["syscall"]), arch=fields["arch"], record=text)
    except (KeyError, ValueError):
        return None


class SeccompAudit:
    """Collects AUDIT_SECCOMP records from the moment it is opened."""

    def __init__(self) -> None:
        if "audit=0" in Path("/proc/cmdline").read_text().split():
            raise AuditUnavailable("the kernel was booted with audit=0: it keeps no record "
                                   "of seccomp kills, which the death tests check")
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
            self._sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except OSError as exc:
            raise AuditUnavailable(
                f"cannot read the kernel's audit records ({exc.strerror}): the seccomp "
                "death tests need root (CAP_AUDIT_READ) and a kernel with CONFIG_AUDIT"
            ) from None
        self._sock.setblocking(False)
        self._kills: dict[int, SeccompKill] = {}

    def _drain(self, wait: float) -> None:
        ready, _, _ = select.select([self._sock], [], [], wait)
        while ready:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            at = 0
            while at + NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = NLMSGHDR.unpack_from(data, at)
                if length < NLMSGHDR.size:
                    break
                if kind == AUDIT_SECCOMP:
                    kill = parse_record(data[at + NLMSGHDR.size:at + length]
                                        .decode(errors="replace").rstrip("\0"))
                    if kill is not None:
                        self._kills[kill.pid] = kill
                at += (length + 3) & ~3

    def kill_of(self, pid: int, timeout: float = 5.0) -> SeccompKill | None:
        """The record of `pid`'s death by seccomp, waiting up to `timeout` seconds for the
        kernel to deliver it (it is queued at the kill and sent by kauditd)."""
        deadline = time.monotonic() + timeout
        while pid not in self._kills:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._drain(left)
        return self._kills[pid]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SeccompAudit:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
