"""prguard-client's options as sg_persist has them: spellings and aliases, number bases,
-V, -H, -d, -y and SG_PERSIST_IN_RDONLY, TransportIDs from a file; checked by what a
scripted helper receives and what the command prints. And the option table the man page
shows: every option has its sg_persist row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.processes import REPO
from lab.scripted_helper import Serve, good
from prguard.client import arguments
from prguard.client.cli import main
from prguard.man import client_page

CLI = [sys.executable, "-m", "prguard.client.cli"]
KEYS = bytes.fromhex("00000005" "00000010" "0123456789abcdef" "00000000000000aa")
NO_KEYS = bytes.fromhex("00000007" "00000000")
SAS = bytes.fromhex("06000000" "5001405fa1b2c3d4") + bytes(12)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def allocation_length(cdb: bytes) -> int:
    return int.from_bytes(cdb[7:9], "big")


@pytest.mark.parametrize(("argv", "length"), [
    (["-l", "2000"], 0x2000),  # hex, as sg_persist reads it: CDB 20 00, not 07 d0
    (["--alloc-length=0x1f0"], 0x1F0),
    (["--alloc_length", "100"], 0x100),  # sg_persist's underscore spelling
    (["-m", "2000"], 2000),  # decimal
    (["--maxlen=8k"], 8192),
    (["-m", "0x100"], 0x100),
    (["-m", "100h"], 0x100),
    (["-m", "1kB"], 1000),
    (["-m", "2b"], 1024),
    ([], 8192),  # the default, as sg_persist's
])
def test_allocation_length_bases(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                 scripted: Serve, argv: list[str], length: int) -> None:
    helper = scripted(good(NO_KEYS))
    code, _, err = run(capsys, "--socket", helper.path, *argv, loop_disk)
    assert (code, err) == (0, "")
    (seen,) = helper.seen
    assert seen.cdb[:2] == bytes([0x5E, 0x00]) and allocation_length(seen.cdb) == length


@pytest.mark.parametrize(("argv", "action"), [
    (["-k"], 0), (["--read-keys"], 0), (["-r"], 1), (["--read_reservation"], 1),
    (["-c"], 2), (["-s"], 3), (["--read-full-status"], 3), (["--read-status"], 3),
    (["--in", "--read-status"], 3),
])
def test_pr_in_actions_and_aliases(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                   scripted: Serve, argv: list[str], action: int) -> None:
    helper = scripted(good(bytes.fromhex("0008000000000000")))  # valid for all four
    code, _, _ = run(capsys, "--socket", helper.path, *argv, loop_disk)
    (seen,) = helper.seen
    assert (code, seen.cdb[1]) == (0, action)


@pytest.mark.parametrize(("argv", "cdb", "parameters"), [
    (["-o", "-x", "-S", "abc", "-T", "5"], "5f080500000000001800000000000000",
     "0000000000000000" "0000000000000abc" "00000000" "00000000"),
    (["--out", "-z", "--param_sark", "abc", "--prout_type", "8"],
     "5f080800000000001800000000000000",
     "0000000000000000" "0000000000000abc" "00000000" "00000000"),
    (["-o", "--replace-lost", "-K", "0", "-S", "1", "-T", "1"],
     "5f080100000000001800000000000000",
     "0000000000000000" "0000000000000001" "00000000" "00000000"),
    (["-o", "-M", "-K", "aa", "-S", "bb", "-T", "1", "-Q", "10", "-X", "sas,5001405fa1b2c3d4",
      "-U", "-Z"], "5f070100000000003000000000000000",
     "00000000000000aa" "00000000000000bb" "00" "03" "0010" "00000018" + SAS.hex()),
    (["-o", "-G", "--param-sark=1", "--transport-id=6,0,0,0,50,1,40,5f,a1,b2,c3,d4"],
     "5f000000000000003400000000000000",
     "0000000000000000" "0000000000000001" "00000000" "08000000" "00000018" + SAS.hex()),
    (["-o", "-I", "-S", "2", "-Y"], "5f060000000000001800000000000000",
     "0000000000000000" "0000000000000002" "00000000" "04000000"),
])
def test_pr_out_as_sg_persist_builds_it(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                        scripted: Serve, argv: list[str], cdb: str,
                                        parameters: str) -> None:
    helper = scripted(good())
    code, out, err = run(capsys, "--socket", helper.path, *argv, loop_disk)
    assert code == 0 and err == "" and out.endswith(": GOOD\n")
    (seen,) = helper.seen
    assert (seen.cdb.hex(), seen.parameter_list.hex()) == (cdb, parameters)


def test_transport_ids_from_a_file_and_stdin(loop_disk: str, scripted: Serve,
                                             tmp_path: Path) -> None:
    tids = tmp_path / "tids"
    tids.write_text("# initiators\n\n  sas,5001405fa1b2c3d4\n"
                    "iqn.2003-01.org.x:y  # the other one\n")
    for source, stdin in ((f"file={tids}", None), ("-", tids.read_text())):
        helper = scripted(good())
        proc = subprocess.run([*CLI, "--socket", helper.path, "-o", "-G", "-S", "1", "-X",
                               source, loop_disk], cwd=REPO, capture_output=True, text=True,
                              input=stdin, timeout=30)
        assert (proc.returncode, proc.stderr) == (0, "")
        (seen,) = helper.seen
        iscsi = bytes.fromhex("05000014") + b"iqn.2003-01.org.x:y".ljust(20, b"\0")
        assert seen.parameter_list[24:] == (len(SAS + iscsi).to_bytes(4, "big") + SAS + iscsi)


def test_a_bad_line_in_a_transport_id_file(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    tids = tmp_path / "tids"
    tids.write_text("sas,5001405fa1b2c3d4\nsas,zz\n")
    code, out, err = run(capsys, "-o", "-G", "-X", f"file={tids}", "/dev/null")
    assert (code, out) == (1, "")
    assert err == (f"prguard-client: error: {tids} line 2: SAS address 'zz' is not a hex "
                   f"number (see --help)\n")


def test_device_as_an_option(capsys: pytest.CaptureFixture[str], loop_disk: str,
                             scripted: Serve) -> None:
    helper = scripted(good(NO_KEYS))
    code, out, _ = run(capsys, "--socket", helper.path, f"--device={loop_disk}")
    (seen,) = helper.seen
    assert (code, seen.rdev) == (0, os.stat(loop_disk).st_rdev)
    assert out == "PR generation 0x7, no registered reservation keys\n"


@pytest.mark.parametrize(("argv", "environ", "mode"), [
    ([], {}, os.O_RDWR),
    (["-y"], {}, os.O_RDONLY),
    ([], {"SG_PERSIST_IN_RDONLY": "1"}, os.O_RDONLY),
    (["-yy"], {"SG_PERSIST_IN_RDONLY": "1"}, os.O_RDWR),
    (["-o", "-C"], {"SG_PERSIST_IN_RDONLY": "1"}, os.O_RDWR),  # PR IN only, as sg_persist
])
def test_read_only_open(loop_disk: str, scripted: Serve, argv: list[str],
                        environ: dict[str, str], mode: int) -> None:
    helper = scripted(good(NO_KEYS) if "-C" not in argv else good())
    env = {k: v for k, v in os.environ.items() if k != "SG_PERSIST_IN_RDONLY"} | environ
    proc = subprocess.run([*CLI, "--socket", helper.path, *argv, loop_disk], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (seen,) = helper.seen
    assert seen.access_mode == mode


@pytest.mark.parametrize("argv", [["-V"], ["--version"], ["-V", "-k"], ["--vers"]])
def test_version(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    from importlib import metadata
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (0, f"prguard-client (prguard) {metadata.version('prguard')}\n",
                                "")


def test_no_inquiry_is_taken_and_changes_nothing(capsys: pytest.CaptureFixture[str],
                                                 loop_disk: str, scripted: Serve) -> None:
    helper = scripted(good(KEYS))
    code, out, _ = run(capsys, "--socket", helper.path, "-n", "-k", loop_disk)
    assert code == 0
    assert out.splitlines() == ["PR generation 0x5, 2 registered reservation key(s):",
                                "  0x123456789abcdef", "  0xaa"]


def test_type_zero_warns_as_sg_persist_does(capsys: pytest.CaptureFixture[str],
                                            loop_disk: str, scripted: Serve) -> None:
    helper = scripted(good())
    code, out, err = run(capsys, "--socket", helper.path, "-o", "-R", "-K", "1", loop_disk)
    assert (code, out) == (0, "RESERVE: GOOD\n")
    assert err == "prguard-client: warning: --prout-type probably needs to be given\n"


# -- -H: sg_persist's hex -------------------------------------------------------------------

FULL = (bytes.fromhex("00000009" "00000030")
        + bytes.fromhex("00000000000000aa" "00000000" "0101" "00000000" "0001" "00000018")
        + SAS)


@pytest.mark.parametrize(("argv", "data", "lines"), [
    (["-k", "-H"], KEYS, [
        "  PR generation=0x5, Additional length=16",
        " 00     01 23 45 67 89 ab cd ef  00 00 00 00 00 00 00 aa"]),
    (["-k", "-HH"], KEYS, [
        " 00     00 00 00 05 00 00 00 10  01 23 45 67 89 ab cd ef",
        " 10     00 00 00 00 00 00 00 aa"]),
    (["-k", "-HHH"], KEYS, [
        "00 00 00 05 00 00 00 10  01 23 45 67 89 ab cd ef",
        "00 00 00 00 00 00 00 aa"]),
    (["-k", "-H"], NO_KEYS, ["  PR generation=0x7, Additional length=0"]),
    (["-k", "-H", "-l", "10"], KEYS[:16], [
        "  PR generation=0x5, Additional length too large=16, truncate",
        " 00     01 23 45 67 89 ab cd ef"]),
    (["-s", "-HH"], FULL, [
        " 00     00 00 00 09 00 00 00 30  00 00 00 00 00 00 00 aa",
        " 10     00 00 00 00 01 01 00 00  00 00 00 01 00 00 00 18",
        " 20     06 00 00 00 50 01 40 5f  a1 b2 c3 d4 00 00 00 00",
        " 30     00 00 00 00 00 00 00 00"]),
    (["-c", "-H"], bytes.fromhex("00081d91ea010000"), [
        " 00     00 08 1d 91 ea 01 00 00"]),
])
def test_hex_as_sg_persist_prints_it(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                     scripted: Serve, argv: list[str], data: bytes,
                                     lines: list[str]) -> None:
    helper = scripted(good(data))
    code, out, err = run(capsys, "--socket", helper.path, *argv, loop_disk)
    assert (code, err) == (0, "")
    assert out.splitlines() == lines


def test_hex_of_capabilities_checks_their_length(capsys: pytest.CaptureFixture[str],
                                                 loop_disk: str, scripted: Serve) -> None:
    helper = scripted(good(bytes.fromhex("000a1d91ea0100000000")))
    code, out, err = run(capsys, "--socket", helper.path, "-c", "-H", loop_disk)
    assert (code, out) == (97, "")  # as sg_persist: a malformed response
    assert err == "prguard-client: REPORT CAPABILITIES data: length is not 8\n"


# -- the table the man page shows -----------------------------------------------------------

def option_keys() -> list[str]:
    keys = []
    for action in arguments.build_parser()._actions:
        longs = [name for name in action.option_strings if name.startswith("--")]
        keys.append(longs[0] if longs else str(action.metavar))
    return keys


def test_every_option_has_its_sg_persist_row_and_no_row_is_left_over() -> None:
    assert sorted(option_keys()) == sorted(arguments.SG_PERSIST)


def test_the_man_page_table_shows_every_option_with_its_difference() -> None:
    page = client_page.render()
    assert page.startswith("'\\\" t\n")  # man runs tbl for it
    table = page[page.index(".TS"):page.index(".TE")]
    for key, equivalent in arguments.SG_PERSIST.items():
        name = key.replace("-", "\\-") if key.startswith("-") else key
        assert name in table, key
        words = equivalent.difference or equivalent.sg_persist
        assert words.split()[0].replace("-", "\\-") in table
    rows = table.count("T{")
    assert rows == len(option_keys())
    rendered = subprocess.run(["groff", "-t", "-man", "-Tascii", "-P-cbou", "-rLL=200n"],
                              input=page, capture_output=True, text=True, check=True).stdout
    assert "sg_persist's --help names it -x but takes only -z" in " ".join(rendered.split())
