"""The man pages: generated from the option tables that --help prints, checked against
what `-h` really prints, both ways, and against groff."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.processes import REPO

SCRIPTS = Path(sys.executable).parent
PAGES = {"prguard": "prguard.8", "prguard-client": "prguard-client.1",
         "prguard-audit": "prguard-audit.1"}
#: Commands whose options are spread over subcommands (each with its own -h).
SUBCOMMANDS = {"prguard-audit": ("verify", "show")}
#: An option as -h and the page's tags write it: -k, --socket (up to `=` or a space).
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    subprocess.run([sys.executable, "-m", "prguard.man", "--bindir=/opt/pg/bin",
                    "--libdir=/opt/pg/lib/prguard", "--unitdir=/opt/pg/lib/systemd/system",
                    "--sysusersdir=/opt/pg/lib/sysusers.d", str(out)],
                   cwd=REPO, check=True)
    return out


def rendered(page: Path) -> str:
    """The page as `man` shows it, in plain ASCII, without hyphenation."""
    return subprocess.run(["groff", "-t", "-man", "-Tascii", "-P-cbou", "-rHY=0", "-rLL=200n",
                           str(page)], capture_output=True, text=True, check=True).stdout


def help_options(command: str) -> set[str]:
    """Every option in the option column of `command -h` (and of each subcommand's)."""
    text = "".join(subprocess.run([str(SCRIPTS / command), *sub, "-h"], capture_output=True,
                                  text=True, check=True).stdout
                   for sub in ((), *((s,) for s in SUBCOMMANDS.get(command, ()))))
    found: set[str] = set()
    for line in text.splitlines():
        column = re.match(r"\s+(-\S.*?)(?:\s{2,}|$)", line)
        if column:
            found |= set(OPTION.findall(column.group(1)))
    return found


def sections(text: str) -> Iterator[tuple[str, list[str]]]:
    """(heading, its lines) from a rendered page, header and footer lines left out."""
    title = ""
    body: list[str] = []
    for line in text.strip("\n").splitlines()[1:-1]:
        if line and not line[0].isspace():
            yield title, body
            title, body = line, []
        else:
            body.append(line)
    yield title, body


def page_options(text: str) -> set[str]:
    """The options the page's OPTIONS section has an entry for (its tag lines)."""
    found: set[str] = set()
    for title, body in sections(text):
        if title == "OPTIONS":
            for line in body:
                if re.match(r" {7}-", line):
                    found |= set(OPTION.findall(line))
    return found


@pytest.mark.parametrize("command", PAGES)
def test_every_option_of_help_has_an_entry_in_the_page_and_the_reverse(
        pages: Path, command: str) -> None:
    in_help = help_options(command)
    assert {"-h", "--help"} <= in_help and len(in_help) > (15 if command != "prguard-audit"
                                                           else 8)
    assert page_options(rendered(pages / PAGES[command])) == in_help


@pytest.mark.parametrize("command", PAGES)
def test_pages_format_without_warnings_and_have_a_whatis_line(pages: Path,
                                                               command: str) -> None:
    page = pages / PAGES[command]
    checked = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(page)],
                             capture_output=True, text=True, check=True)
    assert checked.stderr == ""
    whatis = subprocess.run(["lexgrog", str(page)], capture_output=True, text=True)
    assert whatis.returncode == 0 and f'"{command} - ' in whatis.stdout


def test_prguard_page_has_every_section_and_the_defaults(pages: Path) -> None:
    text = rendered(pages / "prguard.8")
    titles = [title for title, _ in sections(text)]
    assert titles[1:] == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT",
                          "SIGNALS", "EXIT STATUS", "FILES", "SECURITY", "COMPATIBILITY",
                          "EXAMPLES", "SEE ALSO"]
    body = {title: "\n".join(lines) for title, lines in sections(text)}
    # qemu-pr-helper's options first, then prguard's own
    options = body["OPTIONS"]
    assert options.index("Options of qemu-pr-helper") < options.index("--socket=PATH") \
        < options.index("prguard's own options") < options.index("--sg-timeout=SECONDS")
    assert "(default '/var/run/qemu-pr-helper.sock')" in options
    assert "(default '/var/run/qemu-pr-helper.pid')" in options
    for path in ("/var/run/qemu-pr-helper.sock", "/var/run/qemu-pr-helper.pid",
                 "/opt/pg/lib/systemd/system/prguard.socket",
                 "/opt/pg/lib/sysusers.d/prguard.conf", "/opt/pg/lib/prguard"):
        assert path in body["FILES"]
    for signal in ("SIGTERM", "SIGINT", "SIGHUP"):
        assert signal in body["SIGNALS"]
    assert 'pr_helper = "/opt/pg/bin/prguard"' in body["EXAMPLES"]


def test_client_page_takes_notes_and_the_epilog_from_the_client(pages: Path) -> None:
    from prguard.client import arguments
    body = {title: " ".join(" ".join(lines).split())
            for title, lines in sections(rendered(pages / "prguard-client.1"))}
    for note in arguments.MAN_NOTES.values():
        assert " ".join(note.split()) in body["OPTIONS"]
    assert "24 RESERVATION CONFLICT" in body["EXIT STATUS"]
    assert "prguard-client --out --register --param-sark 0x1234 /dev/sdb" in body["EXAMPLES"]


def test_the_units_name_the_page() -> None:
    for unit in ("prguard.socket", "prguard.service"):
        text = (REPO / "systemd" / unit).read_text()
        assert re.search(r"^Documentation=.*\bman:prguard\(8\)", text, re.M), unit
