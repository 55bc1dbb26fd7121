"""What every part of the benchmark shares: the C load generator, helper processes,
their memory, round statistics and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import processes
from lab.processes import stop_process

REPO = processes.REPO
BENCH = REPO / "bench"
BUILD = BENCH / "build"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BUILD / "loadgen"
RESULTS = BENCH / "results"
C_HELPER = processes.C_HELPER
PRGUARD = processes.INSTALLED_PRGUARD
HELPERS: dict[str, list[str]] = {"prguard": PRGUARD, "c": [C_HELPER]}
TARGETS = ("prguard", "c", "raw")
LABELS = {"prguard": "prguard", "c": "qemu-pr-helper", "raw": "raw SG_IO"}

Load = dict[str, Any]


def build_loadgen() -> Path:
    """Compile bench/loadgen.c (once, again when the source changes)."""
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN
    BUILD.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(LOADGEN),
                    str(LOADGEN_SRC)], check=True)
    return LOADGEN


def run_loadgen(mode: str, device: str, sock: str | None = None, *, op: str = "readkeys",
                clients: int = 1, duration: float = 2.0, warmup: float = 0.5,
                count: int = 0, timeout: float = 5.0, expect: int = -1,
                cpus: str | None = None) -> Load:
    """One run of the load generator: its JSON line (latencies in µs). `cpus`: the vCPUs
    its client processes may run on (taskset's list), None for any."""
    argv = ["taskset", "-c", cpus] if cpus is not None else []
    argv += [str(LOADGEN), "--mode", mode, "--device", device, "--op", op,
            "--clients", str(clients), "--duration", str(duration), "--warmup", str(warmup),
            "--count", str(count), "--timeout", str(timeout), "--expect-status", str(expect)]
    if sock is not None:
        argv += ["--socket", sock]
    bound = warmup + duration + 2 * timeout + (60.0 if count else 30.0)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=bound, check=True)
    result: Load = json.loads(out.stdout)
    return result


# -- helpers --------------------------------------------------------------------------

@dataclass
class Helper:
    """A helper started by the benchmark (the lab's process), under its name in the
    results."""

    name: str
    process: processes.Helper

    @property
    def path(self) -> str:
        return self.process.path

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def pids(self) -> list[int]:
        return self.process.pids()

    def cpu_seconds(self) -> float:
        return self.process.cpu_seconds()

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and Pss summed over the processes (Pss counts pages the forked pair
        shares once), and the thread count."""
        rss = pss = threads = 0
        for pid in self.pids():
            status = proc_fields(f"/proc/{pid}/status")
            rss += int(status["VmRSS"].split()[0])
            threads += int(status["Threads"])
            pss += int(proc_fields(f"/proc/{pid}/smaps_rollup")["Pss"].split()[0])
        return {"rss_kib": rss, "pss_kib": pss, "threads": threads,
                "processes": len(self.pids())}

    def stop(self) -> None:
        stop_process(self.proc)
        for leftover in (self.path, self.path + ".stderr"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def proc_fields(path: str) -> dict[str, str]:
    with open(path) as f:
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in f)}


def start_helper(name: str, path: str, extra: Sequence[str] = (), timeout: float = 20.0
                 ) -> Helper:
    if os.path.exists(path):
        os.unlink(path)
    return Helper(name, processes.start_helper(HELPERS[name], path, *extra, timeout=timeout))


# -- statistics -------------------------------------------------------------------------

def summarize(rounds: list[Load], keys: Sequence[str] = ("rps", "p50_us", "p99_us")
              ) -> dict[str, Any]:
    """Median of the rounds for each key, with the spread (max-min)/median as noise."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in keys:
        values = [float(r[key]) for r in rounds if r.get("requests") and r[key] >= 0]
        if not values:
            out[key] = None
            continue
        med = statistics.median(values)
        out[key] = med
        out[f"{key}_spread"] = (max(values) - min(values)) / med if med else 0.0
    out["errors"] = sum(int(r["errors"]) + int(r["timeouts"]) for r in rounds)
    out["unexpected"] = sum(int(r["unexpected"]) for r in rounds)
    out["client_cpu_per_req_us"] = statistics.median(
        [1e6 * r["client_cpu_s"] / r["requests"] for r in rounds if r["requests"]] or [0.0])
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "c_helper": C_HELPER,
        "loadavg_start": os.getloadavg()[0],
    }
