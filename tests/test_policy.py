"""The tenant policy: reading a file (every way it can be wrong, with its line) and
judging requests (client identity x device identity x action x key namespace)."""

from __future__ import annotations

import pytest

from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.audit_record import ClientIdentity, DeviceIdentity
from prguard.shared.policy import Allow, Policy, PolicyError, parse
from prguard.shared.pr_fields import decode
from prguard.shared.scsi import PrOutAction

USERS = {"libvirt-qemu": 64055, "root": 0}
GROUPS = {"kvm": 993}


def load(text: str) -> Policy:
    return parse(text, "policy.toml", USERS.__getitem__, GROUPS.__getitem__)


EXAMPLE = """\
# Two tenants on one host.
[[rule]]
name = "web cluster"
client = { domain = ["web*"] }
device = { wwn = ["0x6001405AA*"] }
allow = "pr-out"
service_actions = ["REGISTER", "register and ignore existing key", "RESERVE", "RELEASE",
                   "PREEMPT"]
types = ["WE_RO", 1]
key_namespace = { mask = "0xffff000000000000", value = 0x0001000000000000 }

[[rule]]
name = "db reads"
allow = "pr-in"
[rule.client]
uid = ["libvirt-qemu", 107]
unit = "machine-qemu*db*.scope"
[rule.device]
by_id = ["dm-name-mpath*", "wwn-0x6001405bb*"]

[[rule]]
client = { cgroup = ["/prguard-test/*"] }
allow = "nothing"

[default]
allow = "pr-in"
"""

WEB = ClientIdentity(pid=10, uid=64055, gid=993, cgroup="/machine.slice/x", unit="x.scope",
                     domain="web02")
DB = ClientIdentity(pid=11, uid=107, gid=993, unit="machine-qemu\\x2d2\\x2ddb1.scope",
                    domain="db1")
DB_OTHER_UID = ClientIdentity(pid=12, uid=1000, gid=993,
                              unit="machine-qemu\\x2d2\\x2ddb1.scope", domain="db1")
TEST = ClientIdentity(pid=13, uid=0, gid=0, cgroup="/prguard-test/vm-a")
NOBODY = ClientIdentity(pid=14, uid=65534, gid=65534)

WEB_LUN = DeviceIdentity(dev="8:16", wwn="0x6001405aa11b2c3d4e5f60718293a4b5")
DB_LUN = DeviceIdentity(dev="8:32", wwn="0x6001405bb11b2c3d4e5f60718293a4b5")
DB_MAP = DeviceIdentity(dev="253:0", dm_name="mpatha", dm_uuid="mpath-36001405cc")
LOOP = DeviceIdentity(dev="7:0")

NS = 0x0001000000000000


def params(key: int = 0, sa_key: int = 0, flags: int = 0) -> bytes:
    return key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(4) + bytes([flags, 0,
                                                                                  0, 0])


def out(action: PrOutAction, key: int = 0, sa_key: int = 0, type_: int = 1,
        length: int = 24) -> tuple[bytes, bytes]:
    cdb = bytearray(pr_out_cdb(int(action), length))
    cdb[2] = type_
    return bytes(cdb), params(key, sa_key)[:length]


READ_KEYS = (pr_in_cdb(0, 8192), b"")


