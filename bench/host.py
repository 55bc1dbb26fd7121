"""The host parts: the protocol path on a loop device (where SG_IO fails fast with EINVAL,
so what is measured is the helper itself), latency under attack, memory and start-up."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import select
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    HELPERS,
    TARGETS,
    Load,
    run_loadgen,
    start_helper,
    summarize,
)
from prguard.client.session import send_with_fds

CONCURRENCY = (1, 8, 64)
#: the loop driver's EINVAL comes back as CHECK CONDITION from both helpers
CHECK_CONDITION = 2
READ_KEYS_CDB = bytes([0x5E, 0, 0, 0, 0, 0, 0]) + (8192).to_bytes(2, "big") + bytes(7)
Log = Callable[[str], None]


def sockdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="prguard-bench-"))


# -- 1. protocol path -------------------------------------------------------------------

def protocol(device: str, rounds: int, duration: float, warmup: float,
             log: Log) -> dict[str, Any]:
    """Every target at 1, 8 and 64 clients, interleaved round by round (the order rotates
    each round) so that a burst of load from elsewhere hits all targets alike."""
    where = sockdir()
    helpers = {name: start_helper(name, str(where / f"{name}.sock")) for name in HELPERS}
    raw: dict[str, dict[int, list[Load]]] = {t: {n: [] for n in CONCURRENCY} for t in TARGETS}
    try:
        for helper in helpers.values():  # warm-up: caches, first-use paths
            run_loadgen("helper", device, helper.path, clients=8, duration=0.5, warmup=0.2)
        for r in range(rounds):
            order = TARGETS[r % 3:] + TARGETS[:r % 3]
            for clients in CONCURRENCY:
                for target in order:
                    if target == "raw":
                        got = run_loadgen("raw", device, clients=clients, duration=duration,
                                          warmup=warmup, expect=CHECK_CONDITION)
                    else:
                        got = run_loadgen("helper", device, helpers[target].path,
                                          clients=clients, duration=duration, warmup=warmup,
                                          expect=CHECK_CONDITION)
                    raw[target][clients].append(got)
                    log(f"  round {r + 1}/{rounds} {target:8} {clients:3} clients: "
                        f"{got['rps']:9.0f} req/s  p50 {got['p50_us']:8.1f} µs  "
                        f"p99 {got['p99_us']:8.1f} µs")
    finally:
        for helper in helpers.values():
            helper.stop()
    return {
        "device": device,
        "op": "PR IN READ KEYS, allocation length 8192",
        "summary": {t: {str(n): summarize(raw[t][n]) for n in CONCURRENCY} for t in TARGETS},
        "rounds": {t: {str(n): raw[t][n] for n in CONCURRENCY} for t in TARGETS},
    }


# -- 3. under attack --------------------------------------------------------------------

IDLE_CONNECTIONS = 500
IDLE_PER_PROCESS = 25   # under prguard's default 32 connections per peer
STALLED_CONNECTIONS = 50
STALLED_PER_PROCESS = 25


def _connect(path: str, timeout: float = 10.0) -> socket.socket:
    """Connect and handshake. The C helper's backlog is 1: a connect that finds it full
    (EAGAIN) is retried until `timeout`, as QEMU's blocking connect would wait."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                sock.close()
                raise TimeoutError(f"{path}: backlog full for {timeout} s") from None
            time.sleep(0.001)
    if len(sock.recv(4, socket.MSG_WAITALL)) != 4:
        raise ConnectionError("no handshake")
    sock.sendall(bytes(4))
    return sock


def _stall(path: str, fd: int, index: int) -> socket.socket:
    """A connection left mid-request: half a CDB (with its fd), or a whole PR OUT CDB and
    part of its parameter list."""
    sock = _connect(path)
    if index % 2:
        send_with_fds(sock, READ_KEYS_CDB[:8], [fd])
    else:
        cdb = bytes([0x5F, 0, 0, 0, 0, 0, 0]) + (24).to_bytes(2, "big") + bytes(7)
        send_with_fds(sock, cdb, [fd])
        sock.sendall(bytes(10))
    return sock


