"""Boot one throw-away guest (Debian kernel, TCG, host root filesystem) and run a script in it.

Public API
----------
run_in_guest(script, timeout, ...) -> GuestResult
    Boot ONE guest with virtme-ng (``vng --disable-kvm``), run ``script`` as root with
    the host's ``/`` visible (read-only, with tmpfs/overlays on /tmp, /var, /etc, ...),
    and return its exit code, stdout, stderr and a results directory.
run_python_in_guest(code, timeout, ...) -> GuestResult
    Same, with ``code`` run by the host's own Python interpreter inside the guest.
find_kernel() -> KernelInfo        installed kernel (``$LABVM_KERNEL`` overrides)
find_vng() -> str                  path of ``vng`` (``$LABVM_VNG`` overrides)

Errors: ``LabVMError`` and its subclasses ``KernelNotFoundError``, ``VngNotFoundError``,
``GuestTimeoutError`` (the VM was killed; ``.result`` holds what came back) and
``GuestFailedError`` (the VM exited but the script never reported an exit code, e.g.
kernel panic or boot failure; ``.result`` holds the console log).

How results come back
---------------------
A fresh host directory (``work_dir``) is shared read-write into the guest at the SAME
path (``vng --rwdir``, 9p, mounted ``sync``).  A small wrapper in it runs the script with
stdout/stderr redirected to files there and writes the exit code to ``rc`` at the end.
The script sees ``$LAB_RESULTS`` (= ``work_dir/results``, also its cwd) and anything it
writes there is on the host as soon as the write returns.  The serial console (vng's own
output) is kept in ``console.log`` for debugging; it is not parsed.

Timeouts: vng runs in its own session/process group; at ``timeout`` seconds the whole
group and every descendant process (qemu included) get SIGTERM, then SIGKILL 3 s later.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GuestFailedError",
    "GuestResult",
    "GuestTimeoutError",
    "KernelInfo",
    "KernelNotFoundError",
    "LabVMError",
    "VngNotFoundError",
    "find_kernel",
    "find_vng",
    "run_in_guest",
    "run_python_in_guest",
]

DEFAULT_VNG_ARGS: tuple[str, ...] = (
    "--disable-kvm", "--cpus", "2", "--memory", "1G", "--user", "root",
)
_KILL_GRACE_S = 3.0
_POLL_S = 0.1


class LabVMError(RuntimeError):
    """Base class of every error raised by this module."""


class KernelNotFoundError(LabVMError):
    """No usable /boot/vmlinuz-<ver> with /lib/modules/<ver> (install linux-image-amd64)."""


class VngNotFoundError(LabVMError):
    """virtme-ng's ``vng`` (or qemu-system-x86_64) is not installed."""


@dataclass(frozen=True)
class KernelInfo:
    version: str
    image: Path
    modules_dir: Path


@dataclass
class GuestResult:
    """What came back from one guest run."""

    returncode: int | None
    """Exit code of the script inside the guest (None only on timeout/failure)."""
    stdout: str
    stderr: str
    results_dir: Path
    """Host directory the guest wrote into ($LAB_RESULTS in the guest)."""
    work_dir: Path
    """Parent of results_dir: script, wrapper, stdout, stderr, rc, console.log."""
    console: str
    """vng/qemu console output (kernel log, virtme-ng messages)."""
    boot_to_command_s: float | None
    """Host seconds from starting vng to the script starting in the guest."""
    total_s: float
    """Host seconds from starting vng to the VM being gone."""
    timed_out: bool = False
    vng_returncode: int | None = None
    command: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class GuestTimeoutError(LabVMError):
    def __init__(self, message: str, result: GuestResult) -> None:
        super().__init__(message)
        self.result = result


class GuestFailedError(LabVMError):
    def __init__(self, message: str, result: GuestResult) -> None:
        super().__init__(message)
        self.result = result


