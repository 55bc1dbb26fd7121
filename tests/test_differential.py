"""Side by side with /usr/bin/qemu-pr-helper: same request, same bytes back, same close.

Each script runs against the C helper and against prguard, each with fresh fds of the
same kinds; the transcripts (every byte received, whether and where the connection was
closed) must be equal. The deliberate deviations are in DEVIATIONS, each asserted to
differ exactly as docs/COMPATIBILITY.md says.

Equal bytes do not show that prguard forwarded a request: SG_IO on a loop device fails
with EINVAL, answered 05/24/00 like a refusal. So prguard runs at -vvv and each script
also states how many SG_IO calls its worker must log (SG_IO_CALLS, lab/sgio_log.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.conversation import Pause, Recv, Send, Shutdown, Step, Transcript, run_script
from lab.processes import C_HELPER, PRGUARD, Helper, start_helper
from lab.sgio_log import SgIoLog
from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.scsi import Sense

HELLO: list[Step] = [Recv(4), Send(bytes(4))]
REPLY = 104


def request(cdb: bytes, fd: str = "loop", data: bytes | None = None,
            reply: int = REPLY) -> list[Step]:
    steps: list[Step] = [Send(cdb, (fd,))]
    if data is not None:
        steps.append(Send(data))
    steps.append(Recv(reply))
    return steps


SCRIPTS: dict[str, list[Step]] = {
    "handshake only": HELLO,
    "no handshake from the client": [Recv(4)],
    "feature bit 1": [Recv(4), Send(b"\0\0\0\1")],
    "feature bits all": [Recv(4), Send(b"\xff\xff\xff\xff")],
    "short handshake then EOF": [Recv(4), Send(b"\0\0"), Shutdown()],
    "EOF at a request boundary": [*HELLO, Shutdown()],
    "EOF inside a CDB": [*HELLO, Send(pr_in_cdb()[:7], ("loop",)), Shutdown()],
    "CDB without fd": [*HELLO, Send(pr_in_cdb()), Recv(REPLY)],
    "CDB with two fds": [*HELLO, Send(pr_in_cdb(), ("loop", "file")), Recv(REPLY)],
    "CDB with twenty fds": [*HELLO, Send(pr_in_cdb(), ("loop",) * 20), Recv(REPLY)],
    "fds on two chunks of one CDB": [*HELLO, Send(pr_in_cdb()[:3], ("loop",)), Pause(0.05),
                                     Send(pr_in_cdb()[3:], ("loop",)), Recv(REPLY)],
    "fd on a later chunk": [*HELLO, Send(pr_in_cdb()[:9]), Pause(0.05),
                            Send(pr_in_cdb()[9:], ("loop",)), Recv(REPLY)],
    "CDB one byte at a time": [*HELLO, Send(pr_in_cdb()[:1], ("loop",)),
                               *[Send(bytes([b])) for b in pr_in_cdb()[1:]], Recv(REPLY)],
    "fd with the handshake bytes": [Recv(4), Send(bytes(4), ("loop",)),
                                    Send(pr_in_cdb()), Recv(REPLY)],
    "handshake and CDB in one send": [Recv(4), Send(bytes(4) + pr_in_cdb(), ("loop",)),
                                      Recv(REPLY)],
    "fd with the parameter list is dropped": [*HELLO, Send(pr_out_cdb(0, 24), ("loop",)),
                                              Send(bytes(24), ("file",)), Recv(REPLY)],
    "fd only with the parameter list": [*HELLO, Send(pr_out_cdb(0, 24)), Pause(0.2),
                                        Send(bytes(24), ("loop",)), Recv(REPLY)],
    "PR OUT length bytes 5-8 all ones": [*HELLO, *request(b"\x5f" + bytes(4) + b"\xff" * 4
                                                          + bytes(7))],
    "reserved and control bytes set": [*HELLO, *request(
        bytes([0x5E, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x18, 0xFF]) + b"\xff" * 6)],
    "WRITE(10)": [*HELLO, *request(b"\x2a" + bytes(15))],
    "INQUIRY": [*HELLO, *request(b"\x12" + bytes(15))],
    "ATA PASS-THROUGH(16)": [*HELLO, *request(b"\x85" + bytes(15))],
    "opcode 0xff": [*HELLO, *request(b"\xff" + bytes(15))],
    "PR IN allocation 8193": [*HELLO, *request(pr_in_cdb(0, 8193))],
    "PR IN allocation 65535": [*HELLO, *request(pr_in_cdb(0, 0xFFFF))],
    "PR OUT length 8193": [*HELLO, *request(pr_out_cdb(0, 8193))],
    "PR OUT short data then EOF": [*HELLO, Send(pr_out_cdb(0, 24), ("loop",)),
                                   Send(bytes(10)), Shutdown(), Recv(REPLY)],
    "PR OUT short data then silence": [*HELLO, Send(pr_out_cdb(0, 24), ("loop",)),
                                       Send(bytes(10)), Recv(REPLY)],
    "two requests pipelined": [*HELLO, Send(pr_in_cdb(), ("loop",)),
                               Send(pr_in_cdb(1), ("loop",)), Recv(2 * REPLY)],
    "request after a violation is never read": [*HELLO, Send(pr_in_cdb()), Pause(0.05),
                                                Send(pr_in_cdb(), ("loop",)), Recv(REPLY)],
    "PR OUT length 0": [*HELLO, *request(pr_out_cdb(3, 0))],
    "PR OUT 8192 bytes": [*HELLO, *request(pr_out_cdb(0, 8192), data=bytes(8192))],
    "PR OUT bytes 5-6 set": [*HELLO, *request(b"\x5f\0\0\0\0\x00\x01\x00\x18" + bytes(7),
                                              data=bytes(24))],
    "many requests on one connection": [
        *HELLO, *[s for kind in ("loop", "loop_ro", "file", "devnull") for s in
                  request(pr_out_cdb(0, 24), kind, bytes(24)) + request(pr_in_cdb(), kind)]],
}
for _alloc in (0, 1, 7, 8, 24, 8192):
    SCRIPTS[f"PR IN READ KEYS allocation {_alloc}"] = [*HELLO, *request(pr_in_cdb(0, _alloc))]
for _sa in range(0x20):
    SCRIPTS[f"PR IN service action {_sa:#04x}"] = [*HELLO, *request(pr_in_cdb(_sa))]
    SCRIPTS[f"PR OUT service action {_sa:#04x}"] = [
        *HELLO, *request(pr_out_cdb(_sa, 24), data=bytes(24))]
for _kind in ("loop", "loop_ro", "file", "file_ro", "devnull", "dir", "pipe_r", "pipe_w",
              "socket", "opath"):
    SCRIPTS[f"PR IN on {_kind}"] = [*HELLO, *request(pr_in_cdb(), _kind)]
    SCRIPTS[f"PR OUT on {_kind}"] = [*HELLO, *request(pr_out_cdb(0, 24), _kind, bytes(24))]

#: SG_IO calls prguard's worker makes for each script (none for the others): a PR IN/OUT
#: with a defined service action (SPC-4: PR IN 0-3, PR OUT 0-8), framed as the C helper
#: frames it, on a writable whole block device (PR IN also on a read-only one).
SG_IO_CALLS: dict[str, int] = {
    "fd on a later chunk": 1,
    "CDB one byte at a time": 1,
    "fd with the parameter list is dropped": 1,
    "reserved and control bytes set": 1,
    "two requests pipelined": 2,
    "PR OUT length 0": 1,
    "PR OUT 8192 bytes": 1,
    "many requests on one connection": 3,  # loop: OUT and IN; loop_ro: IN
    "PR IN on loop": 1,
    "PR IN on loop_ro": 1,
    "PR OUT on loop": 1,
}
for _alloc in (0, 1, 7, 8, 24, 8192):
    SG_IO_CALLS[f"PR IN READ KEYS allocation {_alloc}"] = 1
for _sa in range(0x04):
    SG_IO_CALLS[f"PR IN service action {_sa:#04x}"] = 1
for _sa in range(0x09):
    SG_IO_CALLS[f"PR OUT service action {_sa:#04x}"] = 1
assert set(SG_IO_CALLS) <= set(SCRIPTS)

#: Scripts where prguard differs on purpose (docs/COMPATIBILITY.md): the C helper's
#: reply bytes, then prguard's.
IO_ERROR_REPLY = b"\0\0\0\x02\0\0\0\0" + Sense.IO_ERROR.fixed_format()
INVALID_FIELD_REPLY = b"\0\0\0\x02\0\0\0\0" + Sense.INVALID_FIELD.fixed_format()
DEVIATIONS: dict[str, list[Step]] = {
    "PR IN on a partition": [*HELLO, *request(pr_in_cdb(), "part")],
    "PR OUT on a partition": [*HELLO, *request(pr_out_cdb(0, 24), "part", bytes(24))],
}


@pytest.fixture(scope="module")
def helpers() -> Iterator[tuple[Helper, Helper]]:
    import tempfile
    directory = Path(tempfile.mkdtemp(prefix="pgd", dir="/tmp"))
    c = start_helper([C_HELPER], str(directory / "c.sock"))
    ours = start_helper(PRGUARD, str(directory / "p.sock"), "-vvv")
    yield c, ours
    assert ours.stop() == 0
    c.stop()


def both(helpers: tuple[Helper, Helper], steps: list[Step], fd_zoo_factory: object,
         ) -> tuple[Transcript, Transcript]:
    results = []
    for helper in helpers:
        with fd_zoo_factory() as fds:  # type: ignore[operator]
            results.append(run_script(helper.path, steps, fds, quiet=2.0, eof_wait=0.3))
    return results[0], results[1]


@pytest.fixture
def zoo_factory(loop_disk: str, partitioned: tuple[str, str], workdir: Path) -> object:
    import contextlib
    import socket

    @contextlib.contextmanager
    def factory() -> Iterator[dict[str, int]]:
        regular = workdir / "regular"
        regular.write_bytes(b"x" * 4096)
        fds = {
            "loop": os.open(loop_disk, os.O_RDWR), "loop_ro": os.open(loop_disk, os.O_RDONLY),
            "part": os.open(partitioned[1], os.O_RDWR), "file": os.open(regular, os.O_RDWR),
            "file_ro": os.open(regular, os.O_RDONLY), "devnull": os.open("/dev/null", os.O_RDWR),
            "dir": os.open(workdir, os.O_RDONLY), "opath": os.open(loop_disk, os.O_PATH),
        }
        fds["pipe_r"], fds["pipe_w"] = os.pipe()
        a, b = socket.socketpair()
        fds["socket"] = a.detach()
        b.close()
        try:
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)
    return factory


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_same_bytes_and_same_close(helpers: tuple[Helper, Helper], zoo_factory: object,
                                   loop_disk: str, name: str) -> None:
    log = SgIoLog(helpers[1])
    log.new_calls()  # earlier scripts' calls
    c, ours = both(helpers, SCRIPTS[name], zoo_factory)
    assert ours == without_stack_garbage(c)
    calls = log.new_calls()
    assert len(calls) == SG_IO_CALLS.get(name, 0), calls
    assert {call.rdev for call in calls} <= {os.stat(loop_disk).st_rdev}


INVALID_OPCODE_HEAD = b"\0\0\0\x02\0\0\0\0" + Sense.INVALID_OPCODE.fixed_format()[:18]


def without_stack_garbage(t: Transcript) -> Transcript:
    """The C helper's read-only PR OUT answer builds 18 bytes of sense in a stack buffer
    it never clears: bytes 18..95 of that reply carry whatever the stack held (pointers
    seen). prguard sends zeros there (docs/COMPATIBILITY.md); compare with them zeroed.
    """
    cleaned = []
    for chunk in t.received:
        out = bytearray(chunk)
        for at in range(len(out) - 103):
            if bytes(out[at:at + 26]) == INVALID_OPCODE_HEAD:
                out[at + 26:at + 104] = bytes(78)
        cleaned.append(bytes(out))
    return Transcript(cleaned, t.closed, t.closed_at_step)


def test_generated_sense_never_carries_stack_bytes(prguard: Helper,
                                                   fd_zoo: dict[str, int]) -> None:
    for kind in ("loop_ro", "file_ro", "pipe_r", "opath"):
        t = run_script(prguard.path, [*HELLO, *request(pr_out_cdb(0, 24), kind, bytes(24))],
                       fd_zoo)
        assert t.received[-1] == INVALID_OPCODE_HEAD + bytes(78)


def test_partition_fds_are_refused_where_the_c_helper_passes_them_on(
        helpers: tuple[Helper, Helper], zoo_factory: object) -> None:
    log = SgIoLog(helpers[1])
    log.new_calls()
    for name, steps in DEVIATIONS.items():
        c, ours = both(helpers, steps, zoo_factory)
        assert c.received[-1] == INVALID_FIELD_REPLY, name  # SG_IO reached the loop driver
        assert ours.received[-1] == IO_ERROR_REPLY, name  # refused before any ioctl
        assert c.closed == ours.closed is False
    assert log.new_calls() == []