def _idle_attacker(path: str, count: int, ready: Any, stop: multiprocessing.synchronize.Event
                   ) -> None:
    socks = []
    try:
        for _ in range(count):
            socks.append(_connect(path))
    except OSError:
        pass
    ready.put(("idle", len(socks)))
    stop.wait()


def _stalled_attacker(path: str, device: str, count: int, ready: Any,
                      stop: multiprocessing.synchronize.Event) -> None:
    """Keeps `count` connections stalled mid-request: one the helper closes (prguard's
    message deadline) is opened and stalled again at once."""
    fd = os.open(device, os.O_RDWR)
    socks: dict[socket.socket, int] = {}
    reconnects = 0
    try:
        for i in range(count):
            socks[_stall(path, fd, i)] = i
    except OSError:
        pass
    ready.put(("stalled", len(socks)))
    while not stop.is_set() and socks:
        readable, _, _ = select.select(list(socks), [], [], 0.1)
        for sock in readable:
            try:
                if sock.recv(4096):
                    continue
            except OSError:
                pass
            index = socks.pop(sock)
            sock.close()
            try:
                socks[_stall(path, fd, index)] = index
                reconnects += 1
            except OSError:
                pass
    ready.put(("stalled_reconnects", reconnects))


def _deaf_attacker(path: str, device: str, ready: Any,
                   stop: multiprocessing.synchronize.Event) -> None:
    """Sends requests back to back and never reads a reply; reconnects when closed."""
    fd = os.open(device, os.O_RDWR)
    sent = reconnects = 0
    ready.put(("deaf", 1))
    while not stop.is_set():
        try:
            sock = _connect(path)
        except OSError:
            time.sleep(0.05)
            continue
        sock.settimeout(0.2)
        try:
            while not stop.is_set():
                try:
                    send_with_fds(sock, READ_KEYS_CDB, [fd])
                    sent += 1
                except TimeoutError:
                    continue  # its buffers are full: keep pushing
        except OSError:
            reconnects += 1
        finally:
            sock.close()
    ready.put(("deaf_sent", sent))
    ready.put(("deaf_reconnects", reconnects))


