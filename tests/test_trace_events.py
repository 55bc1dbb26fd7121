"""The trace events -T offers are the ones the broker writes, and each is written."""

from __future__ import annotations

import ast

from lab.processes import REPO
from prguard.shared.trace_events import EVENTS
from prguard.trace_option import TraceSpec, help_text


def emitted() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "broker").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "emit" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                names.add(str(node.args[0].value))
    return names


def test_every_listed_event_is_emitted_and_every_emitted_event_listed() -> None:
    assert emitted() == set(EVENTS)


def test_help_lists_the_events_and_patterns_select_among_them() -> None:
    assert help_text().splitlines() == list(EVENTS)
    spec = TraceSpec()
    warnings: list[str] = []
    spec.add("prguard_client_*,-prguard_client_close,nonesuch", warnings.append)
    assert spec.enabled == {"prguard_client_connect"}
    assert warnings == [" warning: trace event 'nonesuch' does not exist"]
