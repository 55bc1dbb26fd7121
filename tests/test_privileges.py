"""Dropping privileges: the state is read back from /proc/self/status after the drop, and
any difference from what was asked refuses to run (docs/SECURITY.md).

Each case below makes one step of the drop silently do nothing, in a child process (a
drop cannot be undone), and expects the read-back to notice.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab.processes import REPO
from prguard.shared import privileges
from prguard.shared.privileges import Identity, PrivilegeError

SKIP_ONE_STEP = """
import os, sys, types, prctl
from prguard.shared import privileges
step = sys.argv[1]
if step == "no_new_privs":
    prctl.set_no_new_privs = lambda value: None
elif step == "permitted":
    prctl.cap_permitted = types.SimpleNamespace(limit=lambda *caps: None)
elif step == "bounding":
    prctl.capbset = types.SimpleNamespace(limit=lambda *caps: None)
elif step == "uid":
    os.setresuid = lambda *ids: None
elif step == "gid":
    os.setresgid = lambda *ids: None
try:
    privileges.drop(privileges.Identity(65534, 65534), ("sys_rawio",))
except privileges.PrivilegeError as exc:
    print(exc)
    sys.exit(0)
sys.exit(1)
"""


@pytest.mark.parametrize(("step", "noticed"), [
    ("no_new_privs", "NoNewPrivs not set"),
    ("permitted", "CapPrm "),
    ("bounding", "CapBnd "),
    ("uid", "Uid 0\t0\t0\t0"),
    ("gid", "Gid 0\t0\t0\t0"),
])
def test_a_step_that_did_not_take_is_noticed_by_the_read_back(step: str, noticed: str) -> None:
    result = subprocess.run([sys.executable, "-c", SKIP_ONE_STEP, step], cwd=REPO,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Failed to drop privileges: "), result.stdout
    assert noticed in result.stdout, result.stdout


def test_the_complete_drop_passes_its_own_read_back() -> None:
    result = subprocess.run([sys.executable, "-c", SKIP_ONE_STEP, "none"], cwd=REPO,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1 and result.stdout == "", result


DROPPED = {"CapPrm": "0000000000020000", "CapEff": "0000000000020000",
           "CapInh": "0000000000000000", "CapBnd": "0000000000000000",
           "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Groups": "",
           "Uid": "7\t7\t7\t7", "Gid": "8\t8\t8\t8"}


@pytest.mark.parametrize(("field", "value", "noticed"), [
    ("CapPrm", "0000000000220000", "CapPrm 0000000000220000"),
    ("CapEff", "0000000000000000", "CapEff 0000000000000000"),
    ("CapInh", "0000000000020000", "CapInh 0000000000020000"),
    ("CapBnd", "000001ffffffffff", "CapBnd 000001ffffffffff"),
    ("CapAmb", "0000000000020000", "CapAmb 0000000000020000"),
    ("NoNewPrivs", "0", "NoNewPrivs not set"),
    ("Groups", "0 4", "supplementary groups 0 4"),
    ("Uid", "7\t0\t7\t7", "Uid 7\t0\t7\t7"),
    ("Gid", "8\t8\t8\t0", "Gid 8\t8\t8\t0"),
])
def test_verify_names_each_difference(monkeypatch: pytest.MonkeyPatch, field: str,
                                      value: str, noticed: str) -> None:
    monkeypatch.setattr(privileges, "proc_status", lambda: dict(DROPPED))
    privileges.verify(Identity(7, 8), ("sys_rawio",))  # as asked: nothing to say
    monkeypatch.setattr(privileges, "proc_status", lambda: {**DROPPED, field: value})
    with pytest.raises(PrivilegeError) as err:
        privileges.verify(Identity(7, 8), ("sys_rawio",))
    assert str(err.value) == f"Failed to drop privileges: {noticed}"


def test_verify_wants_exactly_the_groups_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path opener keeps one supplementary group (the path nodes'); nothing else."""
    monkeypatch.setattr(privileges, "proc_status", lambda: {**DROPPED, "Groups": "6 "})
    privileges.verify(Identity(7, 8), ("sys_rawio",), (6,))
    for groups, noticed in (((), "supplementary groups 6"), ((6, 7), "supplementary groups 6")):
        with pytest.raises(PrivilegeError) as err:
            privileges.verify(Identity(7, 8), ("sys_rawio",), groups)
        assert str(err.value) == f"Failed to drop privileges: {noticed}"
    monkeypatch.setattr(privileges, "proc_status", lambda: dict(DROPPED))
    with pytest.raises(PrivilegeError, match="supplementary groups none"):
        privileges.verify(Identity(7, 8), ("sys_rawio",), (6,))
