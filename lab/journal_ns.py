"""Run a command with a socket of the caller's at journald's path, in a mount namespace
of its own: how the tests see what prguard sends to the journal on hosts where systemd
is not PID 1 (and without touching the host's journal where it is).

    unshare -m python -m lab.journal_ns SOCKET COMMAND...

(it re-executes itself under `unshare --mount` when not already in a new namespace)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

JOURNAL_IN_NAMESPACE = "/run/systemd/journal/socket"


def parse_datagram(data: bytes) -> dict[str, bytes]:
    """A datagram of the journal's native protocol, read back into its fields."""
    fields: dict[str, bytes] = {}
    while data:
        newline = data.index(b"\n")
        head = data[:newline]
        if b"=" in head:
            name, _, value = head.partition(b"=")
            data = data[newline + 1:]
        else:
            name = head
            (size,) = struct.unpack("<Q", data[newline + 1:newline + 9])
            value = data[newline + 9:newline + 9 + size]
            assert data[newline + 9 + size:newline + 10 + size] == b"\n"
            data = data[newline + 10 + size:]
        fields[name.decode()] = value
    return fields


def main(argv: list[str]) -> None:
    if os.environ.get("PRGUARD_TEST_JOURNAL_NS") != "1":
        os.environ["PRGUARD_TEST_JOURNAL_NS"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",
                              sys.executable, "-m", "lab.journal_ns", *argv])
    socket_path, command = argv[0], argv[1:]
    del os.environ["PRGUARD_TEST_JOURNAL_NS"]
    os.makedirs("/run/systemd", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/systemd"],
                   check=True)
    os.makedirs("/run/systemd/journal")
    open(JOURNAL_IN_NAMESPACE, "w").close()
    subprocess.run(["mount", "--bind", socket_path, JOURNAL_IN_NAMESPACE], check=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
