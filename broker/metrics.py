"""The broker's numbers in the Prometheus text format, by prometheus-client.

A custom collector turns a snapshot of `Stats` into metric families when the file is
written (every few seconds): the request path never touches prometheus-client. The
registry is a private one, so none of the library's default collectors (which read
/proc) runs in the confined broker.

Imported by the broker only when --metrics-file is given, and without the HTTP and TLS
modules the library's package would pull in (broker/lean_import.py): it then costs the
broker about 0.7 MiB (PSS), instead of 4.3 MiB.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from itertools import accumulate

from prguard.broker.lean_import import without_servers

try:
    with without_servers():
        importlib.import_module("prometheus_client.exposition")
except (ImportError, AttributeError, TypeError):
    pass  # the library now needs more at import time: imported the ordinary way below

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from prguard.broker.metrics_file import MetricsFile
from prguard.broker.stats import LATENCY_BUCKETS, Stats
from prguard.shared.scsi import Opcode, PrInAction, PrOutAction
from prguard.shared.scsi_names import SENSE_KEY_NAMES, action_name

#: Counters that continue from one instance to the next through the file itself.
CARRIED = ("prguard_starts", "prguard_worker_deaths")


def command_name(opcode: int) -> str:
    return "pr_in" if opcode == Opcode.PERSISTENT_RESERVE_IN else "pr_out"


def service_action_name(opcode: int, action: int) -> str:
    """`read_keys`, `register_and_move`, ...; an undefined one as `0x1f`."""
    names = PrInAction if opcode == Opcode.PERSISTENT_RESERVE_IN else PrOutAction
    if action not in names._value2member_map_:
        return f"{action:#04x}"
    return label(action_name(opcode == Opcode.PERSISTENT_RESERVE_OUT, action))


def label(name: str) -> str:
    """A name people read as a label value: "ILLEGAL REQUEST" -> "illegal_request"."""
    return name.lower().replace(" ", "_").replace("(", "").replace(")", "")


def sense_key_name(key: int) -> str:
    """"illegal_request", ...; "" for no sense key."""
    return label(SENSE_KEY_NAMES[key]) if 0 <= key < len(SENSE_KEY_NAMES) else ""


class StatsCollector(Collector):
    def __init__(self, stats: Stats, version: str) -> None:
        self._stats = stats
        self._version = version

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        info = GaugeMetricFamily("prguard_build_info", "prguard's version (always 1)",
                                 labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        yield GaugeMetricFamily("prguard_up", "1 while prguard serves; 0 in the last file "
                                "it writes on its way out", value=int(stats.serving))
        yield GaugeMetricFamily("prguard_start_time_seconds",
                                "When this prguard started (Unix time)", value=stats.started)
        yield CounterMetricFamily("prguard_starts", "prguard starts with this metrics file, "
                                  "this one included", value=stats.starts)
        requests = CounterMetricFamily(
            "prguard_requests", "PERSISTENT RESERVE IN/OUT requests answered, by command, "
            "service action and outcome (sense key for CHECK CONDITION and refusals)",
            labels=["command", "service_action", "outcome", "sense_key"])
        for (opcode, action, outcome, key), count in sorted(stats.requests.items()):
            requests.add_metric([command_name(opcode), service_action_name(opcode, action),
                                 outcome, sense_key_name(key)], count)
        yield requests
        latency = HistogramMetricFamily(
            "prguard_request_duration_seconds", "Time from a request's last byte read to "
            "its reply sent, by command", labels=["command"])
        for opcode, histogram in sorted(stats.latency.items()):
            bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]
            latency.add_metric([command_name(opcode)],
                               list(zip(bounds, accumulate(histogram.counts), strict=True)),
                               histogram.total)
        yield latency
        yield GaugeMetricFamily("prguard_requests_in_flight",
                                "Requests read and not yet answered", value=stats.in_flight)
        yield GaugeMetricFamily("prguard_clients", "Client processes (SO_PEERCRED pids) "
                                "connected", value=stats.clients)
        yield GaugeMetricFamily("prguard_connections_open", "Client connections open",
                                value=stats.connections_open)
        yield CounterMetricFamily("prguard_connections_accepted", "Client connections "
                                  "accepted", value=stats.connections_accepted)
        refused = CounterMetricFamily("prguard_connections_refused", "Connections closed at "
                                      "once for a limit", labels=["limit"])
        for limit in ("max_connections", "max_per_peer"):
            refused.add_metric([limit], stats.connections_refused[limit])
        yield refused
        yield CounterMetricFamily("prguard_connections_evicted", "Connections closed in their "
                                  "handshake to make room", value=stats.connections_evicted)
        deadline = CounterMetricFamily("prguard_deadline_closes", "Connections closed for "
                                       "missing a deadline", labels=["deadline"])
        for kind in ("message", "reply"):
            deadline.add_metric([kind], stats.deadline_closes[kind])
        yield deadline
        yield CounterMetricFamily("prguard_protocol_closes", "Connections closed for a "
                                  "protocol violation", value=stats.protocol_closes)
        yield CounterMetricFamily("prguard_worker_deaths", "Workers lost (they end the "
                                  "instance; systemd starts the next)",
                                  value=stats.worker_deaths)
        yield GaugeMetricFamily("prguard_worker_healthy", "1 while the worker answers its "
                                "liveness probes", value=int(stats.worker_healthy))


class Publisher:
    """The metrics file rewritten from a fresh snapshot of the numbers."""

    def __init__(self, file: MetricsFile, collector: StatsCollector) -> None:
        self._file = file
        self._registry = registry_for(collector)

    def publish(self) -> None:
        """Raises MetricsFileError."""
        self._file.publish(render(self._registry))

    def fds(self) -> tuple[int, int, int]:
        return self._file.fds()


def registry_for(collector: StatsCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (what node_exporter's textfile collector reads)."""
    return generate_latest(registry)


def carried_over(previous: bytes) -> dict[str, float]:
    """The CARRIED counters of a previous instance's file (start-up, before lock-down);
    what cannot be parsed counts as absent."""
    found: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(previous.decode("utf-8", "replace")):
            if family.name in CARRIED and family.samples:
                found[family.name] = family.samples[0].value
    except (ValueError, TypeError, IndexError):
        return {}
    return found
