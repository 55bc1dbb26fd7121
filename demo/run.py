"""`make demo`, host side: boot the lab VM once and show the fencing story as it is told.

The guest (lab/labvm.py: Debian's kernel under TCG, the host's / read-only) runs
demo/story.py with this very interpreter; its stdout lands in the shared work dir, which
this process follows and copies to the terminal line by line while the VM runs. Exit
status: the story's (0: node A fenced as it should be), 1 if it failed or the VM did not
boot or finish in time. DEMO_KEEP=1 keeps the work dir (console.log, prguard.log,
lio.json) even on success; a failure always keeps it. DEMO_SPAWN=1 makes the guest run
the prguard-client console script for each command (see demo/story.py; slower).

Run as: <repo>/.venv/bin/python -m demo.run
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from lab import labvm

REPO = Path(__file__).resolve().parent.parent
GUEST_TIMEOUT_S = 480.0  # two acts: the second on a 2-path map
# as tests/test_lab.py boots it: TSC clocksource, the cheapest clock under TCG
KERNEL_ARGS = "clocksource=tsc tsc=reliable"
GUEST_SCRIPT = f"""\
export PYTHONPATH={REPO} DEMO_SPAWN={shlex.quote(os.environ.get("DEMO_SPAWN", ""))}
cd "$LAB_RESULTS"
exec {sys.executable} -u -m demo.story
"""


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Follower:
    """Copies complete lines of a growing file to stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def poll(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        data = self.partial + chunk
        cut = len(data) if final else data.rfind(b"\n") + 1
        complete, self.partial = data[:cut], data[cut:]
        if complete:
            text = complete.decode("utf-8", errors="replace")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()


def main() -> int:
    t0 = time.monotonic()
    try:
        kernel = labvm.find_kernel()
        labvm.find_vng()
    except labvm.LabVMError as err:
        print(f"[host] DEMO FAILED: cannot boot the lab VM: {err}", file=sys.stderr)
        return 1
    work_dir = Path(tempfile.mkdtemp(prefix="prguard-demo-"))
    print(f"[host] booting the lab VM (Debian kernel {kernel.version} under TCG, virtme-ng); "
          f"work dir {work_dir}", flush=True)
    outcome: list[labvm.GuestResult | labvm.LabVMError] = []

    def boot() -> None:
        try:
            outcome.append(labvm.run_in_guest(
                GUEST_SCRIPT, GUEST_TIMEOUT_S, work_dir=work_dir, kernel=kernel,
                verbose_console=True,
                extra_vng_args=("--append", KERNEL_ARGS)))
        except labvm.LabVMError as err:
            outcome.append(err)

    vm = threading.Thread(target=boot, name="labvm", daemon=True)
    vm.start()
    story = Follower(work_dir / "stdout")
    booted = False
    while vm.is_alive():
        if not booted and (work_dir / "started").exists():
            booted = True
            print(f"[host] guest up after {time.monotonic() - t0:.1f} s; the story runs "
                  f"in the guest:", flush=True)
        story.poll()
        vm.join(0.2)
    story.poll(final=True)
    elapsed = time.monotonic() - t0

    result = outcome[0] if outcome else labvm.LabVMError("the VM thread reported nothing")
    if isinstance(result, labvm.LabVMError):
        print(f"\n[host] DEMO FAILED: the lab VM: {result}", file=sys.stderr)
        partial = getattr(result, "result", None)
        if isinstance(partial, labvm.GuestResult) and partial.stderr:
            print(f"guest stderr:\n{_tail(partial.stderr)}", file=sys.stderr)
        print(f"[host] work dir kept: {work_dir}", file=sys.stderr)
        return 1
    if result.returncode != 0:
        reason = next((line for line in reversed(result.stdout.splitlines())
                       if line.startswith("DEMO FAILED")), "see the guest's stderr below")
        print(f"\n[host] DEMO FAILED: the story exited {result.returncode} after "
              f"{elapsed:.1f} s: {reason}", file=sys.stderr)
        if result.stderr.strip():
            print(f"guest stderr:\n{_tail(result.stderr)}", file=sys.stderr)
        print(f"[host] work dir kept (console.log, results/prguard.log): {work_dir}",
              file=sys.stderr)
        return 1
    print(f"\n[host] demo done in {elapsed:.1f} s (guest up after "
          f"{result.boot_to_command_s or 0:.1f} s, VM gone after {result.total_s:.1f} s)")
    if os.environ.get("DEMO_KEEP"):
        print(f"[host] work dir kept: {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
