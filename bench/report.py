"""The terminal table and the README section, both from one result dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.common import LABELS, TARGETS

# the targets (context, never assertions)
TARGET_P50 = 1.6          # prguard p50 / C p50, protocol path, one client
TARGET_RPS_8 = 0.5        # prguard req/s / C req/s, 8 clients
TARGET_CPU = 2.0          # prguard CPU per request / C's, nothing pinned
TARGET_LIO = 1.1          # prguard p50 / C p50 on LIO
TARGET_ATTACK_P99 = 2.0   # p99 under attack / unloaded p99
TARGET_PSS_MIB = 20.0     # broker + worker, PSS
TARGET_START_MS = 150.0


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def _verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "n/a"
    return "ok" if ok(value) else "MISS"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line, sep] + ["| " + " | ".join(c.rjust(w) for c, w in
                                           zip(r, widths, strict=True)) + " |" for r in rows]


def protocol_rows(proto: dict[str, Any]) -> list[list[str]]:
    rows = []
    s = proto["summary"]
    for n in ("1", "8", "64"):
        for key, unit in (("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("rps", "req/s")):
            fmt = "{:.0f}" if key == "rps" else "{:.1f}"
            vals = [s[t][n][key] for t in TARGETS]
            ratio = _ratio(vals[0], vals[1])
            if key == "p50_us" and n == "1":
                target = f"≤ {TARGET_P50}x: {_verdict(ratio, lambda r: r <= TARGET_P50)}"
            elif key == "rps" and n == "8":
                target = f"≥ {TARGET_RPS_8}x: {_verdict(ratio, lambda r: r >= TARGET_RPS_8)}"
            else:
                target = ""
            noise = max(s[t][n].get(f"{key}_spread", 0.0) for t in TARGETS[:2])
            rows.append([n, unit, *[_f(v, fmt) for v in vals], _f(ratio, "{:.2f}x"),
                         _f(_ratio(vals[0], vals[2]), "{:.0f}x"), f"{100 * noise:.0f}%",
                         target])
    return rows


def lab_rows(lab: dict[str, Any]) -> list[list[str]]:
    rows = []
    s = lab["summary"]
    for case in s["prguard"]:
        for key, unit in (("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("rps", "ops/s")):
            fmt = "{:.0f}" if key == "rps" else "{:.1f}"
            vals = [s[t][case][key] for t in TARGETS]
            ratio = _ratio(vals[0], vals[1])
            target = (f"≤ {TARGET_LIO}x: {_verdict(ratio, lambda r: r <= TARGET_LIO)}"
                      if key == "p50_us" else "")
            noise = max(s[t][case].get(f"{key}_spread", 0.0) for t in TARGETS[:2])
            bad = sum(s[t][case]["unexpected"] + s[t][case]["errors"] for t in TARGETS)
            rows.append([case, unit, *[_f(v, fmt) for v in vals], _f(ratio, "{:.2f}x"),
                         _f(_ratio(vals[0], vals[2]), "{:.2f}x"), f"{100 * noise:.0f}%",
                         target + (f" ({bad} unexpected replies)" if bad else "")])
    return rows


def attack_rows(att: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("prguard", "c"):
        a = att[name]
        base, load = a["unloaded"], a["under_attack"]
        if a["answered"]:
            loaded50, loaded99 = _f(load["p50_us"]), _f(load["p99_us"])
            extra = "" if not load["timeouts"] + load["errors"] else (
                f" ({load['timeouts']} timeouts, {load['errors']} errors)")
        else:
            loaded50 = loaded99 = "no answer"
            extra = f" ({load['first_error']})"
        ratio = a["p99_ratio"]
        rows.append([LABELS[name], _f(base["p50_us"]), _f(base["p99_us"]), loaded50, loaded99,
                     _f(a["p50_ratio"], "{:.2f}x"), _f(ratio, "{:.2f}x"),
                     f"≤ {TARGET_ATTACK_P99}x: "
                     f"{_verdict(ratio, lambda r: r <= TARGET_ATTACK_P99)}{extra}"])
    return rows


def memory_rows(mem: dict[str, Any], start: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("prguard", "c"):
        m = mem[name]
        idle, after = m["idle"]["rss_kib"] / 1024, m["after"]["rss_kib"] / 1024
        pss_i, pss_a = m["idle"]["pss_kib"] / 1024, m["after"]["pss_kib"] / 1024
        s = start[name]
        pss_ok = _verdict(max(pss_i, pss_a), lambda v: v <= TARGET_PSS_MIB)
        start_ok = _verdict(s["median_ms"], lambda v: v <= TARGET_START_MS)
        rows.append([LABELS[name], str(m["idle"]["processes"]), f"{idle:.1f}", f"{pss_i:.1f}",
                     f"{after:.1f}", f"{pss_a:.1f}",
                     f"{s['median_ms']:.0f} ({s['min_ms']:.0f}-{s['max_ms']:.0f})",
                     f"PSS ≤ {TARGET_PSS_MIB:.0f} MiB: {pss_ok}; "
                     f"start ≤ {TARGET_START_MS:.0f} ms: {start_ok}"
                     if name == "prguard" else ""])
    return rows


def cpu_rows(cpu: dict[str, Any]) -> list[list[str]]:
    rows = []
    s = cpu["summary"]
    for placement in cpu["placements"]:
        for n in ("1", "8"):
            p, c = s["prguard"][placement][n], s["c"][placement][n]
            ratio = _ratio(p["cpu_us"], c["cpu_us"])
            split = " / ".join(f"{v:.0f}" for v in p["cpu_us_by_process"] if v is not None)
            target = (f"≤ {TARGET_CPU}x: {_verdict(ratio, lambda r: r <= TARGET_CPU)}"
                      if placement == "unpinned" else "")
            noise = max(p["cpu_spread"], c["cpu_spread"])
            rows.append([cpu["placements"][placement], n, _f(p["cpu_us"]), split,
                         _f(c["cpu_us"]), _f(ratio, "{:.2f}x"), _f(p["p50_us"]),
                         _f(c["p50_us"]), f"{100 * noise:.0f}%", target])
    return rows


def syscall_line(cpu: dict[str, Any]) -> str:
    sc = cpu["syscalls"]
    parts = []
    for name in ("prguard", "c"):
        by = sc[name]["by_process"]
        detail = ""
        if len(by) > 1:
            detail = " (" + ", ".join(
                f"{role} {sum(p.values()):.1f}: " + " ".join(
                    f"{k} {v:.1f}" for k, v in sorted(p.items(), key=lambda kv: -kv[1]))
                for role, p in zip(("broker", "worker"), by, strict=False)) + ")"
        else:
            detail = " (" + " ".join(f"{k} {v:.1f}" for k, v in
                                     sorted(by[0].items(), key=lambda kv: -kv[1])) + ")"
        parts.append(f"{LABELS[name]} {sc[name]['per_request']:.1f}{detail}")
    return "System calls per request (one client, strace -c on every process): " + \
        "; ".join(parts) + "."


CPU_HEAD = ["placement", "clients", "prguard CPU µs", "broker / worker", "C CPU µs",
            "prguard/C", "prguard p50 µs", "C p50 µs", "noise", "target"]
PROTO_HEAD = ["clients", "metric", "prguard", "qemu-pr-helper", "raw SG_IO", "prguard/C",
              "prguard/raw", "noise", "target"]
LAB_HEAD = ["case/clients", "metric", "prguard", "qemu-pr-helper", "raw SG_IO", "prguard/C",
            "prguard/raw", "noise", "target"]
ATTACK_HEAD = ["helper", "unloaded p50 µs", "unloaded p99 µs", "attack p50 µs",
               "attack p99 µs", "p50 ratio", "p99 ratio", "target"]
MEM_HEAD = ["helper", "procs", "RSS idle MiB", "PSS idle", "RSS after 10k MiB", "PSS after",
            "start-to-ready ms (min-max)", "target"]


def render(result: dict[str, Any], machine_line: bool = True) -> str:
    """Markdown tables (they read fine in a terminal too)."""
    m = result["machine"]
    out: list[str] = []
    if machine_line:
        out += [f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
                f"Python {m['python']}; load average {m['loadavg_start']:.2f} at start, "
                f"{m.get('loadavg_end', 0):.2f} at end; {result['duration_s']:.0f} s in all.",
                ""]
    if "protocol" in result:
        p = result["protocol"]
        out += [f"1. Protocol path on the host ({p['op']} on a loop device: SG_IO fails in "
                f"the loop driver with EINVAL, so this is helper overhead); medians of "
                f"{p['summary']['prguard']['1']['rounds']} rounds; noise = spread of the "
                "rounds (max-min)/median, worst of the two helpers", ""]
        out += [*_grid(PROTO_HEAD, protocol_rows(p)), ""]
    if "cpu" in result:
        c = result["cpu"]
        out += [f"1b. Helper CPU per request (µs; utime+stime from /proc summed over the "
                f"helper's processes, counted runs of {c['requests']} requests, READ KEYS on "
                f"a loop device); medians of {c['summary']['prguard']['unpinned']['1']['rounds']}"
                " rounds; the placement column says where the processes ran", ""]
        out += [*_grid(CPU_HEAD, cpu_rows(c)), "", syscall_line(c), ""]
    lab = result.get("lab")
    if lab and "summary" in lab:
        out += [f"2. LIO in the lab guest (TCG; {lab['lu']}; device {lab['device']}); "
                f"medians of {lab['summary']['prguard']['readkeys/1']['rounds']} rounds; "
                f"boot {lab.get('boot_s', 0):.0f} s, guest part {lab['total_s']:.0f} s", ""]
        out += [*_grid(LAB_HEAD, lab_rows(lab)), ""]
    elif lab:
        out += [f"2. LIO in the lab guest: FAILED: {lab.get('error')}", ""]
    if "attack" in result:
        a = result["attack"]["attack"]
        out += [f"3. A legitimate client under attack ({a['idle_connections']} idle "
                f"connections, {a['stalled_mid_request']} stalled mid-request, one client "
                "that never reads its replies, all at once; "
                f"{a['legit_client']})", ""]
        out += [*_grid(ATTACK_HEAD, attack_rows(result["attack"])), ""]
    if "memory" in result and "startup" in result:
        out += ["4. Memory (summed over the helper's processes; PSS counts the pages the "
                "forked pair shares once) and start-to-ready (exec until a READ KEYS is "
                f"answered, median of {result['startup']['prguard']['rounds']})", ""]
        out += [*_grid(MEM_HEAD, memory_rows(result["memory"], result["startup"])), ""]
    return "\n".join(out)


def readme_section(result: dict[str, Any], command: str) -> str:
    m = result["machine"]
    return "\n".join([
        f"## Results ({result['date']})", "",
        f"From `{command}` on: nproc {m['nproc']}, CPU `{m['cpu_model']}`, kernel "
        f"`{m['kernel']}`, Python {m['python']}, C helper `{m['c_helper']}` "
        f"(Debian 12, QEMU 7.2). The machine was shared with other workloads "
        f"(load average {m['loadavg_start']:.2f} at start, {m.get('loadavg_end', 0):.2f} at "
        f"end; {result['duration_s']:.0f} s in all): the noise column says how far the "
        "rounds were apart.", "",
        render(result, machine_line=False), "",
    ])
