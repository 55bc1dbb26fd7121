"""Turning a policy file into a loaded seccomp filter (pyseccomp over libseccomp).

Kill the whole process on anything not allowed, on a foreign architecture too, and
apply to every thread (TSYNC). Any failure to build or load is fatal for the caller:
prguard never serves unconfined.
"""

from __future__ import annotations

import ctypes
import os
from typing import TextIO

import pyseccomp

from prguard.seccomp import policy_text
from prguard.shared import confined
from prguard.shared.seccomp_policy import Condition, Rule, SeccompPolicy, parse

Variables = dict[str, int | None]


class SandboxError(Exception):
    """The filter could not be built or loaded."""


def load_seccomp_policy(role: str) -> SeccompPolicy:
    text: str = policy_text(role)
    return parse(text)


#: The values an unsigned int argument (an fd) can take, as the kernel reads it.
UINT_LIMIT = 1 << 32
_ALL_BITS = (1 << 64) - 1


def at_least_blocks(low: int) -> list[tuple[int, int]]:
    """[low, 2**32) as aligned power-of-two blocks, each a (mask, value) pair for a
    64-bit masked compare: `arg & mask == value`. The masks include the high 32 bits, so
    a value the kernel would truncate to a small fd matches no block. (libseccomp takes
    one comparison per argument and rule, so a range needs one rule per block.)"""
    if not 0 <= low < UINT_LIMIT:
        raise ValueError(f"{low} is not an unsigned int")
    blocks: list[tuple[int, int]] = []
    while low < UINT_LIMIT:
        size = low & -low if low else UINT_LIMIT
        while low + size > UINT_LIMIT:
            size //= 2
        blocks.append((_ALL_BITS & ~(size - 1), low))
        low += size
    return blocks


def _arg(condition: Condition) -> pyseccomp.Arg:
    assert isinstance(condition.value, int) and condition.op == "=="
    if condition.mask is None:
        return pyseccomp.Arg(condition.arg, pyseccomp.EQ, condition.value)
    return pyseccomp.Arg(condition.arg, pyseccomp.MASKED_EQ, condition.mask, condition.value)


def _expand(conditions: list[Condition]) -> list[list[Condition]]:
    """The `>=` condition (at most one per rule) as one condition list per block."""
    plain = [c for c in conditions if c.op == "=="]
    ranged = [c for c in conditions if c.op == ">="]
    if not ranged:
        return [plain]
    (low,) = ranged
    assert isinstance(low.value, int)
    return [[*plain, Condition(low.arg, mask, value)]
            for mask, value in at_least_blocks(low.value)]


def build(policy: SeccompPolicy, variables: Variables) -> pyseccomp.SyscallFilter:
    flt = pyseccomp.SyscallFilter(pyseccomp.KILL_PROCESS)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    flt.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    for rule in policy.allowed:
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, rule.syscall) < 0:
            raise SandboxError(f"line {rule.line}: unknown syscall {rule.syscall}")
        resolved = [c.resolve(variables) for c in rule.conditions]
        if any(c is None for c in resolved):
            continue  # its variable is not supplied: this rule allows nothing here
        try:
            for conditions in _expand([c for c in resolved if c is not None]):
                flt.add_rule(pyseccomp.ALLOW, rule.syscall, *[_arg(c) for c in conditions])
        except (OSError, ValueError, RuntimeError) as exc:
            raise SandboxError(f"line {rule.line}: {rule}: {exc}") from None
    return flt


def lock_down(policy: SeccompPolicy, variables: Variables) -> None:
    """Build and load the filter for every thread of this process. The policy was read
    before the process gave up its identity (its file may not be readable after). From
    here on, errors are reported the way a confined process survives (shared.confined)."""
    try:
        flt = build(policy, variables)
        flt.load()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SandboxError(f"Failed to load the seccomp filter: {exc}") from None
    confined.install()


def export_pfc(role: str, variables: Variables, out: TextIO) -> None:
    """libseccomp's PFC listing of `role`'s filter, for auditors."""
    out.flush()
    build(load_seccomp_policy(role), variables).export_pfc(out)


def probe_arguments(rule: Rule) -> list[int]:
    """Arguments that satisfy the rule's conditions (zeros elsewhere)."""
    args = [0] * 6
    for condition in rule.conditions:
        assert isinstance(condition.value, int)
        args[condition.arg] = condition.value
    return args


def probe(rule: Rule) -> int:
    """Attempt a forbidden call (tests only: see docs/SECURITY.md). Under the filter the
    process dies with SIGSYS here; the return value means the filter let it through.

    It says first, on stderr, which process makes which call: the tests match that
    with the kernel's audit record of the kill (the syscall that killed it, not only
    the signal: a process that got through and died later of something else fails)."""
    nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, rule.syscall)
    args = probe_arguments(rule)
    os.write(2, f"prguard: seccomp probe: pid {os.getpid()} calls {rule.syscall} (system "
                f"call {nr}) with {', '.join(hex(a) for a in args)}\n".encode())
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.syscall(ctypes.c_long(nr),
                               *[ctypes.c_ulong(a) for a in args])
    return result


def find_forbidden(policy: SeccompPolicy, spec: str) -> Rule:
    """`spec` is `syscall` or `syscall#N` (the N-th forbid line for that syscall)."""
    name, _, index = spec.partition("#")
    matches = [r for r in policy.forbidden if r.syscall == name]
    position = int(index) if index.isdigit() else 0 if not index else -1
    if not 0 <= position < len(matches):
        raise SandboxError(f"no forbid line {spec!r} in the policy")
    return matches[position]
