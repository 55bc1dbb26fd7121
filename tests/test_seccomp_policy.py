"""The seccomp policy files and their parser: every rule has a why, nothing broad is
allowed unconditionally, malformed text is refused with its line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.processes import REPO
from prguard.shared import sandbox
from prguard.shared.seccomp_policy import Condition, SeccompPolicyError, parse

#: Path-taking calls Landlock does not govern (stat, readlink, ...): never allowed.
UNCONFINABLE = ("open", "newfstatat", "statx", "stat", "lstat", "access", "faccessat",
                "faccessat2", "readlinkat", "readlink", "openat2", "name_to_handle_at")
#: The path opener's only open modes: a sysfs attribute, a sysfs directory, a path node
#: write-only (O_RDONLY|O_CLOEXEC, ...|O_DIRECTORY, O_WRONLY|O_CLOEXEC|...).
OPENER_OPEN_FLAGS = {0x80000, 0x90000, 0x80901}


@pytest.mark.parametrize("role", ["broker", "worker", "janitor", "opener"])
def test_policy_files_are_complete_and_reviewable(role: str) -> None:
    import pyseccomp
    policy = sandbox.load_seccomp_policy(role)
    assert policy.default == "kill_process"
    for rule in policy.rules:
        assert rule.why, rule
        assert pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, rule.syscall) >= 0, rule
    allowed = {r.syscall for r in policy.allowed}
    unconditional = {r.syscall for r in policy.allowed if not r.conditions}
    for name in ("execve", "socket", "connect", "ptrace", "clone", "fork", *UNCONFINABLE):
        assert name not in allowed, name
    assert "ioctl" not in unconditional and "fcntl" not in unconditional
    assert "mmap" not in unconditional and "mprotect" not in unconditional
    assert "mmap" in allowed  # each process allocates
    for rule in policy.allowed:  # memory is anonymous, never executable
        if rule.syscall == "mmap":
            assert {(c.arg, c.mask, c.value) for c in rule.conditions} == {
                (2, 0x4, 0), (3, 0x20, 0x20)}
    # Paths are opened by the worker: read-only (sysfs, /proc, the policy, under
    # Landlock), or the audit log's name in its directory to append (a rotation), dup3
    # only onto the audit fd; and by the path opener with three exact flag sets (sysfs
    # read, path nodes write-only, under Landlock).
    opens = [r for r in policy.allowed if r.syscall == "openat"]
    if role == "worker":
        assert sorted(str(r) for r in opens) == [
            "allow openat arg0 == $AUDIT_DIR_FD and arg2 == 0xa0441",
            "allow openat arg2 & 0xfffffffffff6ffff == 0x0"]
        assert [str(r) for r in policy.allowed if r.syscall == "dup3"] == [
            "allow dup3 arg1 == $AUDIT_FD and arg2 == 0x80000"]
    elif role == "opener":
        assert {(c.arg, c.op, c.mask, c.value) for r in opens for c in r.conditions} == {
            (2, "==", None, flags) for flags in OPENER_OPEN_FLAGS}
    else:
        assert opens == []


def test_the_opener_has_no_ioctl_and_writes_only_to_stderr() -> None:
    policy = sandbox.load_seccomp_policy("opener")
    assert "ioctl" not in {r.syscall for r in policy.allowed}
    assert [str(r) for r in policy.allowed if r.syscall == "write"] == [
        "allow write arg0 == 0x2"]


def test_worker_ioctl_is_sg_io_only() -> None:
    rules = [r for r in sandbox.load_seccomp_policy("worker").allowed if r.syscall == "ioctl"]
    assert [str(r) for r in rules] == ["allow ioctl arg1 == 0x2285"]
    broker = [r for r in sandbox.load_seccomp_policy("broker").allowed if r.syscall == "ioctl"]
    assert [str(r) for r in broker] == ["allow ioctl arg1 == 0x5421"]


@pytest.mark.parametrize("text", [
    "allow read # no default line",
    "default kill_process\nallow read",
    "default kill_process\nallow read arg9 == 1 # bad arg",
    "default kill_process\nallow read arg1 > 1 # bad op",
    "default kill_process\nallow Read # bad name",
    "default kill_process\ndeny read # unknown action",
    "default allow\nallow read # weak default",
    "default kill_process\nallow read arg1 & $X == 0 # variable mask",
])
def test_malformed_policies_are_rejected(text: str) -> None:
    with pytest.raises(SeccompPolicyError):
        parse(text)


def test_a_policy_parses_into_rules_with_conditions_and_lines() -> None:
    policy = parse("# a comment\n"
                   "default kill_process\n"
                   "\n"
                   "allow read  # the why\n"
                   "allow ioctl arg1 == 0x2285 and arg0 == 7  # two conditions\n"
                   "allow fcntl arg1 & 0xff == 3  # masked\n"
                   "forbid openat arg0 == $DIR_FD  # a variable\n")
    assert policy.default == "kill_process"
    assert [(r.action, r.syscall, r.line, r.why) for r in policy.rules] == [
        ("allow", "read", 4, "the why"), ("allow", "ioctl", 5, "two conditions"),
        ("allow", "fcntl", 6, "masked"), ("forbid", "openat", 7, "a variable")]
    assert [str(r) for r in policy.allowed] == [
        "allow read", "allow ioctl arg1 == 0x2285 and arg0 == 0x7",
        "allow fcntl arg1 & 0xff == 0x3"]
    (forbid,) = policy.forbidden
    assert str(forbid) == "forbid openat arg0 == $DIR_FD"


def test_a_variable_is_bound_or_its_condition_left_out() -> None:
    (rule,) = parse("default kill_process\nallow openat arg0 == $DIR_FD # why\n").rules
    (condition,) = rule.conditions
    assert condition.resolve({"DIR_FD": 9}) == Condition(0, None, 9)
    assert condition.resolve({"DIR_FD": None}) is None
    assert condition.resolve({}) is None


def test_errors_name_the_line() -> None:
    with pytest.raises(SeccompPolicyError, match=r"^line 3: every rule needs a '# why'$"):
        parse("default kill_process\nallow read # fine\nallow write\n")
    with pytest.raises(SeccompPolicyError, match=r"^line 2: bad condition 'arg6 == 1'$"):
        parse("default kill_process\nallow read arg6 == 1 # why\n")


def test_at_least_is_parsed_for_fd_arguments() -> None:
    (rule,) = parse("default kill_process\nallow close arg0 >= $FD_BOUNDARY # why\n").rules
    assert str(rule) == "allow close arg0 >= $FD_BOUNDARY"
    (condition,) = rule.conditions
    assert condition.resolve({"FD_BOUNDARY": 12}) == Condition(0, None, 12, ">=")
    for text in ("allow close arg0 & 0xff >= 3 # a mask",
                 "allow close arg0 >= 3 and arg1 >= 4 # two"):
        with pytest.raises(SeccompPolicyError):
            parse(f"default kill_process\n{text}\n")


@pytest.mark.parametrize("low", [0, 1, 3, 13, 16, 252, 1000, 2**31 - 1, 2**31, 2**32 - 1])
def test_at_least_blocks_cover_exactly_the_unsigned_ints_from_low(low: int) -> None:
    blocks = sandbox.at_least_blocks(low)
    def covered(x: int) -> bool:
        return any(x & mask == value for mask, value in blocks)
    for x in {0, 1, 2, low - 1, low, low + 1, low + 1000, 2**31, 2**32 - 1, 2**32,
              2**32 + low, 2**32 + 2, 2**63, 2**64 - 1}:
        if x >= 0:
            assert covered(x) == (low <= x < 2**32), hex(x)
    assert len(blocks) <= 32
    assert all(mask >> 32 == 0xFFFFFFFF for mask, _ in blocks)  # high bits always zero


CLOSE_PROBE = """\
import ctypes, os, sys
from prguard.shared import sandbox
from prguard.shared.seccomp_policy import parse
policy = parse("default kill_process\\nallow close arg0 >= $K # x\\nallow write # w\\n"
               "allow exit_group # e\\n")
