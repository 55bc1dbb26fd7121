"""Just enough man(7) to write prguard's pages: text is escaped once, here, and the
pages are composed of the few requests below. No date in `.TH`: a rebuild of the same
source gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable


def escape(text: str) -> str:
    """Text as roff shows it literally: `-` is a minus (options stay copyable), and no
    line can be taken for a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in out.split("\n"))


def bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


def option(name: str, value: str = "", separator: str = "=") -> str:
    """`--socket=PATH` as man pages show it: the option bold, its value italic."""
    return bold(name) + (escape(separator) + italic(value) if value else "")


class Page:
    """A man page built top to bottom; `text()` is the roff source."""

    def __init__(self, name: str, section: int, source: str, manual: str,
                 summary: str) -> None:
        self._lines = [f'.TH {name.upper()} {section} "" "{source}" "{manual}"',
                       ".SH NAME", f"{escape(name)} \\- {escape(summary)}"]

    def raw(self, *lines: str) -> None:
        """Lines already in roff (built with the functions above)."""
        self._lines += lines

    def section(self, title: str) -> None:
        self._lines.append(f'.SH "{title.upper()}"')

    def subsection(self, title: str) -> None:
        self._lines.append(f'.SS "{title}"')

    def paragraph(self, text: str) -> None:
        self._lines += [".PP", escape(text)]

    def tagged(self, tag: str, *paragraphs: str) -> None:
        """An indented paragraph under `tag` (roff); further paragraphs stay indented."""
        self._lines += [".TP", tag]
        for number, text in enumerate(p for p in paragraphs if p):
            if number:
                self._lines.append(".IP")
            self._lines.append(escape(text))

    def example(self, lines: Iterable[str]) -> None:
        """Lines shown as they are (commands, file contents), indented."""
        self._lines += [".PP", ".RS 4", ".nf", *(escape(line) for line in lines), ".fi", ".RE"]

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
