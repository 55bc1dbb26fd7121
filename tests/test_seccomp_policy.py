"""The seccomp policy files and their parser: every rule has a why, nothing broad is
allowed unconditionally, malformed text is refused with its line."""

from __future__ import annotations

import pytest

from prguard.shared import sandbox
from prguard.shared.seccomp_policy import Condition, SeccompPolicyError, parse


@pytest.mark.parametrize("role", ["broker", "worker"])
def test_policy_files_are_complete_and_reviewable(role: str) -> None:
    import pyseccomp
    policy = sandbox.load_seccomp_policy(role)
    assert policy.default == "kill_process"
    for rule in policy.rules:
        assert rule.why, rule
        assert pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, rule.syscall) >= 0, rule
    unconditional = {r.syscall for r in policy.allowed if not r.conditions}
    for name in ("open", "openat", "execve", "socket", "connect", "ptrace", "clone", "fork"):
        assert name not in {r.syscall for r in policy.allowed}
    assert "ioctl" not in unconditional and "fcntl" not in unconditional
    assert "mmap" not in unconditional and "mprotect" not in unconditional


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