libc = ctypes.CDLL(None, use_errno=True)
sandbox.build(policy, {"K": int(sys.argv[1])}).load()
libc.syscall(3, ctypes.c_ulong(int(sys.argv[2], 0)))
os._exit(0)
"""


@pytest.mark.parametrize(("fd", "survives"), [
    ("13", True), ("20", True), ("0x80000005", True), ("0xffffffff", True),
    ("12", False), ("2", False), ("0", False),
    ("0x100000002", False), ("0x10000000d", False), ("0xffffffff00000002", False)])
def test_a_close_below_the_boundary_kills_even_with_high_bits_set(fd: str,
                                                                  survives: bool) -> None:
    """The kernel reads close's fd as an unsigned int: 0x1_0000_0002 is fd 2 to it."""
    result = subprocess.run([sys.executable, "-c", CLOSE_PROBE, "13", fd], cwd=REPO,
                            timeout=30)
    assert result.returncode == (0 if survives else -signal.SIGSYS)


def test_the_janitors_filter_is_printed_too() -> None:
    script = str(Path(sys.executable).parent / "prguard")
    out = subprocess.run([script, "--print-seccomp=janitor"], capture_output=True, text=True,
                         check=True).stdout
    assert "# $DIR_FD = 1010 in this listing" in out
    assert "action KILL_PROCESS;" in out
