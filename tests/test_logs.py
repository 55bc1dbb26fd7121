"""Logging: one line each, rate-limited for floods, never blocking on errors."""

from __future__ import annotations

import logging

import pytest

from prguard import logs


def record(level: int, text: str) -> logging.LogRecord:
    return logging.LogRecord("prguard.broker", level, __file__, 1, text, None, None)


def test_a_flood_of_warnings_is_limited_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    now = [1000.0]
    monkeypatch.setattr(logs, "line", lines.append)
    monkeypatch.setattr("prguard.logs.time.monotonic", lambda: now[0])
    handler = logs.StderrHandler("prguard")
    for i in range(1000):
        handler.emit(record(logging.WARNING, f"No file descriptor in request. {i}"))
    assert len(lines) == logs.BURST
    handler.emit(record(logging.ERROR, "the worker exited"))  # errors always get through
    assert lines[-2:] == ["prguard: 800 log lines suppressed (rate limit)",
                          "prguard: the worker exited"]
    now[0] += 1.0  # a second later: RATE more lines
    for _ in range(100):
        handler.emit(record(logging.WARNING, "again"))
    assert lines.count("prguard: again") == int(logs.RATE)
