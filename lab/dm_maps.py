"""Device-mapper maps over a LU, in the lab guest (lab/guest_suite.py runs it on LU d,
reached through node dA alone).

With CAP_SYS_RAWIO, SG_IO on a map over part of a LU reaches the whole LU: the kernel
checks a map's range only for callers without it. prguard's worker holds it, so it
serves a map only when sysfs shows a multipath map over whole disks (shared/sysfs.py).

Each case sends a PERSISTENT RESERVE OUT REGISTER through one map and then asks the LU,
through its whole disk, which keys are registered and its PRgeneration (which every
REGISTER that reaches the LU increments): a refused map must leave both as they were.
prguard is asked twice: with `--multipath=off` the broker cannot tell a map from a disk
(it reads no file) and its worker refuses on what sysfs says; with `--multipath=on` the
broker asks the path opener about every block device first and refuses such a map itself
(its log line says so), and the worker would refuse it again.

- `dm.c-helper-registers-through-a-half-map`: the attack is real here (the control): the
  C helper passes SG_IO on a linear map over half of the LU, and the key is then
  registered on the LU. It is removed again through the whole disk.
- `dm.half-lvm-map-refused`, `dm.half-map-without-uuid-refused`: what an LVM logical
  volume is, with and without its uuid: prguard answers CHECK CONDITION 0b/00/06, the
  LU's keys and generation are unchanged.
- `dm.whole-lu-linear-map-refused`: a linear map over the whole LU, which the kernel
  would let anyone's SG_IO through, is refused like any map that is not a multipath map
  (the decision in docs/COMPATIBILITY.md).
- `dm.kpartx-partition-of-a-multipath-map-refused`: a `part1-mpath-...` map over half of
  a multipath map.
- `dm.multipath-map-served`: the multipath map itself (uuid `mpath-<WWID>`, over the
  whole disk) is served, by SG_IO on the map (off) and on its path (on): the REGISTER
  reaches the LU; it is then removed.
- `dm.multipath-on-records-name-the-map`: the prguard with multipath on keeps an audit
  log; the REGISTER it sent down the map's path is recorded on the path, with the LU's
  WWN and the map's name and uuid.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.audit_chain import Where, verify
from prguard.shared.audit_record import decode

DEV_DIR = Path("/run/lio/dev")
REGISTER, READ_KEYS = 0, 0
GOOD, CHECK = 0x00, 0x02
#: prguard's answer for an fd it does not pass SG_IO on (shared/rules.py)
REFUSED = (CHECK, (0x0B, 0x00, 0x06))
KC = 0xC0C0C0C0C0C0C0C1  # through the C helper
KD = 0xD0D0D0D0D0D0D0D1  # through prguard
TIMEOUT_S = 40.0

CASES: list[str] = [
    "dm.c-helper-registers-through-a-half-map",
    "dm.half-lvm-map-refused",
    "dm.half-map-without-uuid-refused",
    "dm.whole-lu-linear-map-refused",
    "dm.kpartx-partition-of-a-multipath-map-refused",
    "dm.multipath-map-served",
    "dm.multipath-on-records-name-the-map",
]


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Maps:
    """dm maps made with dmsetup (udev is stopped: no udev sync, nodes made here)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self, name: str, table: str, uuid: str | None = None) -> str:
        """The map's node."""
        _run("dmsetup", "create", name, "--noudevsync", *(["--uuid", uuid] if uuid else []),
             "--table", table)
        self.names.append(name)
        major, minor = _run("dmsetup", "info", "-c", "--noheadings", "-o", "major,minor",
                            "--separator", ":", name).strip().split(":")
        node = DEV_DIR / f"map-{name}"
        with contextlib.suppress(FileNotFoundError):
            node.unlink()
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))
        return str(node)

    def remove_all(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["dmsetup", "remove", "--noudevsync", name], capture_output=True,
                           timeout=60, check=False)
            with contextlib.suppress(FileNotFoundError):
                (DEV_DIR / f"map-{name}").unlink()
        self.names.clear()


