"""The broker's counters, their Prometheus text (by prometheus-client) and the file's
atomic publication, each on its own."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.processes import REPO
from prguard.broker import metrics
from prguard.broker.metrics_file import MetricsFile, MetricsFileError, spare_name
from prguard.broker.stats import (
    LATENCY_BUCKETS,
    LastError,
    Outcome,
    Stats,
    ago,
    device_outcome,
    sense_key,
    status_line,
)
from prguard.shared.scsi import Opcode, PrInAction, PrOutAction, Sense, SenseKey, Status

PR_IN, PR_OUT = Opcode.PERSISTENT_RESERVE_IN, Opcode.PERSISTENT_RESERVE_OUT


def busy_stats() -> Stats:
    stats = Stats(now=1_700_000_000.0)
    for _ in range(3):
        stats.request_done(PR_IN, PrInAction.READ_KEYS, Outcome.GOOD, -1, 0.0002)
    stats.request_done(PR_OUT, PrOutAction.RESERVE, Outcome.RESERVATION_CONFLICT, -1, 0.003)
    stats.request_done(PR_OUT, PrOutAction.REGISTER, Outcome.CHECK_CONDITION,
                       SenseKey.UNIT_ATTENTION, 0.02)
    stats.request_done(PR_IN, 0x1F, Outcome.REFUSED_VALIDATION, SenseKey.ILLEGAL_REQUEST,
                       0.00004)
    stats.request_done(PR_OUT, PrOutAction.CLEAR, Outcome.WORKER_LOST,
                       SenseKey.ABORTED_COMMAND, 1.5)
    stats.request_done(PR_OUT, PrOutAction.CLEAR, Outcome.WORKER_TIMEOUT,
                       SenseKey.ABORTED_COMMAND, 35.0)
    stats.connections_accepted = 9
    stats.connections_refused["max_per_peer"] += 2
    stats.connections_evicted = 1
    stats.deadline_closes["reply"] += 4
    stats.protocol_closes = 5
    stats.worker_deaths = 1
    stats.starts = 3
    stats.clients, stats.connections_open = 2, 3
    return stats


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_outcomes_and_sense_keys() -> None:
    assert device_outcome(Status.GOOD) is Outcome.GOOD
    assert device_outcome(Status.RESERVATION_CONFLICT) is Outcome.RESERVATION_CONFLICT
    assert device_outcome(Status.CHECK_CONDITION) is Outcome.CHECK_CONDITION
    assert device_outcome(0x40) is Outcome.OTHER_STATUS  # TASK ABORTED
    assert sense_key(Sense.RESET.fixed_format()) == SenseKey.UNIT_ATTENTION
    assert sense_key(bytes([0x72, 0x02]) + bytes(94)) == SenseKey.NOT_READY  # descriptor
    assert sense_key(bytes(96)) == -1
    assert sense_key(b"") == -1


def test_the_text_names_every_count() -> None:
    stats = busy_stats()
    collector = metrics.StatsCollector(stats, "9.9")
    found = samples(metrics.render(metrics.registry_for(collector)))

    def requests(command: str, action: str, outcome: str, key: str = "") -> float:
        return found[("prguard_requests_total", (("command", command), ("outcome", outcome),
                                                 ("sense_key", key),
                                                 ("service_action", action)))]

    assert requests("pr_in", "read_keys", "good") == 3
    assert requests("pr_out", "reserve", "reservation_conflict") == 1
    assert requests("pr_out", "register", "check_condition", "unit_attention") == 1
    assert requests("pr_in", "0x1f", "refused_validation", "illegal_request") == 1
    assert requests("pr_out", "clear", "worker_lost", "aborted_command") == 1
    assert requests("pr_out", "clear", "worker_timeout", "aborted_command") == 1
    # Histograms: cumulative buckets, count and sum per command.
    pr_out = {dict(labels)["le"]: value for (name, labels), value in found.items()
              if name == "prguard_request_duration_seconds_bucket"
              and ("command", "pr_out") in labels}
    assert pr_out["0.0025"] == 0 and pr_out["0.005"] == 1 and pr_out["0.025"] == 2
    assert pr_out["30"] == 3 and pr_out["60"] == 4 and pr_out["+Inf"] == 4
    assert len(pr_out) == len(LATENCY_BUCKETS) + 1
    assert found[("prguard_request_duration_seconds_count", (("command", "pr_in"),))] == 4
    assert found[("prguard_request_duration_seconds_sum", (("command", "pr_out"),))] == \
        pytest.approx(36.523)
    assert found[("prguard_clients", ())] == 2
    assert found[("prguard_connections_open", ())] == 3
    assert found[("prguard_connections_accepted_total", ())] == 9
    assert found[("prguard_connections_refused_total", (("limit", "max_per_peer"),))] == 2
    assert found[("prguard_connections_refused_total", (("limit", "max_connections"),))] == 0
    assert found[("prguard_connections_evicted_total", ())] == 1
    assert found[("prguard_deadline_closes_total", (("deadline", "reply"),))] == 4
    assert found[("prguard_protocol_closes_total", ())] == 5
    assert found[("prguard_worker_deaths_total", ())] == 1
    assert found[("prguard_worker_healthy", ())] == 1
    assert found[("prguard_starts_total", ())] == 3
    assert found[("prguard_start_time_seconds", ())] == 1_700_000_000.0
    assert found[("prguard_build_info", (("version", "9.9"),))] == 1
    assert found[("prguard_requests_in_flight", ())] == 0
    assert found[("prguard_up", ())] == 1


def test_counters_carry_over_through_the_file() -> None:
    stats = busy_stats()
    text = metrics.render(metrics.registry_for(
        metrics.StatsCollector(stats, "1")))
    assert metrics.carried_over(text) == {"prguard_starts": 3, "prguard_worker_deaths": 1}
    assert metrics.carried_over(b"") == {}
    assert metrics.carried_over(b"\xff\x00 not { metrics") == {}


def test_the_status_line() -> None:
    stats = busy_stats()
    assert stats.total_requests == 8
    assert stats.failed_requests == 5
    assert status_line(Stats(), 0.0) == "serving 0 clients, 0 requests, no errors"
    stats.last_error = LastError(1000.0, "pid 7 uid 0 gid 0: Invalid CDB, closing socket.")
    stats.clients = 1
    assert status_line(stats, 1120.0) == (
        "serving 1 client, 8 requests (5 failed), last error 2 min ago: "
        "pid 7 uid 0 gid 0: Invalid CDB, closing socket.")
    stats.worker_healthy = False
    stats.last_error = LastError(1000.0, "x" * 500)
    stats.clients = 12
    line = status_line(stats, 1003.0)
    assert line.startswith("serving 12 clients, 8 requests (5 failed), WORKER NOT "
                           "ANSWERING, last error 3 s ago: xxx")
    assert len(line) < 250 and "\n" not in line
    assert [ago(s) for s in (0, 89, 300, 7200, 86400 * 3)] == [
        "0 s", "89 s", "5 min", "2 h", "3 days"]


# -- the file ---------------------------------------------------------------------------

def test_publication_is_atomic_for_a_reader_that_never_stops(tmp_path: Path) -> None:
    path = tmp_path / "prguard.prom"
    file = MetricsFile.create(str(path), None)
    texts = (b"a" * 20000 + b"\n", b"b" * 7 + b"\n")
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(path.read_bytes())

    file.publish(texts[0])
    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(3000):
        file.publish(texts[i % 2])
    stop.set()
    thread.join()
    assert seen == set(texts)  # never empty, never half of one or a mix
    assert sorted(os.listdir(tmp_path)) == [spare_name("prguard.prom"), "prguard.prom"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_the_previous_instance_text_is_read_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    path.write_bytes(b"old\n")
    os.chmod(path, 0o600)
    file = MetricsFile.create(str(path), None)
    assert file.previous() == b"old\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    file.publish(b"new\n")
    assert path.read_bytes() == b"new\n"


@pytest.mark.parametrize("name", ["dir/", ".hidden.prom", "missing/m.prom", "link.prom"])
def test_unusable_paths_are_one_line_errors(tmp_path: Path, name: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link.prom").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MetricsFileError) as raised:
        MetricsFile.create(str(tmp_path / name), None)
    assert str(raised.value).startswith("--metrics-file ")
    assert "\n" not in str(raised.value)


def test_a_file_someone_removed_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    file = MetricsFile.create(str(path), None)
    (tmp_path / spare_name("m.prom")).unlink()
    with pytest.raises(MetricsFileError, match=r"cannot replace .*was removed") as raised:
        file.publish(b"x\n")
    assert raised.value.lasting


def test_label_values_come_from_the_one_table_of_scsi_names() -> None:
    from prguard.broker.metrics import sense_key_name, service_action_name
    assert [sense_key_name(k) for k in (-1, 0, 5, 6, 0xB, 0xC, 0xF)] == [
        "", "no_sense", "illegal_request", "unit_attention", "aborted_command",
        "reserved_0xc", "completed"]
    assert service_action_name(PR_OUT, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY) == \
        "register_and_ignore_existing_key"
    assert service_action_name(PR_IN, PrInAction.READ_FULL_STATUS) == "read_full_status"
    assert service_action_name(PR_IN, 0x1F) == "0x1f"
    assert service_action_name(PR_OUT, 0x09) == "0x09"


# -- prometheus-client without the HTTP and TLS modules ----------------------------------

def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_broker_imports_prometheus_client_without_http_and_tls() -> None:
    """What the stand-ins keep out, and that they leave nothing behind."""
    out = run_python(
        "import sys\n"
        "from prguard.broker import metrics\n"
        "from prguard.broker.stats import Stats\n"
        "text = metrics.render(metrics.registry_for(metrics.StatsCollector(Stats(), 'x')))\n"
        "print(b'prguard_up 1.0' in text)\n"
        "print(sorted(m for m in ('ssl', 'http.server', 'urllib.request', 'wsgiref', 'gzip',"
        " 'email', 'http.client') if m in sys.modules))\n"
        "import ssl; print(ssl.SSLContext.__module__)\n")
    assert out.splitlines() == ["True", "[]", "ssl"]


def test_when_the_library_needs_more_it_is_imported_the_ordinary_way() -> None:
    """A stand-in missing a name the library binds at import time (as a new version
    could need): the import fails within, everything is forgotten, and the ordinary
    import follows; the metrics render all the same."""
    out = run_python(
        "import sys\n"
        "from prguard.broker import lean_import\n"
        "lean_import.STAND_INS['ssl'] = {}\n"
        "from prguard.broker import metrics\n"
        "from prguard.broker.stats import Stats\n"
        "text = metrics.render(metrics.registry_for(metrics.StatsCollector(Stats(), 'x')))\n"
        "print(b'prguard_up 1.0' in text, 'ssl' in sys.modules,"
        " sys.modules['ssl'].__doc__.startswith('a stand-in'))\n")
    assert out.split() == ["True", "True", "False"]
