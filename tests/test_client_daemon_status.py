"""prguard-client --daemon-status: what the running prguard publishes, read without root
(its metrics file; its unit's state and STATUS= through systemctl where systemd runs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from prguard.broker import metrics
from prguard.broker.metrics_file import MetricsFile
from prguard.broker.stats import Outcome, Stats
from prguard.client import daemon_status
from prguard.client.daemon_status import DaemonStatus, UnitState, parse_systemctl_show
from prguard.shared.scsi import Opcode, PrInAction, PrOutAction, SenseKey

CLIENT = str(Path(sys.executable).parent / "prguard-client")
SCHEMA = json.loads(resources.files("prguard.client").joinpath(
    "daemon_status.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
NO_UNIT = "prguard-test-no-such.service"


def write_metrics(path: Path, *, up: bool = True, healthy: bool = True,
                  started: float | None = None) -> Stats:
    stats = Stats(now=time.time() - 3725 if started is None else started)
    for _ in range(40):
        stats.request_done(Opcode.PERSISTENT_RESERVE_IN, PrInAction.READ_KEYS, Outcome.GOOD,
                           -1, 0.0003)
    stats.request_done(Opcode.PERSISTENT_RESERVE_OUT, PrOutAction.RESERVE,
                       Outcome.RESERVATION_CONFLICT, -1, 0.002)
    stats.request_done(Opcode.PERSISTENT_RESERVE_OUT, PrOutAction.REGISTER,
                       Outcome.CHECK_CONDITION, SenseKey.UNIT_ATTENTION, 0.002)
    stats.request_done(Opcode.PERSISTENT_RESERVE_OUT, PrOutAction.REGISTER,
                       Outcome.CHECK_CONDITION, SenseKey.UNIT_ATTENTION, 0.002)
    stats.connections_refused["max_per_peer"] += 1
    stats.deadline_closes["message"] += 2
    stats.serving = up
    stats.worker_healthy = healthy
    stats.starts = 2
    stats.clients, stats.connections_open = 3, 4
    file = MetricsFile.create(str(path), None)
    file.publish(metrics.render(metrics.registry_for(metrics.StatsCollector(
        stats, "1.2.3"))))
    return stats


def client(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [CLIENT, "--daemon-status", "--unit", NO_UNIT, *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.fixture
def published() -> Iterator[Path]:
    """In a directory anyone may enter, as /run/prguard is."""
    directory = Path(tempfile.mkdtemp(prefix="pgd", dir="/tmp"))
    os.chmod(directory, 0o755)
    path = directory / "metrics.prom"
    write_metrics(path)
    yield path
    shutil.rmtree(directory)


def test_status_of_a_serving_prguard_read_as_nobody(published: Path) -> None:
    """The file is world-readable and no socket is opened: an unprivileged user sees it."""
    result = client("--metrics-file", str(published), user="nobody")
    assert result.returncode == 0, result
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("prguard 1.2.3: serving, started ")
    assert lines[0].endswith("(up 1 h 2 min)")
    assert lines[1:4] == [
        "  clients 3 (4 connections), requests 43, failed 3, in flight 0",
        "  worker: answering its liveness probes; 0 worker deaths in 2 starts",
        "  errors by kind: check_condition/unit_attention 2, deadline/message 2, "
        "connection_refused/max_per_peer 1, reservation_conflict 1"]
    assert lines[4].startswith(f"  metrics file {published}, written ")


def test_json_is_one_document_valid_for_its_schema(published: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    result = client("--metrics-file", str(published), "--json")
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    VALIDATOR.validate(doc)
    assert doc["state"] == "serving" and doc["error"] is None and doc["unit"] is None
    daemon = doc["daemon"]
    assert (daemon["version"], daemon["clients"], daemon["connections"],
            daemon["requests"], daemon["failed_requests"]) == ("1.2.3", 3, 4, 43, 3)
    assert daemon["errors"] == {"check_condition/unit_attention": 2, "deadline/message": 2,
                                "connection_refused/max_per_peer": 1,
                                "reservation_conflict": 1}
    assert 3720 < daemon["uptime_seconds"] < 3800
    assert doc["metrics_file"]["path"] == str(published)
    assert 0 <= doc["metrics_file"]["age_seconds"] < 60


@pytest.mark.parametrize(("setup", "code", "message"), [
    ("stale", 3, "{path} was last written 2 d 0 h ago: prguard is not running, or hangs"),
    ("stopped", 3, "prguard has stopped (its last metrics file says so)"),
    ("unhealthy", 4, "the worker does not answer its liveness probes"),
    ("missing", 4, "cannot read {path}: No such file or directory"),
    ("garbage", 4, "{path}: not prguard's metrics (no prguard_start_time_seconds)"),
])
def test_states_other_than_serving_exit_non_zero_with_one_line(
        tmp_path: Path, setup: str, code: int, message: str) -> None:
    path = tmp_path / "metrics.prom"
    if setup in ("stale", "stopped", "unhealthy"):
        write_metrics(path, up=setup != "stopped", healthy=setup != "unhealthy")
    if setup == "stale":
        past = time.time() - 2 * 86400 - 1800  # a duration whose text a slow run keeps
        os.utime(path, (past, past))
    if setup == "garbage":
        path.write_text("something_else 1\n")
    result = client("--metrics-file", str(path))
    assert result.returncode == code
    assert result.stderr == f"prguard-client: {message.format(path=path)}\n"
    if setup == "stopped":
        assert re.search(r"^prguard 1\.2\.3: stopped, started .*, stopped 0 s ago after "
                         r"1 h 2 min$", result.stdout, re.M), result.stdout
    doc = json.loads(client("--metrics-file", str(path), "--json").stdout)
    VALIDATOR.validate(doc)
    assert doc["exit_status"] == code
    assert doc["error"]["message"] == message.format(path=path)
    assert doc["error"]["errno"] == ("ENOENT" if setup == "missing" else None)


def test_the_unit_state_and_status_line_come_from_systemctl_show() -> None:
    shown = ("LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4242\n"
             "StatusText=serving 12 clients, 4821 requests, last error 2 min ago: x\n")
    unit = parse_systemctl_show(shown, "prguard.service")
    assert unit == UnitState("prguard.service", "active", "running", 4242,
                             "serving 12 clients, 4821 requests, last error 2 min ago: x")
    assert parse_systemctl_show("LoadState=not-found\nActiveState=inactive\n", "x") is None


def test_verdicts_combine_the_unit_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.prom"
    write_metrics(path)
    active = UnitState("prguard.service", "active", "running", 7, "serving 3 clients")
    inactive = UnitState("prguard.service", "inactive", "dead", 0, "")

    def status(unit: UnitState | None, file: Path, now_offset: float = 0) -> DaemonStatus:
        return daemon_status.gather(str(file), "prguard.service", time.time() + now_offset,
                                    read_unit=lambda name: unit)

    assert status(active, path).verdict == ("serving", 0)
    lines = daemon_status.text_lines(status(active, path))
    assert "(prguard.service active, pid 7)" in lines[0]
    assert "  status: serving 3 clients" in lines
    assert status(inactive, path).verdict == ("stopped", 3)
    assert daemon_status.problem(status(inactive, path)) == "prguard.service is inactive"
    assert status(active, path, now_offset=60).verdict == ("unhealthy", 4)  # not written
    assert status(active, tmp_path / "none").verdict == ("unhealthy", 4)
    assert status(None, tmp_path / "none").verdict == ("unknown", 4)


def test_daemon_status_takes_no_device_or_pr_option(published: Path) -> None:
    for extra in (["/dev/sda"], ["--read-keys"], ["--out"], ["-H"]):
        result = client("--metrics-file", str(published), *extra)
        assert result.returncode == 31, (extra, result)
        assert result.stderr.startswith("prguard-client: error: --daemon-status takes no ")
    result = subprocess.run([CLIENT, "--metrics-file", str(published), "/dev/null"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 31
    assert "--metrics-file and --unit go with --daemon-status" in result.stderr
