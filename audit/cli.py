"""`prguard-audit`: check and read prguard's audit trail.

    prguard-audit verify FILE...     is the hash chain unbroken across these files?
    prguard-audit show [FILTERS] FILE...   the records for people (or --json)

Files are given oldest first (`audit.log.2.gz audit.log.1 audit.log`); compressed
rotations (.gz) are read as they are. Exit status: 0 when the chain holds (verify) or
the records were shown, 1 when verify finds a break, 2 for a usage or read error.
"""

from __future__ import annotations

import argparse
import calendar
import fnmatch
import gzip
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prguard import __version__
from prguard.shared import audit_render as render
from prguard.shared.audit_chain import Where, verify
from prguard.shared.audit_record import Record, RecordError, decode
from prguard.shared.vpd import by_id_names

PROG = "prguard-audit"
EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


class ReadError(Exception):
    """A file that cannot be read."""


def lines_of(paths: Sequence[str]) -> Iterator[tuple[Where, bytes]]:
    """Every line of every file, in order, with its newline (the last line of a file
    may lack it: a cut record)."""
    for path in paths:
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as stream:
                for number, line in enumerate(stream, 1):
                    yield Where(path, number), line
        except (OSError, EOFError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ReadError(f"{path}: {reason}") from None


# -- time filters -----------------------------------------------------------------------

_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?Z?$")


def parse_time(text: str) -> str:
    """A UTC time as `2026-11-29`, `2026-11-29 03:12` or `2026-11-29T03:12:07`, turned into
    the records' own spelling (which sorts as time does)."""
    match = _TIME.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a UTC time like 2026-11-29, 2026-11-29 03:12 or "
            "2026-11-29T03:12:07")
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
    try:
        stamp = calendar.timegm((year, month, day, hour, minute, second))
        exact = time.gmtime(stamp)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a valid date") from None
    if (exact.tm_year, exact.tm_mon, exact.tm_mday) != (year, month, day):
        raise argparse.ArgumentTypeError(f"'{text}' is not a valid date")
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", exact)


@dataclass(frozen=True)
class Filters:
    devices: tuple[str, ...] = ()
    vms: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None

    def keep(self, record: Record) -> bool:
        if self.since is not None and record.time < self.since:
            return False
        if self.until is not None and record.time >= self.until:
            return False
        if self.vms:
            domain = record.client.domain if record.client else None
            if domain is None or not any(fnmatch.fnmatchcase(domain, p) for p in self.vms):
                return False
        if self.devices:
            device = record.device
            if device is None:
                return False
            names = [device.dev, *(n for n in (device.wwn, device.designator, device.dm_name)
                                   if n), *by_id_names(device.wwn, device.dm_name,
                                                       device.dm_uuid)]
            if not any(fnmatch.fnmatchcase(name, p) for p in self.devices for name in names):
                return False
        return True


# -- commands ---------------------------------------------------------------------------

def run_verify(paths: Sequence[str]) -> int:
    report = verify(lines_of(paths))
    files = " ".join(paths)
    if not report.ok:
        print(f"{PROG}: BROKEN: {report.problem}")
        return EXIT_BROKEN
    if not report.records:
        print(f"{files}: OK: no records")
        return EXIT_OK
    print(f"{files}: OK: {report.records} records, seq {report.first_seq}..{report.last_seq}; "
          f"the chain {report.beginning}")
    print(f"last record sha256 {report.last_hash} (compare with a copy kept elsewhere, "
          "e.g. PRGUARD_HASH in the journal)")
    return EXIT_OK


def run_show(paths: Sequence[str], filters: Filters, as_json: bool) -> int:
    """Records for people; an `issuing` record is held until its `done` arrives (one
    line at the outcome) and shown as OUTCOME NOT RECORDED if none does."""
    pending: dict[int, Record] = {}
    damaged = 0
    for where, raw in lines_of(paths):
        try:
            record = decode(raw)
        except RecordError as exc:
            print(f"{PROG}: {where}: not a record ({exc}); run verify", file=sys.stderr)
            damaged += 1
            continue
        if not filters.keep(record):
            continue
        if as_json:
            sys.stdout.write(raw.decode("ascii", "replace").rstrip("\n") + "\n")
            continue
        if record.phase == "issuing":
            pending[record.seq] = record
            continue
        issued = pending.pop(record.issued, None) if record.issued is not None else None
        print(render.line(record, issued))
    for record in pending.values():
        print(render.line(record))
    return EXIT_BROKEN if damaged else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check and read prguard's audit trail (--audit-log).",
        epilog="Files are read oldest first; .gz files are decompressed. Times are UTC.")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "verify", help="check that the records form one unbroken hash chain",
        description="Report the first record that was changed, removed or reordered; "
                    "exit 1 if there is one.")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="audit files, oldest first (a chain may span rotations)")
    show = commands.add_parser(
        "show", help="print the records for people",
        description="One line per request: when, which VM, what, on which LU, the answer.")
    show.add_argument("files", nargs="+", metavar="FILE", help="audit files, oldest first")
    show.add_argument("--device", action="append", default=[], metavar="GLOB",
                      help="only this device: a WWN (0x...), a by-id name (wwn-0x..., "
                           "dm-name-...), a dm name or major:minor; repeatable")
    show.add_argument("--vm", action="append", default=[], metavar="GLOB",
                      help="only requests from this libvirt domain; repeatable")
    show.add_argument("--since", type=parse_time, metavar="TIME",
                      help="only records at or after this UTC time (2026-11-29 03:00)")
    show.add_argument("--until", type=parse_time, metavar="TIME",
                      help="only records before this UTC time")
    show.add_argument("--json", action="store_true",
                      help="print the matching records as they are (JSON lines)")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        if options.command == "verify":
            return run_verify(options.files)
        filters = Filters(tuple(options.device), tuple(options.vm), options.since,
                          options.until)
        return run_show(options.files, filters, options.json)
    except ReadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `| head`
        return EXIT_OK


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
