"""Every input a fuzzer ever crashed on stays a test (fuzz/regressions/), plus inputs that
exercise the oracles themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.oracles import channel_datagram, chunks_from, encode_chunks, qemu_stream
from lab.processes import REPO
from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.qemu_protocol import ServerConnection

REGRESSIONS = sorted((REPO / "fuzz" / "regressions").glob("*-*"))
QEMU_REGRESSIONS = [path for path in REGRESSIONS if path.name.startswith("qemu-")]
QEMU_SEEDS = sorted((REPO / "fuzz" / "corpus" / "qemu").iterdir())


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


def test_hand_made_inputs_decode_to_the_chunks_they_were_made_from() -> None:
    chunks = [(bytes(4), 0), (pr_out_cdb(0, 24), 1), (bytes(24), 3), (b"", 0)]
    assert chunks_from(encode_chunks(chunks)) == chunks


def test_saved_qemu_inputs_make_the_core_give_fds_back() -> None:
    """Each saved QEMU-protocol input sends fds that the core must return for closing
    (with the handshake, two on one CDB, with the parameter list, a CDB cut short): the
    oracle's fd accounting is exercised, not only its absence of crashes."""
    assert QEMU_REGRESSIONS
    for path in QEMU_REGRESSIONS:
        given, _, returned = qemu_stream(chunks_from(path.read_bytes()))
        assert given and returned, path.name


def test_saved_qemu_inputs_catch_a_core_that_forgets_fds(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(ServerConnection, "take_fds", lambda self: [])
    for path in QEMU_REGRESSIONS:
        with pytest.raises(AssertionError, match="fds lost"):
            replay(path)


def test_qemu_seed_corpus_holds_whole_requests() -> None:
    """The fuzzer starts from valid conversations: each seed gets requests with fds
    through the core, so mutations start deep in the protocol."""
    assert QEMU_SEEDS
    for seed in QEMU_SEEDS:
        given, handed, returned = qemu_stream(chunks_from(seed.read_bytes()))
        assert handed and sorted(handed) == sorted(given) and returned == [], seed.name
