"""prguard-client end to end: against a real prguard (and qemu-pr-helper) on a loop device,
where SG_IO fails in the loop driver and the helper answers CHECK CONDITION 05/24/00; and
against a scripted helper in a thread for the answers a loop device cannot give (GOOD with
data, RESERVATION CONFLICT, a helper that hangs up or never answers)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.processes import REPO, Helper
from lab.scripted_helper import Serve, good
from prguard.client.cli import main
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import ZERO_SENSE, Sense, Status

CLI = [sys.executable, "-m", "prguard.client.cli"]
ILLEGAL_FIELD = "CHECK CONDITION: ILLEGAL REQUEST, invalid field in CDB (05/24/00)"


def loop_hint(device: str) -> str:
    return (f"prguard-client: hint: {device} is a loop device, not a SCSI disk: it takes no "
            f"SCSI pass-through (SG_IO), so every PR command on it fails (the loop driver "
            f"answers SG_IO with EINVAL, sent back as 05/24/00); give the disk QEMU uses "
            f"(/dev/sdX, /dev/sgN or a multipath map)")


HANG_UP_HINT = ("prguard-client: hint: the helper closed the connection instead of "
                "answering, which is how qemu-pr-helper and prguard refuse a request they "
                "cannot take: its log says why")
CONFLICT_HINT = ("prguard-client: hint: a PR OUT that conflicts often has a key "
                 "(--param-rk) or TYPE (--prout-type) that does not match this I_T nexus' "
                 "registration or the reservation, rather than another initiator in the way")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return Result(code, out, err)


# -- against the real helpers -----------------------------------------------------------

@pytest.mark.parametrize(("argv", "title"), [
    (["--read-keys"], "READ KEYS"),
    (["--read-reservation"], "READ RESERVATION"),
    (["-c"], "REPORT CAPABILITIES"),
    (["--in", "--read-full-status", "--alloc-length", "100"], "READ FULL STATUS"),
    ([], "READ KEYS"),
    (["--out", "--register", "--param-sark", "0x1234", "--param-aptpl"], "REGISTER"),
    (["--out", "--reserve", "--param-rk", "1234", "--prout-type", "1"], "RESERVE"),
    (["-o", "--register", "--param-sark", "1", "--transport-id", "sas,5001405fa1b2c3d4"],
     "REGISTER"),
    (["-o", "--register-move", "--transport-id", "iqn.2003-01.org.example:x",
      "--relative-target-port", "2", "--unreg"], "REGISTER AND MOVE"),
    (["-o", "-x", "-S", "1", "-T", "1"], "REPLACE LOST RESERVATION"),
])
def test_loop_device_through_prguard_is_an_invalid_field_in_cdb(
        capsys: pytest.CaptureFixture[str], prguard: Helper, loop_disk: str, argv: list[str],
        title: str) -> None:
    got = run(capsys, "--socket", prguard.path, *argv, loop_disk)
    assert got.code == 5  # sg3_utils: ILLEGAL REQUEST
    assert got.error_lines == [f"prguard-client: {title}: {ILLEGAL_FIELD}", loop_hint(loop_disk)]
    assert got.stdout == ""


def test_pr_out_on_a_read_only_open_is_refused_by_the_helper(
        capsys: pytest.CaptureFixture[str], prguard: Helper, loop_disk: str) -> None:
    got = run(capsys, "--socket", prguard.path, "--readonly", "--out", "--clear", loop_disk)
    assert (got.code, got.error_lines) == (9, [  # sg3_utils: invalid operation code
        "prguard-client: CLEAR: CHECK CONDITION: ILLEGAL REQUEST, "
        "invalid command operation code (05/20/00)"])


def test_a_regular_file_is_not_a_scsi_device(capsys: pytest.CaptureFixture[str],
                                             prguard: Helper, tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_bytes(bytes(4096))
    got = run(capsys, "--socket", prguard.path, str(regular))
    assert (got.code, got.error_lines) == (11, [  # sg3_utils: ABORTED COMMAND
        "prguard-client: READ KEYS: CHECK CONDITION: ABORTED COMMAND, "
        "I/O process terminated (0b/00/06)",
        f"prguard-client: hint: {regular} is a regular file, not a SCSI disk: it takes no "
        f"SCSI pass-through (SG_IO), so every PR command on it fails; give the disk QEMU "
        f"uses (/dev/sdX, /dev/sgN or a multipath map)"])


def test_json_error_reply(capsys: pytest.CaptureFixture[str], prguard: Helper,
                          loop_disk: str) -> None:
    got = run(capsys, "--socket", prguard.path, "--json", "--read-full-status", loop_disk)
    assert got.code == 5
    hint = loop_hint(loop_disk)
    assert got.error_lines == [f"prguard-client: READ FULL STATUS: {ILLEGAL_FIELD}", hint]
    document = json.loads(got.stdout)
    assert document == {
        "device": loop_disk, "socket": prguard.path, "action": "read-full-status",
        "status": "CHECK CONDITION", "status_code": 2, "data": None, "raw_data": None,
        "sense": {"key": 5, "key_name": "ILLEGAL REQUEST", "asc": 0x24, "ascq": 0,
                  "code": "05/24/00", "description": "invalid field in CDB",
                  "format": "fixed", "deferred": False,
                  "hex": "700005000000000a00000000240000000000"},
        "error": {"kind": "scsi", "message": f"READ FULL STATUS: {ILLEGAL_FIELD}",
                  "errno": None},
        "exit_status": 5, "hints": [hint.removeprefix("prguard-client: hint: ")],
    }


def test_verbose_shows_the_bytes(capsys: pytest.CaptureFixture[str], prguard: Helper,
                                 loop_disk: str) -> None:
    got = run(capsys, "--socket", prguard.path, "-vv", "--out", "--reserve", "--param-rk", "ab",
              "-T", "3", loop_disk)
    assert got.code == 5
    assert got.error_lines == [
        "prguard-client: helper offers features 0x0; requesting none",
        "prguard-client: CDB 5f 01 03 00 00 00 00 00 18 00 00 00 00 00 00 00",
        "prguard-client: parameter list (24 bytes) 00 00 00 00 00 00 00 ab" + " 00" * 16,
        "prguard-client: reply: status 0x02, 0 bytes of data",
        "prguard-client: sense 70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 00 00 00",
        f"prguard-client: RESERVE: {ILLEGAL_FIELD}",
        loop_hint(loop_disk),
    ]


def test_the_c_helper_gives_the_same_answer(capsys: pytest.CaptureFixture[str],
                                            c_helper: Helper, loop_disk: str) -> None:
    got = run(capsys, "--socket", c_helper.path, "--read-keys", loop_disk)
    assert (got.code, got.error_lines) == (5, [f"prguard-client: READ KEYS: {ILLEGAL_FIELD}",
                                               loop_hint(loop_disk)])


def test_the_module_runs_as_a_command(prguard: Helper, loop_disk: str) -> None:
    proc = subprocess.run([*CLI, "--socket", prguard.path, "-r", loop_disk], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (5, "")
    assert proc.stderr == (f"prguard-client: READ RESERVATION: {ILLEGAL_FIELD}\n"
                           f"{loop_hint(loop_disk)}\n")


def test_help_exits_zero() -> None:
    proc = subprocess.run([*CLI, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: prguard-client")
    assert "--read-full-status" in proc.stdout and "Exit status" in proc.stdout


# -- usage errors: found before the device is opened ------------------------------------

NO_DEVICE = "/nonexistent/device"


SYNTAX, CONTRADICT = 1, 31  # sg3_utils' exit status for each kind of usage error


@pytest.mark.parametrize(("argv", "code", "text"), [
    ([], SYNTAX, "no DEVICE given"),
    (["--bogus", NO_DEVICE], SYNTAX, "unrecognized arguments: --bogus"),
    (["-d", NO_DEVICE, "/dev/other"], SYNTAX, f"DEVICE given twice: {NO_DEVICE} (--device)"),
    (["--read-keys", "--out", "--reserve", NO_DEVICE], CONTRADICT,
     "one action at a time: --read-keys and --reserve given"),
    (["-k", "-s", NO_DEVICE], CONTRADICT, "one action at a time"),
    (["--in", "--out", NO_DEVICE], CONTRADICT, "--in and --out exclude each other"),
    (["--out", NO_DEVICE], CONTRADICT, "--out needs a PR OUT action"),
    (["--register", "-S", "1", NO_DEVICE], CONTRADICT,
     "--register is a PR OUT action: give --out too"),
    (["-x", NO_DEVICE], CONTRADICT, "--replace-lost is a PR OUT action: give --out too"),
    (["--in", "--reserve", NO_DEVICE], CONTRADICT, "--reserve is a PR OUT action, not --in"),
    (["--out", "--read-keys", NO_DEVICE], CONTRADICT,
     "--read-keys is a PR IN action, not --out"),
    (["--read-keys", "--param-rk", "1", "--param-aptpl", NO_DEVICE], CONTRADICT,
     "--param-rk, --param-aptpl cannot be used with --read-keys"),
    (["--out", "--reserve", "--alloc-length", "10", NO_DEVICE], CONTRADICT,
     "--alloc-length cannot be used with --reserve"),
    (["--out", "--clear", "-m", "10", "-H", NO_DEVICE], CONTRADICT,
     "--maxlen, --hex cannot be used with --clear"),
    (["--out", "--reserve", "--unreg", NO_DEVICE], CONTRADICT,
     "--unreg cannot be used with --reserve"),
    (["--out", "--reserve", "--transport-id", "sas,1", NO_DEVICE], CONTRADICT,
     "--transport-id cannot be used with --reserve"),
    (["-o", "--register-move", "--param-alltgpt", "-X", "sas,1", "-Q", "1", NO_DEVICE],
     CONTRADICT, "--param-alltgpt cannot be used with --register-move"),
    (["-H", "--json", NO_DEVICE], CONTRADICT, "--hex and --json exclude each other"),
    (["-l", "10", "-m", "16", NO_DEVICE], CONTRADICT,
     "--alloc-length and --maxlen both set the allocation length"),
    (["--alloc-length", "2001", NO_DEVICE], SYNTAX,
     "allocation length 2001 is over 0x2000 (8192)"),
    (["--alloc-length", "lots", NO_DEVICE], SYNTAX,
     "allocation length 'lots' is not a hex number"),
    (["--alloc-length", "100x", NO_DEVICE], SYNTAX, "'100x' is not a hex number"),
    (["--maxlen", "8193", NO_DEVICE], SYNTAX, "allocation length 8193 is over 8192"),
    (["--maxlen", "9k", NO_DEVICE], SYNTAX, "allocation length 9k is over 8192"),
    (["--maxlen", "2x4096", NO_DEVICE], SYNTAX, "'2x4096' is not a number"),
    (["-o", "--register", "--param-rk", "xyz", NO_DEVICE], SYNTAX,
     "key 'xyz' is not a hex number"),
    (["-o", "--register", "--param-sark", "1" * 17, NO_DEVICE], SYNTAX,
     "does not fit in 8 bytes"),
    (["-o", "--reserve", "--prout-type", "10", NO_DEVICE], SYNTAX,
     "type 10 is over 0xf (15)"),
    (["-o", "--register-move", "--transport-id", "sas,1", NO_DEVICE], CONTRADICT,
     "--register-move needs one --transport-id and --relative-target-port"),
    (["-o", "--register-move", "--relative-target-port", "1", NO_DEVICE], CONTRADICT,
     "--register-move needs one --transport-id"),
    (["-o", "-M", "-Q", "10000", "-X", "sas,1", NO_DEVICE], SYNTAX,
     "relative target port 10000 is over 0xffff (65535)"),
    (["-o", "--register", "--transport-id", "host1", NO_DEVICE], SYNTAX,
     "unrecognised TransportID"),
    (["-o", "--register", "-X", "1,2,100", NO_DEVICE], SYNTAX, "'100' in '1,2,100' is not"),
    (["-o", "--register", *["-X", "sas,1"] * 400, NO_DEVICE], SYNTAX,
     "over the protocol's 8192"),
    (["-o", "--register", "-X", "file=/nonexistent/tids", NO_DEVICE], SYNTAX,
     "cannot read TransportIDs from /nonexistent/tids: No such file or directory"),
    (["--timeout", "0", NO_DEVICE], SYNTAX, "the timeout must be positive"),
])
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                      text: str) -> None:
    got = run(capsys, *argv)
    assert got.code == code
    assert len(got.error_lines) == 1
    assert got.error_lines[0].startswith("prguard-client: error: ")
    assert text in got.error_lines[0]
    if "--json" in argv:  # the error as a JSON document, too
        message = got.error_lines[0].removeprefix("prguard-client: error: ")
        assert json.loads(got.stdout)["error"] == {
            "kind": "usage", "errno": None, "message": message.removesuffix(" (see --help)")}
    else:
        assert got.stdout == ""


def test_usage_error_exit_status_from_the_command() -> None:
    proc = subprocess.run([*CLI, "--out", "--reserve", "--prout-type", "x", NO_DEVICE],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == SYNTAX
    assert proc.stderr.count("\n") == 1


# -- unreachable ------------------------------------------------------------------------

def test_no_helper_on_the_socket(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                 tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    got = run(capsys, "--socket", str(missing), loop_disk)
    assert (got.code, got.error_lines) == (50 + errno.ENOENT, [
        f"prguard-client: cannot connect to {missing}: No such file or directory",
        f"prguard-client: hint: no helper listens at {missing}: is prguard (or "
        f"qemu-pr-helper) running, and is this its socket (its -k; the default is "
        f"/var/run/qemu-pr-helper.sock, libvirt's per-domain helpers listen on "
        f"/var/lib/libvirt/qemu/domain-ID-NAME/pr-helper0.sock)?"])


def test_a_socket_nobody_listens_on(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                    sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    got = run(capsys, "--socket", str(path), loop_disk)
    # sg3_utils: 50 + errno, but 50 itself for errno 47 and up (ECONNREFUSED is 111)
    assert (got.code, got.error_lines) == (50, [
        f"prguard-client: cannot connect to {path}: Connection refused",
        f"prguard-client: hint: {path} is a socket nobody listens on: the helper that made "
        f"it is not running any more (the file outlives it); start the helper again"])


def test_device_that_cannot_be_opened(capsys: pytest.CaptureFixture[str],
                                      prguard: Helper) -> None:
    got = run(capsys, "--socket", prguard.path, NO_DEVICE)
    assert (got.code, got.error_lines) == (50 + errno.ENOENT, [
        f"prguard-client: cannot open {NO_DEVICE}: No such file or directory"])


# -- a scripted helper (lab/scripted_helper.py) -------------------------------------

KEYS = bytes.fromhex("00000005" "00000010" "0123456789abcdef" "00000000000000aa")
RESERVATION = bytes.fromhex("00000005" "00000010" "00000000000000aa" "00000000" "0003" "0000")
CAPABILITIES = bytes.fromhex("00081d91ea010000")
SAS_TID = bytes.fromhex("06000000" "5001405fa1b2c3d4") + bytes(12)
ISCSI_TID = bytes.fromhex("05000014") + b"iqn.2003-01.org.x:y".ljust(20, b"\0")
FULL_STATUS = (bytes.fromhex("00000009" "00000060")
               + bytes.fromhex("00000000000000aa" "00000000" "0101" "00000000" "0001" "00000018")
               + SAS_TID
               + bytes.fromhex("0000000000000bbb" "00000000" "0200" "00000000" "0002" "00000018")
               + ISCSI_TID)


@pytest.mark.parametrize(("argv", "data", "lines"), [
    (["--read-keys"], KEYS, [
        "PR generation 0x5, 2 registered reservation key(s):",
        "  0x123456789abcdef",
        "  0xaa"]),
    (["--read-keys"], bytes(8), ["PR generation 0x0, no registered reservation keys"]),
    (["--read-reservation"], RESERVATION, [
        "PR generation 0x5, reservation held:",
        "  key 0xaa",
        "  scope LU_SCOPE, type Exclusive Access (3)"]),
    (["--read-reservation"], bytes(8), ["PR generation 0x0, no reservation held"]),
    (["--report-capabilities"], CAPABILITIES, [
        "Report capabilities (length 8):",
        "  Replace Lost Reservation Capable (RLR_C): no",
        "  Compatible Reservation Handling (CRH): yes",
        "  Specify Initiator Ports Capable (SIP_C): yes",
        "  All Target Ports Capable (ATP_C): yes",
        "  Persist Through Power Loss Capable (PTPL_C): yes",
        "  Type Mask Valid (TMV): yes",
        "  Allow Commands: 1 (TEST UNIT READY allowed through Write Exclusive and "
        "Exclusive Access)",
        "  Persist Through Power Loss Active (PTPL_A): yes",
        "  Supported reservation types (mask 0xea01):",
        "    Write Exclusive (1)",
        "    Exclusive Access (3)",
        "    Write Exclusive, Registrants Only (5)",
        "    Exclusive Access, Registrants Only (6)",
        "    Write Exclusive, All Registrants (7)",
        "    Exclusive Access, All Registrants (8)"]),
    (["--read-full-status"], FULL_STATUS, [
        "PR generation 0x9, 2 registration(s):",
        "  key 0xaa",
        "    reservation holder: yes, scope LU_SCOPE, type Write Exclusive (1)",
        "    all target ports: no, relative target port 1",
        "    SAS port name 0x5001405fa1b2c3d4",
        "  key 0xbbb",
        "    reservation holder: no",
        "    all target ports: yes, relative target port 2",
        "    iSCSI name iqn.2003-01.org.x:y"]),
])
def test_decoded_answers_for_people(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                    sockdir: Path, scripted: Serve,
                                    argv: list[str], data: bytes, lines: list[str]) -> None:
    helper = scripted(good(data))
    got = run(capsys, "--socket", helper.path, *argv, loop_disk)
    assert (got.code, got.stderr) == (0, "")
    assert got.stdout.splitlines() == lines


def test_what_the_helper_receives(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                  sockdir: Path, scripted: Serve) -> None:
    helper = scripted(good())
    got = run(capsys, "--socket", helper.path, "--out", "--register", "-K", "0x11", "-S", "22",
              "--param-alltgpt", "--transport-id", "sas,5001405fa1b2c3d4", loop_disk)
    assert (got.code, got.stdout, got.stderr) == (0, "REGISTER: GOOD\n", "")
    (seen,) = helper.seen
    assert seen.cdb == bytes.fromhex("5f000000000000003400000000000000")
    assert seen.parameter_list == (bytes.fromhex("0000000000000011" "0000000000000022"
                                                 "00000000" "0c000000" "00000018") + SAS_TID)
    assert seen.rdev == os.stat(loop_disk).st_rdev
    assert seen.access_mode == os.O_RDWR


def test_readonly_sends_a_read_only_fd(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                       sockdir: Path, scripted: Serve) -> None:
    helper = scripted(good(KEYS))
    got = run(capsys, "--socket", helper.path, "--readonly", "-l", "200", loop_disk)
    assert got.code == 0
    (seen,) = helper.seen
    assert seen.access_mode == os.O_RDONLY
    assert seen.cdb == bytes.fromhex("5e000000000000020000000000000000")


def test_json_full_status(capsys: pytest.CaptureFixture[str], loop_disk: str, sockdir: Path,
                          scripted: Serve) -> None:
    helper = scripted(good(FULL_STATUS))
    got = run(capsys, "--socket", helper.path, "-s", "-j", loop_disk)
    assert (got.code, got.stderr) == (0, "")
    document = json.loads(got.stdout)
    assert {k: document[k] for k in ("action", "status", "status_code", "sense")} == {
        "action": "read-full-status", "status": "GOOD", "status_code": 0, "sense": None}
    assert document["data"] == {"generation": 9, "registrations": [
        {"key": "0xaa", "all_tg_pt": False, "reservation_holder": True, "scope": 0, "type": 1,
         "type_name": "Write Exclusive", "relative_target_port": 1,
         "transport_id": {"protocol": 6, "protocol_name": "SAS", "format_code": 0,
                          "identifier": "0x5001405fa1b2c3d4", "isid": None,
                          "hex": SAS_TID.hex()}},
        {"key": "0xbbb", "all_tg_pt": True, "reservation_holder": False, "scope": 0,
         "type": 0, "type_name": None, "relative_target_port": 2,
         "transport_id": {"protocol": 5, "protocol_name": "iSCSI", "format_code": 0,
                          "identifier": "iqn.2003-01.org.x:y", "isid": None,
                          "hex": ISCSI_TID.hex()}}]}


@pytest.mark.parametrize(("argv", "data", "expected"), [
    (["-k"], KEYS, {"generation": 5, "keys": ["0x123456789abcdef", "0xaa"]}),
    (["-r"], bytes(8), {"generation": 0, "reservation": None}),
    (["-r"], RESERVATION, {"generation": 5, "reservation": {
        "key": "0xaa", "scope": 0, "type": 3, "type_name": "Exclusive Access"}}),
    (["-c"], bytes.fromhex("0008010000000000"), {
        "length": 8, "rlr_c": False, "crh": False, "sip_c": False, "atp_c": False, "ptpl_c": True,
        "tmv": False, "allow_commands": 0, "ptpl_a": False, "type_mask": "0x0000",
        "types": []}),
])
def test_json_data(capsys: pytest.CaptureFixture[str], loop_disk: str, sockdir: Path,
                   scripted: Serve, argv: list[str], data: bytes,
                   expected: dict[str, object]) -> None:
    helper = scripted(good(data))
    got = run(capsys, "--socket", helper.path, "--json", *argv, loop_disk)
    assert got.code == 0
    assert json.loads(got.stdout)["data"] == expected


def test_json_pr_out_good(capsys: pytest.CaptureFixture[str], loop_disk: str, sockdir: Path,
                          scripted: Serve) -> None:
    helper = scripted(good())
    got = run(capsys, "--socket", helper.path, "--json", "-o", "--release", "-K", "1", "-T",
              "1", loop_disk)
    assert got.code == 0
    assert json.loads(got.stdout) == {
        "device": loop_disk, "socket": helper.path, "action": "release", "status": "GOOD",
        "status_code": 0, "sense": None, "data": None, "raw_data": None, "error": None,
        "exit_status": 0, "hints": []}


@pytest.mark.parametrize(("reply", "code", "line"), [
    (PrReply(Status.RESERVATION_CONFLICT, ZERO_SENSE), 24, "RESERVE: RESERVATION CONFLICT"),
    (PrReply(Status.BUSY, ZERO_SENSE), 26, "RESERVE: BUSY"),
    (PrReply(Status.TASK_SET_FULL, ZERO_SENSE), 27, "RESERVE: TASK SET FULL"),
    (PrReply(0x40, ZERO_SENSE), 29, "RESERVE: TASK ABORTED"),
    (PrReply(0x22, ZERO_SENSE), 99, "RESERVE: status 0x22"),
    (PrReply(Status.CHECK_CONDITION, ZERO_SENSE), 98, "RESERVE: CHECK CONDITION: no sense data"),
    (PrReply(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE.fixed_format()), 11,
     "RESERVE: CHECK CONDITION: ABORTED COMMAND, logical unit communication failure "
     "(0b/08/00)"),
    (PrReply(Status.CHECK_CONDITION, bytes([0x72, 6, 0x2A, 3]).ljust(96, b"\0")), 6,
     "RESERVE: CHECK CONDITION: UNIT ATTENTION, reservations preempted (06/2a/03)"),
    (PrReply(Status.CHECK_CONDITION, bytes([0x70, 0, 2, 0, 0, 0, 0, 10, 0, 0, 0, 0, 4, 0x0B])
             .ljust(96, b"\0")), 2,
     "RESERVE: CHECK CONDITION: NOT READY, logical unit not accessible, target port in "
     "standby state (02/04/0b)"),
    (PrReply(Status.CHECK_CONDITION, Sense.SPACE_ALLOC_FAILED.fixed_format()), 7,
     "RESERVE: CHECK CONDITION: DATA PROTECT, space allocation failed write protect "
     "(07/27/07)"),
    (PrReply(Status.CHECK_CONDITION, Sense.TARGET_FAILURE.fixed_format()), 3,
     "RESERVE: CHECK CONDITION: HARDWARE ERROR, internal target failure (04/44/00)"),
    (PrReply(Status.CHECK_CONDITION, b"\x7e" + bytes(95)), 98,
     "RESERVE: CHECK CONDITION: undecodable sense (sense response code 0x7e is neither "
     "fixed (0x70/0x71) nor descriptor format (0x72/0x73)): 7e"),
])
def test_error_replies(capsys: pytest.CaptureFixture[str], loop_disk: str, sockdir: Path,
                       scripted: Serve, reply: PrReply, code: int,
                       line: str) -> None:
    helper = scripted(reply)
    got = run(capsys, "--socket", helper.path, "--out", "--reserve", "-T", "1", loop_disk)
    hints = [CONFLICT_HINT] if reply.status == Status.RESERVATION_CONFLICT else []
    assert (got.code, got.stdout, got.error_lines) == (code, "", [f"prguard-client: {line}",
                                                                  *hints])


def test_json_reservation_conflict(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                   sockdir: Path, scripted: Serve) -> None:
    helper = scripted(PrReply(Status.RESERVATION_CONFLICT, ZERO_SENSE))
    got = run(capsys, "--socket", helper.path, "-j", "-o", "--preempt-abort", "-T", "1",
              loop_disk)
    assert got.code == 24
    assert got.error_lines == ["prguard-client: PREEMPT AND ABORT: RESERVATION CONFLICT",
                               CONFLICT_HINT]
    document = json.loads(got.stdout)
    assert (document["status"], document["status_code"], document["sense"]) == (
        "RESERVATION CONFLICT", 0x18, None)


def test_data_cut_by_a_small_allocation_length(capsys: pytest.CaptureFixture[str],
                                               loop_disk: str, sockdir: Path,
                                               scripted: Serve) -> None:
    helper = scripted(good(KEYS))
    got = run(capsys, "--socket", helper.path, "--alloc-length", "10", "--json", loop_disk)
    assert got.code == 97  # sg3_utils: a malformed response
    assert got.error_lines == [
        "prguard-client: READ KEYS data: READ KEYS (additional length 16) needs 24 bytes, "
        "only 16 returned; try a larger --alloc-length"]
    document = json.loads(got.stdout)
    assert (document["status"], document["data"], document["raw_data"]) == (
        "GOOD", None, KEYS[:16].hex())


def test_malformed_data(capsys: pytest.CaptureFixture[str], loop_disk: str, sockdir: Path,
                        scripted: Serve) -> None:
    helper = scripted(good(bytes.fromhex("0000000100000008") + bytes(8)))
    got = run(capsys, "--socket", helper.path, "--read-reservation", loop_disk)
    assert (got.code, got.stdout) == (97, "")
    assert got.error_lines == ["prguard-client: READ RESERVATION data: READ RESERVATION "
                               "additional length 8 is neither 0 nor 16"]


def test_helper_hangs_up_instead_of_replying(capsys: pytest.CaptureFixture[str],
                                             loop_disk: str, sockdir: Path,
                                             scripted: Serve) -> None:
    helper = scripted(None)
    got = run(capsys, "--socket", helper.path, "--out", "--clear", loop_disk)
    assert got.code == 99  # sg3_utils: another error, after the command was sent
    assert got.error_lines == [f"prguard-client: no usable reply from the helper on "
                               f"{helper.path}: helper closed the connection", HANG_UP_HINT]


def test_helper_that_never_answers(capsys: pytest.CaptureFixture[str], loop_disk: str,
                                   sockdir: Path, scripted: Serve) -> None:
    helper = scripted(good(), silent=True)
    got = run(capsys, "--socket", helper.path, "--timeout", "0.3", "-o", "--release",
              loop_disk)
    assert got.code == 33  # sg3_utils: command timed out
    assert got.error_lines == [
        "prguard-client: warning: --prout-type probably needs to be given",
        f"prguard-client: no answer from the helper on {helper.path} within 0.3 s",
        f"prguard-client: hint: the helper on {helper.path} did not answer within 0.3 s: it "
        f"may be stopped, waiting on a slow device, or its listen backlog full; --timeout "
        f"waits longer"]
