"""Hold some threads of a live process stopped, as an SG_IO that never returns holds a
worker thread: the thread stays in its system call (a worker thread idles in recvmsg,
with the interpreter's lock released), the other threads run on.

PTRACE_SEIZE and PTRACE_INTERRUPT stop one thread, not its whole process (a SIGSTOP
would). Root may trace a non-dumpable process (CAP_SYS_PTRACE). Leaving the context
detaches, and the interrupted call is restarted by the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Sequence
from types import TracebackType

from lab.inject import (
    PTRACE_CONT,
    PTRACE_DETACH,
    PTRACE_GETREGS,
    PTRACE_INTERRUPT,
    PTRACE_PEEKTEXT,
    PTRACE_SEIZE,
    STOP_ATTEMPTS,
    WALL,
    UserRegs,
    _ptrace,
)


def threads(pid: int) -> list[int]:
    return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))


class HeldThreads:
    """`with HeldThreads(tids): ...`: those threads stopped in a system call."""

    def __init__(self, tids: Sequence[int]) -> None:
        self.tids = list(tids)
        self._held: list[int] = []

    def __enter__(self) -> HeldThreads:
        try:
            for tid in self.tids:
                _ptrace(PTRACE_SEIZE, tid)
                self._held.append(tid)
                regs = UserRegs()
                for _ in range(STOP_ATTEMPTS):
                    _ptrace(PTRACE_INTERRUPT, tid)
                    os.waitpid(tid, WALL)
                    _ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
                    if _ptrace(PTRACE_PEEKTEXT, tid, regs.rip - 2) & 0xFFFF == 0x050F:
                        break  # stopped right after `syscall`: in a system call
                    _ptrace(PTRACE_CONT, tid, 0, 0)  # running Python: let it go back
                    time.sleep(0.01)
                else:
                    raise RuntimeError(f"thread {tid} never stopped in a system call")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()

    def _release(self) -> None:
        for tid in self._held:
            with contextlib.suppress(OSError):  # the process is gone
                _ptrace(PTRACE_DETACH, tid, 0, 0)
        self._held.clear()
