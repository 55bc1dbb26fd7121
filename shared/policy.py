"""The tenant policy: which client may do what on which device.

A TOML file of ordered rules and a default (docs/POLICY.md has the reference):

    [[rule]]
    name = "web cluster"
    client = { domain = ["web*"] }            # uid, gid, unit, domain, cgroup
    device = { wwn = ["0x6001405aa*"] }       # wwn, by_id, dm_name
    allow = "pr-out"                          # "nothing", "pr-in" or "pr-out"
    service_actions = ["REGISTER", "REGISTER AND IGNORE EXISTING KEY", "RESERVE",
                       "RELEASE", "PREEMPT"]
    types = ["WE_RO"]
    key_namespace = { mask = "0xffff000000000000", value = "0x0001000000000000" }

    [default]
    allow = "pr-in"

The first rule whose client and device conditions all hold decides (a condition lists
alternatives; globs as fnmatch, case-sensitive, WWNs in lowercase); when none holds, the
default does. "pr-out" allows PR IN too, and the listed PR OUT service actions (all if
not listed) with the listed reservation types (all if not listed). A key namespace asks
every reservation key and service action key of the request to satisfy
`key & mask == value`, except a zero where it means "none": the RESERVATION KEY of a
REGISTER from an unregistered nexus, and the SERVICE ACTION RESERVATION KEY that
unregisters.

Pure: `parse` reads text (user and group names are resolved by the caller's `resolve`
functions), `Policy.decide` judges one request. A bad file is one PolicyError naming its
line.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prguard.shared.audit_record import ClientIdentity, DeviceIdentity
from prguard.shared.pr_fields import KEY_IGNORED, REGISTERING, TYPED_ACTIONS, PrCommand
from prguard.shared.scsi import PrOutAction
from prguard.shared.scsi_names import TYPE_NAMES, TYPE_SHORT_NAMES, action_name, type_name
from prguard.shared.vpd import by_id_names

#: The longest policy file read (a policy is a page of rules, not a database).
MAX_POLICY_SIZE = 1 << 20
KEY_LIMIT = 1 << 64


class PolicyError(ValueError):
    """A policy file that cannot be used: `str()` is `FILE:LINE: problem`."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


class Allow(enum.Enum):
    NOTHING = "nothing"
    PR_IN = "pr-in"
    PR_OUT = "pr-out"


@dataclass(frozen=True)
class KeyNamespace:
    mask: int
    value: int

    def holds(self, key: int) -> bool:
        return key & self.mask == self.value

    def __str__(self) -> str:
        return f"key & {self.mask:#018x} == {self.value:#018x}"


@dataclass(frozen=True)
class ClientMatch:
    """Conditions on who sent a request; an empty tuple means "any"."""

    uid: tuple[int, ...] = ()
    gid: tuple[int, ...] = ()
    unit: tuple[str, ...] = ()
    domain: tuple[str, ...] = ()
    cgroup: tuple[str, ...] = ()

    def holds(self, client: ClientIdentity) -> bool:
        return ((not self.uid or client.uid in self.uid)
                and (not self.gid or client.gid in self.gid)
                and _any(self.unit, client.unit)
                and _any(self.domain, client.domain)
                and _any(self.cgroup, client.cgroup))

    def describe(self) -> list[str]:
        return _describe_conditions(self)


@dataclass(frozen=True)
class DeviceMatch:
    """Conditions on the device a request is for; an empty tuple means "any"."""

    wwn: tuple[str, ...] = ()
    by_id: tuple[str, ...] = ()
    dm_name: tuple[str, ...] = ()

    def holds(self, device: DeviceIdentity) -> bool:
        if self.by_id:
            names = by_id_names(device.wwn, device.dm_name, device.dm_uuid)
            if not any(_any(self.by_id, name) for name in names):
                return False
        return _any(self.wwn, device.wwn) and _any(self.dm_name, device.dm_name)

    def describe(self) -> list[str]:
        return _describe_conditions(self)


def _any(patterns: tuple[str, ...], value: str | None) -> bool:
    if not patterns:
        return True
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _describe_conditions(match: ClientMatch | DeviceMatch) -> list[str]:
    out = []
    for name in match.__dataclass_fields__:
        values = getattr(match, name)
        if values:
            out.append(f"{name} " + " or ".join(str(v) for v in values))
    return out


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str  #: the deciding rule, as records name it
    reason: str  #: why it was refused ("" when allowed)