def plist(key: int, sakey: int) -> bytes:
    return key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes(8)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _code(sense: bytes) -> tuple[int, int, int]:
    return sense[2] & 0x0F, sense[12], sense[13]


def _describe(status: int, sense: bytes) -> str:
    return f"status {status:#04x}" + (" sense {:02x}/{:02x}/{:02x}".format(*_code(sense))
                                      if status == CHECK else "")


def register(sock: str, device: str, key: int, sakey: int) -> tuple[int, bytes]:
    """REGISTER (key -> sakey) through `device`; (status, sense)."""
    with Client(sock, timeout=TIMEOUT_S) as client, _opened(device) as fd:
        reply = client.request(pr_out_cdb(REGISTER, 24), fd, plist(key, sakey))
    return reply.status, reply.sense


def keys(sock: str, disk: str) -> tuple[int, list[int]]:
    """(PRgeneration, registered keys) of the LU, asked through its whole disk."""
    with Client(sock, timeout=TIMEOUT_S) as client, _opened(disk) as fd:
        reply = client.request(pr_in_cdb(READ_KEYS, 8192), fd)
    if reply.status != GOOD:
        raise RuntimeError(f"READ KEYS through {disk}: {_describe(reply.status, reply.sense)}")
    data = reply.data
    length = int.from_bytes(data[4:8], "big")
    return (int.from_bytes(data[0:4], "big"),
            [int.from_bytes(data[i:i + 8], "big") for i in range(8, 8 + length, 8)])


def _map_records(audit_log: Path, disk: str, mpath_uuid: str) -> dict[str, Any]:
    """With multipath on, the map's REGISTER went down its path: the worker's records
    name the path, the LU's WWN and the map (its name and uuid), and the chain holds."""
    lines = audit_log.read_bytes().splitlines(keepends=True)  # a line without one is cut
    records = [decode(line) for line in lines]
    path_dev = Path(f"/sys/class/block/{os.path.basename(disk)}/dev").read_text().strip()
    done = [r for r in records if r.kind == "command" and r.phase == "done"
            and r.command is not None and r.command.action == "REGISTER"
            and r.command.sa_key == f"{KD:#x}"]
    chain = verify([(Where(str(audit_log), n), line) for n, line in enumerate(lines, 1)])
    ok = (len(done) == 1 and done[0].device is not None and chain.ok
          and done[0].device.dev == path_dev and done[0].device.dm_name == "prg-mpath"
          and done[0].device.dm_uuid == mpath_uuid and done[0].device.wwn is not None
          and done[0].answer is not None and done[0].answer.status == "GOOD")
    return _case(CASES[6], ok, f"REGISTER {KD:#x} through the map, as recorded: "
                               f"{[r.device for r in done]}; chain ok: {chain.ok}")


def _case(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"case": name, "ok": ok, "detail": detail, "c": None, "prguard": None}


def load_modules() -> None:
    for module in ("dm_mod", "dm_multipath", "dm_round_robin"):
        _run("modprobe", module)


class Lu:
    """The LU behind `disk`, asked through the whole disk: what reached it."""

    def __init__(self, sock: str, disk: str) -> None:
        self.sock, self.disk = sock, disk
        self.generation, registered = keys(sock, disk)
        if registered:
            raise RuntimeError(f"LU behind {disk} starts with keys {registered}")

    def after(self, key: int | None) -> tuple[bool, str]:
        """Did exactly `key` (None: nothing) reach the LU since the last look? Then
        unregister it through the disk, so the LU holds nothing again."""
        generation, registered = keys(self.sock, self.disk)
        want = ([key], self.generation + 1) if key is not None else ([], self.generation)
        ok = (registered, generation) == want
        detail = (f"the LU then holds {[hex(k) for k in registered]}, generation "
                  f"{self.generation} -> {generation}")
        self.generation = generation
        if registered:
            status, _ = register(self.sock, self.disk, registered[0], 0)
            self.generation, left = keys(self.sock, self.disk)
            if status != GOOD or left:
                ok = False
                detail += f"; unregistering through the disk left {[hex(k) for k in left]}"
        return ok, detail


