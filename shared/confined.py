"""Error reporting that a confined process survives.

Once a process has loaded its seccomp filter it may not stat or open a file, and a call
outside its policy kills it (SIGSYS). CPython's own ways of reporting an error do both:
formatting a traceback reads the source line of every frame (linecache stats and opens
the .py files), a warning prints its source line, and the hooks for an exception nobody
caught (at the top, in a thread, in a finalizer, in an event-loop callback) format
tracebacks. `install()` runs right after the filter is loaded and makes each of these
paths report one line on the process's log instead:

- source lines come from what is already cached, never from the file system;
- an uncaught exception, at the top or in a thread, is one error line and the process
  ends with status 70 (os._exit: the interpreter's own finalisation would make calls
  the policy does not allow, and a thread that died leaves a process that no longer
  does its whole job);
- an exception in a finalizer and a warning are one line each, and the process goes on.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import threading
import types
import warnings
from typing import NoReturn, TextIO

log = logging.getLogger("prguard")

#: Exit status of a process ended by an internal error (EX_SOFTWARE, as the launcher's).
INTERNAL_ERROR = 70


def describe(exc: BaseException | None) -> str:
    """An exception in one line: its type and message, and where it was raised."""
    if exc is None:
        return "unknown error"
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" at {os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"


def _no_lines(filename: str, module_globals: object = None) -> list[str]:
    return []


def _no_check(filename: str | None = None) -> None:
    return None


def _no_lazy(filename: str, module_globals: object) -> bool:
    return False


def _fatal(what: str, exc: BaseException | None) -> NoReturn:
    log.error("internal error%s: %s; exiting", what, describe(exc))
    os._exit(INTERNAL_ERROR)


def _excepthook(kind: type[BaseException], exc: BaseException,
                tb: types.TracebackType | None) -> None:
    _fatal("", exc)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "a thread"
    _fatal(f" in thread {name}", args.exc_value)


def _unraisablehook(unraisable: sys.UnraisableHookArgs) -> None:
    message = unraisable.err_msg or "Exception ignored"
    log.error("%s: %s", message, describe(unraisable.exc_value))


def _showwarning(message: Warning | str, category: type[Warning], filename: str,
                 lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    log.warning("%s: %s (%s:%d)", category.__name__, message, os.path.basename(filename),
                lineno)


def install() -> None:
    """Route every CPython error report of this process through the log, file-free."""
    linecache.updatecache = _no_lines
    linecache.checkcache = _no_check
    linecache.lazycache = _no_lazy
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
    warnings.showwarning = _showwarning