def _version_key(ver: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", ver)]


def find_kernel() -> KernelInfo:
    """Return the kernel to boot.

    ``$LABVM_KERNEL`` may name a kernel image (``/boot/vmlinuz-<ver>``) or a version.
    Otherwise the highest-versioned /boot/vmlinuz-<ver> that has /lib/modules/<ver>
    (the guest loads modules from the host's tree) is used.
    """
    override = os.environ.get("LABVM_KERNEL")
    candidates: list[tuple[str, Path]] = []
    if override:
        p = Path(override)
        if not p.is_absolute():
            p = Path("/boot") / f"vmlinuz-{override}"
        if not p.is_file():
            raise KernelNotFoundError(f"LABVM_KERNEL={override!r}: no such kernel image {p}")
        candidates.append((p.name.removeprefix("vmlinuz-"), p))
    else:
        for p in Path("/boot").glob("vmlinuz-*"):
            if p.is_file():
                candidates.append((p.name.removeprefix("vmlinuz-"), p))
    usable = [(v, p) for v, p in candidates if (Path("/lib/modules") / v / "modules.dep").is_file()]
    if not usable:
        found = ", ".join(str(p) for _, p in candidates) or "none"
        raise KernelNotFoundError(
            "no usable kernel: need /boot/vmlinuz-<ver> plus /lib/modules/<ver>/modules.dep "
            f"(kernel images found: {found}); run install.sh (apt-get install linux-image-amd64)"
        )
    if not os.access(usable[0][1], os.R_OK):
        raise KernelNotFoundError(f"kernel image {usable[0][1]} is not readable")
    ver, img = max(usable, key=lambda vp: _version_key(vp[0]))
    return KernelInfo(version=ver, image=img, modules_dir=Path("/lib/modules") / ver)


def find_vng() -> str:
    """Return the path of ``vng``: ``$LABVM_VNG``, then PATH, then next to sys.executable."""
    override = os.environ.get("LABVM_VNG")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise VngNotFoundError(f"LABVM_VNG={override!r} is not an executable file")
        vng: str | None = override
    else:
        vng = shutil.which("vng")
        if vng is None:
            beside = Path(sys.executable).parent / "vng"
            if beside.is_file() and os.access(beside, os.X_OK):
                vng = str(beside)
    if vng is None:
        raise VngNotFoundError(
            "virtme-ng's 'vng' not found (PATH, next to sys.executable, $LABVM_VNG); "
            "run install.sh (pip install virtme-ng) or set LABVM_VNG=/path/to/venv/bin/vng"
        )
    if shutil.which("qemu-system-x86_64") is None:
        raise VngNotFoundError("qemu-system-x86_64 not found; apt-get install qemu-system-x86")
    return vng


def _descendants(root: int) -> list[int]:
    """All live descendants of ``root`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid ...  -- comm may contain spaces/parens
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 2:
            children.setdefault(int(rest[1]), []).append(int(d))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    pids = [proc.pid, *_descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in pids + _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        try:
            proc.wait(timeout=_KILL_GRACE_S)
            # the group leader is gone; make sure qemu (possibly re-parented) is too
            if not any(_alive(p) for p in pids):
                return
        except subprocess.TimeoutExpired:
            pass
    proc.wait(timeout=_KILL_GRACE_S)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace")
        return state[state.rfind(")") + 2 :].split()[0] != "Z"
    except OSError:
        return False


def _read(p: Path) -> str:
    try:
        return p.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


_WRAPPER = """\
#!/bin/sh
# generated by labvm.py: runs inside the guest
W={w}
export LAB_RESULTS="$W/results" LAB_WORK="$W" LAB_IN_GUEST=1
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
cd "$LAB_RESULTS" || exit 125
: > "$W/started"
{interp} "$W/script" > "$W/stdout" 2> "$W/stderr" < /dev/null
rc=$?
echo "$rc" > "$W/rc.tmp" && mv "$W/rc.tmp" "$W/rc"
sync
exit "$rc"
"""


def run_in_guest(
    script: str,
    timeout: float,
    *,
    interpreter: Sequence[str] = ("/bin/bash",),
    work_dir: Path | str | None = None,
    extra_vng_args: Sequence[str] = (),
    vng_args: Sequence[str] = DEFAULT_VNG_ARGS,
    kernel: KernelInfo | None = None,
    verbose_console: bool = False,
) -> GuestResult:
    """Boot one guest, run ``script`` in it as root, return what came back.

    script       -- script text; run as ``<interpreter...> <file>`` in the guest with
                    cwd = $LAB_RESULTS, stdin = /dev/null.
    timeout      -- seconds for the whole VM lifetime (boot included); past it the VM is
                    killed and GuestTimeoutError raised (``.result`` has partial output).
    interpreter  -- argv prefix, e.g. ("/bin/bash", "-e") or (sys.executable,).
    work_dir     -- host directory to use (created; must be empty or absent, path without
                    whitespace); default: a new ``tempfile.mkdtemp(prefix="labvm-")``.
                    It is NOT deleted: the caller owns it.
    extra_vng_args -- appended to ``vng_args`` (e.g. ("--rwdir=/some/host/dir",)).
    verbose_console -- pass ``--verbose`` to vng so ``console`` holds the kernel log
                    (off by default: with --exec vng's console is otherwise empty).

    Raises KernelNotFoundError / VngNotFoundError before booting, GuestTimeoutError,
    GuestFailedError when the VM ended without the script reporting an exit code.
    A non-zero exit code of the script is NOT an error: see ``returncode``.
    """
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    kern = kernel if kernel is not None else find_kernel()
    vng = find_vng()
    wd = _work_dir(work_dir)
    wrapper = _write_script(wd, script, interpreter)
    cmd = [
        vng, "--run", str(kern.image), *vng_args,
        f"--rwdir={wd}", *(("--verbose",) if verbose_console else ()), *extra_vng_args,
        "--exec", f"/bin/sh {wrapper}",
    ]
    run = _boot(cmd, wd, timeout)
    rc_text = _read(wd / "rc").strip()
    result = GuestResult(
        returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
        stdout=_read(wd / "stdout"),
        stderr=_read(wd / "stderr"),
        results_dir=wd / "results",
        work_dir=wd,
        console=_read(wd / "console.log"),
        boot_to_command_s=run.boot_to_command_s,
        total_s=run.total_s,
        timed_out=run.timed_out,
        vng_returncode=run.vng_returncode,
        command=cmd,
    )
    if run.timed_out:
        raise GuestTimeoutError(
            f"guest did not finish within {timeout:.0f} s (VM killed); script "
            f"{'started' if run.boot_to_command_s is not None else 'never started'}; "
            f"work dir {wd}",
            result,
        )
    if result.returncode is None:
        tail = "\n".join(result.console.splitlines()[-30:])
        raise GuestFailedError(
            f"VM exited (vng rc {run.vng_returncode}) without the script reporting an exit "
            f"code; work dir {wd}; console tail:\n{tail}",
            result,
        )
    return result


def _work_dir(work_dir: Path | str | None) -> Path:
    """The host directory shared with the guest, with its empty results/ in it."""
    if work_dir is None:
        wd = Path(tempfile.mkdtemp(prefix="labvm-"))
    else:
        wd = Path(work_dir).resolve()
        wd.mkdir(parents=True, exist_ok=True)
        if any(wd.iterdir()):
            raise LabVMError(f"work_dir {wd} is not empty")
    wd = wd.resolve()
    if re.search(r"[\s'\"\\$`=,]", str(wd)):
        raise LabVMError(f"work_dir path {wd!s} must not contain whitespace/quotes/=/,")
    (wd / "results").mkdir()
    return wd


def _write_script(wd: Path, script: str, interpreter: Sequence[str]) -> Path:
    """The script and the wrapper that runs it in the guest; the wrapper's path."""
    (wd / "script").write_text(script)
    interp = " ".join(shlex.quote(a) for a in interpreter)
    wrapper = wd / "wrapper.sh"
    wrapper.write_text(_WRAPPER.format(w=shlex.quote(str(wd)), interp=interp))
    wrapper.chmod(0o755)
    return wrapper


@dataclass(frozen=True)
class _Boot:
    vng_returncode: int | None
    timed_out: bool
    total_s: float
    boot_to_command_s: float | None


def _boot(cmd: list[str], wd: Path, timeout: float) -> _Boot:
    """Run vng until the VM is gone, or kill it (and every descendant) at `timeout`."""
    t0 = time.monotonic()
    t_started: float | None = None
    timed_out = False
    with open(wd / "console.log", "wb") as console:
        proc = subprocess.Popen(
            cmd, cwd=wd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                if t_started is None and (wd / "started").exists():
                    t_started = time.monotonic()
                try:
                    proc.wait(timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - t0 > timeout:
                    timed_out = True
                    _kill_tree(proc)
                    break
        except BaseException:
            _kill_tree(proc)
            raise
        # vng may exit before qemu's children are reaped; leave nothing behind
        for pid in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    total = time.monotonic() - t0
    if t_started is None and (wd / "started").exists():
        t_started = total + t0  # appeared at the very end: best estimate
    return _Boot(proc.returncode, timed_out, total,
                 None if t_started is None else t_started - t0)


def run_python_in_guest(
    code: str,
    timeout: float,
    *,
    work_dir: Path | str | None = None,
    extra_vng_args: Sequence[str] = (),
    vng_args: Sequence[str] = DEFAULT_VNG_ARGS,
    kernel: KernelInfo | None = None,
    verbose_console: bool = False,
) -> GuestResult:
    """Run Python ``code`` in the guest with the host's interpreter (``sys.executable``)."""
    return run_in_guest(
        code, timeout, interpreter=(os.path.realpath(sys.executable),), work_dir=work_dir,
        extra_vng_args=extra_vng_args, vng_args=vng_args, kernel=kernel,
        verbose_console=verbose_console,
    )


if __name__ == "__main__":  # tiny CLI: python3 labvm.py [timeout] < script.sh
    t = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
    r = run_in_guest(sys.stdin.read(), t)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    print(f"[labvm] rc={r.returncode} boot_to_command={r.boot_to_command_s} total={r.total_s:.1f}s "
          f"results={r.results_dir}", file=sys.stderr)
    sys.exit(r.returncode if r.returncode is not None else 125)
