"""`make install` into a DESTDIR, run from there, and `make uninstall`.

The staged tree is run where it will live: in a private mount namespace, the staged
/usr/local is bind-mounted over the real one, so the paths written at install time
(#! lines, pyvenv.cfg, symlinks, ExecStart=) are the ones that resolve.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from lab.processes import REPO, activated, children, proc_status, stop_process
from prguard import __version__
from prguard.client.session import Client, pr_in_cdb

PREFIX = "/usr/local"
INSTALLED = {
    "bin/prguard", "bin/prguard-client", "bin/prguard-audit", "lib/prguard/bin/python",
    "lib/prguard/pyvenv.cfg",
    "lib/systemd/system/prguard.service", "lib/systemd/system/prguard.socket",
    "lib/sysusers.d/prguard.conf", "lib/tmpfiles.d/prguard.conf", "share/man/man8/prguard.8",
    "share/man/man1/prguard-client.1", "share/man/man1/prguard-audit.1",
}


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(REPO), "--no-print-directory", *args],
                          capture_output=True, text=True, timeout=900)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


@pytest.fixture(scope="module")
def destdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("destdir")
    installed = make("install", f"DESTDIR={root}")
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    return root


def in_installed_system(destdir: Path, argv: Sequence[str], etc: Path | None = None
                        ) -> list[str]:
    """argv run with the staged PREFIX mounted over the real one (and, with `etc`, its
    passwd and group over the system's, and a /run of its own made by the installed
    tmpfiles.d entry), in a mount namespace of its own where the staging directory
    itself is empty: only the final paths work. unshare and sh exec, so the command
    keeps the pid."""
    mounts = [f"mount --bind {destdir}{PREFIX} {PREFIX}", f"mount -t tmpfs none {destdir}"]
    if etc is not None:
        mounts += [f"mount --bind {etc}/{name} /etc/{name}" for name in ("passwd", "group")]
        mounts += ["mount -t tmpfs none /run",
                   f"systemd-tmpfiles --create {PREFIX}/lib/tmpfiles.d/prguard.conf"]
    script = " && ".join(mounts) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            *argv]


def test_install_writes_what_an_administrator_needs(destdir: Path) -> None:
    prefix = destdir / PREFIX.lstrip("/")
    assert files_under(prefix) >= INSTALLED
    assert files_under(destdir) == {f"{PREFIX.lstrip('/')}/{f}" for f in files_under(prefix)}
    assert os.readlink(prefix / "bin/prguard") == "../lib/prguard/bin/prguard"
    service = (prefix / "lib/systemd/system/prguard.service").read_text()
    assert re.search(rf"^ExecStart={PREFIX}/bin/prguard -u prguard -g prguard "
                     rf"--metrics-file=/run/prguard/metrics.prom$", service, re.M)
    assert (prefix / "lib/systemd/system/prguard.socket").read_bytes() == \
        (REPO / "systemd/prguard.socket").read_bytes()
    sysusers = (prefix / "lib/sysusers.d/prguard.conf").read_text()
    assert re.search(r"^u prguard - ", sysusers, re.M)
    tmpfiles = (prefix / "lib/tmpfiles.d/prguard.conf").read_text()
    assert re.search(r"^d /run/prguard 0755 prguard prguard -$", tmpfiles, re.M)


def test_nothing_staged_names_the_staging_directory(destdir: Path) -> None:
    """Scripts' #! lines, pyvenv.cfg and the compiled modules' file names (tracebacks)
    all name the final paths: a virtual environment cannot be moved."""
    staged = str(destdir).encode()
    for path in destdir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert staged not in path.read_bytes(), path
    venv = destdir / PREFIX.lstrip("/") / "lib/prguard"
    assert (venv / "bin/prguard").read_text().startswith(f"#!{PREFIX}/lib/prguard/bin/python\n")
    config = (venv / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", config, re.M)
    assert list(venv.rglob("prguard/__pycache__/cli.*.pyc"))
    # the JSON Schema of prguard-client --json, shipped with the package
    assert len(list(venv.rglob("prguard/client/output.schema.json"))) == 1


def test_the_installed_commands_run_from_their_final_paths(destdir: Path,
                                                           loop_disk: str) -> None:
    version = subprocess.run(in_installed_system(destdir, [f"{PREFIX}/bin/prguard", "-V"]),
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith(f"{PREFIX}/bin/prguard (prguard) {__version__}\n")
    sock = f"/tmp/pg-inst-{os.getpid()}.sock"
    helper = subprocess.Popen(in_installed_system(destdir, [f"{PREFIX}/bin/prguard", "-k", sock]),
                              stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run(
            in_installed_system(destdir, [
                "sh", "-c", f"while [ ! -S {sock} ]; do sleep 0.05; done; exec \"$@\"",
                "sh", f"{PREFIX}/bin/prguard-client", "--socket", sock, "--json", loop_disk]),
            capture_output=True, text=True, timeout=60)
        # SG_IO on a loop device fails with EINVAL: the whole path, answered 05/24/00
        # (sg_persist's exit status 5, ILLEGAL REQUEST).
        assert client.returncode == 5, client.stderr
        assert '"status": "CHECK CONDITION"' in client.stdout
        assert '"code": "05/24/00"' in client.stdout
        man = subprocess.run(in_installed_system(destdir, ["man", "-w", "prguard"]),
                             capture_output=True, text=True, check=True)
        assert man.stdout.strip() == f"{PREFIX}/share/man/man8/prguard.8"
    finally:
        assert stop_process(helper) == 0
    assert not os.path.exists(sock)


def test_systemd_accepts_the_installed_units(destdir: Path) -> None:
    """systemd-analyze verify: the syntax, and ExecStart='s program is there and
    executable (the man page Documentation= names: the test above)."""
    units = [f"{PREFIX}/lib/systemd/system/prguard.{kind}" for kind in ("socket", "service")]
    verified = subprocess.run(in_installed_system(destdir, ["systemd-analyze", "verify",
                                                            "--man=no", *units]),
                              capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


@pytest.fixture
def etc_with_prguard_user(destdir: Path, tmp_path: Path) -> Path:
    """The system's passwd and group plus what the installed sysusers.d entry creates."""
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc").mkdir(exist_ok=True)
        shutil.copy2(f"/etc/{name}", tmp_path / "etc" / name)
    conf = destdir / PREFIX.lstrip("/") / "lib/sysusers.d/prguard.conf"
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(conf)], check=True,
                   capture_output=True)
    assert re.search(r"^prguard:x:\d+:\d+:", (tmp_path / "etc/passwd").read_text(), re.M)
    return tmp_path / "etc"


