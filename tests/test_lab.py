"""Device conformance against a real SCSI target: prguard vs qemu-pr-helper on LIO.

One guest (virtme-ng, Debian's kernel under TCG, the host's / read-only) runs
lab/guest_suite.py: two identical LIO set-ups, one driven only through prguard and one
only through /usr/bin/qemu-pr-helper, the same PERSISTENT RESERVE step table on both,
replies compared step by step; then the fence_scsi story through prguard with real WRITEs,
and prguard-client beside sg_persist on the fenced LU (lab/sg_persist_side_by_side.py).
Each case of the step table is one test here, its detail the failure message. A guest
that does not boot or does not report fails every test (never a skip).

Needs: Debian linux-image-amd64 (the guest kernel and its modules), qemu-system-x86 (TCG,
and qemu-system-common's /usr/bin/qemu-pr-helper), kmod, procps; virtme-ng from PyPI for
`vng` (on PATH, next to this interpreter, or $LABVM_VNG). About 40-70 s on two cores.
LAB_KEEP=1 keeps the guest's work dir (results.json, helper stderr, lio.json).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import labvm
from lab.guest_suite import CASES

REPO = Path(__file__).resolve().parent.parent
# Boot and the whole suite took 306 s on a loaded two-core machine, 460 s (with the
# device-mapper cases) while two other guests ran on the same two cores; the multipath
# cases add 140-190 s (their own LIO set-up included).
GUEST_TIMEOUT_S = 1200.0
# The suite runs on the TSC clocksource; CLOCK_CASE then switches to hpet, where every
# clock_gettime is a real system call, and checks that prguard still starts and serves
# (its policies once lacked clock_gettime and it died of SIGSYS there).
KERNEL_ARGS = "clocksource=tsc tsc=reliable"

# The guest runs this very interpreter (the venv's python, visible through the shared /),
# so msgpack, prctl, ... import there as they do here.
GUEST_SCRIPT = f"""\
export PYTHONPATH={REPO}
cd "$LAB_RESULTS"
exec {sys.executable} -m lab.guest_suite
"""

def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def lab_results() -> dict[str, dict[str, Any]]:
    """Boot the guest once, run the whole suite, return its verdicts by case name."""
    try:
        result = labvm.run_in_guest(GUEST_SCRIPT, GUEST_TIMEOUT_S, verbose_console=True,
                                    extra_vng_args=("--append", KERNEL_ARGS))
    except labvm.GuestTimeoutError as e:
        pytest.fail(f"{e}\nguest stderr:\n{_tail(e.result.stderr)}\n"
                    f"console tail:\n{_tail(e.result.console)}", pytrace=False)
    except labvm.LabVMError as e:  # no kernel, no vng, VM died without an exit code
        pytest.fail(f"lab guest failed: {e}", pytrace=False)
    results_file = result.results_dir / "results.json"
    if result.returncode != 0 or not results_file.is_file():
        pytest.fail(f"guest suite exited {result.returncode} without results "
                    f"(work dir {result.work_dir})\nstdout:\n{_tail(result.stdout)}\n"
                    f"stderr:\n{_tail(result.stderr)}\nconsole tail:\n{_tail(result.console)}",
                    pytrace=False)
    entries: list[dict[str, Any]] = json.loads(results_file.read_text())
    timings = result.results_dir / "timings.json"
    in_guest = timings.read_text() if timings.exists() else "?"
    print(f"lab guest: boot to command {result.boot_to_command_s} s, total "
          f"{result.total_s:.1f} s, work dir {result.work_dir}, in guest {in_guest}")
    passed = all(entry["ok"] for entry in entries)
    if passed and not os.environ.get("LAB_KEEP"):  # LAB_KEEP=1 keeps it for a look
        shutil.rmtree(result.work_dir, ignore_errors=True)
    return {entry["case"]: entry for entry in entries}


@pytest.mark.parametrize("case", CASES)
def test_device_case(lab_results: dict[str, dict[str, Any]], case: str) -> None:
    entry = lab_results.get(case)
    assert entry is not None, f"the guest suite did not report {case!r}"
    assert entry["ok"], entry["detail"]


def test_guest_reported_only_known_cases(lab_results: dict[str, dict[str, Any]]) -> None:
    assert sorted(lab_results) == sorted(CASES)
