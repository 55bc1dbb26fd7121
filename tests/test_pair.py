"""The real broker/worker pair on a temporary socket, with real fds of every kind.

SG_IO on a loop device fails with EINVAL (05/24/00), the same answer as some refusals:
whether a request reached SG_IO is read from the worker's -vvv log (lab/sgio_log.py).
"""

from __future__ import annotations

import os

import pytest

from lab.processes import Helper, children
from lab.sgio_log import SgIoLog, loop_einval
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import Sense, Status

INVALID_FIELD = Sense.INVALID_FIELD.fixed_format()  # what the loop driver's EINVAL maps to
IO_ERROR = Sense.IO_ERROR.fixed_format()
INVALID_OPCODE = Sense.INVALID_OPCODE.fixed_format()


def test_pr_in_on_loop_device_reaches_sg_io(prguard_debug: Helper, fd_zoo: dict[str, int],
                                            loop_disk: str) -> None:
    log = SgIoLog(prguard_debug)
    with Client(prguard_debug.path) as client:
        assert client.features == 0
        reply = client.request(pr_in_cdb(0, 24), fd_zoo["loop"])
    assert reply == PrReply(Status.CHECK_CONDITION, INVALID_FIELD, b"")
    assert log.new_calls() == [loop_einval(pr_in_cdb(0, 24), loop_disk)]


def test_pr_out_on_loop_device_reaches_sg_io(prguard_debug: Helper, fd_zoo: dict[str, int],
                                             loop_disk: str) -> None:
    log = SgIoLog(prguard_debug)
    with Client(prguard_debug.path) as client:
        reply = client.request(pr_out_cdb(0, 24), fd_zoo["loop"], bytes(24))
    assert reply == PrReply(Status.CHECK_CONDITION, INVALID_FIELD, b"")
    assert log.new_calls() == [loop_einval(pr_out_cdb(0, 24), loop_disk)]


@pytest.mark.parametrize("kind", ["file", "devnull", "dir", "pipe_r", "socket", "opath",
                                  "part"])
def test_non_scsi_fds_are_refused_with_the_enotty_answer(
        prguard_debug: Helper, fd_zoo: dict[str, int], kind: str) -> None:
    log = SgIoLog(prguard_debug)
    with Client(prguard_debug.path) as client:
        assert client.request(pr_in_cdb(), fd_zoo[kind]) == PrReply(Status.CHECK_CONDITION,
                                                                    IO_ERROR, b"")
    assert log.new_calls() == []


@pytest.mark.parametrize("kind", ["loop_ro", "file_ro", "opath", "pipe_r"])
def test_pr_out_on_read_only_fd_is_invalid_opcode(
        prguard_debug: Helper, fd_zoo: dict[str, int], kind: str) -> None:
    log = SgIoLog(prguard_debug)
    with Client(prguard_debug.path) as client:
        reply = client.request(pr_out_cdb(0, 24), fd_zoo[kind], bytes(24))
    assert (reply.status, reply.sense) == (Status.CHECK_CONDITION, INVALID_OPCODE)
    assert log.new_calls() == []


def test_pr_in_on_read_only_fd_goes_to_the_device(prguard_debug: Helper,
                                                  fd_zoo: dict[str, int], loop_disk: str
                                                  ) -> None:
    log = SgIoLog(prguard_debug)
    with Client(prguard_debug.path) as client:
        reply = client.request(pr_in_cdb(), fd_zoo["loop_ro"])
        assert (reply.status, reply.sense) == (Status.CHECK_CONDITION, INVALID_FIELD)
    assert log.new_calls() == [loop_einval(pr_in_cdb(), loop_disk)]


@pytest.mark.parametrize(("cdb", "data"), [
    (pr_in_cdb(0x04), b""),
    (pr_in_cdb(0x1F), b""),
    (pr_out_cdb(0x09, 24), bytes(24)),
    (pr_out_cdb(0x1F, 0), b""),
])
def test_undefined_service_actions_are_invalid_field_without_sg_io(
        prguard_debug: Helper, fd_zoo: dict[str, int], cdb: bytes, data: bytes) -> None:
    log = SgIoLog(prguard_debug)
    with Client(prguard_debug.path) as client:
        assert client.request(cdb, fd_zoo["loop"], data) == PrReply(Status.CHECK_CONDITION,
                                                                    INVALID_FIELD, b"")
        # the same connection still reaches the device: the log is being written
        client.request(pr_in_cdb(), fd_zoo["loop"])
    assert [call.cdb for call in log.new_calls()] == [pr_in_cdb()]


def test_many_requests_on_one_connection_leak_no_fd(prguard: Helper,
                                                    fd_zoo: dict[str, int]) -> None:
    (worker,) = children(prguard.pid)
    with Client(prguard.path) as client:
        client.request(pr_in_cdb(), fd_zoo["loop"])
        base = (len(os.listdir(f"/proc/{prguard.pid}/fd")),
                len(os.listdir(f"/proc/{worker}/fd")))
        for kind in ["loop", "file", "loop_ro", "part"] * 25:
            client.request(pr_out_cdb(0, 24), fd_zoo[kind], bytes(24))
            client.request(pr_in_cdb(), fd_zoo[kind])
        after = (len(os.listdir(f"/proc/{prguard.pid}/fd")),
                 len(os.listdir(f"/proc/{worker}/fd")))
    assert after == base


def test_worker_holds_only_sys_rawio_and_broker_nothing(prguard: Helper) -> None:
    from lab.processes import proc_status
    (worker,) = children(prguard.pid)
    broker_status, worker_status = proc_status(prguard.pid), proc_status(worker)
    for field in ("CapPrm", "CapEff", "CapInh", "CapBnd", "CapAmb"):
        assert int(broker_status[field], 16) == 0, field
    assert int(worker_status["CapEff"], 16) == int(worker_status["CapPrm"], 16) == 1 << 17
    assert broker_status["NoNewPrivs"] == worker_status["NoNewPrivs"] == "1"
