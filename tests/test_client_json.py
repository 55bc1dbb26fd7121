"""--json: one document on stdout whatever happens, errors included, and every one of
them valid against the JSON Schema kept with the client (client/output.schema.json)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lab.processes import Helper
from lab.scripted_helper import Serve, good
from prguard.client.cli import main
from prguard.client.json_output import schema_text
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import ZERO_SENSE, Sense, Status

SCHEMA = json.loads(schema_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

KEYS = bytes.fromhex("00000005" "00000010" "0123456789abcdef" "00000000000000aa")
RESERVATION = bytes.fromhex("00000005" "00000010" "00000000000000aa" "00000000" "0003" "0000")
CAPABILITIES = bytes.fromhex("00081d91ea010000")
SAS_TID = bytes.fromhex("06000000" "5001405fa1b2c3d4") + bytes(12)
ISCSI_PORT = b"iqn.2003-01.org.x:y,i,0x23d000000001"
ISCSI_PORT_TID = bytes([0x45, 0, 0, 40]) + ISCSI_PORT.ljust(40, b"\0")
FULL_STATUS = (bytes.fromhex("00000009") + (48 + 68).to_bytes(4, "big")
               + bytes.fromhex("00000000000000aa" "00000000" "0101" "00000000" "0001" "00000018")
               + SAS_TID
               + bytes.fromhex("0000000000000bbb" "00000000" "0200" "00000000" "0002" "0000002c")
               + ISCSI_PORT_TID)


def document(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """Run with --json; stdout must be exactly one JSON document, valid for the schema."""
    code = main(["--json", *argv])
    out, _ = capsys.readouterr()
    assert out.endswith("}\n") and out.count("\n}\n") == 1  # one document, nothing else
    doc = json.loads(out)
    VALIDATOR.validate(doc)
    assert doc["exit_status"] == code
    assert (doc["error"] is None) == (code == 0)
    return code, doc


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(("argv", "kind"), [
    (["--bogus", "/dev/null"], "usage"),
    (["-o", "/dev/null"], "usage"),
    (["-H", "/dev/null"], "usage"),
    ([], "usage"),
])
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], kind: str) -> None:
    code, doc = document(capsys, *argv)
    assert code in (1, 31)
    assert doc["error"]["kind"] == kind and doc["status"] is None


@pytest.mark.parametrize("flag", ["-j", "-kj", "--js", "--json"])
def test_json_is_found_in_any_spelling_before_the_error(capsys: pytest.CaptureFixture[str],
                                                        flag: str) -> None:
    code = main([flag, "-T"])  # -T without its value
    out, err = capsys.readouterr()
    assert code == 1 and json.loads(out)["error"]["kind"] == "usage"
    assert err.startswith("prguard-client: error: ")


@pytest.mark.parametrize("argv", [["-T", "-j", "/dev/null"], ["-Tj"], ["--", "-j"]])
def test_a_j_that_is_not_the_option_asks_for_no_json(capsys: pytest.CaptureFixture[str],
                                                     argv: list[str]) -> None:
    assert main(argv) != 0
    assert capsys.readouterr().out == ""


def test_device_not_opened(capsys: pytest.CaptureFixture[str], sockdir: Path) -> None:
    code, doc = document(capsys, "--socket", str(sockdir / "x.sock"), "/nonexistent/dev")
    assert (code, doc["error"]["kind"], doc["error"]["errno"]) == (52, "device", "ENOENT")
    assert (doc["device"], doc["action"]) == ("/nonexistent/dev", "read-keys")


def test_no_socket(capsys: pytest.CaptureFixture[str], loop_disk: str, sockdir: Path) -> None:
    code, doc = document(capsys, "--socket", str(sockdir / "x.sock"), loop_disk)
    assert (code, doc["error"]["kind"], doc["error"]["errno"]) == (52, "connect", "ENOENT")
    assert doc["hints"] and "no helper listens" in doc["hints"][0]


def test_nobody_listening(capsys: pytest.CaptureFixture[str], loop_disk: str,
                          sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    code, doc = document(capsys, "--socket", str(path), loop_disk)
    assert (code, doc["error"]["kind"], doc["error"]["errno"]) == (50, "connect",
                                                                   "ECONNREFUSED")


def test_timeout(capsys: pytest.CaptureFixture[str], loop_disk: str, scripted: Serve) -> None:
    helper = scripted(good(), silent=True)
    code, doc = document(capsys, "--socket", helper.path, "--timeout", "0.3", loop_disk)
    assert (code, doc["error"]["kind"]) == (33, "timeout")


def test_hang_up(capsys: pytest.CaptureFixture[str], loop_disk: str, scripted: Serve) -> None:
    helper = scripted(None)
    code, doc = document(capsys, "--socket", helper.path, loop_disk)
    assert (code, doc["error"]["kind"], doc["status"]) == (99, "no-reply", None)


def test_a_real_helper_on_a_loop_device(capsys: pytest.CaptureFixture[str], prguard: Helper,
                                        loop_disk: str) -> None:
    code, doc = document(capsys, "--socket", prguard.path, "-o", "-G", "-S", "1", loop_disk)
    assert (code, doc["status"], doc["sense"]["code"]) == (5, "CHECK CONDITION", "05/24/00")
    assert doc["error"]["kind"] == "scsi" and "loop device" in doc["hints"][0]


@pytest.mark.parametrize(("reply", "argv", "code"), [
    (PrReply(Status.RESERVATION_CONFLICT, ZERO_SENSE), ["-o", "-R", "-T", "1"], 24),
    (PrReply(Status.BUSY, ZERO_SENSE), ["-k"], 26),
    (PrReply(Status.CHECK_CONDITION, ZERO_SENSE), ["-k"], 98),
    (PrReply(Status.CHECK_CONDITION, Sense.RESET.fixed_format()), ["-o", "-C"], 6),
    (PrReply(Status.CHECK_CONDITION, bytes([0x73, 2, 4, 1]).ljust(96, b"\0")), ["-r"], 2),
    (PrReply(Status.CHECK_CONDITION, b"\x7e" + bytes(95)), ["-k"], 98),
    (PrReply(Status.CHECK_CONDITION, bytes([0x70, 0, 1, 0, 0, 0, 0, 10]).ljust(96, b"\0")),
     ["-o", "-C"], 0),  # RECOVERED ERROR: success for PR OUT, as sg_persist has it
    (good(), ["-o", "-L", "-T", "1"], 0),
    (good(KEYS), ["-k"], 0),
    (good(bytes(8)), ["-r"], 0),
    (good(RESERVATION), ["-r"], 0),
    (good(CAPABILITIES), ["-c"], 0),
    (good(bytes.fromhex("0008010000000000")), ["-c"], 0),
    (good(FULL_STATUS), ["-s"], 0),
    (good(bytes(8)), ["-s"], 0),
    (good(KEYS), ["-k", "-l", "10"], 97),  # cut short
    (good(bytes.fromhex("0000000100000008") + bytes(8)), ["-r"], 97),
    (good(bytes.fromhex("0000000100000004") + bytes(4)), ["-k"], 97),
])
def test_every_reply(capsys: pytest.CaptureFixture[str], loop_disk: str, scripted: Serve,
                     reply: PrReply, argv: list[str], code: int) -> None:
    helper = scripted(reply)
    got, doc = document(capsys, "--socket", helper.path, *argv, loop_disk)
    assert got == code
    assert doc["status_code"] == reply.status
    assert (doc["data"] is not None) == (code == 0 and bool(reply.data))
    if reply.data:
        assert doc["raw_data"] == reply.data[:int(argv[-1], 16) if "-l" in argv else None].hex()
    if code == 97:
        assert doc["error"]["kind"] == "malformed"


def test_full_status_in_detail(capsys: pytest.CaptureFixture[str], loop_disk: str,
                               scripted: Serve) -> None:
    helper = scripted(good(FULL_STATUS))
    _, doc = document(capsys, "--socket", helper.path, "-s", loop_disk)
    second = doc["data"]["registrations"][1]
    assert second["transport_id"] == {
        "protocol": 5, "protocol_name": "iSCSI", "format_code": 1,
        "identifier": "iqn.2003-01.org.x:y", "isid": "23d000000001",
        "hex": ISCSI_PORT_TID.hex()}


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("hints"),
    lambda d: d.update(exit_status="5"),
    lambda d: d.update(extra=1),
    lambda d: d.update(error={"kind": "oops", "message": "", "errno": None}),
    lambda d: d["data"]["keys"].append("123"),
])
def test_the_schema_has_teeth(capsys: pytest.CaptureFixture[str], loop_disk: str,
                              scripted: Serve, damage: Any) -> None:
    helper = scripted(good(KEYS))
    _, doc = document(capsys, "--socket", helper.path, loop_disk)
    damage(doc)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(doc)
