"""Where `make install` puts things, as the pages name them (FILES)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    bindir: str = "/usr/local/bin"
    libdir: str = "/usr/local/lib/prguard"
    unitdir: str = "/usr/local/lib/systemd/system"
    sysusersdir: str = "/usr/local/lib/sysusers.d"
    tmpfilesdir: str = "/usr/local/lib/tmpfiles.d"
