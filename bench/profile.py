"""Where prguard's CPU goes: `python -m bench.profile [SECONDS]`.

Against one prguard and one qemu-pr-helper on a loop device (READ KEYS, where SG_IO fails
at once in the loop driver, so what is measured is the helpers):

* CPU per request of each process (utime+stime from /proc over a counted run), with 1
  and with 8 clients, nothing pinned;
* system calls per request of each process (`strace -c -f`, one client);
* prguard's pieces timed in-process on the real code (bench/pieces.py: parse, check,
  encode, ioctl, decode, reply), and what each process spends beyond them (system calls
  for its sockets, being woken, the event loop);
* with py-spy installed (`.venv/bin/pip install py-spy`), its sampling of both processes
  under 8-client load: the hottest functions.

Writes bench/results/profile-<time>.txt and prints it.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import pieces
from bench.common import RESULTS, Helper, build_loadgen, run_loadgen, start_helper
from lab.loopdev import loop_device
from lab.processes import cpu_seconds

COUNTED = 20_000
CLIENTS = 8


def _roles(helper: Helper) -> list[str]:
    return ["broker", "worker"] if helper.name == "prguard" else ["helper"]


def cpu_per_request(helper: Helper, device: str, clients: int
                    ) -> tuple[list[str], list[float]]:
    """Lines, and µs of CPU per request of each process."""
    pids = helper.pids()
    before = {pid: cpu_seconds([pid]) for pid in pids}
    got = run_loadgen("helper", device, helper.path, clients=clients, count=COUNTED,
                      warmup=0)
    per = [1e6 * (cpu_seconds([pid]) - before[pid]) / got["requests"] for pid in pids]
    lines = [f"  {clients} client(s), {got['requests']} requests, {got['rps']:.0f} req/s, "
             f"p50 {got['p50_us']:.1f} µs: {sum(per):.1f} µs CPU per request"]
    lines += [f"    {role:7} pid {pid}: {us:.1f} µs"
              for role, pid, us in zip(_roles(helper), pids, per, strict=False)]
    return lines, per


def pieces_lines(device: str, measured: list[float]) -> list[str]:
    """prguard's pieces in-process, and the rest of each process's measured CPU."""
    got = pieces.measure(device)
    lines = []
    for role, used in zip(("broker", "worker"), measured, strict=False):
        parts = got[role]
        total = sum(parts.values())
        lines.append(f"  {role}: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                     + f" = {total:.1f} µs in Python and its calls; measured {used:.1f} µs "
                     f"per request (1 client): {max(used - total, 0.0):.1f} µs in socket "
                     "system calls, wake-ups and the event loop")
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
    got = run_loadgen("helper", device, helper.path, clients=1, count=COUNTED // 4,
                      warmup=0, timeout=30.0)
    time.sleep(0.2)
    for index, _pid, out, proc in traces:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        role = _roles(helper)[min(index, len(_roles(helper)) - 1)]
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
    report = [f"profile, READ KEYS on a loop device; load average {os.getloadavg()[0]:.2f} "
              f"at start ({os.cpu_count()} CPUs)"]
    with loop_device() as device:
        for name in ("prguard", "c"):
            helper = start_helper(name, str(work / f"{name}.sock"))
            try:
                run_loadgen("helper", device, helper.path, clients=CLIENTS, duration=1)
                report.append(f"{name}: CPU per request, nothing pinned")
                one, per_process = cpu_per_request(helper, device, 1)
                report += one
                report += cpu_per_request(helper, device, CLIENTS)[0]
                report.append(f"{name}: strace -c (counted run of {COUNTED // 4}, 1 client)")
                report += strace_counts(helper, device, work)
                if name == "prguard":
                    report.append("prguard: pieces of the request path (µs per request)")
                    report += pieces_lines(device, per_process)
                    report.append(f"prguard: py-spy, {seconds:.0f} s under load")
                    report += pyspy(helper, device, seconds, work)
            finally:
                helper.stop()
    report.append(f"load average {os.getloadavg()[0]:.2f} at end")
    text = "\n".join(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
