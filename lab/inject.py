"""Make a live thread of another process run system calls of our choosing (x86-64).

The tests use it to act as a compromised broker or worker would: the calls run inside the
real process, under its own seccomp filter and Landlock domain, with its fds and
credentials, and without any hook in the product. Root may trace those processes although
they are non-dumpable (CAP_SYS_PTRACE).

How: PTRACE_SEIZE the thread, PTRACE_INTERRUPT it, save its registers, point rip at a
`syscall` instruction (the one the thread is blocked in: every prguard thread idles in a
system call), load the number and arguments, single-step, read rax, and finally restore
the saved registers and detach; the interrupted call is then restarted by the kernel as
after any signal. A call the filter kills ends the whole process: `Killed` says with which
signal (the waitpid status is consumed here, so a Popen of that process then reports 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct
import time
from types import TracebackType

PTRACE_PEEKTEXT = 1
PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
SCRATCH_SIZE = 1 << 16
STOP_ATTEMPTS = 200

#: x86-64 system call numbers used by the tests
NR = {"read": 0, "write": 1, "close": 3, "fstat": 5, "mmap": 9, "mprotect": 10,
      "munmap": 11, "pread64": 17, "sendto": 44, "recvmsg": 47, "sendmsg": 46,
      "shutdown": 48, "dup2": 33, "dup3": 292, "fcntl": 72, "newfstatat": 262,
      "openat": 257, "unlinkat": 263, "getdents64": 217, "kill": 62, "getpid": 39,
      "ioctl": 16, "accept4": 288, "recvfrom": 45, "epoll_ctl": 233}


def number(name: str) -> int:
    """A system call's number on this machine (libseccomp's table for the rare ones)."""
    if name in NR:
        return NR[name]
    import pyseccomp
    resolved: int = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if resolved < 0:
        raise ValueError(f"unknown system call {name}")
    return resolved


class UserRegs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


class Killed(Exception):
    """The process ended while running the injected call."""

    def __init__(self, status: int) -> None:
        self.signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        self.exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        what = (f"killed by {signal.Signals(self.signal).name}" if self.signal is not None
                else f"exited {self.exit_code}")
        super().__init__(what)


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    result: int = _libc.ptrace(request, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    err = ctypes.get_errno()
    if result == -1 and err:
        raise OSError(err, f"ptrace({request}): {os.strerror(err)}")
    return result


class Injector:
    """`with Injector(tid) as inj: inj.call("close", 2)`: errno as a negative number."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self._saved = UserRegs()
        self._syscall_at = 0
        self._scratch = 0
        self._mem: int | None = None
        self.dead: Killed | None = None

    def __enter__(self) -> Injector:
        _ptrace(PTRACE_SEIZE, self.tid)
        for _ in range(STOP_ATTEMPTS):
            _ptrace(PTRACE_INTERRUPT, self.tid)
            self._wait_stop()
            _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(self._saved))
            at = self._saved.rip - 2
            if _ptrace(PTRACE_PEEKTEXT, self.tid, at) & 0xFFFF == 0x050F:  # `syscall`
                break
            # Caught running Python code: let it go back to waiting, and try again.
            _ptrace(PTRACE_CONT, self.tid, 0, 0)
            time.sleep(0.01)
        else:
            _ptrace(PTRACE_DETACH, self.tid, 0, 0)
            raise RuntimeError(f"thread {self.tid} never stopped in a system call")
        self._syscall_at = at
        self._mem = os.open(f"/proc/{self.tid}/mem", os.O_RDWR)
        self._scratch = self.call("mmap", 0, SCRATCH_SIZE, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if self._scratch < 0:
            raise OSError(-self._scratch, "mmap in the target failed")
        self._next = self._scratch
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.dead is None:
            if self._scratch > 0:
                self.call("munmap", self._scratch, SCRATCH_SIZE)
            self._detach()
        if self._mem is not None:
            os.close(self._mem)

    def _wait_stop(self) -> int:
        _, status = os.waitpid(self.tid, WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.dead = Killed(status)
            raise self.dead
        return status

    def _detach(self) -> None:
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(self._saved))
        _ptrace(PTRACE_DETACH, self.tid, 0, 0)

    def call(self, name: str | int, *args: int) -> int:
        """Run one system call in the thread; its return value (-errno on failure).
        Raises Killed when the process died of it."""
        if self.dead is not None:
            raise self.dead
        regs = UserRegs.from_buffer_copy(self._saved)
        regs.rax = number(name) if isinstance(name, str) else name
        regs.orig_rax = (1 << 64) - 1  # not in a system call: no restart logic on resume
        regs.rip = self._syscall_at
        for register, value in zip(ARG_REGISTERS, args, strict=False):
            setattr(regs, register, value & ((1 << 64) - 1))
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))
        _ptrace(PTRACE_SINGLESTEP, self.tid, 0, 0)
        self._wait_stop()
        after = UserRegs()
        _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(after))
        result: int = struct.unpack("q", struct.pack("Q", after.rax))[0]
        return result

    # -- memory in the target ----------------------------------------------------------

    def put(self, data: bytes) -> int:
        """Copy `data` into the target's scratch memory; its address there."""
        assert self._mem is not None
        address = self._next
        if address + len(data) > self._scratch + SCRATCH_SIZE:
            raise MemoryError("scratch memory exhausted")
        os.pwrite(self._mem, data, address)
        self._next = (address + len(data) + 15) & ~15
        return address

    def get(self, address: int, size: int) -> bytes:
        assert self._mem is not None
        return os.pread(self._mem, size, address)

    def string(self, text: str) -> int:
        return self.put(text.encode() + b"\0")


