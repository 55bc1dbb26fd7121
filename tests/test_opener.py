"""The path opener: how it reads a map in sysfs (shared/sysfs.py), what it opens and answers
(opener/handler.py), and the process itself: alone on its channel with hostile
datagrams, its privileges in /proc, its Landlock domain, and its start and stop within
prguard. Its death tests are in tests/test_lockdown.py with the other processes'."""

from __future__ import annotations

import errno
import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.inject import Injector, Killed, errno_name, fd_table
from lab.processes import PRGUARD, REPO, Helper, children, fd_count, proc_status, start_helper
from prguard.opener import handler
from prguard.shared import fdpass, sysfs
from prguard.shared.messages import (
    Malformed,
    MapPaths,
    MapRefused,
    MapRequest,
    Message,
    PathFd,
    PathState,
    Ready,
    SgIoRequest,
    decode,
)

SDA, SDB, SDC = os.makedev(8, 0), os.makedev(8, 16), os.makedev(8, 32)
MAP = os.makedev(254, 3)
DISK_GID = grp.getgrnam("disk").gr_gid


# -------------------------------------------------------------- sysfs (shared/sysfs.py)

def fake_sysfs(root: Path, uuid: str | None = "mpath-36001405aa", slaves: dict[str, dict[
        str, object]] | None = None) -> Path:
    """/sys/dev/block/254:3 with dm/uuid and slaves/<name>/{dev,device/...} as a tree of
    plain files (the real one is links into /sys/devices; the reading is the same)."""
    base = root / "dev/block/254:3"
    base.mkdir(parents=True)
    (base / "dev").write_text("254:3\n")
    (base / "size").write_text("32768\n")
    if uuid is not None:
        (base / "dm").mkdir()
        (base / "dm/uuid").write_text(uuid + "\n")
    (base / "slaves").mkdir()
    for name, facts in (slaves if slaves is not None else {
            "sdb": {"dev": "8:16"}, "sda": {"dev": "8:0"}}).items():
        slave = base / "slaves" / name
        (slave / "device").mkdir(parents=True)
        (slave / "dev").write_text(f"{facts['dev']}\n")
        (slave / "size").write_text(f"{facts.get('size', 32768)}\n")
        if facts.get("scsi", True):
            (slave / "device/scsi_device").mkdir()
        (slave / "device/state").write_text(f"{facts.get('state', 'running')}\n")
        (slave / "device/wwid").write_text(f"{facts.get('wwid', 'naa.6001405aa')}\n")
        if facts.get("partition"):
            (slave / "partition").write_text("1\n")
        if facts.get("dm"):
            (slave / "dm").mkdir()
            (slave / "dm/uuid").write_text("LVM-x\n")
    return root


def test_a_multipath_map_and_its_paths_in_device_number_order(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, slaves={"sdc": {"dev": "8:32", "state": "offline"},
                                        "sda": {"dev": "8:0"}})
    info = sysfs.multipath_map(MAP, str(root))
    assert info == sysfs.MapInfo("mpath-36001405aa", (sysfs.Slave("sda", SDA, True),
                                                   sysfs.Slave("sdc", SDC, False)))


@pytest.mark.parametrize(("uuid", "slaves", "problem"), [
    (None, None, "254:3 is not a device-mapper map"),
    ("LVM-abc", None, "254:3 is a device-mapper map but not a multipath one (uuid 'LVM-abc')"),
    ("part1-mpath-36001405aa", None, "not a multipath one"),
    ("mpath-36001405aa", {}, "254:3 (mpath-36001405aa) has no paths"),
    ("mpath-36001405aa", {"sda1": {"dev": "8:1", "partition": True}},
     "path sda1 is a partition, not a whole disk"),
    ("mpath-36001405aa", {"loop0": {"dev": "7:0", "scsi": False}},
     "path loop0 is not a SCSI disk"),
    ("mpath-36001405aa", {"dm-1": {"dev": "254:1", "dm": True}},
     "path dm-1 is itself a device-mapper map"),
    ("mpath-36001405aa", {"sda": {"dev": "8:0"}, "sdb": {"dev": "8:16", "wwid": "naa.6001"}},
     "its paths are not one LU"),
    ("mpath-36001405aa", {"sda": {"dev": "eight"}}, "path sda has no device number"),
    ("mpath-36001405aa", {"sda": {"dev": "8:0", "size": 16384}},
     "path sda is not of the map's size"),
], ids=["not dm", "lvm", "kpartx partition", "no paths", "partition", "loop", "dm over dm",
        "two LUs", "bad dev", "half a LU"])
