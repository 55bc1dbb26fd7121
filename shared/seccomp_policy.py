"""Parsing the seccomp policy files (seccomp/*.policy): pure code over text.

Grammar, one rule per line (blank lines and lines starting with '#' are comments):

    default kill_process
    allow|forbid  SYSCALL  [CONDITION [and CONDITION ...]]  # why (required)

    CONDITION := argN == VALUE | argN & MASK == VALUE | argN >= VALUE
    VALUE     := integer (0x.. or decimal) | $NAME

`==` and `&` compare all 64 bits of the argument. `>=` is for fd arguments, which the
kernel reads as an unsigned int: it holds when the low 32 bits are at least VALUE *and*
the high 32 bits are zero (a plain 64-bit compare would let `0x1_0000_0002` through, which
the kernel truncates to fd 2).

`$NAME`s are filled in when a process builds its filter (an fd number, the worker's
pid); a rule whose variable is not supplied is left out, so it allows nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ARG = 5
ACTIONS = ("allow", "forbid")
DEFAULTS = ("kill_process",)


class SeccompPolicyError(ValueError):
    """The policy text is malformed; the message names the line."""


@dataclass(frozen=True)
class Condition:
    arg: int
    mask: int | None  #: None for a plain `==` (and for `>=`)
    value: int | str  #: an int, or a variable name (without '$')
    op: str = "=="  #: "==" or ">=" (an fd as the kernel reads it: see above)

    def resolve(self, variables: dict[str, int | None]) -> Condition | None:
        if isinstance(self.value, int):
            return self
        bound = variables.get(self.value)
        return None if bound is None else Condition(self.arg, self.mask, bound, self.op)

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else hex(self.value)
        value = f"${value}" if isinstance(self.value, str) else value
        masked = f" & {self.mask:#x}" if self.mask is not None else ""
        return f"arg{self.arg}{masked} {self.op} {value}"


@dataclass(frozen=True)
class Rule:
    action: str
    syscall: str
    conditions: tuple[Condition, ...]
    why: str
    line: int

    def __str__(self) -> str:
        cond = " and ".join(str(c) for c in self.conditions)
        return f"{self.action} {self.syscall}{' ' + cond if cond else ''}"


@dataclass(frozen=True)
class SeccompPolicy:
    default: str
    rules: tuple[Rule, ...]

    @property
    def allowed(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.action == "allow")

    @property
    def forbidden(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.action == "forbid")


_NUMBER = r"(?:0x[0-9a-fA-F]+|[0-9]+|\$[A-Z_][A-Z0-9_]*)"
_CONDITION = re.compile(rf"^arg([0-9])\s*(?:&\s*({_NUMBER})\s*)?(==|>=)\s*({_NUMBER})$")
_SYSCALL = re.compile(r"^[a-z_][a-z0-9_]*$")


def _value(text: str) -> int | str:
    return text[1:] if text.startswith("$") else int(text, 0)


def parse(text: str) -> SeccompPolicy:
    default: str | None = None
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), 1):
        body, hash_, why = raw.partition("#")
        body, why = body.strip(), why.strip()
        if not body:
            continue
        words = body.split(None, 2)
        if words[0] == "default":
            if len(words) != 2 or words[1] not in DEFAULTS or default is not None:
                raise SeccompPolicyError(f"line {number}: expected one 'default kill_process'")
            default = words[1]
            continue
        if words[0] not in ACTIONS or len(words) < 2 or not _SYSCALL.match(words[1]):
            raise SeccompPolicyError(f"line {number}: expected 'allow|forbid SYSCALL ...'")
        if not hash_ or not why:
            raise SeccompPolicyError(f"line {number}: every rule needs a '# why'")
        conditions: list[Condition] = []
        if len(words) == 3:
            for part in words[2].split(" and "):
                match = _CONDITION.match(part.strip())
                if not match or int(match.group(1)) > MAX_ARG:
                    raise SeccompPolicyError(f"line {number}: bad condition {part.strip()!r}")
                mask, op = match.group(2), match.group(3)
                mask_value = _value(mask) if mask else None
                if isinstance(mask_value, str):
                    raise SeccompPolicyError(f"line {number}: a mask must be a number")
                if op == ">=" and mask_value is not None:
                    raise SeccompPolicyError(f"line {number}: '>=' takes no mask")
                conditions.append(Condition(int(match.group(1)), mask_value,
                                            _value(match.group(4)), op))
        if sum(c.op == ">=" for c in conditions) > 1:
            raise SeccompPolicyError(f"line {number}: at most one '>=' per rule")
        rules.append(Rule(words[0], words[1], tuple(conditions), why, number))
    if default is None:
        raise SeccompPolicyError("no 'default' line")
    return SeccompPolicy(default, tuple(rules))
