"""The watchdog against SG_IO stuck in the kernel (lab/hung_device.py in a lab guest: a
dm-multipath map queueing without a path): the threads one device holds do not make the
service look dead, and other devices are served meanwhile; a worker all of whose threads
are stuck is not reported alive. About three minutes (LIO set-up and two prguard starts
under emulation)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import labvm

REPO = Path(__file__).resolve().parent.parent
GUEST_SCRIPT = f"""\
export PYTHONPATH={REPO}
cd "$LAB_RESULTS"
exec {sys.executable} -m lab.hung_device
"""


@pytest.fixture(scope="module")
def guest() -> dict[str, Any]:
    try:
        result = labvm.run_in_guest(GUEST_SCRIPT, 600.0)
    except labvm.LabVMError as exc:
        pytest.fail(f"lab guest failed: {exc}", pytrace=False)
    results = result.results_dir / "results.json"
    if result.returncode != 0 or not results.is_file():
        pytest.fail(f"guest exited {result.returncode} without results (work dir "
                    f"{result.work_dir})\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
                    pytrace=False)
    found: dict[str, Any] = json.loads(results.read_text())
    shutil.rmtree(result.work_dir, ignore_errors=True)
    return found


def pings(notifications: list[str]) -> int:
    return sum("WATCHDOG=1" in note.split("\n") for note in notifications)


def test_a_device_stuck_in_the_kernel_holds_only_its_threads(guest: dict[str, Any]) -> None:
    """Two of four threads stuck in SG_IO on a map without a path: the other two answer
    the probes (WATCHDOG=1 all along) and serve the other device at once; the stuck
    requests are answered LUN COMMUNICATION FAILURE at the worker deadline."""
    run = guest["one_device"]
    assert pings(run["notifications"]) >= 7, run["notifications"]
    assert not any("WORKER NOT ANSWERING" in n for n in run["notifications"])
    assert len(run["others"]) >= 5, run["others"]
    for seconds, outcome in run["others"]:
        assert (outcome, seconds < 3) == ("status 2 sense 05/24/00", True), run["others"]
    assert run["stuck"] and all(outcome == "status 2 sense 0b/08/00" and 7 < seconds < 12
                                for seconds, outcome in run["stuck"]), run["stuck"]
    assert run["exit_status"] == 0, run["stderr"]


def test_a_worker_with_every_thread_stuck_is_not_reported_alive(
        guest: dict[str, Any]) -> None:
    """Both threads stuck: once the probe is older than the worker deadline (8 s),
    WATCHDOG=1 stops, STATUS= says why and the log has one error line; with the paths
    back the threads return and WATCHDOG=1 comes again."""
    run = guest["every_thread"]
    notes = run["notifications"]
    last_ping = max(i for i, n in enumerate(notes) if "WATCHDOG=1" in n.split("\n"))
    assert pings(notes[last_ping + 1:]) == 0 and len(notes) - last_ping >= 3, notes
    assert any("WORKER NOT ANSWERING" in n for n in notes[last_ping + 1:]), notes
    assert pings(run["after"]) >= 1, run["after"]
    assert "the worker has not answered a liveness probe for" in run["stderr"]
    assert "the worker answers its liveness probe again" in run["stderr"]
    assert run["still_stuck"] == 0
    assert run["exit_status"] == 0, run["stderr"]
