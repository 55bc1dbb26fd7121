"""What reached SG_IO: the worker's per-call debug line (-vvv), read back from a helper's
stderr.

On the host a loop device's SG_IO fails with EINVAL, which maps to 05/24/00, the same
answer prguard gives when it refuses a request by itself. A test that claims a request
reached SG_IO (or never did) checks this log, not only the answer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lab.processes import Helper

#: worker/handler.py's line, one per SG_IO the worker issued, written before it answers.
LINE = re.compile(
    r"worker: request (?P<id>\d+): SG_IO on (?P<major>\d+):(?P<minor>\d+) "
    r"cdb (?P<cdb>[0-9a-f]{32}) -> errno (?P<errno>\w+) host (?P<host>0x[0-9a-f]+) "
    r"driver (?P<driver>0x[0-9a-f]+) status (?P<status>0x[0-9a-f]+) resid (?P<resid>-?\d+); "
    r"reply status (?P<reply_status>0x[0-9a-f]+) sense (?P<sense>[0-9a-f/]+|-), "
    r"(?P<size>\d+) bytes$")


@dataclass(frozen=True)
class SgIoCall:
    rdev: int
    cdb: bytes
    errno: str  #: "0" when the ioctl succeeded
    host_status: int
    driver_status: int
    status: int
    reply_status: int
    sense: str  #: key/asc/ascq of the reply, "-" unless CHECK CONDITION


def parse(text: str) -> list[SgIoCall]:
    calls = []
    for line in text.splitlines():
        match = LINE.search(line)
        if match:
            calls.append(SgIoCall(
                rdev=os.makedev(int(match["major"]), int(match["minor"])),
                cdb=bytes.fromhex(match["cdb"]), errno=match["errno"],
                host_status=int(match["host"], 16), driver_status=int(match["driver"], 16),
                status=int(match["status"], 16), reply_status=int(match["reply_status"], 16),
                sense=match["sense"]))
    return calls


class SgIoLog:
    """The calls a helper started with -vvv has logged since the last `new_calls()`."""

    def __init__(self, helper: Helper) -> None:
        assert "-vvv" in helper.argv, "the SG_IO log needs prguard -vvv"
        self.helper = helper
        self._seen = 0

    def new_calls(self) -> list[SgIoCall]:
        calls = parse(self.helper.stderr_text())
        fresh = calls[self._seen:]
        self._seen = len(calls)
        return fresh


def loop_einval(cdb: bytes, device: str) -> SgIoCall:
    """The call a loop device answers: EINVAL from the loop driver, 05/24/00 to QEMU."""
    return SgIoCall(rdev=os.stat(device).st_rdev, cdb=cdb, errno="EINVAL", host_status=0,
                    driver_status=0, status=0, reply_status=2, sense="05/24/00")
