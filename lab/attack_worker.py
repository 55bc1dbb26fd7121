"""Run with the broker's credentials (uid, gid, no capabilities) and try to
reach into the worker. Prints one JSON object {attempt: errno name or "ALLOWED"}."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys

PTRACE_ATTACH = 16
SYS_PROCESS_VM_READV = 310
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def result(rc: int) -> str:
    if rc >= 0:
        return "ALLOWED"
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def main(pid: int) -> dict[str, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[str, str] = {}
    out["ptrace_attach"] = result(libc.ptrace(PTRACE_ATTACH, pid, None, None))
    for name, path in (("proc_mem", f"/proc/{pid}/mem"), ("proc_environ", f"/proc/{pid}/environ")):
        try:
            os.close(os.open(path, os.O_RDONLY))
            out[name] = "ALLOWED"
        except OSError as exc:
            out[name] = errno.errorcode[exc.errno or 0]
    try:
        os.readlink(f"/proc/{pid}/fd/0")
        out["proc_fd"] = "ALLOWED"
    except OSError as exc:
        out["proc_fd"] = errno.errorcode[exc.errno or 0]
    buf = ctypes.create_string_buffer(16)
    local = IoVec(ctypes.addressof(buf), 16)
    remote = IoVec(0x400000, 16)
    long = ctypes.c_long  # variadic syscall(): every argument must be a full register
    out["process_vm_readv"] = result(libc.syscall(
        long(SYS_PROCESS_VM_READV), long(pid), ctypes.byref(local), long(1),
        ctypes.byref(remote), long(1), long(0)))
    pidfd = libc.syscall(long(SYS_PIDFD_OPEN), long(pid), long(0))
    if pidfd < 0:
        out["pidfd_getfd"] = "no pidfd: " + result(pidfd)
    else:
        out["pidfd_getfd"] = result(libc.syscall(long(SYS_PIDFD_GETFD), long(pidfd), long(0),
                                                 long(0)))
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
