"""The tenant policy in the running pair: clients told apart by their cgroup (two VMs'
machine scopes, made with cgroupfs), the refusal QEMU gets, and SIGUSR1 reloading the
file while a connection stays open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.cgroups import cgroups
from lab.processes import PRGUARD, Helper, start_helper
from lab.sgio_log import SgIoLog
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.audit_record import decode
from prguard.shared.scsi import Sense, Status

WEB01 = "machine.slice/machine-qemu\\x2d1\\x2dweb01.scope"
DB02 = "machine.slice/machine-qemu\\x2d2\\x2ddb02.scope"
CLIENT = str(Path(sys.executable).parent / "prguard-client")

POLICY = """\
[[rule]]
name = "web may reserve"
client = { domain = "web*" }
allow = "pr-out"
key_namespace = { mask = "0xff00000000000000", value = "0x0100000000000000" }

[default]
allow = "pr-in"
"""


def client_in(cgroup: Path, helper: Helper, device: str, *args: str
              ) -> subprocess.CompletedProcess[str]:
    """prguard-client (sg_persist's options and exit status) from a process in `cgroup`,
    as a VM's QEMU would be."""
    command = (f"echo $$ > '{cgroup}/cgroup.procs' && exec {CLIENT} --socket {helper.path} "
               + " ".join(args) + f" {device}")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                          check=False)


def wait_for(text: str, helper: Helper, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in helper.stderr_text():
        assert time.monotonic() < deadline, f"{text!r} not in {helper.stderr_text()!r}"
        time.sleep(0.05)


def test_two_vms_get_what_the_policy_gives_each(sockdir: Path, loop_disk: str) -> None:
    (sockdir / "policy.toml").write_text(POLICY)
    helper = start_helper(PRGUARD, str(sockdir / "p.sock"), "-vvv", "--policy",
                          str(sockdir / "policy.toml"), "--audit-log",
                          str(sockdir / "audit.log"))
    try:
        log = SgIoLog(helper)
        with cgroups(WEB01, DB02) as (web01, db02):
            web = client_in(web01, helper, loop_disk, "--out", "--register", "--param-sark",
                            "0x0100000000000001")
            assert web.returncode == 5 and "invalid field in CDB" in web.stderr  # the loop
            assert len(log.new_calls()) == 1  # ... reached SG_IO
            outside = client_in(web01, helper, loop_disk, "--out", "--register",
                                "--param-sark", "0x0200000000000001")
            db = client_in(db02, helper, loop_disk, "--out", "--register", "--param-sark",
                           "0x0100000000000001")
            reads = client_in(db02, helper, loop_disk, "--read-keys")
            # of these, only db's PR IN reached SG_IO
            assert [call.cdb[0] for call in log.new_calls()] == [0x5E]
    finally:
        helper.stop()
    for refused in (outside, db):
        assert refused.returncode == 5, refused.stderr
        assert "access denied" in refused.stderr.lower()
    assert reads.returncode == 5 and "invalid field in CDB" in reads.stderr
    records = [decode(line) for line in (sockdir / "audit.log").read_bytes().splitlines()]
    refusals = [(r.client.domain if r.client else None, r.cause.reason if r.cause else None)
                for r in records if r.kind == "refused"]
    assert refusals == [
        ("web01", "service action reservation key 0x200000000000001 is outside rule 1 \"web "
                  "may reserve\"'s key & 0xff00000000000000 == 0x0100000000000000"),
        ("db02", "default allows PR IN only")]


def test_sigusr1_reloads_the_policy_and_keeps_the_connection(sockdir: Path,
                                                             loop_disk: str) -> None:
    policy = sockdir / "policy.toml"
    policy.write_text('[default]\nallow = "pr-in"\n')
    helper = start_helper(PRGUARD, str(sockdir / "p.sock"), "--policy", str(policy))
    fd = os.open(loop_disk, os.O_RDWR)
    try:
        with Client(helper.path) as client:
            register = pr_out_cdb(0, 24)
            denied = (int(Status.CHECK_CONDITION), Sense.ACCESS_DENIED.fixed_format())
            reply = client.request(register, fd, bytes(24))
            assert (reply.status, reply.sense) == denied
            policy.write_text('[default]\nallow = "pr-out"\n')
            os.kill(helper.pid, signal.SIGUSR1)
            wait_for("policy reloaded: ", helper)
            reply = client.request(register, fd, bytes(24))
            assert reply.sense == Sense.INVALID_FIELD.fixed_format()  # reached the loop
            policy.write_text('[default]\nallow = "pr-in"\nallow = "x"\n')
            os.kill(helper.pid, signal.SIGUSR1)
            wait_for("policy reload refused, the policy in force stays", helper)
            reply = client.request(register, fd, bytes(24))
            assert reply.sense == Sense.INVALID_FIELD.fixed_format()  # still allowed
            assert client.request(pr_in_cdb(0, 8192), fd).status == Status.CHECK_CONDITION
        assert helper.proc.poll() is None
        assert "cannot overwrite a value" in helper.stderr_text()
    finally:
        os.close(fd)
        helper.stop()
