"""A short soak in every test run (`make soak` runs the long one)."""

from __future__ import annotations

from pathlib import Path

from lab.processes import PRGUARD, start_helper
from lab.soak import check, soak


def test_short_soak_stays_flat(sockdir: Path, loop_disk: str) -> None:
    # One test process plays fifty VMs: lift the per-peer limit accordingly.
    helper = start_helper(PRGUARD, str(sockdir / "soak.sock"), "--max-connections-per-peer=100")
    try:
        tally, before, after = soak(helper.path, helper.pid, loop_disk, seconds=20,
                                    clients=50)
    finally:
        assert helper.stop() == 0
    assert tally.valid_sent > 100 and tally.hostile > 50
    assert check(tally, before, after) == []
