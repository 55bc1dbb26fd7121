"""The project's one ioctl call site: SG_IO with a header the worker builds itself.

Nothing in the header comes from a message: direction follows the opcode, the CDB is
always 16 bytes, the sense buffer 96 bytes, the data buffer the worker's own (8192 bytes
for PR IN as the C helper does, exactly the parameter list for PR OUT), iovec_count 0,
and the timeout is the worker's configuration.
"""

from __future__ import annotations

import ctypes
import fcntl
import threading
from dataclasses import dataclass
from typing import NamedTuple

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


class SgIoOutcome(NamedTuple):
    """What the kernel said: an errno, or the header's output fields, plus buffers."""

    errno: int
    status: int
    host_status: int
    driver_status: int
    resid: int
    sense: bytes
    data: bytes  #: the data buffer (dxfer_len bytes) as it stands after the call


@dataclass(frozen=True)
class Prepared:
    """A filled sg_io_hdr and the buffers its pointers refer to (kept alive with it)."""

    hdr: SgIoHdr
    cdb: ctypes.Array[ctypes.c_char]
    sense: ctypes.Array[ctypes.c_char]
    data: ctypes.Array[ctypes.c_char]


class _Buffers(threading.local):
    """Each thread's own header and buffers, reused call after call: allocating 8 KiB
    and a ctypes structure per request cost more than the rest of the worker's work.
    `templates` holds the header as prepare() fills it, per direction, so that a call
    starts from a copy of it rather than from field-by-field assignments."""

    def __init__(self) -> None:
        self.prepared = Prepared(SgIoHdr(), ctypes.create_string_buffer(CDB_SIZE),
                                 ctypes.create_string_buffer(SENSE_SIZE),
                                 ctypes.create_string_buffer(DATA_SIZE))
        self.templates: dict[tuple[bool, int], bytes] = {}


_buffers = _Buffers()


def prepare(cdb: bytes, parameter_list: bytes, timeout_ms: int,
            into: Prepared | None = None) -> Prepared:
    """Build the header for one PR IN/OUT CDB; every field is the worker's choice.
    `into`: buffers to reuse (cleared first: nothing of an earlier call stays)."""
    if len(cdb) != CDB_SIZE:
        raise ValueError("CDB must be 16 bytes")
    pr_in = cdb[0] == Opcode.PERSISTENT_RESERVE_IN
    if into is None:
        into = Prepared(SgIoHdr(), ctypes.create_string_buffer(CDB_SIZE),
                        ctypes.create_string_buffer(SENSE_SIZE),
                        ctypes.create_string_buffer(DATA_SIZE))
    else:
        ctypes.memset(into.sense, 0, SENSE_SIZE)
        ctypes.memset(into.data, 0, DATA_SIZE)
    ctypes.memmove(into.cdb, cdb, CDB_SIZE)
    if not pr_in:
        ctypes.memmove(into.data, parameter_list, len(parameter_list))
    hdr = into.hdr
    ctypes.memset(ctypes.addressof(hdr), 0, ctypes.sizeof(hdr))
    hdr.interface_id = SG_INTERFACE_ID
    hdr.dxfer_direction = SG_DXFER_FROM_DEV if pr_in else SG_DXFER_TO_DEV
    hdr.cmd_len = CDB_SIZE
    hdr.mx_sb_len = SENSE_SIZE
    hdr.iovec_count = 0
    hdr.dxfer_len = DATA_SIZE if pr_in else len(parameter_list)
    hdr.dxferp = ctypes.addressof(into.data)
    hdr.cmdp = ctypes.addressof(into.cdb)
    hdr.sbp = ctypes.addressof(into.sense)
    hdr.timeout = timeout_ms
    return into


def _prepare_fast(cdb: bytes, parameter_list: bytes, timeout_ms: int) -> Prepared:
    """prepare() into this thread's buffers, the header copied from its template."""
    buffers = _buffers
    prepared = buffers.prepared
    pr_in = cdb[0] == Opcode.PERSISTENT_RESERVE_IN
    key = (pr_in, timeout_ms)
    template = buffers.templates.get(key)
    if template is None or len(cdb) != CDB_SIZE:
        prepare(cdb, parameter_list, timeout_ms, prepared)
        buffers.templates[key] = bytes(prepared.hdr)
        return prepared
    ctypes.memset(prepared.sense, 0, SENSE_SIZE)
    ctypes.memset(prepared.data, 0, DATA_SIZE)
    ctypes.memmove(prepared.cdb, cdb, CDB_SIZE)
    hdr = prepared.hdr
    ctypes.memmove(ctypes.addressof(hdr), template, len(template))
    if not pr_in:
        ctypes.memmove(prepared.data, parameter_list, len(parameter_list))
        hdr.dxfer_len = len(parameter_list)
    return prepared


def issue(fd: int, cdb: bytes, parameter_list: bytes, timeout_ms: int) -> SgIoOutcome:
    """Run one PR IN/OUT CDB on `fd`. Blocks (without the GIL) until the kernel answers."""
    prepared = _prepare_fast(cdb, parameter_list, timeout_ms)
    hdr = prepared.hdr
    errno = 0
    try:
        fcntl.ioctl(fd, SG_IO, hdr, True)
    except OSError as exc:
        errno = exc.errno or 0
    return SgIoOutcome(errno, hdr.status, hdr.host_status, hdr.driver_status, hdr.resid,
                       prepared.sense.raw,
                       ctypes.string_at(prepared.data, hdr.dxfer_len) if not errno else b"")