def test_maps_prguard_does_not_serve(tmp_path: Path, uuid: str | None,
                                     slaves: dict[str, dict[str, object]] | None,
                                     problem: str) -> None:
    root = fake_sysfs(tmp_path, uuid, slaves)
    with pytest.raises(sysfs.MapProblem) as refused:
        sysfs.multipath_map(MAP, str(root))
    assert problem in str(refused.value)


def test_only_a_device_sysfs_describes_is_certainly_no_map(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, None)
    with pytest.raises(sysfs.NotDeviceMapper):
        sysfs.multipath_map(MAP, str(root))
    (root / "dev/block/254:3/dev").unlink()  # a device sysfs does not know: not certain
    with pytest.raises(sysfs.MapProblem) as refused:
        sysfs.multipath_map(MAP, str(root))
    assert type(refused.value) is sysfs.MapProblem
    assert str(refused.value) == "254:3: no such block device in sysfs"


def test_a_sysfs_that_cannot_be_read_refuses(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path)
    (root / "dev/block/254:3/dm/uuid").unlink()
    (root / "dev/block/254:3/dm/uuid").mkdir()  # exists, but read(2) fails: EISDIR
    with pytest.raises(sysfs.MapProblem, match=r"254:3: cannot read sysfs \(.*dm/uuid: "
                                               r"Is a directory\)"):
        sysfs.multipath_map(MAP, str(root))


# ------------------------------------------------------- decisions (opener/handler.py)

class FakeIo:
    """sysfs, the nodes and fds as the handler sees them, with every fd counted."""

    def __init__(self, map_info: sysfs.MapInfo | sysfs.MapProblem, map_flags: int = os.O_RDWR,
                 nodes: dict[str, int | OSError] | None = None) -> None:
        self.map_info = map_info
        self.map_flags = map_flags
        self.nodes = nodes or {"sda": SDA, "sdb": SDB}
        self.next_fd = 100
        self.kinds: dict[int, tuple[int, int, int]] = {}
        self.open_fds: set[int] = set()
        self.opened: list[str] = []

    def map_fd(self) -> int:
        return self._fd((self.map_flags, stat.S_IFBLK | 0o660, MAP))

    def _fd(self, kind: tuple[int, int, int]) -> int:
        self.next_fd += 1
        self.kinds[self.next_fd] = kind
        self.open_fds.add(self.next_fd)
        return self.next_fd

    def io(self) -> handler.Io:
        def read_map(rdev: int) -> sysfs.MapInfo:
            assert rdev == MAP
            if isinstance(self.map_info, sysfs.MapProblem):
                raise self.map_info
            return self.map_info

        def open_node(name: str) -> int:
            self.opened.append(name)
            node = self.nodes[name]
            if isinstance(node, OSError):
                raise node
            return self._fd((handler.PATH_FLAGS, stat.S_IFBLK | 0o660, node))

        def close(fd: int) -> None:
            self.open_fds.remove(fd)

        return handler.Io(read_map, lambda fd: self.kinds[fd], open_node, close)


TWO = sysfs.MapInfo("mpath-3600", (sysfs.Slave("sda", SDA, True), sysfs.Slave("sdb", SDB, True)))


def ask(fake: FakeIo, have: tuple[int, ...] = (), fd: int | None = -1
        ) -> list[tuple[Message, int | None]]:
    map_fd = fake.map_fd() if fd == -1 else fd
    return handler.answer(MapRequest(5, have).encode(), map_fd, fake.io())


def test_a_writable_map_gets_its_live_paths_opened_write_only() -> None:
    fake = FakeIo(TWO)
    answer = ask(fake)
    assert [m for m, _ in answer] == [
        MapPaths(5, "mpath-3600", (PathState(SDA, "sda", True), PathState(SDB, "sdb", True)),
                 2), PathFd(5, SDA), PathFd(5, SDB)]
    fds = [fd for _, fd in answer if fd is not None]
    assert [fake.kinds[fd][0] for fd in fds] == [os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK
                                                 | os.O_NOCTTY] * 2
    assert fake.open_fds == set(fds)  # the map's fd is closed, the paths' are sent