def test_the_installed_service_starts_as_systemd_starts_it(
        destdir: Path, etc_with_prguard_user: Path, fd_zoo: dict[str, int]) -> None:
    """ExecStart= of the installed unit, with an activated socket and NOTIFY_SOCKET, as
    the installed prguard user: it serves, and nothing it maps lies where the unit's
    ProtectHome= and PrivateTmp= would hide it."""
    unit = (destdir / PREFIX.lstrip("/") / "lib/systemd/system/prguard.service").read_text()
    match = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert match
    argv = shlex.split(match.group(1))
    tag = os.urandom(4).hex()
    notify_path, sock_path = f"/tmp/{tag}.notify", f"/tmp/{tag}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(16)
    proc = subprocess.Popen(
        in_installed_system(destdir, activated(listener.fileno(), argv), etc_with_prguard_user),
        pass_fds=(listener.fileno(),), env=dict(os.environ, NOTIFY_SOCKET=notify_path),
        stderr=subprocess.PIPE)
    listener.close()
    try:
        message = notify.recv(4096).decode()
        assert message.startswith("READY=1\n") and f"MAINPID={proc.pid}" in message
        (worker,) = children(proc.pid)
        for pid in (proc.pid, worker):
            uid = proc_status(pid)["Uid"].split()[0]
            assert uid != "0" and uid == str(_uid_of("prguard", etc_with_prguard_user))
            mapped = {line.split(None, 5)[5] for line in
                      Path(f"/proc/{pid}/maps").read_text().splitlines()
                      if len(line.split(None, 5)) == 6 and line.split(None, 5)[5][0] == "/"}
            assert any(m.startswith(f"{PREFIX}/lib/prguard/") for m in mapped)
            assert not [m for m in mapped if m.startswith(("/root/", "/home/", "/tmp/"))]
        with Client(sock_path) as client:
            assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2  # CHECK CONDITION
        # The unit's --metrics-file, in the directory the tmpfiles.d entry made.
        metrics = Path(f"/proc/{proc.pid}/root/run/prguard/metrics.prom")
        deadline = time.monotonic() + 15
        while "prguard_requests_total{" not in metrics.read_text():
            assert time.monotonic() < deadline, metrics.read_text()
            time.sleep(0.2)
        assert metrics.stat().st_uid == _uid_of("prguard", etc_with_prguard_user)
        proc.terminate()
        while (state := notify.recv(4096)).startswith(b"STATUS="):  # reports meanwhile
            pass
        assert state == b"STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        os.unlink(notify_path)
        os.unlink(sock_path)


def _uid_of(user: str, etc: Path) -> int:
    for line in (etc / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise LookupError(user)


def test_install_honours_prefix_and_a_relative_destdir(tmp_path: Path) -> None:
    """Packagers' DESTDIR may be relative (to the source tree) and end in a slash."""
    relative = os.path.relpath(tmp_path, REPO) + "/"
    installed = make("install", f"DESTDIR={relative}", "PREFIX=/opt/pg")
    assert installed.returncode == 0, installed.stderr[-2000:]
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert str(tmp_path).encode() not in path.read_bytes(), path
    prefix = tmp_path / "opt/pg"
    assert "\nExecStart=/opt/pg/bin/prguard -u prguard -g prguard " \
        "--metrics-file=/run/prguard/metrics.prom\n" in \
        (prefix / "lib/systemd/system/prguard.service").read_text()
    assert (prefix / "lib/prguard/bin/prguard-client").read_text().startswith(
        "#!/opt/pg/lib/prguard/bin/python\n")
    page = (prefix / "share/man/man8/prguard.8").read_text()
    assert "/opt/pg/lib/sysusers.d/prguard.conf" in page
    assert os.path.realpath(prefix / "bin/prguard") == str(prefix / "lib/prguard/bin/prguard")


def test_uninstall_removes_everything_install_wrote(tmp_path: Path) -> None:
    assert make("install", f"DESTDIR={tmp_path}").returncode == 0
    assert files_under(tmp_path / "usr/local") >= INSTALLED
    uninstalled = make("uninstall", f"DESTDIR={tmp_path}")
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert files_under(tmp_path) == set()
    assert not (tmp_path / "usr/local/lib/prguard").exists()


@pytest.mark.parametrize("setting", ["LIBDIR=/usr/local/lib", "LIBDIR=/home/admin/prguard",
                                     "PREFIX=/tmp/pg"])
def test_install_refuses_paths_the_service_cannot_use(tmp_path: Path, setting: str) -> None:
    (tmp_path / "keep").write_text("")
    refused = make("install", f"DESTDIR={tmp_path}", setting)
    assert refused.returncode != 0
    assert re.search(r"must end in /prguard|under /root, /home or /tmp", refused.stderr)
    assert files_under(tmp_path) == {"keep"}
