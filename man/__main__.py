"""`python -m prguard.man [--bindir=...] OUTDIR`: write prguard.8, prguard-client.1 and
prguard-audit.1 there."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from prguard.man import audit_page, client_page, prguard_page
from prguard.man.layout import Layout


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m prguard.man", description=__doc__)
    parser.add_argument("outdir", type=Path)
    for field in fields(Layout):
        parser.add_argument(f"--{field.name}", default=field.default,
                            help=f"as the pages name it (default {field.default})")
    args = parser.parse_args()
    layout = Layout(**{field.name: getattr(args, field.name) for field in fields(Layout)})
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "prguard.8").write_text(prguard_page.render(layout))
    (args.outdir / "prguard-client.1").write_text(client_page.render())
    (args.outdir / "prguard-audit.1").write_text(audit_page.render())


if __name__ == "__main__":
    main()
