"""Every input a fuzzer ever crashed on stays a test (fuzz/regressions/), plus inputs that
exercise the oracles themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.oracles import channel_datagram, chunks_from, qemu_stream
from lab.processes import REPO
from prguard.client.session import pr_in_cdb
from prguard.shared.qemu_protocol import ServerConnection

REGRESSIONS = sorted((REPO / "fuzz" / "regressions").glob("*-*"))


def replay(path: Path) -> None:
    data = path.read_bytes()
    if path.name.startswith("messages-"):
        channel_datagram(data)
        return
    qemu_stream(chunks_from(data))


def test_every_saved_input_passes_its_oracle() -> None:
    assert REGRESSIONS, "fuzz/regressions holds the hand-made and found cases"
    for path in REGRESSIONS:
        replay(path)


def test_the_qemu_oracle_notices_a_lost_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: a core that forgot an fd is caught."""
    monkeypatch.setattr(ServerConnection, "take_fds", lambda self: [])
    with pytest.raises(AssertionError, match="fds lost"):
        qemu_stream([(bytes(4), 0), (pr_in_cdb(), 2)])


def test_the_qemu_oracle_accepts_a_clean_stream() -> None:
    qemu_stream([(bytes(4), 0), (pr_in_cdb(), 1), (pr_in_cdb(1), 1)])


def test_seed_corpus_round_trips() -> None:
    for seed in sorted((REPO / "fuzz" / "corpus" / "messages").glob("seed*")):
        channel_datagram(seed.read_bytes())
