"""Decoding what a PR command asks for: fields per service action, any bytes total."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.pr_fields import PrCommand, decode
from prguard.shared.scsi import PrOutAction

KEY = 0x1122334455667788
SA_KEY = 0x99AABBCCDDEEFF00


def basic(flags: int = 0) -> bytes:
    return KEY.to_bytes(8, "big") + SA_KEY.to_bytes(8, "big") + bytes(4) + bytes([flags]) + \
        bytes(3)


@pytest.mark.parametrize(("action", "scope_type", "data", "expected"), [
    (PrOutAction.REGISTER, 0x15, basic(0x0D),
     PrCommand(True, 0, None, None, KEY, SA_KEY, aptpl=True, all_tg_pt=True, spec_i_pt=True,
               complete_list=True)),
    (PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, basic(),
     PrCommand(True, 6, None, None, None, SA_KEY, False, False, False, complete_list=True)),
    (PrOutAction.RESERVE, 0x05, basic(),
     PrCommand(True, 1, 0, 5, KEY, None, False, False, False, complete_list=True)),
    (PrOutAction.RELEASE, 0x03, basic(),
     PrCommand(True, 2, 0, 3, KEY, None, False, False, False, complete_list=True)),
    (PrOutAction.CLEAR, 0x03, basic(),
     PrCommand(True, 3, None, None, KEY, None, False, False, False, complete_list=True)),
    (PrOutAction.PREEMPT, 0x01, basic(),
     PrCommand(True, 4, 0, 1, KEY, SA_KEY, False, False, False, complete_list=True)),
    (PrOutAction.PREEMPT_AND_ABORT, 0x21, basic(),
     PrCommand(True, 5, 2, 1, KEY, SA_KEY, False, False, False, complete_list=True)),
    (PrOutAction.REPLACE_LOST_RESERVATION, 0x06, basic(),
     PrCommand(True, 8, 0, 6, None, SA_KEY, False, False, False, complete_list=True)),
    # REGISTER AND MOVE's list: UNREG and APTPL in byte 17, the relative target port
    (PrOutAction.REGISTER_AND_MOVE, 0x01,
     KEY.to_bytes(8, "big") + SA_KEY.to_bytes(8, "big") + bytes([0, 3, 0, 2, 0, 0, 0, 24])
     + bytes(24),
     PrCommand(True, 7, 0, 1, KEY, SA_KEY, aptpl=True, unreg=True, relative_target_port=2,
               complete_list=True)),
    # a list too short for the keys: only the CDB's fields
    (PrOutAction.RESERVE, 0x05, basic()[:23], PrCommand(True, 1, 0, 5)),
    (PrOutAction.REGISTER, 0, b"", PrCommand(True, 0)),
    # undefined service actions decode too (they are refused, and recorded)
    (0x1F, 0x55, basic(), PrCommand(True, 0x1F, None, None, KEY, None, False, False, False,
                                    complete_list=True)),
])
def test_pr_out(action: int, scope_type: int, data: bytes, expected: PrCommand) -> None:
    assert decode(pr_out_cdb(int(action), len(data), scope_type), data) == expected


def test_pr_in_has_only_its_action() -> None:
    assert decode(pr_in_cdb(3, 8192), b"") == PrCommand(False, 3)
    assert decode(pr_in_cdb(3), b"").action_name == "READ FULL STATUS"
    assert decode(pr_in_cdb(9), b"").action_name == "service action 0x09"


def test_names() -> None:
    command = decode(pr_out_cdb(5, 24, 1), basic())
    assert (command.opcode_name, command.action_name) == ("PR OUT", "PREEMPT AND ABORT")


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=100))
def test_any_bytes_decode(cdb: bytes, data: bytes) -> None:
    command = decode(cdb, data)
    assert isinstance(command, PrCommand)
    assert command.complete_list == (command.pr_out and len(data) >= 24)