@pytest.mark.parametrize(("client", "device", "request_", "allowed", "rule", "reason"), [
    # rule 1: the web tenant on its own LUN, within its key namespace
    (WEB, WEB_LUN, READ_KEYS, True, 'rule 1 "web cluster"', ""),
    (WEB, WEB_LUN, out(PrOutAction.REGISTER, 0, NS | 5), True, 'rule 1 "web cluster"', ""),
    (WEB, WEB_LUN, out(PrOutAction.REGISTER, NS | 5, NS | 6), True, 'rule 1 "web cluster"',
     ""),
    (WEB, WEB_LUN, out(PrOutAction.REGISTER, NS | 5, 0), True, 'rule 1 "web cluster"', ""),
    (WEB, WEB_LUN, out(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0xDEAD, NS | 5), True,
     'rule 1 "web cluster"', ""),
    (WEB, WEB_LUN, out(PrOutAction.RESERVE, NS | 5, 0xDEAD, 5), True, 'rule 1 "web cluster"',
     ""),
    (WEB, WEB_LUN, out(PrOutAction.PREEMPT, NS | 5, NS | 6, 1), True, 'rule 1 "web cluster"',
     ""),
    # ... not outside it
    (WEB, WEB_LUN, out(PrOutAction.REGISTER, 0, 5), False, 'rule 1 "web cluster"',
     "service action reservation key 0x5 is outside rule 1 \"web cluster\"'s key & "
     "0xffff000000000000 == 0x0001000000000000"),
    (WEB, WEB_LUN, out(PrOutAction.REGISTER, 7, NS | 5), False, 'rule 1 "web cluster"',
     "reservation key 0x7 is outside rule 1 \"web cluster\"'s key & 0xffff000000000000 == "
     "0x0001000000000000"),
    (WEB, WEB_LUN, out(PrOutAction.PREEMPT, NS | 5, 0x0002000000000001, 1), False,
     'rule 1 "web cluster"', "service action reservation key 0x2000000000001 is outside "
     "rule 1 \"web cluster\"'s key & 0xffff000000000000 == 0x0001000000000000"),
    # PREEMPT with SARK 0 preempts everyone: zero is a key here
    (WEB, WEB_LUN, out(PrOutAction.PREEMPT, NS | 5, 0, 1), False, 'rule 1 "web cluster"',
     "service action reservation key 0x0 is outside rule 1 \"web cluster\"'s key & "
     "0xffff000000000000 == 0x0001000000000000"),
    (WEB, WEB_LUN, out(PrOutAction.RESERVE, 0, 0, 5), False, 'rule 1 "web cluster"',
     "reservation key 0x0 is outside rule 1 \"web cluster\"'s key & 0xffff000000000000 == "
     "0x0001000000000000"),
    (WEB, WEB_LUN, out(PrOutAction.REGISTER, 0, NS, length=0), False,
     'rule 1 "web cluster"',
     'rule 1 "web cluster": no parameter list to check the key namespace against'),
    # ... and only its actions and types
    (WEB, WEB_LUN, out(PrOutAction.CLEAR, NS | 5), False, 'rule 1 "web cluster"',
     'rule 1 "web cluster" does not allow CLEAR'),
    (WEB, WEB_LUN, out(PrOutAction.RESERVE, NS | 5, 0, 3), False, 'rule 1 "web cluster"',
     'rule 1 "web cluster" does not allow type Exclusive Access'),
    (WEB, WEB_LUN, out(PrOutAction.RESERVE, NS | 5, 0, 2), False, 'rule 1 "web cluster"',
     'rule 1 "web cluster" does not allow type obsolete or reserved type 0x2'),
    # the web tenant elsewhere falls through to the default
    (WEB, DB_LUN, out(PrOutAction.REGISTER, 0, NS | 5), False, "default",
     "default allows PR IN only"),
    (WEB, DB_LUN, READ_KEYS, True, "default", ""),
    (WEB, LOOP, READ_KEYS, True, "default", ""),
    # rule 2: uid AND unit, device by a by-id name
    (DB, DB_LUN, READ_KEYS, True, 'rule 2 "db reads"', ""),
    (DB, DB_MAP, READ_KEYS, True, 'rule 2 "db reads"', ""),
    (DB, DB_MAP, out(PrOutAction.REGISTER, 0, 1), False, 'rule 2 "db reads"',
     'rule 2 "db reads" allows PR IN only'),
    (DB_OTHER_UID, DB_MAP, out(PrOutAction.REGISTER, 0, 1), False, "default",
     "default allows PR IN only"),
    (DB, WEB_LUN, READ_KEYS, True, "default", ""),
    # rule 3: any device, nothing at all
    (TEST, WEB_LUN, READ_KEYS, False, "rule 3", "rule 3 allows nothing"),
    (TEST, LOOP, out(PrOutAction.REGISTER, 0, 1), False, "rule 3", "rule 3 allows nothing"),
    (NOBODY, WEB_LUN, out(PrOutAction.RELEASE, 1), False, "default",
     "default allows PR IN only"),
])
def test_decisions(client: ClientIdentity, device: DeviceIdentity,
                   request_: tuple[bytes, bytes], allowed: bool, rule: str,
                   reason: str) -> None:
    decision = load(EXAMPLE).decide(client, device, decode(*request_))
    assert (decision.allowed, decision.rule, decision.reason) == (allowed, rule, reason)


