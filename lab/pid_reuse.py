"""A client whose pid is given to another process before prguard reads its identity.

Run as PID 1 of a new pid namespace with its own /proc (`unshare --pid --fork
--mount-proc`), where ns_last_pid makes the next fork take a chosen pid:

1. client A (in cgroup A) connects, prguard's side accepts, A exits and is reaped;
2. process B is forked with A's pid and moves itself into cgroup B;
3. the accepted connection (pid = A's pid) is identified as prguard does it (the broker's
   SO_PEERPIDFD, the worker's reading of /proc), once with the pidfd where the kernel has
   it and once as on a kernel without it;
4. a live client C (cgroup A) is identified the same two ways, as a control.

Prints one JSON object: what each identification found, and B's cgroup, which must
never be taken for A's.

    python -m lab.pid_reuse CGROUP_A CGROUP_B      (cgroup directories, as absolute paths)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

from prguard.broker.peer_pidfd import PeerGone, peer_pidfd
from prguard.worker.client_identity import boot_ticks, identify, read_proc

UCRED = struct.Struct("3i")


def child(cgroup: str, then: str, sock_path: str, ready: int) -> None:
    """Move into `cgroup`, then connect (`then` = "connect") or just wait."""
    Path(cgroup, "cgroup.procs").write_text(f"{os.getpid()}\n")
    if then == "connect":
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(sock_path)
        os.write(ready, b"x")
        client.close()  # the connection stays in the backlog / accepted
        os._exit(0)
    os.write(ready, b"x")
    time.sleep(30)
    os._exit(0)


def spawn(cgroup: str, then: str, sock_path: str) -> int:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        child(cgroup, then, sock_path, ready_w)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return pid


def both_ways(sock: socket.socket, pid: int, asked: int) -> dict[str, object]:
    """Identify the connection with the peer's pidfd and without one."""
    found: dict[str, object] = {}
    try:
        pidfd = peer_pidfd(sock)
        gone = False
    except PeerGone:
        pidfd, gone = None, True
    found["kernel_has_pidfd"] = pidfd is not None or gone
    if gone:
        found["pidfd"] = {"cgroup": None, "pidfd": True}  # what the broker then reports
    else:
        identity = identify(pid, 0, 0, pidfd, asked)
        found["pidfd"] = {"cgroup": identity.cgroup, "pidfd": identity.pidfd}
    if pidfd is not None:
        os.close(pidfd)
    identity = identify(pid, 0, 0, None, asked)
    found["start-time"] = {"cgroup": identity.cgroup, "pidfd": identity.pidfd}
    return found


def main(cgroup_a: str, cgroup_b: str) -> dict[str, object]:
    assert os.getpid() == 1, "run me as PID 1 of a new pid namespace"
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        result: dict[str, object] = {}
        for attempt in range(20):
            a_pid = spawn(cgroup_a, "connect", path)
            conn, _ = listener.accept()
            accepted = boot_ticks()
            peer_pid = UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                    UCRED.size))[0]
            os.waitpid(a_pid, 0)
            time.sleep(0.05)  # start times are in ticks: B must start ticks after accept
            Path("/proc/sys/kernel/ns_last_pid").write_text(f"{a_pid - 1}\n")
            b_pid = spawn(cgroup_b, "wait", path)
            if b_pid != a_pid:  # something else took the pid first: try again
                os.kill(b_pid, 9)
                os.waitpid(b_pid, 0)
                conn.close()
                continue
            result = {"attempts": attempt + 1, "peer_pid": peer_pid, "a_pid": a_pid,
                      "b_pid": b_pid,
                      "b_cgroup": read_proc(f"{b_pid}/cgroup") or "",
                      "reused": both_ways(conn, peer_pid, accepted)}
            os.kill(b_pid, 9)
            os.waitpid(b_pid, 0)
            conn.close()
            break
        c_ready_r, c_ready_w = os.pipe()
        c_pid = os.fork()
        if c_pid == 0:
            Path(cgroup_a, "cgroup.procs").write_text(f"{os.getpid()}\n")
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(path)
            os.write(c_ready_w, b"x")
            time.sleep(30)
            os._exit(0)
        os.read(c_ready_r, 1)
        conn, _ = listener.accept()
        result["live"] = both_ways(conn, c_pid, boot_ticks())
        os.kill(c_pid, 9)
        os.waitpid(c_pid, 0)
        return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