def errno_name(result: int) -> str:
    """`-13` -> "EACCES"; a non-negative result -> "OK"."""
    return "OK" if result >= 0 else errno.errorcode.get(-result, str(-result))


# -- what the target holds -----------------------------------------------------------

SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5


def fd_table(pid: int) -> dict[int, str]:
    """fd number -> what /proc says it is (a path, `socket:[inode]`, `pipe:[...]`)."""
    table: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return table


#: the type /proc/net/unix gives a listening stream socket (SO_ACCEPTCON in its flags)
LISTENING = -1


def unix_sockets(pid: int) -> dict[int, tuple[int, str]]:
    """fd -> (socket type or LISTENING, bound path or "") for the target's unix sockets
    (the path as bound: prguard binds its listener under a temporary relative name)."""
    by_inode: dict[str, tuple[int, str]] = {}
    with open(f"/proc/{pid}/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            kind = LISTENING if int(fields[3], 16) & 0x10000 else int(fields[4], 16)
            by_inode[fields[6]] = (kind, fields[7] if len(fields) > 7 else "")
    found: dict[int, tuple[int, str]] = {}
    for fd, target in fd_table(pid).items():
        if target.startswith("socket:[") and target[8:-1] in by_inode:
            found[fd] = by_inode[target[8:-1]]
    return found


def sockaddr_un(path: str) -> bytes:
    """struct sockaddr_un for `path` (AF_UNIX = 1)."""
    return struct.pack("H", 1) + path.encode() + b"\0"


def msghdr(inj: Injector, data: bytes, name: bytes = b"", fds: tuple[int, ...] = ()) -> int:
    """A struct msghdr in the target: one iovec, an optional address, SCM_RIGHTS fds."""
    iov = struct.pack("QQ", inj.put(data), len(data))
    name_at = inj.put(name) if name else 0
    control = b""
    if fds:
        payload = struct.pack(f"{len(fds)}i", *fds)
        length = 16 + len(payload)  # cmsghdr: len (8), level (4), type (4)
        control = struct.pack("Qii", length, 1, 1) + payload  # SOL_SOCKET, SCM_RIGHTS
        control += bytes(-len(control) % 8)
    control_at = inj.put(control) if control else 0
    return inj.put(struct.pack("QI4xQQQQi4x", name_at, len(name), inj.put(iov), 1,
                               control_at, len(control), 0))