@dataclass(frozen=True)
class Rule:
    label: str  #: `rule 2 "web cluster"`, or `default`
    line: int
    allow: Allow
    client: ClientMatch = field(default_factory=ClientMatch)
    device: DeviceMatch = field(default_factory=DeviceMatch)
    #: PR OUT service actions allowed (all when None)
    actions: frozenset[int] | None = None
    #: reservation types allowed (all when None)
    types: frozenset[int] | None = None
    keys: KeyNamespace | None = None

    def matches(self, client: ClientIdentity, device: DeviceIdentity) -> bool:
        return self.client.holds(client) and self.device.holds(device)

    def judge(self, command: PrCommand) -> Decision:
        refusal = self._refusal(command)
        return Decision(refusal is None, self.label, refusal or "")

    def _refusal(self, command: PrCommand) -> str | None:
        if self.allow is Allow.NOTHING:
            return f"{self.label} allows nothing"
        if not command.pr_out:
            return None
        if self.allow is Allow.PR_IN:
            return f"{self.label} allows PR IN only"
        action = command.action
        if self.actions is not None and action not in self.actions:
            return f"{self.label} does not allow {action_name(True, action)}"
        if (self.types is not None and action in TYPED_ACTIONS and command.type is not None
                and command.type not in self.types):
            return f"{self.label} does not allow type {type_name(command.type)}"
        if self.keys is not None:
            return self._key_refusal(command, self.keys)
        return None

    def _key_refusal(self, command: PrCommand, keys: KeyNamespace) -> str | None:
        if not command.complete_list:
            return f"{self.label}: no parameter list to check the key namespace against"
        registering = command.action in REGISTERING
        if (command.key is not None and command.action not in KEY_IGNORED
                and not (registering and command.key == 0) and not keys.holds(command.key)):
            return f"reservation key {command.key:#x} is outside {self.label}'s {keys}"
        if (command.sa_key is not None and not (registering and command.sa_key == 0)
                and not keys.holds(command.sa_key)):
            return (f"service action reservation key {command.sa_key:#x} is outside "
                    f"{self.label}'s {keys}")
        return None

    def describe(self) -> list[str]:
        lines = [f"{self.label} (line {self.line})"]
        if self.label != "default":
            lines.append("  clients: " + ("; ".join(self.client.describe()) or "any"))
            lines.append("  devices: " + ("; ".join(self.device.describe()) or "any"))
        if self.allow is Allow.NOTHING:
            lines.append("  allows:  nothing")
        elif self.allow is Allow.PR_IN:
            lines.append("  allows:  PR IN")
        else:
            actions = ("every service action" if self.actions is None else ", ".join(
                action_name(True, a) for a in sorted(self.actions)))
            lines.append(f"  allows:  PR IN; PR OUT {actions}")
            types = ("any" if self.types is None
                     else ", ".join(type_name(t) for t in sorted(self.types)))
            lines.append(f"  types:   {types}")
            if self.keys is not None:
                lines.append(f"  keys:    reservation and service action keys: {self.keys}")
        return lines


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: Rule
    source: str
    sha256: str

    def decide(self, client: ClientIdentity, device: DeviceIdentity,
               command: PrCommand) -> Decision:
        for rule in self.rules:
            if rule.matches(client, device):
                return rule.judge(command)
        return self.default.judge(command)

    @property
    def needs_device(self) -> bool:
        """Whether any rule looks at the device (else its identity is not needed)."""
        return any(rule.device != DeviceMatch() for rule in self.rules)

    def describe(self) -> str:
        lines = [f"policy {self.source} (sha256 {self.sha256}): {len(self.rules)} rule(s) "
                 "then the default; the first rule that matches decides"]
        for rule in (*self.rules, self.default):
            lines += rule.describe()
        return "\n".join(lines) + "\n"


# -- reading the file ------------------------------------------------------------------

Resolver = Callable[[str], int]

_RULE_KEYS = {"name", "client", "device", "allow", "service_actions", "types",
              "key_namespace"}
_DEFAULT_KEYS = {"allow", "service_actions", "types", "key_namespace"}
_CLIENT_KEYS = {"uid", "gid", "unit", "domain", "cgroup"}
_DEVICE_KEYS = {"wwn", "by_id", "dm_name"}
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _spelling(text: str) -> str:
    """Names compare without case, spaces, dashes, underscores or commas."""
    return re.sub(r"[\s_,-]+", "", text).upper()


_ACTIONS = {_spelling(action_name(True, a)): int(a) for a in PrOutAction}
_TYPES = {**{_spelling(name): int(t) for t, name in TYPE_NAMES.items()},
          **{_spelling(name): int(t) for t, name in TYPE_SHORT_NAMES.items()}}


