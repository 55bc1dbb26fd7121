"""What the running pair publishes about itself: the metrics file (and what carries over
to the next instance), the STATUS= line, and prguard-client --daemon-status reading both
without root."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.systemd_like import Service, start
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb, send_with_fds
from prguard.shared.errors import QemuProtocolError

CLIENT = str(Path(sys.executable).parent / "prguard-client")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metrics_dir(sockdir: Path) -> Iterator[Path]:
    """A directory the -u user may write to (it swaps the file with its spare there)."""
    path = sockdir / "metrics"
    path.mkdir()
    shutil.chown(path, "nobody", "nogroup")
    os.chmod(sockdir, 0o755)
    yield path


def samples(path: Path) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def requests(found: Samples, **labels: str) -> float:
    return sum(value for (name, have), value in found.items()
               if name == "prguard_requests_total"
               and all((key, val) in have for key, val in labels.items()))


def wait_for(path: Path, condition: str, predicate: object, timeout: float = 20.0
             ) -> Samples:
    """The file's samples once `predicate(samples)` holds (it is rewritten every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = samples(path) if path.exists() else {}
        if found and predicate(found):  # type: ignore[operator]
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{condition}: {found}")
        time.sleep(0.2)


def start_with_metrics(sockdir: Path, metrics_dir: Path, *extra: str) -> Service:
    return start(sockdir, ("-u", "nobody", "-g", "nogroup", "--metrics-file",
                           str(metrics_dir / "prguard.prom"), *extra))


def test_the_metrics_file_counts_requests_connections_and_closes(
        sockdir: Path, metrics_dir: Path, fd_zoo: dict[str, int]) -> None:
    path = metrics_dir / "prguard.prom"
    service = start_with_metrics(sockdir, metrics_dir, "--client-timeout=1",
                                 "--max-connections-per-peer=2")
    try:
        with Client(service.socket_path) as client:
            for _ in range(3):  # the device (a loop device) answers 05/24/00
                client.request(pr_in_cdb(), fd_zoo["loop"])
            client.request(pr_in_cdb(2), fd_zoo["file"])  # broker: not a SCSI device
            client.request(pr_out_cdb(0, 24), fd_zoo["loop_ro"], bytes(24))  # read-only
            with Client(service.socket_path), pytest.raises(QemuProtocolError):
                Client(service.socket_path, timeout=2).request(pr_in_cdb(), fd_zoo["loop"])
        time.sleep(0.3)  # the two connections' slots are free again
        with Client(service.socket_path) as client:  # INQUIRY: a protocol violation
            send_with_fds(client.sock, b"\x12" + bytes(15), [fd_zoo["loop"]])
            assert client.sock.recv(200) == b""
        with socket.socket(socket.AF_UNIX) as stall:  # half a CDB, then nothing
            stall.connect(service.socket_path)
            stall.recv(4)
            stall.sendall(bytes(4))
            send_with_fds(stall, b"\x5e\x00", [fd_zoo["loop"]])
            stall.settimeout(5)
            assert stall.recv(200) == b""  # closed at the message deadline
        found = wait_for(path, "six requests counted",
                         lambda f: requests(f) == 5 and f[("prguard_deadline_closes_total",
                                                           (("deadline", "message"),))] == 1)
        assert requests(found, service_action="read_keys", outcome="check_condition",
                        sense_key="illegal_request") == 3
        assert requests(found, service_action="report_capabilities",
                        outcome="refused_validation", sense_key="aborted_command") == 1
        assert requests(found, command="pr_out", service_action="register",
                        outcome="refused_validation", sense_key="illegal_request") == 1
        assert found[("prguard_connections_refused_total", (("limit", "max_per_peer"),))] == 1
        assert found[("prguard_protocol_closes_total", ())] == 1
        assert found[("prguard_connections_accepted_total", ())] == 4
        assert found[("prguard_request_duration_seconds_count", (("command", "pr_in"),))] == 4
        assert found[("prguard_up", ())] == 1
        assert found[("prguard_worker_healthy", ())] == 1
        # Read as nobody, as any operator may.
        status = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", CLIENT,
             "--daemon-status", "--metrics-file", str(path), "--unit", "prguard-test.service"],
            capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status
        assert "requests 5, failed 5" in status.stdout
        assert "errors by kind: check_condition/illegal_request 3, refused_validation 2, " \
               "connection_refused/max_per_peer 1, deadline/message 1, protocol_violation 1" \
               in status.stdout
        assert service.stop() == 0
        assert samples(path)[("prguard_up", ())] == 0  # the last file says it stopped
        assert subprocess.run([CLIENT, "--daemon-status", "--metrics-file", str(path)],
                              capture_output=True, timeout=30).returncode == 3
    finally:
        service.close()


