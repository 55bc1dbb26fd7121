"""The project's one ioctl call site: SG_IO with a header the worker builds itself.

Nothing in the header comes from a message: direction follows the opcode, the CDB is
always 16 bytes, the sense buffer 96 bytes, the data buffer the worker's own (8192 bytes
for PR IN as the C helper does, exactly the parameter list for PR OUT), iovec_count 0,
and the timeout is the worker's configuration.
"""

from __future__ import annotations

import ctypes
import fcntl
from dataclasses import dataclass

from prguard.shared.scsi import CDB_SIZE, DATA_SIZE, SENSE_SIZE, Opcode

SG_IO = 0x2285  #: <scsi/sg.h>
SG_INTERFACE_ID = ord("S")
SG_DXFER_NONE = -1
SG_DXFER_TO_DEV = -2
SG_DXFER_FROM_DEV = -3


class SgIoHdr(ctypes.Structure):
    """struct sg_io_hdr from <scsi/sg.h> (88 bytes on x86-64)."""

    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


@dataclass(frozen=True)
class SgIoOutcome:
    """What the kernel said: an errno, or the header's output fields, plus buffers."""

    errno: int
    status: int
    host_status: int
    driver_status: int
    resid: int
    sense: bytes
    data: bytes  #: the whole data buffer as it stands after the call


@dataclass(frozen=True)
class Prepared:
    """A filled sg_io_hdr and the buffers its pointers refer to (kept alive with it)."""

    hdr: SgIoHdr
    cdb: ctypes.Array[ctypes.c_char]
    sense: ctypes.Array[ctypes.c_char]
    data: ctypes.Array[ctypes.c_char]


def prepare(cdb: bytes, parameter_list: bytes, timeout_ms: int) -> Prepared:
    """Build the header for one PR IN/OUT CDB; every field is the worker's choice."""
    if len(cdb) != CDB_SIZE:
        raise ValueError("CDB must be 16 bytes")
    pr_in = cdb[0] == Opcode.PERSISTENT_RESERVE_IN
    cdb_buf = ctypes.create_string_buffer(cdb, CDB_SIZE)
    sense_buf = ctypes.create_string_buffer(SENSE_SIZE)
    if pr_in:
        data_buf = ctypes.create_string_buffer(DATA_SIZE)
    else:
        data_buf = ctypes.create_string_buffer(parameter_list, max(len(parameter_list), 1))
    hdr = SgIoHdr()
    hdr.interface_id = SG_INTERFACE_ID
    hdr.dxfer_direction = SG_DXFER_FROM_DEV if pr_in else SG_DXFER_TO_DEV
    hdr.cmd_len = CDB_SIZE
    hdr.mx_sb_len = SENSE_SIZE
    hdr.iovec_count = 0
    hdr.dxfer_len = DATA_SIZE if pr_in else len(parameter_list)
    hdr.dxferp = ctypes.addressof(data_buf)
    hdr.cmdp = ctypes.addressof(cdb_buf)
    hdr.sbp = ctypes.addressof(sense_buf)
    hdr.timeout = timeout_ms
    return Prepared(hdr, cdb_buf, sense_buf, data_buf)


def issue(fd: int, cdb: bytes, parameter_list: bytes, timeout_ms: int) -> SgIoOutcome:
    """Run one PR IN/OUT CDB on `fd`. Blocks (without the GIL) until the kernel answers."""
    prepared = prepare(cdb, parameter_list, timeout_ms)
    hdr = prepared.hdr
    errno = 0
    try:
        fcntl.ioctl(fd, SG_IO, hdr, True)
    except OSError as exc:
        errno = exc.errno or 0
    return SgIoOutcome(
        errno=errno,
        status=hdr.status,
        host_status=hdr.host_status,
        driver_status=hdr.driver_status,
        resid=hdr.resid,
        sense=prepared.sense.raw,
        data=prepared.data.raw[:hdr.dxfer_len],
    )
