"""End to end through a real guest: a nested QEMU in the lab VM, its guest's sg_persist
going through scsi-block, QEMU's pr-manager-helper and prguard to a LIO LUN.

One outer boot (virtme-ng, TCG) runs lab/nested_outer.py, which starts prguard and a
nested QEMU (TCG inside TCG) booting the vmlinux and initramfs that lab/
nested_build.py makes here on the host; the nested guest is driven over a serial port.
Each test below judges one step of what came back ($LAB_RESULTS/nested.json). A guest that
does not boot or does not report fails every test (never a skip).

Needs (Debian): linux-image-amd64, qemu-system-x86 (qboot.rom, pr-manager-helper), kmod,
sg3-utils (sg_persist, in both guests), busybox-static (the nested guest's shell); virtme-ng
from PyPI for `vng`. Three to five minutes on two shared cores; LAB_KEEP=1 keeps the work dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import labvm, nested_build

REPO = Path(__file__).resolve().parent.parent
GUEST_TIMEOUT_S = 1800.0  # a hang guard; a real restart of prguard in the emulated guest is in it
KEY = "0xabc1"
MAP_KEY = "0xabc2"
# spec 4.3: what the guest sees when the helper is gone (QEMU >= 5.2 maps the errno):
ENOTCONN_SENSE = "Aborted command"  # 0b/00/06, after 5 failed connects
SG_LIB_CAT_ABORTED_COMMAND = 11  # sg_persist's exit status for it


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def nested() -> Iterator[dict[str, Any]]:
    """Build the nested guest's images, boot the lab VM once, return nested.json."""
    for tool, package in (("sg_persist", "sg3-utils"), ("qemu-system-x86_64", "qemu-system-x86"),
                          ("modprobe", "kmod")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install the Debian package {package}", pytrace=False)
    if not Path("/usr/share/qemu/qboot.rom").is_file():
        pytest.fail("/usr/share/qemu/qboot.rom missing: install qemu-system-data", pytrace=False)
    top = Path(tempfile.mkdtemp(prefix="nested-", dir="/tmp"))
    try:
        kernel = labvm.find_kernel()
        images = nested_build.build(top / "images", kernel.image, kernel.version)
    except (labvm.LabVMError, nested_build.NestedBuildError) as e:
        pytest.fail(f"cannot build the nested guest: {e}", pytrace=False)
    script = (f"export PYTHONPATH={REPO}\ncd \"$LAB_RESULTS\"\n"
              f"exec {sys.executable} -m lab.nested_outer {images.vmlinux.parent}\n")
    try:
        result = labvm.run_in_guest(script, GUEST_TIMEOUT_S, kernel=kernel,
                                    work_dir=top / "vm",
                                    extra_vng_args=(f"--rwdir={images.vmlinux.parent}",))
    except labvm.GuestTimeoutError as e:
        pytest.fail(f"{e}\nstderr:\n{_tail(e.result.stderr)}\nconsole:\n{_tail(e.result.console)}"
                    f"\nnested console:\n{_read_tail(e.result.results_dir / 'nested-console.log')}",
                    pytrace=False)
    except labvm.LabVMError as e:
        pytest.fail(f"lab guest failed: {e}", pytrace=False)
    report = result.results_dir / "nested.json"
    if not report.is_file():
        pytest.fail(f"outer guest exited {result.returncode} without nested.json (work dir "
                    f"{top})\nstdout:\n{_tail(result.stdout)}\nstderr:\n{_tail(result.stderr)}",
                    pytrace=False)
    data: dict[str, Any] = json.loads(report.read_text())
    data["_dir"] = str(result.results_dir)
    print(f"nested lab: boot to command {result.boot_to_command_s} s, total "
          f"{result.total_s:.1f} s, in guest {data.get('timings')}, prguard starts "
          f"{data.get('prguard_start_s')}, restart {data['steps'].get('restart_cold_s')} s, "
          f"cold start {data.get('cold_start')}, work dir {top}")
    yield data
    if not os.environ.get("LAB_KEEP"):
        shutil.rmtree(top, ignore_errors=True)


def _read_tail(path: Path) -> str:
    return _tail(path.read_text(errors="replace")) if path.is_file() else "(none)"


def step(nested: dict[str, Any], name: str) -> Any:
    steps: dict[str, Any] = nested["steps"]
    if name not in steps:
        where = Path(nested["_dir"])
        pytest.fail(f"the lab run did not get to {name!r}; error:\n{nested.get('error')}\n"
                    f"nested console:\n{_read_tail(where / 'nested-console.log')}\n"
                    f"qemu stderr:\n{_read_tail(where / 'nested-qemu.stderr')}\n"
                    f"prguard log:\n{_read_tail(where / 'prguard.log')}", pytrace=False)
    return steps[name]


def _prguard_log(nested: dict[str, Any]) -> str:
    return (Path(nested["_dir"]) / "prguard.log").read_text(errors="replace")


def test_qemu_connects_at_start(nested: dict[str, Any]) -> None:
    assert step(nested, "qmp_after_start") == [{"id": "pr0", "connected": True}]
    assert step(nested, "ready").startswith("@@READY")


def test_guest_registers_and_reserves_through_prguard(nested: dict[str, Any]) -> None:
    for name in ("register", "reserve", "guest_keys", "guest_reservation"):
        assert step(nested, name)["rc"] == 0, step(nested, name)
    assert KEY in step(nested, "guest_keys")["out"]
    reservation = step(nested, "guest_reservation")["out"]
    assert KEY in reservation and "Write Exclusive" in reservation, reservation
    # every PR command of the guest went through prguard, from QEMU's process
    qemu_pid = step(nested, "qemu_pid")
    requests = [line for line in _prguard_log(nested).splitlines()
                if f"pid {qemu_pid} uid " in line and (": PR IN " in line or ": PR OUT " in line)]
    assert len(requests) >= 5, _prguard_log(nested)


def test_the_device_holds_what_the_guest_set(nested: dict[str, Any]) -> None:
    keys = step(nested, "outer_keys_other_node")
    assert keys["rc"] == 0 and KEY in keys["out"], keys
    for name in ("outer_reservation_other_node", "outer_reservation_same_node"):
        reservation = step(nested, name)
        assert reservation["rc"] == 0, reservation
        assert KEY in reservation["out"] and "Write Exclusive" in reservation["out"], reservation


def test_the_guests_register_on_a_map_reaches_both_of_its_paths(
        nested: dict[str, Any]) -> None:
    """scsi-block over a dm-multipath map: the guest's one REGISTER registers both I_T
    nexuses, as READ FULL STATUS on each path shows (the C helper would register one)."""
    assert step(nested, "mpath_disk")["rc"] == 0, step(nested, "mpath_disk")
    register = step(nested, "mpath_register")
    assert register["rc"] == 0, register
    for full in step(nested, "mpath_full_status"):
        assert full["rc"] == 0, full
        entries = re.split(r"\n\s*Key=", full["out"])[1:]
        ours = [e for e in entries if e.startswith(MAP_KEY)]
        initiators = {m.lower() for e in ours
                      for m in re.findall(r"SAS address: (0x[0-9a-fA-F]+)", e)}
        assert initiators == {"0x50014050000000b1", "0x50014050000000c1"}, full["out"]


def test_a_helper_back_within_the_reconnect_window(nested: dict[str, Any]) -> None:
    """prguard stopped; another prguard, started earlier on a spare path, is renamed onto
    the path while QEMU retries: QEMU's side of a quick restart (a cold start in this
    emulated guest is longer than QEMU's window; see the real restart below)."""
    assert step(nested, "stop1_rc") == 0
    assert step(nested, "path_after_stop1") is False  # prguard removed its socket
    r = step(nested, "restart_in_window")
    assert r["down_event"]["data"] == {"id": "pr0", "connected": False}
    assert r["back_after_s"] < 4.0, r  # while QEMU still retries (5 attempts, 1 s apart)
    assert r["rc"] == 0 and KEY in r["out"], r
    changes = [e for e in step(nested, "restart_events")
               if e["event"] == "PR_MANAGER_STATUS_CHANGED"]
    assert [e["data"] for e in changes] == [{"id": "pr0", "connected": False},
                                            {"id": "pr0", "connected": True}]
    # QEMU's own clock: the reconnect came from its retry loop (a 1 s sleep after the
    # first failed connect), inside the 5 attempts
    stamps = [e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6 for e in changes]
    assert 0.9 <= stamps[1] - stamps[0] < 5.0, changes


def test_down_longer_than_the_window_the_guest_gets_check_condition(
        nested: dict[str, Any]) -> None:
    assert step(nested, "stop2_rc") == 0
    r = step(nested, "down_long")
    # spec 4.3: the CDB write fails (socket dead), then 5 connects fail: -ENOTCONN, which
    # QEMU >= 5.2 turns into CHECK CONDITION, ABORTED COMMAND 0b/00/06 (sg_persist: 11)
    assert r["rc"] == SG_LIB_CAT_ABORTED_COMMAND, r
    assert re.search(ENOTCONN_SENSE, r["out"], re.IGNORECASE), r
    assert r["s"] >= 4.0, r  # QEMU tried for about five seconds first
    assert step(nested, "qmp_while_down") == [{"id": "pr0", "connected": False}]
    events = [(e["event"], e["data"]) for e in step(nested, "down_long_events")]
    assert ("PR_MANAGER_STATUS_CHANGED", {"id": "pr0", "connected": False}) in events, events


def test_after_a_real_restart_qemu_reconnects_on_the_next_command(
        nested: dict[str, Any]) -> None:
    assert step(nested, "stale_socket_left") is True  # QEMU's connects were refused
    # a new prguard process, started on the path (over the stale socket file) after
    # the others stopped
    assert step(nested, "restart_cold_s") > 0
    assert step(nested, "restarted_pid") not in step(nested, "earlier_pids")
    r = step(nested, "after_restart")
    assert r["rc"] == 0 and KEY in r["out"], r
    assert step(nested, "qmp_after_restart") == [{"id": "pr0", "connected": True}]
    events = [e["data"] for e in step(nested, "after_restart_events")
              if e["event"] == "PR_MANAGER_STATUS_CHANGED"]
    assert events == [{"id": "pr0", "connected": True}]
    assert step(nested, "qemu_exit") == 0
    assert step(nested, "stop3_rc") == 0