def run(off_sock: str, on_sock: str, c_sock: str, disk: str,
        on_stderr: Path, on_audit: Path) -> list[dict[str, Any]]:
    """Every case of CASES, on the LU behind `disk` (an sd node), which holds no keys:
    through prguard with multipath off (`off_sock`: its worker decides) and on
    (`on_sock`: its broker asks the path opener first; `on_stderr` its log, `on_audit`
    its audit log), and the C helper (`c_sock`). Needs load_modules() first."""
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    sysfs = Path(f"/sys/class/block/{os.path.basename(disk)}")  # /dev/sdX or a mknod'ed sdX
    sectors = int((sysfs / "size").read_text())
    dev = (sysfs / "dev").read_text().strip()
    wwid = (sysfs / "device" / "wwid").read_text().strip()
    maps = Maps()
    out: list[dict[str, Any]] = []
    try:
        half = f"0 {sectors // 2} linear {dev} 0"
        whole = f"0 {sectors} linear {dev} 0"
        lu = Lu(off_sock, disk)

        # The control: the C helper passes SG_IO on the half map, and the key lands.
        node = maps.create("prg-half-c", half)
        status, sense = register(c_sock, node, 0, KC)
        ok, seen = lu.after(KC)
        out.append(_case(CASES[0], ok and status == GOOD,
                         f"C helper, REGISTER {KC:#x} through {half!r}: "
                         f"{_describe(status, sense)}; {seen}"))

        mpath_uuid = f"mpath-{wwid.replace('naa.', '3', 1)}"
        mpath = maps.create("prg-mpath", f"0 {sectors} multipath 0 0 1 1 round-robin 0 1 1 "
                            f"{dev} 1", mpath_uuid)
        rdev = os.stat(mpath).st_rdev
        refused = [
            (CASES[1], "prg-half-lvm", half, "LVM-" + "k" * 32 + "x" * 32),
            (CASES[2], "prg-half", half, None),
            (CASES[3], "prg-whole", whole, None),
            (CASES[4], "prg-mpath-part1",
             f"0 {sectors // 2} linear {os.major(rdev)}:{os.minor(rdev)} 0",
             f"part1-{mpath_uuid}"),
        ]
        for case, name, table, uuid in refused:
            node = maps.create(name, table, uuid)
            number = os.stat(node).st_rdev
            ok, details = True, []
            for mode, sock in (("off", off_sock), ("on", on_sock)):
                status, sense = register(sock, node, 0, KD)
                reached, seen = lu.after(None)
                ok = ok and reached and (status, _code(sense)) == REFUSED
                details.append(f"prguard --multipath={mode}: {_describe(status, sense)}; "
                               f"{seen}")
            # With multipath on, the broker refused on the path opener's word.
            said = [line for line in on_stderr.read_text().splitlines()
                    if f"on map {os.major(number)}:{os.minor(number)} refused" in line]
            ok = ok and len(said) == 1
            details.append(f"its broker said: {said}")
            out.append(_case(case, ok, f"REGISTER {KD:#x} through {table!r} (uuid "
                                       f"{uuid!r}): " + "; ".join(details)))

        ok, details = True, []
        for mode, sock in (("off", off_sock), ("on", on_sock)):
            status, sense = register(sock, mpath, 0, KD)
            reached, seen = lu.after(KD)
            ok = ok and reached and status == GOOD
            details.append(f"prguard --multipath={mode}: {_describe(status, sense)}; {seen}")
        out.append(_case(CASES[5], ok, f"REGISTER {KD:#x} through the multipath map "
                                       f"({mpath_uuid}): " + "; ".join(details)))
        out.append(_map_records(on_audit, disk, mpath_uuid))
    finally:
        maps.remove_all()
    return out