def attack(device: str, duration: float, warmup: float, log: Log) -> dict[str, Any]:
    out: dict[str, Any] = {"attack": {
        "idle_connections": IDLE_CONNECTIONS, "stalled_mid_request": STALLED_CONNECTIONS,
        "non_reading_clients": 1,
        "legit_client": "1 connection, READ KEYS back to back, 5 s bound per reply"}}
    where = sockdir()
    ctx = multiprocessing.get_context("fork")
    for name in HELPERS:
        helper = start_helper(name, str(where / f"{name}-attack.sock"))
        try:
            run_loadgen("helper", device, helper.path, duration=0.5, warmup=0.2)
            unloaded = [run_loadgen("helper", device, helper.path, duration=duration / 2,
                                    warmup=warmup, expect=CHECK_CONDITION) for _ in range(2)]
            stop = ctx.Event()
            ready = ctx.Queue()
            procs = [ctx.Process(target=_idle_attacker,
                                 args=(helper.path, IDLE_PER_PROCESS, ready, stop))
                     for _ in range(IDLE_CONNECTIONS // IDLE_PER_PROCESS)]
            procs += [ctx.Process(target=_stalled_attacker,
                                  args=(helper.path, device, STALLED_PER_PROCESS, ready, stop))
                      for _ in range(STALLED_CONNECTIONS // STALLED_PER_PROCESS)]
            procs.append(ctx.Process(target=_deaf_attacker,
                                     args=(helper.path, device, ready, stop)))
            for proc in procs:
                proc.start()
            established: dict[str, int] = {}
            deadline = time.monotonic() + 60
            for _ in procs:
                try:
                    kind, n = ready.get(timeout=max(0.1, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001  (queue.Empty: an attacker never got going)
                    break
                established[kind] = established.get(kind, 0) + n
            time.sleep(1.0)  # let the non-reading client fill its buffers
            cpu0 = helper.cpu_seconds()
            loaded = run_loadgen("helper", device, helper.path, duration=duration,
                                 warmup=warmup, expect=CHECK_CONDITION, timeout=5.0)
            cpu = helper.cpu_seconds() - cpu0
            memory = helper.memory_kib()
            stop.set()
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            while not ready.empty():
                kind, n = ready.get_nowait()
                established[kind] = established.get(kind, 0) + n
            alive = helper.proc.poll() is None
        finally:
            helper.stop()
        base = summarize(unloaded)
        answered = bool(loaded["requests"])
        out[name] = {
            "unloaded": base, "under_attack": loaded, "answered": answered,
            "attackers": established, "helper_cpu_s_during": cpu,
            "memory_under_attack": memory, "survived": alive,
            "p50_ratio": loaded["p50_us"] / base["p50_us"] if answered else None,
            "p99_ratio": loaded["p99_us"] / base["p99_us"] if answered else None,
        }
        verdict = (f"p50 {loaded['p50_us']:.1f} µs p99 {loaded['p99_us']:.1f} µs "
                   f"(unloaded {base['p50_us']:.1f} / {base['p99_us']:.1f})" if answered
                   else f"no answer ({loaded['first_error']})")
        log(f"  {name:8} under attack: {verdict}; attackers {established}")
    return out


# -- 4. memory and start-up -------------------------------------------------------------

def memory(device: str, requests: int, log: Log) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": requests}
    where = sockdir()
    for name in HELPERS:
        helper = start_helper(name, str(where / f"{name}-mem.sock"))
        try:
            time.sleep(1.0)
            idle = helper.memory_kib()
            load = run_loadgen("helper", device, helper.path, clients=8, count=requests,
                               warmup=0, expect=CHECK_CONDITION)
            time.sleep(0.5)
            after = helper.memory_kib()
        finally:
            helper.stop()
        out[name] = {"idle": idle, "after": after, "served": load["requests"]}
        log(f"  {name:8} RSS idle {idle['rss_kib'] / 1024:.1f} MiB "
            f"(PSS {idle['pss_kib'] / 1024:.1f}), after {load['requests']} requests "
            f"{after['rss_kib'] / 1024:.1f} MiB (PSS {after['pss_kib'] / 1024:.1f})")
    return out


def _time_to_ready(name: str, path: str, device: str) -> float:
    """Seconds from exec until the socket has answered a READ KEYS request."""
    fd = os.open(device, os.O_RDWR)
    t0 = time.monotonic()
    proc = subprocess.Popen([*HELPERS[name], "-k", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                sock = _connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.monotonic() - t0 > 20:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.0005)
        with sock:
            send_with_fds(sock, READ_KEYS_CDB, [fd])
            if len(sock.recv(104, socket.MSG_WAITALL)) != 104:
                raise RuntimeError(f"{name}: no reply")
            elapsed = time.monotonic() - t0
    finally:
        os.close(fd)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        if os.path.exists(path):
            os.unlink(path)
    return elapsed


def startup(device: str, rounds: int, log: Log) -> dict[str, Any]:
    where = sockdir()
    out: dict[str, Any] = {}
    for name in HELPERS:
        _time_to_ready(name, str(where / f"{name}-start.sock"), device)  # page cache
        times = [_time_to_ready(name, str(where / f"{name}-start.sock"), device)
                 for _ in range(rounds)]
        out[name] = {"median_ms": 1e3 * statistics.median(times),
                     "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times), "rounds": rounds}
        log(f"  {name:8} start-to-ready median {out[name]['median_ms']:.1f} ms "
            f"(min {out[name]['min_ms']:.1f}, max {out[name]['max_ms']:.1f})")
    return out



