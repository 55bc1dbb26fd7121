"""A thousand hostile connections: each is closed or answered, nobody else is held up,
and both processes end with the fds they started with."""

from __future__ import annotations

import os
import random
import socket
import time

from lab.processes import Helper, children, fd_count
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb, send_with_fds
from prguard.shared.scsi import Status


def hostile(path: str, kind: int, fds: dict[str, int]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    try:
        if kind == 0:
            return  # connect and vanish
        sock.recv(4)
        if kind == 1:
            sock.send(b"\xff\xff\xff\xff")
            return
        sock.send(bytes(4))
        if kind == 2:
            send_with_fds(sock, pr_in_cdb())  # no fd
        elif kind == 3:
            send_with_fds(sock, pr_in_cdb(), [fds["loop"], fds["file"]])
        elif kind == 4:
            send_with_fds(sock, b"\x2a" + bytes(15), [fds["loop"]])
        elif kind == 5:
            send_with_fds(sock, pr_out_cdb(0, 8193), [fds["loop"]])
        elif kind == 6:
            send_with_fds(sock, pr_in_cdb()[:7], [fds["loop"]])  # half a CDB, then gone
        elif kind == 7:
            send_with_fds(sock, pr_out_cdb(0, 24), [fds["loop"]])
            sock.send(bytes(5))  # short parameter list, then gone
        elif kind == 8:
            send_with_fds(sock, pr_in_cdb(), [fds["loop"]] * 20)
        elif kind == 9:
            send_with_fds(sock, pr_in_cdb(0, 8192), [fds["loop"]])  # never reads the reply
        elif kind == 10:
            for _ in range(40):  # one byte per message, each with an fd
                send_with_fds(sock, b"\x5e", [fds["file"]])
    except OSError:
        pass  # the helper may already have closed on us: that is the point
    finally:
        sock.close()


def test_thousand_hostile_connections_leave_no_fd_behind(prguard: Helper,
                                                         fd_zoo: dict[str, int]) -> None:
    (worker,) = children(prguard.pid)
    with Client(prguard.path) as client:
        client.request(pr_in_cdb(), fd_zoo["loop"])
    time.sleep(0.2)
    baseline = (fd_count(prguard.pid), fd_count(worker))
    rng = random.Random(1234)
    for _ in range(1000):
        hostile(prguard.path, rng.randrange(11), fd_zoo)
    deadline = time.monotonic() + 10
    while (fd_count(prguard.pid), fd_count(worker)) != baseline:
        assert time.monotonic() < deadline, (baseline, fd_count(prguard.pid), fd_count(worker))
        time.sleep(0.05)
    # A legitimate client is still served (once the hostile ones, all from this same
    # peer, are gone: the per-peer limit would otherwise count them).
    with Client(prguard.path) as client:
        assert client.request(pr_in_cdb(), fd_zoo["loop"])[0] == Status.CHECK_CONDITION
    assert prguard.proc.poll() is None
    assert os.path.exists(f"/proc/{worker}")
