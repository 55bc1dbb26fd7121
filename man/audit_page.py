"""prguard-audit(1), generated from the tool's own argument parser: each command with its
options as `prguard-audit COMMAND -h` prints them."""

from __future__ import annotations

import argparse

from prguard import __version__
from prguard.audit import cli
from prguard.man.roff import Page, bold, italic, option


def _tag(action: argparse.Action) -> str:
    if not action.option_strings:
        return italic(str(action.metavar or action.dest))
    value = str(action.metavar or action.dest.upper()) if action.nargs != 0 else ""
    return ", ".join(option(name, value, "=" if name.startswith("--") else " ")
                     for name in action.option_strings)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def build() -> Page:
    parser = cli.build_parser()
    page = Page("prguard-audit", 1, f"prguard {__version__}", "User Commands",
                "check and read prguard's audit trail")
    page.section("Synopsis")
    page.raw(f"{bold(cli.PROG)} {bold('verify')} {italic('FILE')}...", ".br",
             f"{bold(cli.PROG)} {bold('show')} [{italic('OPTION')}]... {italic('FILE')}...")
    page.section("Description")
    page.paragraph(str(parser.description))
    page.paragraph(
        "prguard(8) writes one record per PERSISTENT RESERVE OUT it forwards, per request "
        "it refuses and, with --audit-reads, per PERSISTENT RESERVE IN, as one JSON line of "
        "its --audit-log file. Each record carries the SHA-256 of the record before it, "
        "across restarts and rotations, so that a record changed, removed or reordered "
        "afterwards shows. " + str(parser.epilog))
    page.section("Options")
    for action in parser._actions:
        if action.option_strings:
            page.tagged(_tag(action), str(action.help))
    for name, command in _commands(parser).items():
        page.subsection(f"{name}")
        page.paragraph(str(command.description))
        for action in command._actions:
            if action.help != argparse.SUPPRESS:
                page.tagged(_tag(action), str(action.help))
    page.section("Exit status")
    page.tagged(bold("0"), "The chain holds (verify), or the records were shown (show).")
    page.tagged(bold("1"), "verify found a record changed, removed or reordered, or show met "
                "a line that is not a record.")
    page.tagged(bold("2"), "A usage error, or a file that cannot be read.")
    page.section("Examples")
    page.example(["prguard-audit verify /var/log/prguard/audit.log.2.gz "
                  "/var/log/prguard/audit.log.1 /var/log/prguard/audit.log",
                  "prguard-audit show --vm web02 --since '2026-11-29 03:00' "
                  "/var/log/prguard/audit.log",
                  "prguard-audit show --device wwn-0x6001405aa11b2c3d4e5f60718293a4b5 "
                  "--json /var/log/prguard/audit.log | jq .answer"])
    page.section("See also")
    page.raw(", ".join(f"{bold(name)}({section})" for name, section in (
        ("prguard", 8), ("prguard-client", 1), ("journalctl", 1), ("logrotate", 8))))
    return page


def render() -> str:
    return build().text()
