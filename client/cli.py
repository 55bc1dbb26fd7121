"""`prguard-client`: one PERSISTENT RESERVE IN/OUT through a running helper, by hand.

It does what QEMU does for a guest: opens the device itself, connects to the helper's
socket (prguard or qemu-pr-helper: same protocol), answers the handshake, sends one CDB
with the device fd attached and, for PR OUT, the parameter list, then reads the reply.

Three parts: the command line turned into a request (arguments.py, no I/O), the
exchange with the helper (exchange.py, over session.py's client), and the reply rendered
for people or as JSON (render.py, no I/O). This file strings them together.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from prguard.client import decode
from prguard.client.arguments import PROG, UsageError, parse_options
from prguard.client.exchange import HelperError, exchange, open_device
from prguard.client.render import ExitStatus, render


def main(argv: Sequence[str]) -> int:
    try:
        options = parse_options(argv)
    except UsageError as err:
        print(f"{PROG}: error: {err} (see --help)", file=sys.stderr)
        return ExitStatus.USAGE

    def log(level: int, text: str) -> None:
        if options.verbose >= level:
            print(f"{PROG}: {text}", file=sys.stderr)

    try:
        fd = open_device(options.device, options.read_only)
        try:
            reply = exchange(options, fd, log)
        finally:
            os.close(fd)
    except HelperError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitStatus.UNREACHABLE
    log(1, f"reply: status {reply.status:#04x}, {len(reply.data)} bytes of data")
    log(2, f"sense {decode.sense_in_use(reply.sense).hex(' ') or '(none)'}")
    if reply.data:
        log(2, f"data {reply.data.hex(' ')}")
    outcome = render(options, reply)
    for line in outcome.stdout:
        print(line)
    for line in outcome.stderr:
        print(line, file=sys.stderr)
    return outcome.exit_status


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
