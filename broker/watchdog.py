"""Whether the broker may tell systemd it is alive (WATCHDOG=1): pure decisions.

systemd restarts a unit whose WATCHDOG=1 stops for WatchdogSec=. The broker sends it
from its event loop, so a loop that hangs stops it; and only while the worker is known to
serve: the worker answers a liveness probe sent over the channel. A probe is received
like a request, by whichever worker thread is waiting on the channel, and answered by
that thread at once, without touching a device. Hence the two cases the watchdog must
tell apart:

- One device that hangs its SG_IO holds the threads running commands for it, at most
  --sg-per-device of the --sg-threads: the other threads still take probes (and
  requests for other devices), the worker is healthy, nothing restarts. The requests to
  that device are answered LUN COMMUNICATION FAILURE once the worker deadline passes.
- A worker none of whose threads takes the probe for the whole worker deadline
  (--sg-timeout plus a grace) serves nobody: stopped, every thread stuck in the kernel,
  the interpreter wedged. Threads that are merely busy with slow SG_IO calls come back
  within the SG_IO timeout, so only a probe older than the worker deadline counts. The
  broker then stops sending WATCHDOG=1, says why, and systemd restarts the pair.

The probe runs whether or not systemd watches: `prguard_worker_healthy` and STATUS=
show the same verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Seconds between probes (and between WATCHDOG=1 when systemd asks for none sooner).
PROBE_PERIOD = 5.0


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """WatchdogSec= in seconds when systemd watches this process (sd_watchdog_enabled:
    WATCHDOG_USEC set, and WATCHDOG_PID, if set, naming this process); else None."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 1e6


def tick_period(interval: float | None) -> float:
    """How often the broker's periodic work runs: every PROBE_PERIOD, or often enough to
    send WATCHDOG=1 three times per WatchdogSec."""
    return PROBE_PERIOD if interval is None else min(PROBE_PERIOD, interval / 3)


@dataclass
class Verdict:
    send_probe: bool  #: send a new probe now
    ping: bool  #: send WATCHDOG=1 now
    #: a line to log, when the verdict changed (None otherwise)
    news: str | None = None


class Watchdog:
    """The probe in flight and the verdict. `patience`: the worker deadline."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.probe_id: int | None = None
        self.sent_at = 0.0
        self.healthy = True

    def tick(self, now: float) -> Verdict:
        """Called from the broker's event loop: a loop that hangs never gets here."""
        if self.probe_id is None:
            return Verdict(send_probe=True, ping=self.healthy)
        waited = now - self.sent_at
        if waited <= self.patience:
            return Verdict(send_probe=False, ping=self.healthy)
        if self.healthy:
            self.healthy = False
            return Verdict(False, False, f"the worker has not answered a liveness probe for "
                                         f"{waited:.0f} s: not telling systemd it is alive "
                                         f"(WatchdogSec= restarts the service)")
        return Verdict(False, False)

    def sent(self, probe_id: int, now: float) -> None:
        self.probe_id = probe_id
        self.sent_at = now

    def answered(self, probe_id: int, now: float) -> str | None:
        """A probe answer came; the line to log if the worker was unhealthy."""
        if probe_id != self.probe_id:
            return None
        self.probe_id = None
        if self.healthy:
            return None
        self.healthy = True
        return (f"the worker answers its liveness probe again, after {now - self.sent_at:.0f}"
                f" s")
