"""Reading a policy file (names from /etc/passwd and /etc/group as files) and
`prguard --check-policy`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.processes import PRGUARD, REPO
from prguard.shared.policy import PolicyError
from prguard.shared.policy_file import (
    PolicyFileError,
    account_ids,
    read_bytes,
    read_policy,
)

GOOD = """\
[[rule]]
name = "cluster"
client = { uid = ["qemu"], gid = "kvm" }
allow = "pr-out"
[default]
allow = "pr-in"
"""


@pytest.fixture
def accounts(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nqemu:x:107:107::/:/bin/false\n"
                                     "broken line\n+nis\nqemu:x:999:999::/:/bin/false\n")
    (tmp_path / "group").write_text("root:x:0:\nkvm:x:993:qemu\n")
    return str(tmp_path / "passwd"), str(tmp_path / "group")


def test_names_come_from_the_account_files(tmp_path: Path, accounts: tuple[str, str]) -> None:
    (tmp_path / "policy.toml").write_text(GOOD)
    policy = read_policy(str(tmp_path / "policy.toml"), *accounts)
    assert policy.rules[0].client.uid == (107,)  # the first entry of a name counts
    assert policy.rules[0].client.gid == (993,)


def test_account_ids(accounts: tuple[str, str], tmp_path: Path) -> None:
    assert account_ids(accounts[0]) == {"root": 0, "qemu": 107}
    assert account_ids(str(tmp_path / "missing")) == {}


def test_an_unknown_name_is_an_error(tmp_path: Path, accounts: tuple[str, str]) -> None:
    (tmp_path / "policy.toml").write_text(GOOD.replace('"kvm"', '"wheel"'))
    with pytest.raises(PolicyError, match=r"policy.toml:3: rule 1: no group named 'wheel'"):
        read_policy(str(tmp_path / "policy.toml"), *accounts)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match=r"missing.toml: No such file or directory"):
        read_policy(str(tmp_path / "missing.toml"))
    with pytest.raises(PolicyFileError, match=r": Is a directory"):
        read_policy(str(tmp_path))
    (tmp_path / "big.toml").write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(PolicyFileError, match=r"big.toml: larger than 1048576 bytes"):
        read_policy(str(tmp_path / "big.toml"))
    (tmp_path / "latin1.toml").write_bytes(b"# ok\n# caf\xe9\n[default]\nallow = 'pr-in'\n")
    with pytest.raises(PolicyError, match=r"latin1.toml:2: not UTF-8 text"):
        read_policy(str(tmp_path / "latin1.toml"))


def test_read_bytes_reads_everything(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(bytes(range(256)) * 1000)
    assert read_bytes(str(tmp_path / "f"), 1 << 20) == bytes(range(256)) * 1000


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PRGUARD, "--check-policy", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)


def test_check_policy_prints_the_rules(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(GOOD.replace('"qemu"', '"root"').replace('"kvm"',
                                                                                   '"root"'))
    done = check(tmp_path / "policy.toml")
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"policy {tmp_path}/policy.toml (sha256 ")
    assert lines[1:] == ['rule 1 "cluster" (line 1)', "  clients: uid 0; gid 0",
                         "  devices: any", "  allows:  PR IN; PR OUT every service action",
                         "  types:   any", "default (line 5)", "  allows:  PR IN"]


@pytest.mark.parametrize(("text", "error"), [
    ('[default]\nallow = "pr-in"\n[[rule]]\nallow = "pr-out"\ntypes = ["WX"]\n',
     "prguard:{path}:5: rule 1: unknown type 'WX'\n"),
    ("[default\n", "prguard:{path}:1: not valid TOML: expected ']' at the end of a table "
     "declaration\n"),
    (None, "prguard: {path}: No such file or directory\n"),
])
def test_check_policy_refuses_a_bad_file_in_one_line(tmp_path: Path, text: str | None,
                                                      error: str) -> None:
    path = tmp_path / "policy.toml"
    if text is not None:
        path.write_text(text)
    done = check(path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == error.format(path=path)
