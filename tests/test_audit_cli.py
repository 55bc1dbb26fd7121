"""`prguard-audit verify` and `show` over files written the way the worker writes them."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from lab.processes import REPO
from prguard.audit.cli import main
from prguard.shared.audit_chain import Head, link
from prguard.shared.audit_record import (
    GENESIS,
    NEW_CHAIN,
    Answer,
    Cause,
    ClientIdentity,
    Command,
    DeviceIdentity,
    PolicyChange,
    Record,
    Start,
    Unrecorded,
)

WEB02 = ClientIdentity(pid=8319, uid=107, gid=107, unit="machine-qemu\\x2d1\\x2dweb02.scope",
                       domain="web02", pidfd=True)
WEB01 = ClientIdentity(pid=8200, uid=107, gid=107, unit="machine-qemu\\x2d2\\x2dweb01.scope",
                       domain="web01", pidfd=True)
HOST = ClientIdentity(pid=77, uid=0, gid=0, cgroup="/")
LUN = DeviceIdentity(dev="8:16", wwn="0x6001405aa11b2c3d4e5f60718293a4b5",
                     designator="naa.6001405aa11b2c3d4e5f60718293a4b5")
MAP = DeviceIdentity(dev="253:0", dm_name="mpatha", dm_uuid="mpath-36001405bb")
LOOP = DeviceIdentity(dev="7:0", diskseq=3)
PREEMPT = Command(op="PR OUT", action="PREEMPT AND ABORT", cdb="5f05" + "00" * 14,
                  param="00" * 24, type="Write Exclusive", scope=0, key="0x2", sa_key="0x1",
                  aptpl=False, all_tg_pt=False, spec_i_pt=False)
REGISTER = Command(op="PR OUT", action="REGISTER", cdb="5f00" + "00" * 14, param="00" * 24,
                   key="0x0", sa_key="0x1", aptpl=True, all_tg_pt=False, spec_i_pt=False)


def rec(time: str, kind: str, **fields: object) -> Record:
    return Record(seq=1, prev=GENESIS, time=f"2026-11-29T{time}.000000Z", kind=kind,
                  **fields)  # type: ignore[arg-type]


STORY = [
    rec("03:00:00", "start", start=Start(version="1.0", pid=41, continues=NEW_CHAIN,
                                          policy="ab" * 32)),
    rec("03:01:00", "command", phase="issuing", client=WEB01, device=LUN, command=REGISTER),
    rec("03:01:00", "command", phase="done", issued=2, duration_us=900, client=WEB01,
        device=LUN, command=REGISTER, answer=Answer(status="GOOD"),
        cause=Cause(host_status=0, driver_status=0, device_status=0)),
    rec("03:12:07", "command", phase="issuing", client=WEB02, device=LUN, command=PREEMPT),
    rec("03:12:07", "command", phase="done", issued=4, duration_us=1500, client=WEB02,
        device=LUN, command=PREEMPT, answer=Answer(status="GOOD"),
        cause=Cause(host_status=0, driver_status=0, device_status=0)),
    rec("03:20:00", "refused", client=WEB01, device=MAP, command=REGISTER,
        answer=Answer(status="CHECK CONDITION", sense="05/20/02",
                      sense_name="ILLEGAL REQUEST: access denied - no access rights"),
        cause=Cause(refused_by="policy", rule='rule 1 "db"',
                    reason='rule 1 "db" allows PR IN only')),
    rec("03:30:00", "command", phase="done", client=HOST, device=LOOP,
        command=Command(op="PR IN", action="READ KEYS", cdb="5e00" + "00" * 14),
        answer=Answer(status="CHECK CONDITION", sense="05/24/00",
                      sense_name="ILLEGAL REQUEST: invalid field in CDB"),
        cause=Cause(errno="EINVAL", host_status=0, driver_status=0, device_status=0)),
    rec("03:40:00", "policy", policy=PolicyChange(result="refused",
                                                  reason="policy.toml:3: rule 1: ...")),
    rec("03:41:00", "unrecorded", unrecorded=Unrecorded(records=3, pr_out_refused=2,
                                                        since="2026-11-29T03:35:00.000000Z",
                                                        error="ENOSPC")),
    rec("03:50:00", "command", phase="issuing", client=WEB02, device=LUN,
        command=Command(op="PR OUT", action="CLEAR", cdb="5f03" + "00" * 14,
                        param="00" * 24, key="0x2", aptpl=False, all_tg_pt=False,
                        spec_i_pt=False)),
]

SHOWN = """\
2026-11-29 03:00:00 prguard 1.0 started (worker pid 41), starting a new chain (no earlier \
record found); policy sha256 abababababab
2026-11-29 03:01:00 vm web01 (uid 107) REGISTER → 0x1 APTPL on \
wwn-0x6001405aa11b2c3d4e5f60718293a4b5 GOOD in 0.9 ms
2026-11-29 03:12:07 vm web02 (uid 107) PREEMPT AND ABORT key 0x2 → preempted 0x1 \
(Write Exclusive) on wwn-0x6001405aa11b2c3d4e5f60718293a4b5 GOOD in 1.5 ms
2026-11-29 03:20:00 vm web01 (uid 107) REGISTER → 0x1 APTPL on dm-name-mpatha REFUSED by \
policy: rule 1 "db" allows PR IN only → CHECK CONDITION 05/20/02 ILLEGAL REQUEST: access \
denied - no access rights
2026-11-29 03:30:00 pid 77 (uid 0) READ KEYS on 7:0 CHECK CONDITION 05/24/00 ILLEGAL \
REQUEST: invalid field in CDB (SG_IO EINVAL)
2026-11-29 03:40:00 policy reload refused: policy.toml:3: rule 1: ...; the previous policy \
stays
2026-11-29 03:41:00 3 record(s) could not be written since 2026-11-29T03:35:00.000000Z \
(ENOSPC); 2 PR OUT refused meanwhile
2026-11-29 03:50:00 vm web02 (uid 107) CLEAR key 0x2 on \
wwn-0x6001405aa11b2c3d4e5f60718293a4b5 OUTCOME NOT RECORDED
"""


def write(path: Path, records: list[Record], head: Head | None = None) -> Head:
    head = head or Head()
    with path.open("wb") as out:
        for record in records:
            line, head = link(record, head)
            out.write(line)
    return head


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_show_tells_the_story(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "audit.log", STORY)
    code, out, _ = run(capsys, "show", str(tmp_path / "audit.log"))
    assert code == 0
    assert out == SHOWN


@pytest.mark.parametrize(("filters", "times"), [
    (["--vm", "web02"], ["03:12:07", "03:50:00"]),
    (["--vm", "web*", "--device", "dm-name-*"], ["03:20:00"]),
    (["--device", "0x6001405aa*"], ["03:01:00", "03:12:07", "03:50:00"]),
    (["--device", "wwn-0x6001405aa11b2c3d4e5f60718293a4b5"],
     ["03:01:00", "03:12:07", "03:50:00"]),
    (["--device", "naa.6001405aa*"], ["03:01:00", "03:12:07", "03:50:00"]),
    (["--device", "7:0"], ["03:30:00"]),
    (["--device", "mpatha"], ["03:20:00"]),
    (["--since", "2026-11-29 03:12", "--until", "2026-11-29T03:40:00"],
     ["03:12:07", "03:20:00", "03:30:00"]),
    (["--since", "2026-11-30"], []),
    (["--until", "2026-11-29"], []),
])
def test_show_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      filters: list[str], times: list[str]) -> None:
    write(tmp_path / "audit.log", STORY)
    code, out, _ = run(capsys, "show", *filters, str(tmp_path / "audit.log"))
    assert code == 0
    assert [line[11:19] for line in out.splitlines()] == times


def test_show_json_prints_the_records_as_written(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "audit.log", STORY)
    written = (tmp_path / "audit.log").read_text().splitlines()
    _, out, _ = run(capsys, "show", "--json", "--vm", "web02", str(tmp_path / "audit.log"))
    assert out.splitlines() == [written[3], written[4], written[9]]


def test_verify_across_rotated_and_compressed_files(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    head = write(tmp_path / "audit.log.2", STORY[:4])
    head = write(tmp_path / "audit.log.1", STORY[4:7], head)
    with gzip.open(tmp_path / "audit.log.2.gz", "wb") as packed:
        packed.write((tmp_path / "audit.log.2").read_bytes())
    last = write(tmp_path / "audit.log", STORY[7:], head)
    code, out, _ = run(capsys, "verify", str(tmp_path / "audit.log.2.gz"),
                       str(tmp_path / "audit.log.1"), str(tmp_path / "audit.log"))
    assert code == 0
    assert f"OK: {len(STORY)} records, seq 1..{len(STORY)}" in out
    assert f"last record sha256 {last.hash}" in out
    code, out, _ = run(capsys, "verify", str(tmp_path / "audit.log.1"),
                       str(tmp_path / "audit.log"))
    assert code == 0 and "continues from records before" in out
    # the same files in the wrong order
    code, out, _ = run(capsys, "verify", str(tmp_path / "audit.log"),
                       str(tmp_path / "audit.log.1"))
    assert code == 1 and "records out of order" in out


@pytest.mark.parametrize(("tamper", "problem"), [
    (lambda lines: lines.__setitem__(2, lines[2].replace(b'"0x1"', b'"0x9"')),
     "{d}/audit.log:3: record seq 3 was changed: it is not the record {d}/audit.log:4 names "
     "as its predecessor"),
    (lambda lines: lines.__delitem__(5),
     "{d}/audit.log:6: 1 record(s) removed before it (seq 6)"),
    (lambda lines: lines.insert(5, lines.pop(4)),
     "{d}/audit.log:5: records out of order: seq 5 is at {d}/audit.log:6, after seq 6"),
])
def test_verify_names_the_first_broken_record(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              tamper: object, problem: str) -> None:
    write(tmp_path / "audit.log", STORY)
    lines = (tmp_path / "audit.log").read_bytes().splitlines(keepends=True)
    tamper(lines)  # type: ignore[operator]
    (tmp_path / "audit.log").write_bytes(b"".join(lines))
    code, out, _ = run(capsys, "verify", str(tmp_path / "audit.log"))
    assert code == 1
    assert out == f"prguard-audit: BROKEN: {problem.format(d=tmp_path)}\n"


def _rotated(tmp_path: Path) -> tuple[list[bytes], list[bytes]]:
    """STORY as logrotate leaves it: the first five records in audit.log.1, the rest in
    audit.log, one chain."""
    head = write(tmp_path / "audit.log.1", STORY[:5])
    write(tmp_path / "audit.log", STORY[5:], head)
    return ((tmp_path / "audit.log.1").read_bytes().splitlines(keepends=True),
            (tmp_path / "audit.log").read_bytes().splitlines(keepends=True))


@pytest.mark.parametrize(("tamper", "problem"), [
    (lambda old, new: old.__setitem__(-1, old[-1].replace(b'"GOOD"', b'"BUSY"')),
     "{d}/audit.log.1:5: record seq 5 was changed: it is not the record {d}/audit.log:1 "
     "names as its predecessor"),
    (lambda old, new: old.pop(), "{d}/audit.log:1: 1 record(s) removed before it (seq 5)"),
    (lambda old, new: new.pop(0), "{d}/audit.log:1: 1 record(s) removed before it (seq 6)"),
    (lambda old, new: (old.append(new.pop(0)), new.insert(0, old.pop(-2))),
     "{d}/audit.log.1:5: records out of order: seq 5 is at {d}/audit.log:1, after seq 6"),
], ids=["edited-last-of-rotated", "deleted-last-of-rotated", "deleted-first-of-new",
        "swapped-across-the-rotation"])
def test_verify_catches_tampering_across_a_rotation(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    tamper: object, problem: str) -> None:
    old, new = _rotated(tmp_path)
    assert run(capsys, "verify", str(tmp_path / "audit.log.1"),
               str(tmp_path / "audit.log"))[0] == 0
    tamper(old, new)  # type: ignore[operator]
    (tmp_path / "audit.log.1").write_bytes(b"".join(old))
    (tmp_path / "audit.log").write_bytes(b"".join(new))
    code, out, _ = run(capsys, "verify", str(tmp_path / "audit.log.1"),
                       str(tmp_path / "audit.log"))
    assert code == 1
    assert out == f"prguard-audit: BROKEN: {problem.format(d=tmp_path)}\n"


def test_verify_catches_a_rotated_file_left_out(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    head = write(tmp_path / "audit.log.2", STORY[:3])
    head = write(tmp_path / "audit.log.1", STORY[3:6], head)
    write(tmp_path / "audit.log", STORY[6:], head)
    code, out, _ = run(capsys, "verify", str(tmp_path / "audit.log.2"),
                       str(tmp_path / "audit.log"))
    assert code == 1
    assert out == (f"prguard-audit: BROKEN: {tmp_path}/audit.log:1: 3 record(s) removed "
                   "before it (seq 4..6)\n")


def test_show_reports_damaged_lines_and_goes_on(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "audit.log", STORY[:3])
    with (tmp_path / "audit.log").open("ab") as log:
        log.write(b'{"v":1,"seq":4,"pre')
    code, out, err = run(capsys, "show", str(tmp_path / "audit.log"))
    assert code == 1
    assert len(out.splitlines()) == 2
    assert f"{tmp_path}/audit.log:4: not a record" in err


def test_usage_and_read_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "verify", str(tmp_path / "missing.log"))
    assert code == 2 and "missing.log: No such file or directory" in err
    code, _, err = run(capsys, "show", "--since", "2026-02-30", "x")
    assert code == 2 and "'2026-02-30' is not a valid date" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    code, _, err = run(capsys, "verify", str(tmp_path / "bad.gz"))
    assert code == 2 and "bad.gz" in err


def test_the_console_script(tmp_path: Path) -> None:
    write(tmp_path / "audit.log", STORY)
    done = subprocess.run([str(REPO / ".venv/bin/prguard-audit"), "show", "--vm", "web02",
                           str(tmp_path / "audit.log")], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stdout.count("\n") == 2
    done = subprocess.run([str(REPO / ".venv/bin/prguard-audit"), "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "verify" in done.stdout and "show" in done.stdout
