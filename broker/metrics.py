"""The broker's numbers in the Prometheus text format, by prometheus-client.

A custom collector turns a snapshot of `Stats` into metric families when the file is
written (every few seconds): the request path never touches prometheus-client. The
registry is a private one, so none of the library's default collectors (which read
/proc) runs in the confined broker.

Imported by the broker only when --metrics-file is given: the library costs about
2.5 MiB and 0.1 s to import, which a broker without metrics does not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from prguard.broker.stats import (
    LATENCY_BUCKETS,
    Stats,
    command_name,
    sense_key_name,
    service_action_name,
)

#: Counters that continue from one instance to the next through the file itself.
CARRIED = ("prguard_starts", "prguard_worker_deaths")


@dataclass(frozen=True)
class Gauges:
    """What the broker reports about its present state at each write."""

    clients: int
    connections_open: int


class StatsCollector(Collector):
    def __init__(self, stats: Stats, version: str, gauges: Callable[[], Gauges]) -> None:
        self._stats = stats
        self._version = version
        self._gauges = gauges

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
        for (opcode, action, outcome, key), count in sorted(
                stats.requests.items(), key=lambda item: (item[0][0], item[0][1],
                                                          item[0][2].value, item[0][3])):
            requests.add_metric([command_name(opcode), service_action_name(opcode, action),
                                 outcome.value, sense_key_name(key)], count)
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
        gauges = self._gauges()
        yield GaugeMetricFamily("prguard_clients", "Client processes (SO_PEERCRED pids) "
                                "connected", value=gauges.clients)
        yield GaugeMetricFamily("prguard_connections_open", "Client connections open",
                                value=gauges.connections_open)
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
