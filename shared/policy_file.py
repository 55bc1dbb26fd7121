"""Reading a policy file: at start-up (the launcher, `--check-policy`) and on a reload
(the worker, confined: only open, read and close, on paths its Landlock rules allow).

User and group names in a policy are looked up in /etc/passwd and /etc/group as files,
not through NSS: the confined worker can read two files but cannot load NSS modules or
reach a directory service, and a reload must resolve names the way start-up did. Local
accounts (libvirt's and QEMU's) are there; give numbers for other accounts.
"""

from __future__ import annotations

import os

from prguard.shared.policy import MAX_POLICY_SIZE, Policy, PolicyError, parse

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
#: /etc/passwd and /etc/group are read up to this size.
MAX_ACCOUNTS_SIZE = 16 << 20


class PolicyFileError(Exception):
    """The file could not be read: `str()` is `FILE: reason`."""


def read_bytes(path: str, limit: int) -> bytes:
    """The whole file, with no system call but openat, pread and close (what the
    confined worker may use)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.pread(fd, 65536, size)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise OSError(0, f"larger than {limit} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)


def account_ids(path: str) -> dict[str, int]:
    """name -> id from a passwd or group file (the third field); {} if unreadable."""
    try:
        text = read_bytes(path, MAX_ACCOUNTS_SIZE).decode("utf-8", "replace")
    except OSError:
        return {}
    table: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] and parts[2].isdigit():
            table.setdefault(parts[0], int(parts[2]))
    return table


def read_policy(path: str, passwd: str = PASSWD, group: str = GROUP) -> Policy:
    """Read and parse `path`. Raises PolicyFileError or PolicyError (with its line)."""
    try:
        raw = read_bytes(path, MAX_POLICY_SIZE)
    except OSError as exc:
        raise PolicyFileError(f"{path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolicyError(path, line, "not UTF-8 text") from None
    users = account_ids(passwd)
    groups = account_ids(group)
    return parse(text, path, users.__getitem__, groups.__getitem__)