def test_paths_the_broker_holds_are_not_opened_again() -> None:
    fake = FakeIo(TWO)
    answer = ask(fake, have=(SDA,))
    assert [m for m, _ in answer][1:] == [PathFd(5, SDB)]
    assert fake.opened == ["sdb"]


def test_a_read_only_map_fd_yields_no_path_fd() -> None:
    fake = FakeIo(TWO, map_flags=os.O_RDONLY)
    answer = ask(fake)
    assert len(answer) == 1 and isinstance(answer[0][0], MapPaths)
    assert answer[0][0].fds == 0 and fake.opened == [] and not fake.open_fds


def test_a_path_that_is_not_running_is_neither_opened_nor_live() -> None:
    info = sysfs.MapInfo("mpath-3600", (sysfs.Slave("sda", SDA, False),
                                        sysfs.Slave("sdb", SDB, True)))
    fake = FakeIo(info)
    paths = ask(fake)[0][0]
    assert isinstance(paths, MapPaths)
    assert paths.paths[0] == PathState(SDA, "sda", False) and fake.opened == ["sdb"]


def test_a_node_whose_device_went_away_is_a_path_down() -> None:
    fake = FakeIo(TWO, nodes={"sda": OSError(errno.ENXIO, "No such device or address"),
                              "sdb": SDB})
    paths = ask(fake)[0][0]
    assert isinstance(paths, MapPaths)
    assert paths.paths[0].live is False and paths.fds == 1


@pytest.mark.parametrize(("nodes", "reason"), [
    ({"sda": OSError(errno.EACCES, "Permission denied"), "sdb": SDB},
     "cannot open /dev/sda: Permission denied (the opener's group, --multipath-group, must "
     "be the nodes' group)"),
    ({"sda": SDA, "sdb": os.makedev(8, 48)}, "/dev/sdb is not the block device 8:16"),
])
def test_a_path_that_cannot_be_its_own_node_refuses_the_map_and_leaks_nothing(
        nodes: dict[str, int | OSError], reason: str) -> None:
    fake = FakeIo(TWO, nodes=nodes)
    assert [m for m, _ in ask(fake)] == [MapRefused(5, reason)]
    assert not fake.open_fds


@pytest.mark.parametrize(("problem", "certain"), [
    (sysfs.NotDeviceMapper("254:3 is not a device-mapper map"), True),
    (sysfs.MapProblem("254:3: no such block device in sysfs"), False),
    (sysfs.MapProblem("254:3 (mpath-3600): path sda1 is a partition, not a whole disk"), False),
])
def test_a_map_prguard_does_not_serve_is_refused_with_sysfs_reason(
        problem: sysfs.MapProblem, certain: bool) -> None:
    """Only a device sysfs knows to be no map lets the broker serve it as a disk."""
    fake = FakeIo(problem)
    assert [m for m, _ in ask(fake)] == [MapRefused(5, str(problem), certain)]
    assert not fake.open_fds and fake.opened == []


def test_what_is_not_a_map_request_is_malformed_and_its_fd_closed() -> None:
    fake = FakeIo(TWO)
    fd = fake.map_fd()
    answer = handler.answer(SgIoRequest(1, bytes(16), b"").encode(), fd, fake.io())
    assert answer == [(Malformed("SgIoRequest is not a map request"), None)]
    assert not fake.open_fds
    assert handler.answer(MapRequest(2, ()).encode(), None, fake.io()) == [
        (MapRefused(2, "no fd with the request"), None)]


# ------------------------------------------------------------------- the lone process

class OpenerUnderTest:
    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-m", "lab.lone_opener",
                                      str(theirs.fileno())], cwd=REPO,
                                     pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
        theirs.close()
        self.sock.settimeout(20)
        ready = self.receive()[0]
        assert isinstance(ready, Ready) and ready.pid == self.proc.pid

    def receive(self) -> tuple[Message, int | None]:
        got = fdpass.recv_message(self.sock)
        assert got is not None
        return decode(got[0]), got[1]

    def ask(self, payload: bytes, fds: tuple[int, ...] = ()) -> Message:
        from prguard.client.session import send_with_fds
        send_with_fds(self.sock, payload, fds)
        message, fd = self.receive()
        assert fd is None
        return message


