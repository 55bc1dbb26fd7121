"""The audit trail and the tenant policy on a real LU, inside the lab guest (run by
lab/guest_suite.py in its one boot):

- the WWN in every record of the conformance steps equals the LU's, as udev's own
  scsi_id computes it from the same target (ground truth independent of prguard);
- the fence_scsi story, told by two cluster nodes that are two "VMs" (each connection
  made from a process in its own libvirt-like machine scope), read back with
  `prguard-audit show` says who preempted whom;
- a policy that allows node A only PR IN makes A's REGISTER fail the way a guest sees
  it: prguard-client, at sg_persist's level, exits 5 (ILLEGAL REQUEST) as sg_persist in
  the guest would, while A's PR IN and B's REGISTER go through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab import cgroups
from prguard.shared.audit_chain import Where, verify
from prguard.shared.audit_record import Record, decode

SCSI_ID = "/usr/lib/udev/scsi_id"
AUDIT_DIR = Path("/tmp/prguard-audit")
AUDIT_LOG = AUDIT_DIR / "audit.log"
#: libvirt's machine scopes of the two cluster nodes (domains node-a and node-b)
NODE_SCOPES = {"A": "machine.slice/machine-qemu\\x2d1\\x2dnode\\x2da.scope",
               "B": "machine.slice/machine-qemu\\x2d2\\x2dnode\\x2db.scope"}
BIN = Path(sys.executable).parent

WWN_CASE = "audit.wwn-is-the-lu-s-as-udev-names-it"
STORY_CASE = "audit.fence-story-read-back-says-who-preempted-whom"
CHAIN_CASE = "audit.chain-verifies"
POLICY_CASES = ["policy.A-register-fails-as-illegal-request",
                "policy.A-read-keys-goes-through",
                "policy.B-register-and-ignore-goes-through",
                "policy.refusal-recorded-with-its-rule"]
CASES = [WWN_CASE, STORY_CASE, CHAIN_CASE, *POLICY_CASES]


def audit_args() -> list[str]:
    """What the p side's prguard is started with."""
    AUDIT_DIR.mkdir(parents=True, exist_ok=True)
    return ["--audit-log", str(AUDIT_LOG)]


def ensure_cgroup2() -> Path:
    try:
        return cgroups.unified_root()
    except RuntimeError:
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
        return cgroups.unified_root()


def node_cgroup(node: str) -> Path:
    path = ensure_cgroup2() / NODE_SCOPES[node]
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def as_node(node: str) -> Iterator[None]:
    """This process in node's machine scope for the time of the block (a connection made
    here is identified as that VM), back where it was afterwards."""
    with open(f"/proc/{os.getpid()}/cgroup") as own:
        before = next((line.split("::", 1)[1].strip() for line in own
                       if line.startswith("0::")), "/")
    cgroups.move(os.getpid(), node_cgroup(node))
    try:
        yield
    finally:
        cgroups.move(os.getpid(), ensure_cgroup2() / before.lstrip("/"))


def udev_wwn(device: str) -> str | None:
    """ID_WWN_WITH_EXTENSION as udev's scsi_id exports it for `device`."""
    run = subprocess.run([SCSI_ID, "--export", "--whitelisted", "-d", device],
                         capture_output=True, text=True, check=False)
    for line in run.stdout.splitlines():
        if line.startswith("ID_WWN_WITH_EXTENSION="):
            return line.split("=", 1)[1]
    return None


def records() -> list[Record]:
    return [decode(line) for line in AUDIT_LOG.read_bytes().splitlines()]


def case(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"case": name, "ok": ok, "detail": detail, "c": None, "prguard": None}