def test_starts_and_worker_deaths_carry_over_to_the_next_instance(
        sockdir: Path, metrics_dir: Path) -> None:
    path = metrics_dir / "prguard.prom"
    first = start_with_metrics(sockdir, metrics_dir)
    try:
        os.kill(first.worker(), signal.SIGKILL)
        assert first.proc.wait(10) == 1
        found = samples(path)
        assert (found[("prguard_worker_deaths_total", ())], found[("prguard_up", ())]) == (1, 0)
    finally:
        first.close()
    second = start_with_metrics(sockdir, metrics_dir)
    try:
        found = wait_for(path, "the second instance's file",
                         lambda f: f[("prguard_up", ())] == 1)
        assert found[("prguard_starts_total", ())] == 2
        assert found[("prguard_worker_deaths_total", ())] == 1
        assert second.stop() == 0
    finally:
        second.close()


def test_status_names_clients_requests_and_the_last_error(
        sockdir: Path, fd_zoo: dict[str, int]) -> None:
    service = start(sockdir)
    try:
        first = service.wait_notification("STATUS=")
        assert first == "STATUS=serving 0 clients, 0 requests, no errors"
        with Client(service.socket_path) as client:
            client.request(pr_in_cdb(), fd_zoo["loop"])
            send_with_fds(client.sock, b"\x12" + bytes(15), [fd_zoo["loop"]])
            assert client.sock.recv(200) == b""
        with Client(service.socket_path) as client:
            client.request(pr_in_cdb(), fd_zoo["loop"])
            status = service.wait_notification("STATUS=serving 1 client, 2 requests", 15)
        assert re.fullmatch(
            rf"STATUS=serving 1 client, 2 requests \(2 failed\), last error \d+ s ago: pid "
            rf"{os.getpid()} uid 0 gid 0: Invalid CDB, closing socket\.", status), status
        assert service.stop() == 0
    finally:
        service.close()


def test_metrics_file_problems_at_start_are_one_line(sockdir: Path) -> None:
    """A directory the -u user cannot write to: said at once, and nothing is served."""
    root_only = sockdir / "root-only"
    root_only.mkdir(mode=0o755)
    service = start(sockdir, ("-u", "nobody", "-g", "nogroup", "--metrics-file",
                              str(root_only / "prguard.prom")), ready=False)
    try:
        assert service.proc.wait(20) == 1
        assert service.stderr_text() == (
            f"prguard: cannot replace {root_only}/prguard.prom: Permission denied\n")
    finally:
        service.close()


def test_a_metrics_file_removed_while_serving_is_one_line_and_serving_goes_on(
        sockdir: Path, metrics_dir: Path, fd_zoo: dict[str, int]) -> None:
    """Under its filter the broker cannot create the file again: it says so once, stops
    writing it (and never publishes into a file nobody can see), and serves on."""
    path = metrics_dir / "prguard.prom"
    service = start_with_metrics(sockdir, metrics_dir)
    try:
        (metrics_dir / ".prguard.prom.next").unlink()
        time.sleep(6)  # a report or more
        with Client(service.socket_path) as client:
            assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2
        time.sleep(6)
        assert service.stop() == 0
        assert service.stderr_text() == (
            f"prguard: cannot replace {path}: it or its spare .prguard.prom.next was "
            "removed; the metrics file is no longer updated (a restart of prguard creates "
            "it again)\n")
    finally:
        service.close()
