"""The device part, run INSIDE the lab guest (bench/run.py boots it with lab/labvm.py):
LIO via lab/lio_setup.sh, then prguard, qemu-pr-helper and the raw ioctl on the
same LU in the same boot, interleaved round by round.

Run as: PYTHONPATH=<repo> <venv python> -m bench.guest ROUNDS DURATION WARMUP
Writes $LAB_RESULTS/bench_guest.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import HELPERS, TARGETS, Load, machine, run_loadgen, start_helper, summarize
from lab import lio

GOOD = 0
#: (op, clients): READ KEYS alone and concurrently; REGISTER then unregister (one
#: registration per I_T nexus, so one client: two clients on one nexus would conflict)
CASES = (("readkeys", 1), ("readkeys", 8), ("regpair", 1))


def main(rounds: int, duration: float, warmup: float) -> int:
    out_dir = Path(os.environ.get("LAB_RESULTS", "."))
    t0 = time.monotonic()
    try:
        devices = lio.set_up("suite", out_dir / "lio.json", out_dir / "lio_setup.log")
    except lio.LioError as exc:
        print(exc, file=sys.stderr)
        return 1
    udev = lio.quiesce_udev()
    device = devices["pS"]["sd"]
    setup_s = time.monotonic() - t0
    print(f"LIO set up in {time.monotonic() - t0:.0f} s", flush=True)
    # under emulation on a busy host, prguard's start-up (imports) takes many seconds
    helpers = {name: start_helper(name, f"/tmp/bench-{name}.sock", timeout=300.0)
               for name in HELPERS}
    print(f"helpers serving after {time.monotonic() - t0:.0f} s", flush=True)
    raw: dict[str, dict[str, list[Load]]] = {t: {f"{op}/{n}": [] for op, n in CASES}
                                             for t in TARGETS}
    try:
        for helper in helpers.values():
            run_loadgen("helper", device, helper.path, duration=0.3, warmup=0.1,
                        timeout=30.0)
        for r in range(rounds):
            order = TARGETS[r % 3:] + TARGETS[:r % 3]
            for op, clients in CASES:
                for target in order:
                    sock = helpers[target].path if target in helpers else None
                    got = run_loadgen("raw" if sock is None else "helper", device, sock,
                                      op=op, clients=clients, duration=duration,
                                      warmup=warmup, timeout=30.0, expect=GOOD)
                    raw[target][f"{op}/{clients}"].append(got)
                    print(f"round {r + 1} {op}/{clients} {target}: {got['rps']:.0f} req/s "
                          f"p50 {got['p50_us']:.0f} µs p99 {got['p99_us']:.0f} µs "
                          f"unexpected {got['unexpected']} errors {got['errors']}",
                          flush=True)
    finally:
        for helper in helpers.values():
            helper.stop()
    result: dict[str, Any] = {
        "device": device, "lu": "LIO fileio LU behind one tcm_loop nexus (lio_setup.sh pS)",
        "guest": machine(), "udev": udev, "setup_s": setup_s,
        "cases": {"readkeys": "PR IN READ KEYS, allocation length 8192",
                  "regpair": "PR OUT REGISTER (SA key K) then REGISTER (key K, SA key 0): "
                             "one latency per pair"},
        "summary": {t: {k: summarize(v) for k, v in raw[t].items()} for t in TARGETS},
        "rounds": raw,
        "total_s": time.monotonic() - t0,
    }
    (out_dir / "bench_guest.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])))