def check_wwns(devices: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Every record of a p-side device names it with the WWN udev gives it."""
    expected: dict[str, str | None] = {}
    for node in devices.values():
        wwn = udev_wwn(node["sd"])
        for kind in ("sd", "sg"):
            rdev = os.stat(node[kind]).st_rdev
            expected[f"{os.major(rdev)}:{os.minor(rdev)}"] = wwn
    seen = [r for r in records() if r.device is not None and r.device.dev in expected]
    wrong = [f"{r.device.dev}: {r.device.wwn} != {expected[r.device.dev]}"
             for r in seen if r.device is not None and r.device.wwn != expected[r.device.dev]]
    ok = bool(seen) and not wrong and None not in expected.values()
    return case(WWN_CASE, ok, f"{len(seen)} records of {len(expected)} devices; udev: "
                f"{sorted(set(map(str, expected.values())))}; wrong: {wrong[:5]}")


def show(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "prguard-audit"), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def check_story(fence_sd: str, ka: int, kb: int) -> list[dict[str, Any]]:
    wwn = udev_wwn(fence_sd)
    shown = show("show", "--device", f"wwn-{wwn}", str(AUDIT_LOG))
    lines = shown.stdout.splitlines()
    want = [f"vm node-a (uid 0) REGISTER \u2192 {ka:#x} on wwn-{wwn} GOOD",
            f"vm node-b (uid 0) REGISTER \u2192 {kb:#x} on wwn-{wwn} GOOD",
            f"vm node-a (uid 0) RESERVE key {ka:#x} (Write Exclusive, Registrants Only) on "
            f"wwn-{wwn} GOOD",
            f"vm node-b (uid 0) PREEMPT key {kb:#x} \u2192 preempted {ka:#x} (Write Exclusive,"
            f" Registrants Only) on wwn-{wwn} GOOD"]
    missing = [w for w in want if not any(w in line for line in lines)]
    verified = show("verify", str(AUDIT_LOG))
    return [case(STORY_CASE, shown.returncode == 0 and not missing,
                 f"missing {missing}; shown:\n" + "\n".join(lines[-12:])),
            case(CHAIN_CASE, verified.returncode == 0, verified.stdout + verified.stderr)]


POLICY = """\
[[rule]]
name = "node A reads only"
client = {{ domain = "node-a" }}
allow = "pr-in"

[default]
allow = "pr-out"
"""


def run_policy(sock: str, fence: dict[str, dict[str, str]], kb: int,
               start: Any) -> list[dict[str, Any]]:
    """A prguard with the policy, node A's and node B's prguard-client in their scopes.
    `start(argv_extra)` starts it on `sock` and returns a stop callable."""
    policy = AUDIT_DIR / "policy.toml"
    policy.write_text(POLICY.format())
    log = AUDIT_DIR / "policy-audit.log"
    stop = start(["--policy", str(policy), "--audit-log", str(log)])
    out: list[dict[str, Any]] = []
    try:
        def client(node: str, *args: str) -> subprocess.CompletedProcess[str]:
            scope = node_cgroup(node)
            command = (f"echo $$ > '{scope}/cgroup.procs' && exec {BIN}/prguard-client "
                       f"--socket {sock} " + " ".join(args) + f" {fence[node]['sd']}")
            return subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                  timeout=60, check=False)

        register = client("A", "--out", "--register", "--param-sark", "0xa5a5")
        out.append(case(POLICY_CASES[0], register.returncode == 5
                        and "ILLEGAL REQUEST" in register.stderr.upper(),
                        f"exit {register.returncode}: {register.stderr.strip()}"))
        keys = client("A", "--read-keys")
        out.append(case(POLICY_CASES[1], keys.returncode == 0,
                        f"exit {keys.returncode}: {keys.stdout.strip()} {keys.stderr.strip()}"))
        again = client("B", "--out", "--register-ignore", "--param-sark", f"{kb:#x}")
        out.append(case(POLICY_CASES[2], again.returncode == 0,
                        f"exit {again.returncode}: {again.stderr.strip()}"))
    finally:
        stop()
    refused = [r for r in (decode(line) for line in log.read_bytes().splitlines())
               if r.kind == "refused"]
    good = (len(refused) == 1 and refused[0].cause is not None
            and refused[0].cause.rule == 'rule 1 "node A reads only"'
            and refused[0].client is not None and refused[0].client.domain == "node-a"
            and refused[0].answer is not None and refused[0].answer.sense == "05/20/02")
    out.append(case(POLICY_CASES[3], good, f"refused records: {refused}"))
    return out


def chain_lines(path: Path) -> list[tuple[Where, bytes]]:
    with path.open("rb") as stream:
        return [(Where(str(path), n), line) for n, line in enumerate(stream, 1)]


def verified(path: Path) -> bool:
    return verify(chain_lines(path)).ok