@pytest.fixture
def opener() -> Iterator[OpenerUnderTest]:
    o = OpenerUnderTest()
    yield o
    o.sock.close()
    assert o.proc.wait(10) == 0  # orderly EOF with its parent alive: exit 0


def test_the_lone_opener_refuses_what_is_not_a_map_and_keeps_no_fd(
        opener: OpenerUnderTest, fd_zoo: dict[str, int]) -> None:
    before = fd_count(opener.proc.pid)
    rdev = os.fstat(fd_zoo["loop"]).st_rdev
    assert opener.ask(MapRequest(1, ()).encode(), (fd_zoo["loop"],)) == MapRefused(
        1, f"{os.major(rdev)}:{os.minor(rdev)} is not a device-mapper map", True)
    for kind in ("file", "socket", "dir", "opath", "devnull"):
        assert opener.ask(MapRequest(2, ()).encode(), (fd_zoo[kind],)) == MapRefused(
            2, "not a block device"), kind
    assert opener.ask(MapRequest(3, ()).encode()) == MapRefused(3, "no fd with the request")
    assert isinstance(opener.ask(b"\xc1"), Malformed)
    assert isinstance(opener.ask(SgIoRequest(4, bytes(16), b"").encode(), (fd_zoo["loop"],)),
                      Malformed)
    assert isinstance(opener.ask(MapRequest(5, ()).encode(),
                                 (fd_zoo["loop"], fd_zoo["file"])), Malformed)
    assert fd_count(opener.proc.pid) == before


