"""`prguard-client --daemon-status`: what the running prguard says about itself, without
root and without a socket of its own.

It reads what prguard publishes: the metrics file (--metrics-file, the Prometheus text
format node_exporter reads, world-readable, rewritten every few seconds) and, when
systemd runs prguard, the unit's state and its STATUS= line (`systemctl show`, which
needs no privilege). The parsing and the verdict are pure; `gather` does the reading.
"""

from __future__ import annotations

import errno as errnos
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

#: What the shipped unit passes to --metrics-file.
DEFAULT_METRICS_FILE = "/run/prguard/metrics.prom"
DEFAULT_UNIT = "prguard.service"
#: prguard rewrites the file this often; three periods without a write mean it is gone.
WRITE_INTERVAL = 5.0
STALE_AFTER = 3 * WRITE_INTERVAL


class Verdict:
    """The state a status reports, and its exit status."""

    SERVING = ("serving", 0)
    STOPPED = ("stopped", 3)
    UNHEALTHY = ("unhealthy", 4)  #: running, but its worker or its file is not answering
    UNKNOWN = ("unknown", 4)


@dataclass(frozen=True)
class Snapshot:
    """The numbers of one metrics file."""

    version: str
    up: bool
    started: float
    clients: int
    connections: int
    requests: int
    failed: int
    in_flight: int
    worker_healthy: bool
    starts: int
    worker_deaths: int
    errors: dict[str, int]


@dataclass(frozen=True)
class UnitState:
    name: str
    active_state: str
    sub_state: str
    main_pid: int
    status_text: str


@dataclass(frozen=True)
class DaemonStatus:
    metrics_file: str
    snapshot: Snapshot | None
    written: float | None  #: the file's mtime
    unit: UnitState | None
    #: why the file could not be read: (message, errno) or None
    file_error: tuple[str, int | None] | None
    now: float

    @property
    def age(self) -> float | None:
        return None if self.written is None else max(self.now - self.written, 0.0)

    @property
    def verdict(self) -> tuple[str, int]:
        unit_active = self.unit is not None and self.unit.active_state in (
            "active", "reloading", "activating", "deactivating")
        if self.unit is not None and not unit_active:
            return Verdict.STOPPED
        snap = self.snapshot
        if snap is None:
            return Verdict.UNHEALTHY if unit_active else Verdict.UNKNOWN
        if not snap.up:
            return Verdict.UNHEALTHY if unit_active else Verdict.STOPPED
        if self.age is not None and self.age > STALE_AFTER:
            return Verdict.UNHEALTHY if unit_active else Verdict.STOPPED
        return Verdict.SERVING if snap.worker_healthy else Verdict.UNHEALTHY


def parse_metrics(text: str) -> Snapshot:
    """Raises ValueError when the text is not prguard's metrics."""
    # Here, not at the top: the library takes a few tenths of a second to import, which
    # every other prguard-client command would pay.
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    version = ""
    requests = failed = 0
    errors: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "prguard_build_info":
                version = labels.get("version", "")
            elif name == "prguard_requests_total":
                requests += int(value)
                outcome = labels.get("outcome", "")
                if outcome != "good" and value:
                    failed += int(value)
                    key = labels.get("sense_key", "")
                    kind = (f"check_condition/{key or 'none'}" if outcome == "check_condition"
                            else outcome)
                    errors[kind] += int(value)
            elif name == "prguard_connections_refused_total" and value:
                errors[f"connection_refused/{labels.get('limit', '')}"] += int(value)
            elif name == "prguard_deadline_closes_total" and value:
                errors[f"deadline/{labels.get('deadline', '')}"] += int(value)
            elif not labels:
                values[name] = value
    for name, kind in (("prguard_connections_evicted_total", "connection_evicted"),
                       ("prguard_protocol_closes_total", "protocol_violation"),
                       ("prguard_worker_deaths_total", "worker_death")):
        if values.get(name):
            errors[kind] += int(values[name])
    if "prguard_start_time_seconds" not in values:
        raise ValueError("not prguard's metrics (no prguard_start_time_seconds)")
    return Snapshot(
        version=version, up=bool(values.get("prguard_up", 1)),
        started=values["prguard_start_time_seconds"],
        clients=int(values.get("prguard_clients", 0)),
        connections=int(values.get("prguard_connections_open", 0)),
        requests=requests, failed=failed,
        in_flight=int(values.get("prguard_requests_in_flight", 0)),
        worker_healthy=bool(values.get("prguard_worker_healthy", 1)),
        starts=int(values.get("prguard_starts_total", 1)),
        worker_deaths=int(values.get("prguard_worker_deaths_total", 0)),
        errors=dict(sorted(errors.items(), key=lambda item: (-item[1], item[0]))))


def parse_systemctl_show(text: str, unit: str) -> UnitState | None:
    fields = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    if fields.get("LoadState") in (None, "not-found"):
        return None
    try:
        pid = int(fields.get("MainPID", "0"))
    except ValueError:
        pid = 0
    return UnitState(unit, fields.get("ActiveState", ""), fields.get("SubState", ""), pid,
                     fields.get("StatusText", ""))