class _Lines:
    """Line numbers for what tomllib does not locate: rule headers and keys."""

    _HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]|^\s*\[\s*default\s*\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.rules: list[int] = []
        self.default = 0
        for number, line in enumerate(self.lines, 1):
            if re.match(r"^\s*\[\[\s*rule\s*\]\]", line):
                self.rules.append(number)
            elif re.match(r"^\s*\[\s*default\s*\]", line):
                self.default = number

    def section(self, index: int | None) -> int:
        """The header line of rule `index` (0-based), or of the default (None)."""
        if index is None:
            return self.default or 1
        return self.rules[index] if index < len(self.rules) else 1

    def key(self, index: int | None, key: str) -> int:
        """The first line of the section that assigns `key` (or the header's)."""
        start = self.section(index)
        pattern = re.compile(rf"(^|[\s{{,.]){re.escape(key)}\s*=")
        for number in range(start, len(self.lines) + 1):
            line = self.lines[number - 1]
            if number > start and self._HEADER.match(line):
                break
            if pattern.search(line.split("#", 1)[0]):
                return number
        return start


class _Reader:
    def __init__(self, text: str, source: str, resolve_user: Resolver,
                 resolve_group: Resolver) -> None:
        self.lines = _Lines(text)
        self.source = source
        self.resolve_user = resolve_user
        self.resolve_group = resolve_group

    def fail(self, index: int | None, key: str | None, problem: str) -> PolicyError:
        line = self.lines.key(index, key) if key else self.lines.section(index)
        where = "default" if index is None else f"rule {index + 1}"
        return PolicyError(self.source, line, f"{where}: {problem}")

    def rule(self, index: int | None, table: object) -> Rule:
        if not isinstance(table, dict):
            raise self.fail(index, None, "must be a table")
        allowed_keys = _DEFAULT_KEYS if index is None else _RULE_KEYS
        for key in table:
            if key not in allowed_keys:
                extra = (" (the default matches every client and device)"
                         if index is None and key in ("client", "device", "name") else "")
                raise self.fail(index, key, f"unknown key '{key}'{extra}")
        label = "default"
        if index is not None:
            name = table.get("name", "")
            if not isinstance(name, str) or len(name) > 100 or not name.isprintable():
                raise self.fail(index, "name", "name must be a short printable string")
            label = f'rule {index + 1} "{name}"' if name else f"rule {index + 1}"
        client = ClientMatch()
        device = DeviceMatch()
        if index is not None:
            client = self.client(index, table.get("client", {}))
            device = self.device(index, table.get("device", {}))
        if "allow" not in table:
            raise self.fail(index, None, "says nothing about what it allows "
                            "(allow = \"nothing\", \"pr-in\" or \"pr-out\")")
        try:
            allow = Allow(table["allow"])
        except ValueError:
            raise self.fail(index, "allow", f"allow must be \"nothing\", \"pr-in\" or "
                            f"\"pr-out\", not {table['allow']!r}") from None
        for key in ("service_actions", "types", "key_namespace"):
            if key in table and allow is not Allow.PR_OUT:
                raise self.fail(index, key, f"{key} only means something with "
                                "allow = \"pr-out\"")
        actions = (None if "service_actions" not in table
                   else self.names(index, "service_actions", table["service_actions"],
                                   _ACTIONS, "service action"))
        types = (None if "types" not in table
                 else self.names(index, "types", table["types"], _TYPES, "type"))
        keys = (None if "key_namespace" not in table
                else self.namespace(index, table["key_namespace"]))
        return Rule(label, self.lines.section(index), allow, client, device, actions, types,
                    keys)

    def names(self, index: int | None, key: str, value: object, table: dict[str, int],
              what: str) -> frozenset[int]:
        items = value if isinstance(value, list) else [value]
        found: set[int] = set()
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and item in table.values():
                found.add(item)
            elif isinstance(item, str) and _spelling(item) in table:
                found.add(table[_spelling(item)])
            else:
                raise self.fail(index, key, f"unknown {what} {item!r}")
        if not found:
            raise self.fail(index, key, f"{key} is empty: say allow = \"pr-in\" instead")
        return frozenset(found)

    def namespace(self, index: int | None, value: object) -> KeyNamespace:
        if not isinstance(value, dict) or set(value) != {"mask", "value"}:
            raise self.fail(index, "key_namespace",
                            "key_namespace must be { mask = ..., value = ... }")
        mask = self.key_number(index, value["mask"], "mask")
        number = self.key_number(index, value["value"], "value")
        if number & ~mask:
            raise self.fail(index, "key_namespace", f"value {number:#x} has bits outside "
                            f"mask {mask:#x}: no key could match")
        if not mask:
            raise self.fail(index, "key_namespace", "mask 0 constrains nothing")
        return KeyNamespace(mask, number)

    def key_number(self, index: int | None, value: object, what: str) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value, 0)
            except ValueError:
                number = None
        if number is None or not 0 <= number < KEY_LIMIT:
            raise self.fail(index, "key_namespace",
                            f"{what} must be a 64-bit number, not {value!r}")
        return number

    def client(self, index: int, table: object) -> ClientMatch:
        values = self.conditions(index, "client", table, _CLIENT_KEYS)
        return ClientMatch(
            uid=self.ids(index, "uid", values.get("uid", []), self.resolve_user, "user"),
            gid=self.ids(index, "gid", values.get("gid", []), self.resolve_group, "group"),
            unit=self.globs(index, "unit", values.get("unit", [])),
            domain=self.globs(index, "domain", values.get("domain", [])),
            cgroup=self.globs(index, "cgroup", values.get("cgroup", [])))

    def device(self, index: int, table: object) -> DeviceMatch:
        values = self.conditions(index, "device", table, _DEVICE_KEYS)
        wwn = self.globs(index, "wwn", values.get("wwn", []))
        by_id = self.globs(index, "by_id", values.get("by_id", []))
        for pattern in wwn:
            if not pattern.lower().startswith("0x") and not pattern.startswith("*"):
                raise self.fail(index, "wwn", f"a WWN is written 0x..., as in "
                                f"/dev/disk/by-id/wwn-0x...: {pattern!r}")
        return DeviceMatch(wwn=tuple(p.lower() for p in wwn), by_id=by_id,
                           dm_name=self.globs(index, "dm_name", values.get("dm_name", [])))

    def conditions(self, index: int, section: str, table: object,
                   keys: set[str]) -> dict[str, list[Any]]:
        if not isinstance(table, dict):
            raise self.fail(index, section, f"{section} must be a table")
        out: dict[str, list[Any]] = {}
        for key, value in table.items():
            if key not in keys:
                hint = (f" ([rule.{section}] takes every key after it: write the rule's "
                        f"own keys before it)" if key in _RULE_KEYS else
                        f" (known: {', '.join(sorted(keys))})")
                raise self.fail(index, key, f"unknown {section} condition '{key}'{hint}")
            items = value if isinstance(value, list) else [value]
            if not items:
                raise self.fail(index, key, f"{section}.{key} is an empty list: nothing "
                                "would match")
            out[key] = items
        return out

    def globs(self, index: int, key: str, items: Sequence[object]) -> tuple[str, ...]:
        for item in items:
            if not isinstance(item, str) or not item:
                raise self.fail(index, key, f"{key} takes non-empty strings, not {item!r}")
        return tuple(str(item) for item in items)

    def ids(self, index: int, key: str, items: Sequence[object], resolve: Resolver,
            what: str) -> tuple[int, ...]:
        out = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2**32:
                out.append(item)
            elif isinstance(item, str):
                try:
                    out.append(resolve(item))
                except KeyError:
                    raise self.fail(index, key, f"no {what} named {item!r}") from None
            else:
                raise self.fail(index, key, f"{key} takes numbers or names, not {item!r}")
        return tuple(out)


