"""prguard-client(1), generated from the client's own argument parser: every option, its
--help text and its note in `MAN_NOTES`, then the epilog's paragraphs. An option added
to the parser is in the page without touching this file.
"""

from __future__ import annotations

import argparse
import re

from prguard import __version__
from prguard.client import arguments
from prguard.man.roff import Page, bold, escape, italic, option

#: An epilog paragraph opening with `Heading:` becomes that section of the page.
_HEADING = re.compile(r"([A-Z][A-Za-z ]*): *")


def _tag(action: argparse.Action) -> str:
    if not action.option_strings:
        return italic(str(action.metavar or action.dest))
    value = ""
    if action.nargs != 0:
        value = str(action.metavar or action.dest.upper())
    return ", ".join(option(name, value, "=" if name.startswith("--") else " ")
                     for name in action.option_strings)


def _note_key(action: argparse.Action) -> str:
    longs = [name for name in action.option_strings if name.startswith("--")]
    return longs[0] if longs else str(action.metavar or action.dest)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    # The text --help prints (with %(default)s and the like expanded), as one paragraph.
    return " ".join(parser._get_formatter()._expand_help(action).split())


def _options(page: Page, parser: argparse.ArgumentParser) -> None:
    page.section("Options")
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = str(group.title)
        page.subsection(title[:1].upper() + title[1:])
        if group.description:
            page.paragraph(group.description)
        for action in actions:
            page.tagged(_tag(action), _help(parser, action),
                        arguments.MAN_NOTES.get(_note_key(action), ""))


def _epilog(page: Page, epilog: str) -> None:
    """Paragraphs under a `Heading:` become sections; those before the first heading
    are notes on the options. Paragraphs of indented lines are examples."""
    for number, block in enumerate(re.split(r"\n\s*\n", epilog.strip())):
        heading = _HEADING.match(block)
        if heading:
            page.section(heading.group(1))
            block = block[heading.end():]
        elif number == 0:
            page.subsection("Notes")
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and all(line.startswith("  ") for line in lines):
            page.example(line.strip() for line in lines)
        elif lines:
            page.paragraph(" ".join(line.strip() for line in lines))


def _sg_persist(page: Page, parser: argparse.ArgumentParser) -> None:
    """Every option beside sg_persist's spelling of it and what differs (a tbl table)."""
    page.section("Compared with sg_persist")
    page.paragraph("Each option as sg_persist(8) has it (same: the same letters and names) "
                   "and what differs. Beyond the options:")
    for text in arguments.SG_PERSIST_GENERAL:
        page.tagged("\\(bu", text)
    rows = []
    for action in parser._actions:
        names = (", ".join(bold(name) for name in action.option_strings)
                 or italic(str(action.metavar or action.dest)))
        equivalent = arguments.SG_PERSIST[_note_key(action)]
        words = "; ".join(text for text in (equivalent.sg_persist,
                                            equivalent.difference) if text) or "same"
        rows.append(f"{names}@T{{\n{escape(words)}\nT}}")
    page.raw(".PP", ".nh", ".TS", "tab(@) box;", "lb | lb", "l | lx.",
             "Option@In sg_persist", "_", *rows, ".TE", ".hy")


def build() -> Page:
    parser = arguments.build_parser()
    page = Page("prguard-client", 1, f"prguard {__version__}", "User Commands",
                "send one persistent reservation command through qemu-pr-helper or prguard")
    page.section("Synopsis")
    positionals = " ".join(italic(str(a.metavar or a.dest)) for a in parser._actions
                           if not a.option_strings)
    page.raw(f"{bold(arguments.PROG)} [{italic('OPTION')}]... {positionals}")
    page.section("Description")
    page.paragraph(str(parser.description))
    page.paragraph(
        "It does what QEMU does for a guest's PERSISTENT RESERVE IN or OUT: it opens the "
        "device itself, connects to the helper's unix socket (prguard(8) or "
        "qemu-pr-helper(8), the protocol is the same), answers the handshake, sends the "
        "16-byte CDB with the device's descriptor attached and, for PR OUT, the parameter "
        "list, then shows the reply decoded. The options follow sg_persist(8), so that a "
        "deployment can be checked with the commands an administrator already knows.")
    _options(page, parser)
    _epilog(page, str(parser.epilog or ""))
    _sg_persist(page, parser)
    page.section("See also")
    page.raw(", ".join(f"{bold(name)}({section})" for name, section in (
        ("prguard", 8), ("qemu-pr-helper", 8), ("sg_persist", 8))))
    return page


def render() -> str:
    # The first line asks man(1) to run tbl(1), for the table compared with sg_persist.
    return "'\\\" t\n" + build().text()
