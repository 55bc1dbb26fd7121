"""`prguard-client`: one PERSISTENT RESERVE IN/OUT through a running helper, by hand, with
sg_persist's options and exit status.

It does what QEMU does for a guest: opens the device itself, connects to the helper's
socket (prguard or qemu-pr-helper: same protocol), answers the handshake, sends one CDB
with the device fd attached and, for PR OUT, the parameter list, then reads the reply.

The parts: the command line (arguments.py, numbers.py) turned into a command (command.py,
no I/O), the exchange with the helper (exchange.py, over session.py's client), hints for
what went wrong (hints.py), and what to print with the exit status (render.py,
exit_status.py, json_output.py, hexdump.py; no I/O); daemon_status.py for --daemon-status.
This file strings them together.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata

from prguard.client import daemon_status, decode, hints
from prguard.client.arguments import PROG, UsageError, wants_json
from prguard.client.command import DaemonStatusCommand, PrCommand, ShowVersion, parse
from prguard.client.exchange import Failure, run
from prguard.client.render import (
    Outcome,
    daemon_status_outcome,
    failure_outcome,
    reply_outcome,
    usage_outcome,
)


def version() -> str:
    try:
        return metadata.version("prguard")
    except metadata.PackageNotFoundError:
        return "unknown"


def pr_command(command: PrCommand) -> Outcome:
    def log(level: int, text: str) -> None:
        if command.verbose >= level:
            print(f"{PROG}: {text}", file=sys.stderr)

    result = run(command, log)
    if isinstance(result, Failure):
        return failure_outcome(command, result)
    log(1, f"reply: status {result.status:#04x}, {len(result.data)} bytes of data")
    log(2, f"sense {decode.sense_in_use(result.sense).hex(' ') or '(none)'}")
    if result.data:
        log(2, f"data {result.data.hex(' ')}")
    facts = (hints.device_facts(command.device)
             if hints.symptom_of_no_pass_through(result) else None)
    found = hints.for_reply(command, result, facts)
    return reply_outcome(command, result, found)


def main(argv: Sequence[str]) -> int:
    try:
        command = parse(argv)
    except UsageError as err:
        outcome = usage_outcome(err, wants_json(argv))
    else:
        if isinstance(command, ShowVersion):
            outcome = Outcome(0, [f"{PROG} (prguard) {version()}"], [])
        elif isinstance(command, DaemonStatusCommand):
            outcome = daemon_status_outcome(
                command, daemon_status.gather(command.metrics_file, command.unit))
        else:
            outcome = pr_command(command)
    for line in outcome.stdout:
        print(line)
    for line in outcome.stderr:
        print(line, file=sys.stderr)
    return outcome.exit_status


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
