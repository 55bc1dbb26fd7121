"""What the broker tells the outside about itself, every few seconds, from its event loop:
the STATUS= line, WATCHDOG=1 while the worker answers its liveness probe (see
watchdog.py), the metrics file, and the log lines the rate limit dropped.

None of it is on the request path: requests only add to `Stats`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from prguard.broker.metrics_file import MetricsFileError
from prguard.broker.notify import Notifier
from prguard.broker.stats import LastError, Stats, status_line
from prguard.broker.watchdog import Watchdog

log = logging.getLogger("prguard.broker")


class Publisher(Protocol):
    """The metrics file (broker/metrics.py), when there is one."""

    def publish(self) -> None:
        """Raises MetricsFileError."""

    def fds(self) -> tuple[int, int, int]:
        """Its directory's and its two files' fds (the policy names them)."""


class LastErrorHandler(logging.Handler):
    """Keeps the broker's latest warning or error for STATUS= (formatted only when the
    status is written, not when it is logged)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.latest: tuple[float, logging.LogRecord] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.latest = (record.created, record)

    def take(self) -> LastError | None:
        if self.latest is None:
            return None
        at, record = self.latest
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        return LastError(at, text)


class Reporter:
    def __init__(self, stats: Stats, notifier: Notifier, watchdog: Watchdog,
                 systemd_watchdog: bool, probe: Callable[[], int | None],
                 gauges: Callable[[Stats], None], publisher: Publisher | None,
                 flush_logs: Callable[[], None], last_error: LastErrorHandler) -> None:
        self._stats = stats
        self._notifier = notifier
        self._watchdog = watchdog
        self._systemd_watchdog = systemd_watchdog
        self._probe = probe
        self._gauges = gauges
        self._publisher = publisher
        self._flush_logs = flush_logs
        self._last_error = last_error
        self._publishing_failed = False

    def status(self, now: float | None = None) -> str:
        """The STATUS= line, from the numbers as they are now."""
        self._gauges(self._stats)
        latest = self._last_error.take()
        if latest is not None:
            self._stats.last_error = latest
        return status_line(self._stats, time.time() if now is None else now)

    def warm_up(self) -> None:
        """Once before lock-down: everything tick() runs, but for sending (the first
        publication also proves the directory takes the swap as the -u user)."""
        self.status()
        if self._publisher is not None:
            self._publisher.publish()

    def tick(self, now: float) -> None:
        verdict = self._watchdog.tick(now)
        if verdict.news is not None:
            log.error("%s", verdict.news)
        if verdict.send_probe:
            probe_id = self._probe()
            if probe_id is not None:
                self._watchdog.sent(probe_id, now)
        self._stats.worker_healthy = self._watchdog.healthy
        state = f"STATUS={self.status()}"
        if verdict.ping and self._systemd_watchdog:
            state += "\nWATCHDOG=1"
        self._notifier.send(state)
        self._publish()
        self._flush_logs()

    def _publish(self) -> None:
        """A file that cannot be written is worth a line, once, not a stop."""
        if self._publisher is None:
            return
        try:
            self._publisher.publish()
        except MetricsFileError as exc:
            if exc.lasting:
                log.error("%s; the metrics file is no longer updated (a restart of "
                          "prguard creates it again)", exc)
                self._publisher = None
            elif not self._publishing_failed:
                log.error("%s; the metrics file is not updated until that is fixed", exc)
            self._publishing_failed = True
            return
        if self._publishing_failed:
            log.warning("the metrics file is updated again")
            self._publishing_failed = False

    def alive(self, probe_id: int, now: float) -> None:
        news = self._watchdog.answered(probe_id, now)
        if news is not None:
            log.warning("%s", news)
            self._stats.worker_healthy = True

    def final(self) -> None:
        """On the way out: the last file says prguard is no longer serving."""
        self._stats.serving = False
        self._gauges(self._stats)
        self._publish()
        self._flush_logs()