def parse(text: str, source: str, resolve_user: Resolver,
          resolve_group: Resolver) -> Policy:
    """Read a policy file's text. `resolve_user`/`resolve_group` turn a name into an id
    or raise KeyError. Raises PolicyError."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line = int(position.group(1)) if position else max(len(text.splitlines()), 1)
        problem = _TOML_POSITION.sub("", message).replace(" (at end of document)", "")
        raise PolicyError(source, line, f"not valid TOML: {problem[:1].lower()}"
                          f"{problem[1:]}") from None
    reader = _Reader(text, source, resolve_user, resolve_group)
    for key in document:
        if key not in ("rule", "default"):
            raise PolicyError(source, _first_line_of(text, key) or 1,
                              f"unknown section '{key}' (a policy has [[rule]] tables and "
                              "a [default])")
    rules_value = document.get("rule", [])
    if not isinstance(rules_value, list):
        raise PolicyError(source, _first_line_of(text, "rule") or 1,
                          "rules are written [[rule]] (an array of tables)")
    rules = tuple(reader.rule(index, table) for index, table in enumerate(rules_value))
    if "default" not in document:
        raise PolicyError(source, max(len(text.splitlines()), 1),
                          "no [default]: say what requests no rule matches get "
                          "(e.g. allow = \"pr-in\")")
    default = reader.rule(None, document["default"])
    return Policy(rules, default, source, hashlib.sha256(text.encode()).hexdigest())


def _first_line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*(\[+\s*)?{re.escape(key)}\b")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None