def unit_state(unit: str) -> UnitState | None:
    """The unit as systemd sees it, or None without systemd (or without the unit)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not os.path.isdir("/run/systemd/system"):
        return None
    try:
        shown = subprocess.run(
            [systemctl, "show", "--property=LoadState,ActiveState,SubState,MainPID,StatusText",
             unit], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_systemctl_show(shown.stdout, unit) if shown.returncode == 0 else None


def gather(metrics_file: str, unit: str, now: float | None = None,
           read_unit: Callable[[str], UnitState | None] = unit_state) -> DaemonStatus:
    """Read the metrics file and ask systemd about the unit."""
    snapshot: Snapshot | None = None
    written: float | None = None
    error: tuple[str, int | None] | None = None
    try:
        with open(metrics_file, encoding="utf-8", errors="replace") as f:
            written = os.fstat(f.fileno()).st_mtime
            text = f.read()
        snapshot = parse_metrics(text)
    except OSError as err:
        error = (f"cannot read {metrics_file}: {err.strerror}", err.errno)
    except ValueError as err:
        error = (f"{metrics_file}: {err}", None)
    return DaemonStatus(metrics_file, snapshot, written, read_unit(unit), error,
                        time.time() if now is None else now)


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def text_lines(status: DaemonStatus) -> list[str]:
    state, _ = status.verdict
    lines = []
    snap = status.snapshot
    unit = status.unit
    where = ""
    if unit is not None:
        where = f" ({unit.name} {unit.active_state}"
        where += f", pid {unit.main_pid})" if unit.main_pid else ")"
    if snap is None:
        lines.append(f"prguard: {state}{where}")
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.started))
        if not snap.up and status.written is not None:  # its last file, on its way out
            lines.append(f"prguard {snap.version}: {state}{where}, started {since}, "
                         f"stopped {duration(status.now - status.written)} ago after "
                         f"{duration(status.written - snap.started)}")
        else:
            lines.append(f"prguard {snap.version}: {state}{where}, started {since} "
                         f"(up {duration(status.now - snap.started)})")
        lines.append(f"  clients {snap.clients} ({snap.connections} connections), requests "
                     f"{snap.requests}, failed {snap.failed}, in flight {snap.in_flight}")
        worker = ("answering its liveness probes" if snap.worker_healthy
                  else "NOT answering its liveness probes")
        lines.append(f"  worker: {worker}; {snap.worker_deaths} worker deaths in "
                     f"{snap.starts} starts")
        if snap.errors:
            lines.append("  errors by kind: " + ", ".join(
                f"{kind} {count}" for kind, count in snap.errors.items()))
        else:
            lines.append("  errors by kind: none")
    if unit is not None and unit.status_text:
        lines.append(f"  status: {unit.status_text}")
    if status.age is not None:
        lines.append(f"  metrics file {status.metrics_file}, written "
                     f"{duration(status.age)} ago")
    return lines


def problem(status: DaemonStatus) -> str | None:
    """The one error line for a status that is not `serving`, or None."""
    state, _ = status.verdict
    if state == "serving":
        return None
    snap = status.snapshot
    if status.unit is not None and state == "stopped" and status.unit.active_state not in (
            "active", "activating", "reloading", "deactivating"):
        return f"{status.unit.name} is {status.unit.active_state}"
    if status.file_error is not None:
        return status.file_error[0]
    if snap is not None and not snap.up:
        return "prguard has stopped (its last metrics file says so)"
    if status.age is not None and status.age > STALE_AFTER:
        return (f"{status.metrics_file} was last written {duration(status.age)} ago: prguard "
                f"is not running, or hangs")
    if snap is not None and not snap.worker_healthy:
        return "the worker does not answer its liveness probes"
    return f"prguard is {state}"


def json_document(status: DaemonStatus) -> dict[str, object]:
    state, code = status.verdict
    snap = status.snapshot
    message = problem(status)
    errno = status.file_error[1] if status.file_error is not None else None
    return {
        "state": state,
        "daemon": None if snap is None else {
            "version": snap.version, "started": snap.started,
            "uptime_seconds": max(status.now - snap.started, 0.0),
            "clients": snap.clients, "connections": snap.connections,
            "requests": snap.requests, "failed_requests": snap.failed,
            "requests_in_flight": snap.in_flight, "worker_healthy": snap.worker_healthy,
            "starts": snap.starts, "worker_deaths": snap.worker_deaths,
            "errors": snap.errors},
        "metrics_file": {"path": status.metrics_file, "written": status.written,
                         "age_seconds": status.age},
        "unit": None if status.unit is None else {
            "name": status.unit.name, "active_state": status.unit.active_state,
            "sub_state": status.unit.sub_state, "main_pid": status.unit.main_pid,
            "status_text": status.unit.status_text},
        "error": None if message is None else {
            "kind": "daemon", "message": message,
            "errno": None if errno is None else errnos.errorcode.get(errno)},
        "exit_status": code,
    }
