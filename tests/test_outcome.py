"""SG_IO outcome -> status/sense: the table of spec 3.3, plus prguard's one deviation."""

from __future__ import annotations

import ctypes
import errno

import pytest

from prguard.shared.scsi import Sense, SenseCode, Status
from prguard.worker.outcome import map_outcome
from prguard.worker.sgio import SgIoHdr, SgIoOutcome

KERNEL_SENSE = bytes([0x72, 0x06, 0x2A, 0x03]) + bytes(4) + b"\xaa" * 88


def outcome(err: int = 0, status: int = 0, host: int = 0, driver: int = 0, resid: int = 0,
            sense: bytes = bytes(96), data: bytes = bytes(8192)) -> SgIoOutcome:
    return SgIoOutcome(err, status, host, driver, resid, sense, data)


def test_sg_io_hdr_layout() -> None:
    assert ctypes.sizeof(SgIoHdr) == 88
    assert SgIoHdr.timeout.offset == 40
    assert SgIoHdr.host_status.offset == 68
    assert SgIoHdr.resid.offset == 72


@pytest.mark.parametrize(("err", "status", "code"), [
    (errno.EDOM, Status.TASK_SET_FULL, None),
    (errno.ENODEV, Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    (errno.EREMOTEIO, Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    (errno.ENOMEM, Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    (errno.EBADE, Status.RESERVATION_CONFLICT, None),
    (errno.ENODATA, Status.CHECK_CONDITION, Sense.READ_ERROR),
    (errno.ENOMEDIUM, Status.CHECK_CONDITION, Sense.NO_MEDIUM),
    (errno.EINVAL, Status.CHECK_CONDITION, Sense.INVALID_FIELD),
    (errno.ENOSPC, Status.CHECK_CONDITION, Sense.SPACE_ALLOC_FAILED),
    (errno.ENOTTY, Status.CHECK_CONDITION, Sense.IO_ERROR),
    (errno.EPERM, Status.CHECK_CONDITION, Sense.IO_ERROR),
    (errno.EIO, Status.CHECK_CONDITION, Sense.IO_ERROR),
])
def test_errno_table(err: int, status: Status, code: SenseCode | None) -> None:
    reply = map_outcome(outcome(err=err), 24, pr_in=True)
    assert reply.status == status
    assert reply.sense == (code.fixed_format() if code else bytes(96))
    assert reply.data == b""


@pytest.mark.parametrize(("host", "status", "code"), [
    (0x01, Status.CHECK_CONDITION, Sense.LUN_NOT_RESPONDING),
    (0x02, Status.BUSY, None),
    (0x03, Status.CHECK_CONDITION, Sense.COMMAND_TIMEOUT),
    (0x04, Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE),
    (0x05, Status.CHECK_CONDITION, Sense.COMMAND_ABORTED),
    (0x08, Status.CHECK_CONDITION, Sense.RESET),
    (0x0E, Status.CHECK_CONDITION, Sense.I_T_NEXUS_LOSS),
    (0x10, Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    (0x11, Status.RESERVATION_CONFLICT, None),
    (0x12, Status.CHECK_CONDITION, Sense.SPACE_ALLOC_FAILED),
    (0x13, Status.CHECK_CONDITION, Sense.READ_ERROR),
])
def test_host_status_table(host: int, status: Status, code: SenseCode | None) -> None:
    reply = map_outcome(outcome(host=host), 24, pr_in=True)
    assert (reply.status, reply.data) == (status, b"")
    if code:
        assert reply.sense[:18] == code.fixed_format()[:18]


@pytest.mark.parametrize("host", [0x06, 0x07, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0F, 0x14, 0xFF])
def test_unmapped_host_status_is_never_good(host: int) -> None:
    """Deviation: the C helper answers GOOD here (docs/COMPATIBILITY.md)."""
    reply = map_outcome(outcome(host=host, resid=0), 24, pr_in=True)
    assert reply.status == Status.CHECK_CONDITION
    assert reply.sense == Sense.LUN_COMM_FAILURE.fixed_format()
    assert reply.data == b""


@pytest.mark.parametrize("driver", [0x06, 0x26, 0x16, 0x02, 0x04])
def test_driver_timeout_is_busy(driver: int) -> None:
    """The C helper tests `driver_status & SG_ERR_DRIVER_TIMEOUT` (0x06): the suggestion
    bits above the driver byte (0x26 = SUGGEST_RETRY | timeout) do not hide it."""
    reply = map_outcome(outcome(driver=driver, sense=KERNEL_SENSE), 24, pr_in=True)
    assert (reply.status, reply.sense, reply.data) == (Status.BUSY, KERNEL_SENSE, b"")


def test_device_status_and_kernel_sense_pass_through_verbatim() -> None:
    reply = map_outcome(outcome(status=0x02, driver=0x08, sense=KERNEL_SENSE), 24, pr_in=True)
    assert (reply.status, reply.sense, reply.data) == (0x02, KERNEL_SENSE, b"")
    reply = map_outcome(outcome(status=0x18), 24, pr_in=False)
    assert (reply.status, reply.data) == (0x18, b"")


def test_generated_sense_overlays_only_18_bytes() -> None:
    reply = map_outcome(outcome(host=0x03, sense=KERNEL_SENSE), 24, pr_in=True)
    assert reply.sense[:18] == Sense.COMMAND_TIMEOUT.fixed_format()[:18]
    assert reply.sense[18:] == KERNEL_SENSE[18:]


@pytest.mark.parametrize(("resid", "alloc", "size"), [
    (8192 - 16, 24, 16),  # device sent less than asked
    (0, 24, 24),  # device filled the 8192 buffer: cut to the allocation length
    (8192 - 100, 0, 0),
    (-5, 8, 8),  # a negative resid is clamped
    (9000, 24, 0),  # a resid over the buffer is clamped
])
def test_pr_in_data_is_transferred_bytes_cut_to_allocation_length(
        resid: int, alloc: int, size: int) -> None:
    data = bytes(range(256)) * 32
    reply = map_outcome(outcome(resid=resid, data=data), alloc, pr_in=True)
    assert reply.status == Status.GOOD
    assert reply.data == data[:size]


def test_pr_out_good_has_no_data() -> None:
    assert map_outcome(outcome(data=bytes(24)), 24, pr_in=False).data == b""


def test_header_is_built_by_the_worker_alone() -> None:
    from prguard.shared.scsi import DATA_SIZE
    from prguard.worker.sgio import SG_DXFER_FROM_DEV, SG_DXFER_TO_DEV, prepare
    pr_in = prepare(b"\x5e\x00" + bytes(5) + b"\x00\x18" + bytes(7), b"", 30000).hdr
    assert (pr_in.interface_id, pr_in.cmd_len, pr_in.mx_sb_len, pr_in.iovec_count) == (
        ord("S"), 16, 96, 0)
    assert (pr_in.dxfer_direction, pr_in.dxfer_len) == (SG_DXFER_FROM_DEV, DATA_SIZE)
    assert pr_in.timeout == 30000  # prguard's default, not the C helper's 1 ms
    pr_out = prepare(b"\x5f" + bytes(6) + b"\x00\x18" + bytes(7), bytes(24), 5000).hdr
    assert (pr_out.dxfer_direction, pr_out.dxfer_len, pr_out.timeout) == (
        SG_DXFER_TO_DEV, 24, 5000)
    assert (pr_out.flags, pr_out.pack_id) == (0, 0)


def test_reused_buffers_keep_nothing_of_the_call_before() -> None:
    """The worker's threads reuse one header and set of buffers each: every call starts
    from what prepare() builds afresh, whatever the call before left in them."""
    import ctypes

    from prguard.shared.scsi import DATA_SIZE
    from prguard.worker.sgio import _prepare_fast, prepare
    pr_out_cdb = b"\x5f" + bytes(6) + b"\x00\x18" + bytes(7)
    pr_in_cdb = b"\x5e\x00" + bytes(5) + b"\x00\x18" + bytes(7)
    for cdb, params in ((pr_in_cdb, b""), (pr_out_cdb, b"p" * 24), (pr_in_cdb, b""),
                        (pr_out_cdb, b"q" * 8 + bytes(16)), (pr_out_cdb, b"r" * 24)):
        used = _prepare_fast(cdb, params, 30000)
        # what the kernel might have left behind: sense, data, output fields
        ctypes.memset(used.sense, 0x55, 96)
        used.hdr.status, used.hdr.resid, used.hdr.host_status = 0x18, 7, 3
        again = _prepare_fast(cdb, params, 30000)
        fresh = prepare(cdb, params, 30000)
        assert again is used  # the same buffers, reused
        assert bytes(again.sense) == bytes(96)
        assert again.data.raw == fresh.data.raw[:DATA_SIZE]
        assert again.cdb.raw == cdb
        for name, *_ in type(fresh.hdr)._fields_:
            if name not in ("dxferp", "cmdp", "sbp"):  # addresses of different buffers
                assert getattr(again.hdr, name) == getattr(fresh.hdr, name), name
        assert again.hdr.dxferp == ctypes.addressof(again.data)
        assert again.hdr.sbp == ctypes.addressof(again.sense)
        assert again.hdr.cmdp == ctypes.addressof(again.cdb)
