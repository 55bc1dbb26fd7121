"""`make bench`: every part in one run, then the table, JSON under bench/results/ and the
results section of bench/README.md.

    python -m bench [--rounds N] [--duration S] [--no-lab] [--only PART,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from bench import cpu, host, report
from bench.common import BENCH, REPO, RESULTS, build_loadgen, machine
from lab import labvm
from lab.loopdev import loop_device

PARTS = ("protocol", "cpu", "lab", "attack", "memory", "startup")
README = BENCH / "README.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
COMMAND = "make bench"


def log(text: str) -> None:
    print(text, flush=True)


def lab(rounds: int, duration: float, warmup: float) -> dict[str, Any]:
    """One guest boot for the whole device part."""
    script = (f"export PYTHONPATH={REPO}\ncd \"$LAB_RESULTS\"\n"
              f"exec {sys.executable} -m bench.guest {rounds} {duration} {warmup}\n")
    # generous: under emulation a shared machine can make the guest several times slower
    budget = 300 + rounds * 9 * (duration + warmup + 10)
    try:
        result = labvm.run_in_guest(script, budget,
                                    extra_vng_args=("--append", "clocksource=tsc tsc=reliable"))
    except labvm.LabVMError as exc:
        return {"error": str(exc).splitlines()[0]}
    out_file = result.results_dir / "bench_guest.json"
    if result.returncode != 0 or not out_file.exists():
        return {"error": f"guest exited {result.returncode}: {result.stderr[-1500:]}",
                "work_dir": str(result.work_dir)}
    data: dict[str, Any] = json.loads(out_file.read_text())
    data["boot_s"] = result.boot_to_command_s
    data["vm_total_s"] = result.total_s
    shutil.rmtree(result.work_dir, ignore_errors=True)
    return data


def byte_compile() -> None:
    """Compile the tree as an install does (PYTHONDONTWRITEBYTECODE, where set, keeps
    imports from writing .pyc files): start-up and memory are then an installed
    prguard's, not those of a checkout compiling its sources at every start."""
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    *(str(REPO / d) for d in ("prguard", "broker", "worker", "shared",
                                              "client", "seccomp"))],
                   check=False, stdout=subprocess.DEVNULL)


def write_readme(result: dict[str, Any]) -> None:
    text = README.read_text() if README.exists() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{BEGIN}\n{report.readme_section(result, COMMAND)}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (3)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="measured seconds per run (2)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="unmeasured seconds before each run (0.5)")
    parser.add_argument("--requests", type=int, default=10_000,
                        help="requests per counted CPU run, 8 clients (half with 1) (10000)")
    parser.add_argument("--no-lab", action="store_true", help="skip the LIO guest")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts ({','.join(PARTS)})")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not rewrite the results section of bench/README.md")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p and not (p == "lab" and args.no_lab)]
    if os.geteuid() != 0:
        log("the benchmark needs root (loop devices, LIO in the guest)")
        return 1
    t0 = time.monotonic()
    build_loadgen()
    byte_compile()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "machine": machine(), "parts": parts,
                              "settings": {"rounds": args.rounds, "duration_s": args.duration,
                                           "warmup_s": args.warmup}}
    with loop_device() as device:
        if "protocol" in parts:
            log("1. protocol path (loop device)")
            result["protocol"] = host.protocol(device, args.rounds, args.duration,
                                               args.warmup, log)
        if "cpu" in parts:
            log("1b. CPU and system calls per request, by placement")
            result["cpu"] = cpu.measure(device, args.rounds, args.requests, log)
        if "attack" in parts:
            log("3. under attack")
            result["attack"] = host.attack(device, max(8.0, args.duration), args.warmup, log)
        if "memory" in parts:
            log("4. memory")
            result["memory"] = host.memory(device, 10_000, log)
        if "startup" in parts:
            log("4. start-to-ready")
            result["startup"] = host.startup(device, 2 * args.rounds + 1, log)
    if "lab" in parts:
        log("2. LIO in the lab guest (one boot)")
        result["lab"] = lab(args.rounds, args.duration, args.warmup)
        if "error" in result["lab"]:
            log(f"  lab failed: {result['lab']['error']}")
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    result["duration_s"] = time.monotonic() - t0
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (RESULTS / name).write_text(json.dumps(result, indent=1))
    log("")
    log(report.render(result))
    log(f"JSON: {RESULTS / f'bench-{stamp}.json'}")
    if not args.no_readme and set(PARTS) - {"lab"} <= set(parts):
        write_readme(result)
        log(f"README section: {README}")
    return 0



