"""Hostile QEMU-side connections, one per kind: the thousand-connection test and the soak
send them at random, and the test checks what the helper did with each."""

from __future__ import annotations

import socket

from prguard.client.session import pr_in_cdb, pr_out_cdb, send_with_fds

#: connect and vanish, a bad handshake, no fd, two fds, another opcode, a transfer over
#: 8192, half a CDB, a short parameter list, twenty fds, a reply never read, an fd per byte
KINDS = 11

#: What the helper does with each kind: "closed" = it hangs up on the client; "left" =
#: the client goes away first (having got the handshake, except kind 0).
EXPECTED = ["left", "closed", "closed", "closed", "closed", "closed", "left", "left",
            "closed", "left", "closed"]


def _hung_up(sock: socket.socket) -> bool:
    """Until EOF (whatever came before it is discarded); False if the socket's timeout
    passes first."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def hostile_connection(path: str, kind: int, fds: dict[str, int]) -> str:
    """One connection of `kind` (0 to KINDS - 1); `fds` names a "loop" device fd and a
    regular "file" fd to send. Returns what happened: "closed" (the helper hung up),
    "left" (the client went first), "refused" (closed before the handshake), "still
    open" (not closed within 5 s) or "timed out" (no handshake within 5 s)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    try:
        if kind == 0:
            return "left"  # connect and vanish
        if sock.recv(4) != bytes(4):
            return "refused"
        if kind == 1:
            sock.send(b"\xff\xff\xff\xff")
        else:
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
            return "left"
        elif kind == 7:
            send_with_fds(sock, pr_out_cdb(0, 24), [fds["loop"]])
            sock.send(bytes(5))  # short parameter list, then gone
            return "left"
        elif kind == 8:
            send_with_fds(sock, pr_in_cdb(), [fds["loop"]] * 20)
        elif kind == 9:
            send_with_fds(sock, pr_in_cdb(0, 8192), [fds["loop"]])  # never reads the reply
            return "left"
        elif kind == 10:
            for _ in range(40):  # one byte per message, each with an fd
                send_with_fds(sock, b"\x5e", [fds["file"]])
        return "closed" if _hung_up(sock) else "still open"
    except (BrokenPipeError, ConnectionResetError):
        return "closed"  # it hung up while we were still sending
    except TimeoutError:
        return "timed out"
    finally:
        sock.close()