def test_the_lone_opener_is_confined(opener: OpenerUnderTest) -> None:
    status = proc_status(opener.proc.pid)
    for field in ("CapPrm", "CapEff", "CapInh", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["Threads"] == "1"


# ------------------------------------------------------------------ within prguard

@pytest.fixture
def with_opener(sockdir: Path) -> Iterator[Helper]:
    os.chmod(sockdir, 0o777)  # so the -u user could remove its socket at exit
    helper = start_helper(PRGUARD, str(sockdir / "m.sock"), "-u", "nobody", "-g", "nogroup",
                          "--multipath=on", timeout=30)
    yield helper
    assert helper.stop() == 0


def processes(helper: Helper) -> tuple[int, int]:
    """(worker, opener) of a running prguard, told apart by their capabilities."""
    kids = children(helper.pid)
    assert len(kids) == 2, kids
    worker = next(k for k in kids if int(proc_status(k)["CapEff"], 16))
    return worker, next(k for k in kids if k != worker)


def test_the_opener_holds_no_capability_and_only_the_disk_group(with_opener: Helper) -> None:
    worker, opener = processes(with_opener)
    status = proc_status(opener)
    for field in ("CapPrm", "CapEff", "CapInh", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].split() == [str(DISK_GID)]
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert proc_status(worker)["Groups"].strip() == ""  # the group is the opener's alone
    assert proc_status(with_opener.pid)["Groups"].strip() == ""
    # its fds: stdio, its channel, the placeholders below the boundary; nothing else
    assert all(not target.startswith("/") or target.startswith("/dev/null")
               for fd, target in fd_table(opener).items() if fd > 2), fd_table(opener)


def test_as_root_the_opener_is_root_without_capabilities(sockdir: Path) -> None:
    helper = start_helper(PRGUARD, str(sockdir / "r.sock"), "--multipath=on", timeout=30)
    try:
        _, opener = processes(helper)
        status = proc_status(opener)
        assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
        assert status["Uid"].split() == ["0"] * 4 and status["Groups"].strip() == ""
    finally:
        assert helper.stop() == 0


def test_no_opener_without_multipath(sockdir: Path) -> None:
    """Off, or auto where dm_multipath is not loaded (this host): the pair as ever."""
    assert not Path("/sys/module/dm_multipath").exists()
    for mode in ("off", "auto"):
        helper = start_helper(PRGUARD, str(sockdir / f"{mode}.sock"), f"--multipath={mode}")
        try:
            assert len(children(helper.pid)) == 1
        finally:
            assert helper.stop() == 0


def test_a_missing_multipath_group_is_a_start_up_error(sockdir: Path) -> None:
    result = subprocess.run([*PRGUARD, "-k", str(sockdir / "g.sock"), "-u", "nobody",
                             "--multipath=on", "--multipath-group=no-such-group"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.endswith("prguard: --multipath-group: no group 'no-such-group' (the "
                                  "group of the path nodes, /dev/sdX)\n")
    assert not (sockdir / "g.sock").exists()


def test_the_opener_ends_with_the_broker(sockdir: Path) -> None:
    """SIGKILL of the broker: the opener's parent-death signal ends it (exit 1, saying
    so), as the worker's does."""
    helper = start_helper(PRGUARD, str(sockdir / "k.sock"), "--multipath=on", timeout=30)
    worker, opener = processes(helper)
    helper.proc.kill()
    helper.proc.wait(10)
    for pid in (worker, opener):
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert not Path(f"/proc/{pid}").exists(), pid
    assert "prguard: opener: the broker died; exiting" in helper.stderr_text()


def test_a_lost_opener_stops_prguard(sockdir: Path) -> None:
    helper = start_helper(PRGUARD, str(sockdir / "l.sock"), "--multipath=on", timeout=30)
    _, opener = processes(helper)
    os.kill(opener, 9)
    assert helper.proc.wait(20) == 1
    assert "prguard: the path opener exited (killed by SIGKILL); exiting" in \
        helper.stderr_text()


# ------------------------------------------------------------ Landlock, tried for real

def test_landlock_lets_the_opener_read_sysfs_and_open_dev_write_only(
        with_opener: Helper, loop_disk: str, tmp_path: Path) -> None:
    """Injected into the live opener (lab/inject.py): what seccomp allows, Landlock
    still confines by path."""
    _, opener = processes(with_opener)
    writable = tmp_path / "writable"
    writable.write_bytes(b"")
    writable.chmod(0o666)
    at_fdcwd = -100 & (2**64 - 1)
    read, directory, write = 0x80000, 0x90000, 0x80901
    with Injector(opener) as inj:
        def attempt(path: str, flags: int) -> str:
            result = inj.call("openat", at_fdcwd, inj.string(path), flags)
            if result >= 0:
                inj.call("close", result)
                return "OK"
            return errno_name(result)

        assert attempt("/sys/dev/block", directory) == "OK"
        assert attempt("/sys/kernel/mm/transparent_hugepage/enabled", read) == "OK"
        assert attempt("/dev/null", write) == "OK"
        assert attempt(loop_disk, read) == "EACCES"  # a disk is never opened for reading
        assert attempt("/etc/hostname", read) == "EACCES"
        assert attempt(str(writable), write) == "EACCES"  # nothing outside /dev
        assert attempt("/dev/../etc/hostname", read) == "EACCES"


def test_the_opener_can_do_nothing_with_a_node_it_opened(sockdir: Path) -> None:
    """A compromised opener holding a write-only fd of a device cannot write to it."""
    helper = start_helper(PRGUARD, str(sockdir / "w.sock"), "--multipath=on", timeout=30)
    _, opener = processes(helper)
    with Injector(opener) as inj:
        fd = inj.call("openat", -100 & (2**64 - 1), inj.string("/dev/null"), 0x80901)
        assert fd > 2  # the control: it may open a node write-only
        buffer = inj.put(b"x" * 16)
        try:
            inj.call("write", fd, buffer, 16)
        except Killed as dead:
            assert dead.signal == signal.SIGSYS
        else:
            raise AssertionError("the opener wrote to a node it opened")
    assert helper.proc.wait(20) == 1  # the broker saw its opener die, and stopped


def test_broker_credentials_cannot_reach_into_the_opener(with_opener: Helper) -> None:
    """The broker (same uid, no group, no capability) cannot take the opener's fds or
    steer it: the opener is non-dumpable (lab/attack_worker.py, as for the worker)."""
    _, opener = processes(with_opener)
    attack = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         "--ambient-caps=-all", "--bounding-set=-all", sys.executable,
         str(REPO / "lab" / "attack_worker.py"), str(opener)],
        capture_output=True, text=True, timeout=20, check=True)
    results = json.loads(attack.stdout)
    assert results["ptrace_attach"] == "EPERM"
    assert results["proc_fd"] in ("EACCES", "EPERM")
    assert results["process_vm_readv"] == "EPERM"
    assert results["pidfd_getfd"] == "EPERM"
