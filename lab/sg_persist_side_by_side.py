"""prguard-client beside sg_persist, in the lab guest (lab/guest_suite.py runs it after the
fencing story, on that story's LU f: node A preempted, node B holding type 5).

The same question is asked both ways on the same node, so through the same I_T nexus:
sg_persist issues SG_IO on the device itself, prguard-client hands the device to the
running prguard. Each case compares what they print - the keys, the reservation, the
capabilities, the full status (sg_persist's words parsed, prguard-client's --json), and
sg_persist's hex forms (-H, -HH, -HHH) byte for byte - and their exit status, which must
also be the one the case expects (agreeing on a wrong answer is a failure too).

sg_persist runs with -n (no INQUIRY: prguard-client never sends one). prguard-client runs
in this process, through the same main() its console script calls; one case runs the
console script itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prguard.client.cli import main as client_main

SG_PERSIST = "sg_persist"
CONSOLE_SCRIPT = Path(sys.executable).parent / "prguard-client"

KA = 0xA1A1A1A1A1A1A1A1
KB = 0xB2B2B2B2B2B2B2B2
KX = 0xDEADBEEF00000001  # never registered
INI_B = "sas,50014050000000c1"  # node B's initiator port (lio_setup.sh)
WE_RO = 5

#: sg_persist's names of the reservation types (its pr_type_strs), by TYPE code.
TYPE_NAMES = {
    "Write Exclusive": 1, "Exclusive Access": 3,
    "Write Exclusive, registrants only": 5, "Exclusive Access, registrants only": 6,
    "Write Exclusive, all registrants": 7, "Exclusive Access, all registrants": 8,
}
_CAPABILITY_FLAGS = {"RLR_C": "rlr_c", "CRH": "crh", "SIP_C": "sip_c", "ATP_C": "atp_c",
                     "PTPL_C": "ptpl_c", "TMV": "tmv", "PTPL_A": "ptpl_a"}

PR_IN = (("read-keys", "-k"), ("read-reservation", "-r"), ("report-capabilities", "-c"),
         ("read-full-status", "-s"))
CASES: list[str] = [
    *(f"sg_persist.{name}" for name, _ in PR_IN),
    "sg_persist.reserve-unregistered",
    "sg_persist.register-ignore-existing-key",
    "sg_persist.reserve-while-another-holds",
    "sg_persist.release-with-the-wrong-type",
    "sg_persist.clear-with-the-wrong-key",
    "sg_persist.preempt-an-unknown-key",
    "sg_persist.spec-i-pt-while-registered",
    "sg_persist.register-move-to-itself",
    "sg_persist.read-full-status-two-registrations-sg",
    "sg_persist.read-keys-two-keys-sg",
    "sg_persist.unit-attention-after-preempt",
    "sg_persist.console-script",
]


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def brief(self) -> str:
        return f"exit {self.code}, stdout {self.out[-300:]!r}, stderr {self.err[-300:]!r}"


def sg_persist(*args: str) -> Ran:
    r = subprocess.run([SG_PERSIST, "-n", *args], capture_output=True, text=True,
                       timeout=60, check=False)
    return Ran(r.returncode, r.stdout, r.stderr)


def prguard_client(socket: str, *args: str) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = int(client_main(["--socket", socket, *args]))
    return Ran(code, out.getvalue(), err.getvalue())


# -- sg_persist's words, as facts --------------------------------------------------------------

def _generation(text: str) -> int:
    match = re.search(r"PR generation=0x([0-9a-f]+)", text)
    if match is None:
        raise ValueError(f"no PR generation in {text!r}")
    return int(match.group(1), 16)


def _type(name: str) -> int:
    return TYPE_NAMES[name.strip()]


def keys_of(text: str) -> dict[str, Any]:
    return {"generation": _generation(text),
            "keys": [int(k, 16) for k in re.findall(r"^    0x([0-9a-f]+)$", text, re.M)]}


def reservation_of(text: str) -> dict[str, Any]:
    held = re.search(r"Key=0x([0-9a-f]+)\n\s+scope: (LU_SCOPE|\d+),?\s+type: (.+)", text)
    return {"generation": _generation(text), "reservation": None if held is None else {
        "key": int(held.group(1), 16),
        "scope": 0 if held.group(2) == "LU_SCOPE" else int(held.group(2)),
        "type": _type(held.group(3))}}


def capabilities_of(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for flag, field in _CAPABILITY_FLAGS.items():
        bit = re.search(rf"\({flag}\): ([01])$", text, re.M)
        if bit is None:
            raise ValueError(f"no {flag} in {text!r}")
        facts[field] = bit.group(1) == "1"
    allow = re.search(r"Allow Commands: (\d+)", text)
    facts["allow_commands"] = int(allow.group(1)) if allow else None
    facts["types"] = sorted(_type(name) for name, bit in
                            re.findall(r"^      (.+): ([01])$", text, re.M) if bit == "1")
    return facts


def full_status_of(text: str) -> dict[str, Any]:
    registrations = []
    for block in re.split(r"^    (?=Key=)", text, flags=re.M)[1:]:
        key = re.match(r"Key=0x([0-9a-f]+)", block)
        sas = re.search(r"SAS address: 0x([0-9a-f]+)", block)
        port = re.search(r"Relative port address: 0x([0-9a-f]+)", block)
        held = re.search(r"scope: (LU_SCOPE|\d+),?\s+type: (.+)", block)
        if key is None:
            raise ValueError(f"a full status block without a key: {block!r}")
        registrations.append({
            "key": int(key.group(1), 16),
            "all_tg_pt": "All target ports bit set" in block,
            "relative_target_port": int(port.group(1), 16) if port else None,
            "holder": None if "<< Reservation holder >>" not in block or held is None else (
                0 if held.group(1) == "LU_SCOPE" else int(held.group(1)), _type(held.group(2))),
            "sas_address": int(sas.group(1), 16) if sas else None})
    return {"generation": _generation(text), "registrations": registrations}


# -- prguard-client's JSON, as the same facts -------------------------------------------------

def _ours_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {"generation": data["generation"], "keys": [int(k, 16) for k in data["keys"]]}


def _ours_reservation(data: dict[str, Any]) -> dict[str, Any]:
    held = data["reservation"]
    return {"generation": data["generation"], "reservation": None if held is None else {
        "key": int(held["key"], 16), "scope": held["scope"], "type": held["type"]}}


def _ours_capabilities(data: dict[str, Any]) -> dict[str, Any]:
    facts = {field: data[field] for field in _CAPABILITY_FLAGS.values()}
    facts["allow_commands"] = data["allow_commands"]
    facts["types"] = sorted(t["type"] for t in data["types"])
    return facts


def _ours_full_status(data: dict[str, Any]) -> dict[str, Any]:
    registrations = []
    for r in data["registrations"]:
        tid = r["transport_id"]
        registrations.append({
            "key": int(r["key"], 16), "all_tg_pt": r["all_tg_pt"],
            "relative_target_port": None if r["all_tg_pt"] else r["relative_target_port"],
            "holder": (r["scope"], r["type"]) if r["reservation_holder"] else None,
            "sas_address": int(tid["identifier"], 16) if tid["protocol"] == 6 else None})
    return {"generation": data["generation"], "registrations": registrations}


FACTS: dict[str, tuple[Callable[[str], dict[str, Any]],
                       Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "-k": (keys_of, _ours_keys), "-r": (reservation_of, _ours_reservation),
    "-c": (capabilities_of, _ours_capabilities), "-s": (full_status_of, _ours_full_status),
}


# -- the cases ----------------------------------------------------------------------------------

def _case(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"case": name, "ok": ok, "detail": detail, "c": None, "prguard": None}


def _hex_agrees(ours: str, theirs: str, level: int) -> tuple[bool, str]:
    if ours == theirs:
        return True, ""
    # sg_persist -H prints the length line twice for an empty list (documented deviation)
    doubled = re.sub(r"(Additional length=0)\n", r"\1\nAdditional length=0\n", ours)
    if level == 1 and doubled == theirs:
        return True, " (-H: sg_persist repeats 'Additional length=0', as documented)"
    return False, f"-{'H' * level} differs: sg_persist {theirs!r}, prguard-client {ours!r}"


def compare_pr_in(socket: str, option: str, device: str) -> tuple[bool, str]:
    """The decoded facts, then each hex form, and every exit status (all 0)."""
    parse, ours_of = FACTS[option]
    theirs, ours = sg_persist(option, device), prguard_client(socket, "--json", option, device)
    problems: list[str] = []
    if (theirs.code, ours.code) != (0, 0):
        return False, f"exit status: sg_persist {theirs.brief()}; prguard-client {ours.brief()}"
    try:
        facts, our_facts = parse(theirs.out), ours_of(json.loads(ours.out)["data"])
    except (ValueError, KeyError, TypeError) as err:
        return False, f"cannot read the answers ({err}): sg_persist {theirs.out!r}; " \
                      f"prguard-client {ours.out!r}"
    if facts != our_facts:
        problems.append(f"facts differ: sg_persist {facts}, prguard-client {our_facts}")
    notes = ""
    for level in (1, 2, 3):
        flag = "-" + "H" * level
        theirs_hex, ours_hex = sg_persist(option, flag, device), prguard_client(
            socket, option, flag, device)
        if (theirs_hex.code, ours_hex.code) != (0, 0):
            problems.append(f"{flag} exit status: sg_persist {theirs_hex.code}, "
                            f"prguard-client {ours_hex.code}")
            continue
        ok, note = _hex_agrees(ours_hex.out, theirs_hex.out, level)
        if not ok:
            problems.append(note)
        notes += note
    if problems:
        return False, "; ".join(problems)
    return True, f"same facts {our_facts}, same -H/-HH/-HHH bytes, exit 0{notes}"


def compare_exit(socket: str, args: list[str], device: str, want: int) -> tuple[bool, str]:
    """sg_persist first, then prguard-client, with the same arguments: the same exit."""
    theirs = sg_persist(*args, device)
    ours = prguard_client(socket, *args, device)
    detail = (f"{' '.join(args)}: sg_persist exit {theirs.code}, prguard-client exit "
              f"{ours.code} (want {want}); prguard-client said {ours.err.strip()!r}")
    return theirs.code == ours.code == want, detail


def drain_unit_attentions(device: str) -> list[int]:
    """Spend any unit attention waiting for this nexus, so that it goes to neither tool."""
    codes = []
    for _ in range(4):
        codes.append(sg_persist("-k", device).code)
        if codes[-1] != 6:
            break
    return codes


def run(socket: str, devices: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    a, b = devices["A"], devices["B"]
    out: list[dict[str, Any]] = []
    drained = {node: drain_unit_attentions(devices[node]["sd"]) for node in ("A", "B")}
    for name, option in PR_IN:
        ok, detail = compare_pr_in(socket, option, b["sd"])
        if not out:
            detail += f"; unit attentions drained first: sg_persist -k exit codes {drained}"
        out.append(_case(f"sg_persist.{name}", ok, detail))
    # (name, node, arguments, the exit status LIO's answer means)
    pr_out = [
        ("reserve-unregistered", a, ["--out", "--reserve", f"--param-rk={KA:x}",
                                    f"--prout-type={WE_RO}"], 24),
        ("register-ignore-existing-key", a, ["--out", "--register-ignore",
                                            f"--param-sark={KA:x}"], 0),
        ("reserve-while-another-holds", a, ["--out", "--reserve", f"--param-rk={KA:x}",
                                           f"--prout-type={WE_RO}"], 24),
        ("release-with-the-wrong-type", b, ["--out", "--release", f"--param-rk={KB:x}",
                                           "--prout-type=1"], 24),
        ("clear-with-the-wrong-key", a, ["--out", "--clear", f"--param-rk={KX:x}"], 24),
        ("preempt-an-unknown-key", b, ["--out", "--preempt", f"--param-rk={KB:x}",
                                      f"--param-sark={KX:x}", f"--prout-type={WE_RO}"], 24),
        # INVALID FIELD IN PARAMETER LIST (05/26/00): the TransportID forms agree too
        ("spec-i-pt-while-registered", b, ["--out", "--register", f"--param-rk={KB:x}",
                                          f"--param-sark={KB:x}", f"--transport-id={INI_B}"],
         5),
        ("register-move-to-itself", b, ["--out", "--register-move", f"--param-rk={KB:x}",
                                       f"--param-sark={KA:x}", f"--prout-type={WE_RO}",
                                       "--relative-target-port=2", f"--transport-id={INI_B}"],
         5),
    ]
    for name, node, args, want in pr_out:
        ok, detail = compare_exit(socket, args, node["sd"], want)
        out.append(_case(f"sg_persist.{name}", ok, detail))
    for name, option in (("read-full-status-two-registrations-sg", "-s"),
                         ("read-keys-two-keys-sg", "-k")):
        ok, detail = compare_pr_in(socket, option, a["sg"])
        out.append(_case(f"sg_persist.{name}", ok, detail))
    out.append(_unit_attention(socket, a["sd"], b["sd"]))
    out.append(_console_script(socket, b["sd"]))
    return out


def _unit_attention(socket: str, a: str, b: str) -> dict[str, Any]:
    """B preempts A and A's next command gets UNIT ATTENTION (06/2a/05): once done and
    seen with sg_persist, once with prguard-client (A registers again in between)."""
    preempt = ["--out", "--preempt", f"--param-rk={KB:x}", f"--param-sark={KA:x}",
               f"--prout-type={WE_RO}"]
    codes = {"sg_persist": (sg_persist(*preempt, b).code, sg_persist("-k", a).code)}
    again = prguard_client(socket, "--out", "--register-ignore", f"--param-sark={KA:x}", a)
    ours = prguard_client(socket, *preempt, b)
    seen = prguard_client(socket, "-k", a)
    codes["prguard-client"] = (ours.code, seen.code)
    ok = again.code == 0 and codes["sg_persist"] == codes["prguard-client"] == (0, 6)
    return _case("sg_persist.unit-attention-after-preempt", ok,
                 f"(preempt, A's next READ KEYS) exit codes {codes} (want (0, 6) both); "
                 f"A registered again in between: exit {again.code}; prguard-client said "
                 f"{seen.err.strip()!r}")


def _console_script(socket: str, device: str) -> dict[str, Any]:
    theirs = sg_persist("-s", "-HH", device)
    r = subprocess.run([str(CONSOLE_SCRIPT), "--socket", socket, "-s", "-HH", device],
                       capture_output=True, text=True, timeout=120, check=False)
    ok = (r.returncode, r.stdout) == (theirs.code, theirs.out) and r.returncode == 0
    return _case("sg_persist.console-script", ok,
                 f"{CONSOLE_SCRIPT} -s -HH: exit {r.returncode}, "
                 f"{'the same bytes as sg_persist' if ok else repr(r.stdout)}; "
                 f"sg_persist: {theirs.brief()}")
