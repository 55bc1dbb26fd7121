"""Where prguard's time goes under load: `python -m bench.profile [SECONDS]`.

Against one prguard (and one qemu-pr-helper for comparison) on a loop device, with the
8-client load of `make bench`:

* CPU per request of each process (utime+stime from /proc over a counted run);
* `strace -c` attached to each process over a counted run: system calls per request;
* py-spy (installed into the venv: `pip install py-spy`) sampling broker and worker
  (every thread of the worker) while the load runs: self time and inclusive time of the
  hottest functions.

Writes bench/results/profile-<time>.txt and prints it.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, Helper, build_loadgen, run_loadgen, start_helper
from lab.loopdev import loop_device
from lab.processes import cpu_seconds

COUNTED = 20_000
CLIENTS = 8


def cpu_per_request(helper: Helper, device: str) -> list[str]:
    lines = []
    pids = helper.pids()
    before = {pid: cpu_seconds([pid]) for pid in pids}
    got = run_loadgen("helper", device, helper.path, clients=CLIENTS, count=COUNTED)
    for index, pid in enumerate(pids):
        used = cpu_seconds([pid]) - before[pid]
        role = ("broker" if index == 0 else "worker") if helper.name == "prguard" else "helper"
        lines.append(f"  {role:7} pid {pid}: {1e6 * used / got['requests']:.1f} µs CPU per "
                     f"request ({got['requests']} requests, {got['rps']:.0f} req/s)")
    return lines


def strace_counts(helper: Helper, device: str, workdir: Path) -> list[str]:
    lines = []
    traces = []
    for index, pid in enumerate(helper.pids()):
        out = workdir / f"{helper.name}-{pid}.strace"
        traces.append((index, pid, out, subprocess.Popen(
            ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(1.0)
    got = run_loadgen("helper", device, helper.path, clients=CLIENTS, count=COUNTED // 4)
    time.sleep(0.2)
    for index, _pid, out, proc in traces:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        role = ("broker" if index == 0 else "worker") if helper.name == "prguard" else "helper"
        per_call: list[tuple[str, int]] = []
        for row in out.read_text().splitlines():
            cols = row.split()
            if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
                per_call.append((cols[-1], int(cols[3])))
        total = sum(n for _, n in per_call)
        n = got["requests"]
        top = ", ".join(f"{name} {calls / n:.2f}" for name, calls in
                        sorted(per_call, key=lambda c: -c[1])[:10])
        lines.append(f"  {role:7}: {total / n:.1f} syscalls per request: {top}")
    return lines


def pyspy(helper: Helper, device: str, seconds: float, workdir: Path) -> list[str]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return ["  py-spy not installed (.venv/bin/pip install py-spy)"]
    load = subprocess.Popen([sys.executable, "-c",
                             "from bench.common import run_loadgen; import sys; "
                             f"run_loadgen('helper', {device!r}, {helper.path!r}, "
                             f"clients={CLIENTS}, duration={seconds + 2}, warmup=0)"])
    time.sleep(1.0)
    spies = []
    for index, pid in enumerate(helper.pids()):
        out = workdir / f"{pid}.raw"
        spies.append((index, out, subprocess.Popen(
            [spy, "record", "-p", str(pid), "-r", "250", "-d", str(int(seconds)), "-f", "raw",
             "-o", str(out), "--threads", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    for _, _, proc in spies:
        proc.wait(seconds + 30)
    load.wait()
    lines = []
    for index, out, _ in spies:
        lines += summarize_raw(out, "broker" if index == 0 else "worker")
    return lines


def summarize_raw(out: Path, role: str) -> list[str]:
    """Self and inclusive time of the hottest functions in py-spy's raw (collapsed) output;
    idle samples (blocked in a system call that releases the GIL) are not in it."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if not out.exists():
        return [f"  {role}: no samples"]
    for row in out.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("thread", "process"))]
        if not frames:
            continue
        total += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"  {role}: {total} samples (active only)", "    self:"]
    lines += [f"      {100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(20)]
    lines.append("    inclusive:")
    lines += [f"      {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(45)]
    return lines


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":  # an existing py-spy raw file
        print("\n".join(summarize_raw(Path(sys.argv[2]), Path(sys.argv[2]).stem)))
        return 0
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    build_loadgen()
    work = Path(tempfile.mkdtemp(prefix="prguard-profile-"))
    report = [f"profile, {CLIENTS} clients, READ KEYS on a loop device"]
    with loop_device() as device:
        for name in ("prguard", "c"):
            helper = start_helper(name, str(work / f"{name}.sock"))
            try:
                run_loadgen("helper", device, helper.path, clients=CLIENTS, duration=1)
                report.append(f"{name}: CPU per request")
                report += cpu_per_request(helper, device)
                report.append(f"{name}: strace -c (counted run of {COUNTED // 4})")
                report += strace_counts(helper, device, work)
                if name == "prguard":
                    report.append(f"{name}: py-spy, {seconds:.0f} s under load")
                    report += pyspy(helper, device, seconds, work)
            finally:
                helper.stop()
    text = "\n".join(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