def test_first_match_wins_even_when_it_refuses() -> None:
    policy = load('[[rule]]\nallow = "nothing"\n[[rule]]\nallow = "pr-out"\n'
                  '[default]\nallow = "pr-out"\n')
    assert not policy.decide(NOBODY, LOOP, decode(*READ_KEYS)).allowed


def test_a_rule_without_conditions_matches_everyone() -> None:
    policy = load('[[rule]]\nallow = "pr-out"\n[default]\nallow = "nothing"\n')
    decision = policy.decide(NOBODY, LOOP, decode(*out(PrOutAction.CLEAR, 1)))
    assert decision.allowed and decision.rule == "rule 1"


def test_the_example_reads_as_written() -> None:
    policy = load(EXAMPLE)
    assert [r.line for r in policy.rules] == [2, 12, 21]
    assert policy.default.line == 25 and policy.default.allow is Allow.PR_IN
    assert policy.rules[0].actions == frozenset({0, 1, 2, 4, 6})
    assert policy.rules[0].types == frozenset({1, 5})
    assert policy.rules[0].device.wwn == ("0x6001405aa*",)  # WWNs compare in lowercase
    assert policy.rules[1].client.uid == (64055, 107)
    assert policy.describe() == f"""\
policy policy.toml (sha256 {policy.sha256}): 3 rule(s) then the default; the first rule \
that matches decides
rule 1 "web cluster" (line 2)
  clients: domain web*
  devices: wwn 0x6001405aa*
  allows:  PR IN; PR OUT REGISTER, RESERVE, RELEASE, PREEMPT, REGISTER AND IGNORE \
EXISTING KEY
  types:   Write Exclusive, Write Exclusive, Registrants Only
  keys:    reservation and service action keys: key & 0xffff000000000000 == \
0x0001000000000000
rule 2 "db reads" (line 12)
  clients: uid 64055 or 107; unit machine-qemu*db*.scope
  devices: by_id dm-name-mpath* or wwn-0x6001405bb*
  allows:  PR IN
rule 3 (line 21)
  clients: cgroup /prguard-test/*
  devices: any
  allows:  nothing
default (line 25)
  allows:  PR IN
"""


def test_needs_device() -> None:
    assert load(EXAMPLE).needs_device
    assert not load('[[rule]]\nclient = {uid = 0}\nallow = "pr-in"\n'
                    '[default]\nallow = "pr-out"\n').needs_device


