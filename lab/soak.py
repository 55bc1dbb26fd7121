"""Soak: many clients mixing valid and hostile traffic against one running prguard.

    python -m lab.soak SOCKET DEVICE SECONDS [CLIENTS]

All clients are threads of one process, i.e. one peer: run the helper with
--max-connections-per-peer above CLIENTS + 20. Asserts that every valid request was
answered and that the fd count, RSS and thread count of both processes stayed flat;
prints a one-line summary. Used by `make soak`
(2 minutes) and, shorter, by the test suite.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field

from lab.hostile import KINDS, hostile_connection
from lab.processes import children, fd_count, proc_status
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.errors import QemuProtocolError

RSS_SLACK_KIB = 8 * 1024


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    valid_sent: int = 0
    valid_answered: int = 0
    hostile: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    fds: tuple[int, int]
    rss_kib: tuple[int, int]
    threads: tuple[int, int]


def sample(broker: int, worker: int) -> Sample:
    def rss(pid: int) -> int:
        return int(proc_status(pid)["VmRSS"].split()[0])

    def threads(pid: int) -> int:
        return int(proc_status(pid)["Threads"])

    return Sample((fd_count(broker), fd_count(worker)), (rss(broker), rss(worker)),
                  (threads(broker), threads(worker)))


def client_loop(path: str, device: str, until: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    fds = {"loop": os.open(device, os.O_RDWR), "file": os.open("/proc/self/stat", os.O_RDONLY)}
    client: Client | None = None
    try:
        while time.monotonic() < until:
            if rng.random() < 0.3:
                hostile_connection(path, rng.randrange(KINDS), fds)
                with tally.lock:
                    tally.hostile += 1
                continue
            if client is None:
                try:
                    client = Client(path, timeout=30)
                except (OSError, QemuProtocolError) as exc:
                    with tally.lock:
                        tally.failures.append(f"valid client not served: {exc!r}")
                    continue
            cdb, data = rng.choice([(pr_in_cdb(0, 24), b""), (pr_in_cdb(1, 8192), b""),
                                    (pr_out_cdb(0, 24), bytes(24)), (pr_in_cdb(7), b"")])
            with tally.lock:
                tally.valid_sent += 1
            try:
                reply = client.request(cdb, fds[rng.choice(["loop", "file"])], data)
            except (OSError, QemuProtocolError) as exc:
                with tally.lock:
                    tally.failures.append(f"valid request unanswered: {exc!r}")
                client = None
                continue
            with tally.lock:
                tally.valid_answered += 1
            if reply.status != 2:
                with tally.lock:
                    tally.failures.append(f"unexpected reply status {reply.status}")
    finally:
        if client is not None:
            client.close()
        for fd in fds.values():
            os.close(fd)


def run_clients(path: str, device: str, seconds: float, clients: int, seed: int,
                tally: Tally) -> None:
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(path, device, until, seed + i, tally))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)  # let the helper finish closing what the clients left


def soak(path: str, broker: int, device: str, seconds: float, clients: int = 50
         ) -> tuple[Tally, Sample, Sample]:
    """A warm-up round (allocator and caches settle), then the measured round."""
    (worker,) = children(broker)
    tally = Tally()
    run_clients(path, device, min(5.0, seconds / 4), clients, 0, tally)
    before = sample(broker, worker)
    run_clients(path, device, seconds, clients, 1000, tally)
    return tally, before, sample(broker, worker)


def check(tally: Tally, before: Sample, after: Sample) -> list[str]:
    problems = list(tally.failures[:5])
    if tally.valid_answered != tally.valid_sent:
        problems.append(f"{tally.valid_sent - tally.valid_answered} valid requests unanswered")
    if after.fds != before.fds:
        problems.append(f"fd counts moved: {before.fds} -> {after.fds}")
    if after.threads != before.threads:
        problems.append(f"thread counts moved: {before.threads} -> {after.threads}")
    if any(a - b > RSS_SLACK_KIB for a, b in zip(after.rss_kib, before.rss_kib, strict=True)):
        problems.append(f"RSS grew: {before.rss_kib} -> {after.rss_kib} KiB")
    return problems


def main(argv: list[str]) -> int:
    path, device, seconds = argv[1], argv[2], float(argv[3])
    clients = int(argv[4]) if len(argv) > 4 else 50
    pid = int(argv[5]) if len(argv) > 5 else 0
    if not pid:
        raise SystemExit("usage: python -m lab.soak SOCKET DEVICE SECONDS CLIENTS BROKER_PID")
    tally, before, after = soak(path, pid, device, seconds, clients)
    problems = check(tally, before, after)
    print(f"soak: {seconds:g} s, {clients} clients, {tally.valid_answered}/{tally.valid_sent} "
          f"valid requests answered, {tally.hostile} hostile connections; fds {after.fds}, "
          f"threads {after.threads}, RSS {before.rss_kib} -> {after.rss_kib} KiB")
    for problem in problems:
        print(f"soak: FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
