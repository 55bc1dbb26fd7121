"""CPU per request and system calls per request, for each helper and placement.

CPU time comes from /proc (utime + stime of every process of the helper, all threads
included) over a counted run: it does not depend on how busy the machine is the way
latency does. Placement tells code cost from wake-up cost: "unpinned" lets the scheduler
place everything (what users get); "one vCPU" puts the helper's processes and the client
on vCPU 0, where a wake-up is a context switch; "split" puts the helper on vCPU 0 and
the client on vCPU 1, where every hand-over between them is a cross-vCPU wake-up.
System calls are counted by strace -c -f attached to each process of the helper.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import HELPERS, Helper, run_loadgen, start_helper

CLIENTS = (1, 8)
#: name -> (helper's vCPUs, client's vCPUs); None: unpinned
PLACEMENTS: dict[str, tuple[set[int] | None, str | None]] = {
    "unpinned": (None, None),
    "one vCPU": ({0}, "0"),
    "split": ({0}, "1"),
}
PLACEMENT_TEXT = {
    "unpinned": "nothing pinned",
    "one vCPU": "helper and client on vCPU 0",
    "split": "helper on vCPU 0, client on vCPU 1",
}
#: the loop driver's EINVAL comes back as CHECK CONDITION from both helpers
CHECK_CONDITION = 2
Log = Callable[[str], None]


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(helper: Helper, cpus: set[int] | None) -> None:
    """Every thread of every process of the helper on `cpus` (None: all of them)."""
    every = set(range(os.cpu_count() or 1))
    for pid in helper.pids():
        for tid in _threads(pid):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus if cpus is not None else every)


def cpu_by_process(helper: Helper) -> dict[int, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in helper.pids():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def counted_run(helper: Helper, device: str, clients: int, requests: int,
                client_cpus: str | None = None) -> dict[str, Any]:
    """One counted run: the load generator's figures plus the helper's CPU per request,
    in all and per process (µs)."""
    before = cpu_by_process(helper)
    load = run_loadgen("helper", device, helper.path, clients=clients, count=requests,
                       warmup=0, expect=CHECK_CONDITION, cpus=client_cpus)
    after = cpu_by_process(helper)
    served = max(load["requests"], 1)
    per_process = [1e6 * (after[p] - before.get(p, 0.0)) / served for p in after]
    load["cpu_us_per_request"] = sum(per_process)
    load["cpu_us_per_request_by_process"] = per_process
    return load


def syscalls_per_request(helper: Helper, device: str, requests: int, work: Path
                         ) -> dict[str, Any]:
    """strace -c -f on each process of the helper over a counted one-client run."""
    tracers = []
    for index, pid in enumerate(helper.pids()):
        out = work / f"strace-{helper.name}-{index}.txt"
        tracers.append((subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL), out))
    time.sleep(1.0)  # attached to every thread
    load = run_loadgen("helper", device, helper.path, clients=1, count=requests, warmup=0,
                       expect=CHECK_CONDITION, timeout=30.0)
    per_process: list[dict[str, float]] = []
    for proc, out in tracers:
        proc.terminate()
        proc.wait(30)
        calls = _strace_calls(out.read_text() if out.exists() else "")
        served = max(load["requests"], 1)
        per_process.append({name: n / served for name, n in calls.items() if n / served >= 0.05})
    total = sum(sum(p.values()) for p in per_process)
    return {"requests": load["requests"], "per_request": total, "by_process": per_process}


def _strace_calls(text: str) -> dict[str, int]:
    """{syscall: calls} from an `strace -c` table (errors counted as calls too)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return calls


def measure(device: str, rounds: int, requests: int, log: Log) -> dict[str, Any]:
    """Every helper x placement x clients, interleaved round by round (order rotating),
    then system calls per request (unpinned, one client)."""
    work = Path(tempfile.mkdtemp(prefix="prguard-bench-cpu-"))
    helpers = {name: start_helper(name, str(work / f"{name}.sock")) for name in HELPERS}
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        name: {p: {str(n): [] for n in CLIENTS} for p in PLACEMENTS} for name in HELPERS}
    syscalls: dict[str, Any] = {}
    try:
        for helper in helpers.values():  # warm-up: caches, first-use paths
            run_loadgen("helper", device, helper.path, clients=8, duration=0.5, warmup=0.2)
        names = list(helpers)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for placement, (helper_cpus, client_cpus) in PLACEMENTS.items():
                for clients in CLIENTS:
                    for name in order:
                        helper = helpers[name]
                        pin(helper, helper_cpus)
                        try:
                            got = counted_run(helper, device, clients,
                                              requests if clients > 1 else requests // 2,
                                              client_cpus)
                        finally:
                            pin(helper, None)
                        runs[name][placement][str(clients)].append(got)
                        log(f"  round {r + 1}/{rounds} {name:8} {placement:9} {clients} "
                            f"clients: {got['cpu_us_per_request']:6.1f} µs CPU/request, "
                            f"p50 {got['p50_us']:7.1f} µs, {got['rps']:7.0f} req/s")
        for name, helper in helpers.items():
            syscalls[name] = syscalls_per_request(helper, device, 2000, work)
            log(f"  {name:8} system calls per request: {syscalls[name]['per_request']:.1f}")
    finally:
        for helper in helpers.values():
            helper.stop()
    return {"runs": runs, "summary": summarize(runs), "syscalls": syscalls,
            "placements": PLACEMENT_TEXT, "requests": requests}


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]]
              ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name, by_placement in runs.items():
        for placement, by_clients in by_placement.items():
            for clients, rs in by_clients.items():
                cpu = [r["cpu_us_per_request"] for r in rs]
                med = _median(cpu)
                by_process = [_median([r["cpu_us_per_request_by_process"][i] for r in rs
                                       if len(r["cpu_us_per_request_by_process"]) > i])
                              for i in range(max(len(r["cpu_us_per_request_by_process"])
                                                 for r in rs))] if rs else []
                out.setdefault(name, {}).setdefault(placement, {})[clients] = {
                    "cpu_us": med,
                    "cpu_spread": (max(cpu) - min(cpu)) / med if med else 0.0,
                    "cpu_us_by_process": by_process,
                    "p50_us": _median([r["p50_us"] for r in rs]),
                    "rps": _median([r["rps"] for r in rs]),
                    "rounds": len(rs),
                }
    return out