@pytest.mark.parametrize(("text", "error"), [
    ('[[rule]]\nallow = "pr-in"\n', "policy.toml:2: no [default]: say what requests no "
     "rule matches get (e.g. allow = \"pr-in\")"),
    ('[default]\nallow = "maybe"\n', "policy.toml:2: default: allow must be \"nothing\", "
     "\"pr-in\" or \"pr-out\", not 'maybe'"),
    ("[default]\n", "policy.toml:1: default: says nothing about what it allows (allow = "
     "\"nothing\", \"pr-in\" or \"pr-out\")"),
    ('[default]\nallow = "pr-in"\nclient = {uid = 0}\n', "policy.toml:3: default: unknown "
     "key 'client' (the default matches every client and device)"),
    ('[default]\nallow = "pr-in"\n[[rule]]\nallow = "pr-in"\nservice_actions = ["CLEAR"]\n',
     "policy.toml:5: rule 1: service_actions only means something with allow = \"pr-out\""),
    ('[[rule]]\nallow = "pr-out"\n\nservice_actions = ["REGISTER", "PREMPT"]\n'
     '[default]\nallow = "nothing"\n', "policy.toml:4: rule 1: unknown service action "
     "'PREMPT'"),
    ('[[rule]]\nallow = "pr-out"\nservice_actions = []\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: service_actions is empty: say allow = \"pr-in\" instead"),
    ('[[rule]]\nallow = "pr-out"\ntypes = ["WE", 2]\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: unknown type 2"),
    ('[[rule]]\nallow = "pr-out"\ntypes = [true]\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: unknown type True"),
    ('[[rule]]\nallow = "pr-in"\n[[rule]]\nallow = "pr-in"\nclient = { vm = "x" }\n'
     '[default]\nallow = "nothing"\n', "policy.toml:5: rule 2: unknown client condition "
     "'vm' (known: cgroup, domain, gid, uid, unit)"),
    ('[[rule]]\nallow = "pr-in"\ndevice = { serial = "x" }\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: unknown device condition 'serial' (known: by_id, dm_name, "
     "wwn)"),
    ('[[rule]]\nallow = "pr-in"\ndevice = { wwn = "6001405*" }\n[default]\n'
     'allow = "nothing"\n', "policy.toml:3: rule 1: a WWN is written 0x..., as in "
     "/dev/disk/by-id/wwn-0x...: '6001405*'"),
    ('[[rule]]\nallow = "pr-in"\nclient = { domain = [] }\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: client.domain is an empty list: nothing would match"),
    ('[[rule]]\nallow = "pr-in"\nclient = { domain = [""] }\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: domain takes non-empty strings, not ''"),
    ('[[rule]]\nallow = "pr-in"\nclient = { uid = "nosuchuser" }\n[default]\n'
     'allow = "nothing"\n', "policy.toml:3: rule 1: no user named 'nosuchuser'"),
    ('[[rule]]\nallow = "pr-in"\n[rule.client]\ngid = ["kvm", "wheel"]\n[default]\n'
     'allow = "nothing"\n', "policy.toml:4: rule 1: no group named 'wheel'"),
    ('[[rule]]\nallow = "pr-in"\nclient = { uid = -1 }\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: uid takes numbers or names, not -1"),
    ('[[rule]]\nallow = "pr-in"\nclient = "web"\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: client must be a table"),
    ('[[rule]]\nallow = "pr-out"\nkey_namespace = { mask = 0xff }\n[default]\n'
     'allow = "nothing"\n', "policy.toml:3: rule 1: key_namespace must be { mask = ..., "
     "value = ... }"),
    ('[[rule]]\nallow = "pr-out"\nkey_namespace = { mask = "0xff", value = "0x100" }\n'
     '[default]\nallow = "nothing"\n', "policy.toml:3: rule 1: value 0x100 has bits "
     "outside mask 0xff: no key could match"),
    ('[[rule]]\nallow = "pr-out"\nkey_namespace = { mask = 0, value = 0 }\n[default]\n'
     'allow = "nothing"\n', "policy.toml:3: rule 1: mask 0 constrains nothing"),
    ('[[rule]]\nallow = "pr-out"\nkey_namespace = { mask = "ff", value = 0 }\n[default]\n'
     'allow = "nothing"\n', "policy.toml:3: rule 1: mask must be a 64-bit number, not 'ff'"),
    ('[[rule]]\nallow = "pr-out"\nkey_namespace = { mask = "0x10000000000000000", '
     'value = 0 }\n[default]\nallow = "nothing"\n', "policy.toml:3: rule 1: mask must be "
     "a 64-bit number, not '0x10000000000000000'"),
    ('[[rule]]\nname = 5\nallow = "pr-in"\n[default]\nallow = "nothing"\n',
     "policy.toml:2: rule 1: name must be a short printable string"),
    ('[[rule]]\n[rule.client]\nuid = 0\nallow = "pr-in"\n[default]\nallow = "nothing"\n',
     "policy.toml:4: rule 1: unknown client condition 'allow' ([rule.client] takes every "
     "key after it: write the rule's own keys before it)"),
    ('[[rule]]\nallow = "pr-in"\nallows = "pr-out"\n[default]\nallow = "nothing"\n',
     "policy.toml:3: rule 1: unknown key 'allows'"),
    ('rule = 5\n[default]\nallow = "nothing"\n', "policy.toml:1: rules are written "
     "[[rule]] (an array of tables)"),
    ('[defaults]\nallow = "nothing"\n', "policy.toml:1: unknown section 'defaults' (a "
     "policy has [[rule]] tables and a [default])"),
    ('[default]\nallow = "pr-in"\n\n[[rule]\n', "policy.toml:4: not valid TOML: expected "
     "']]' at the end of an array declaration"),
    ('[default]\nallow = pr-in\n', "policy.toml:2: not valid TOML: invalid value"),
    ('[default]\nallow = "pr-in"\nallow = "pr-out"\n', "policy.toml:3: not valid TOML: "
     "cannot overwrite a value"),
])
def test_bad_files_name_their_line(text: str, error: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load(text)
    assert str(caught.value) == error


def test_the_hash_names_the_exact_text() -> None:
    a = load('[default]\nallow = "pr-in"\n')
    b = load('[default]\nallow = "pr-in"  \n')
    assert a.sha256 != b.sha256 and len(a.sha256) == 64
