"""The wheel and the sdist a distribution builds from this tree (`python -m build`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

from lab.processes import REPO
from prguard import __version__


@dataclass(frozen=True)
class Built:
    output: str
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("dist")
    # Byte-compiling is skipped, with a warning, where PYTHONDONTWRITEBYTECODE is set.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Built(proc.stdout + proc.stderr, wheel, sdist)


def test_the_build_warns_about_nothing(built: Built) -> None:
    # pip's notes on a configured index location that does not exist are not the build's
    lines = [line for line in built.output.splitlines() if "Location 'file:" not in line]
    assert not [line for line in lines if re.search(r"warn|deprecat", line, re.I)]


def test_the_wheel_installs_only_under_the_prguard_namespace(built: Built) -> None:
    names = zipfile.ZipFile(built.wheel).namelist()
    dist_info = f"prguard-{__version__}.dist-info/"
    assert [n for n in names if not n.startswith(("prguard/", dist_info))] == []
    for package in ("broker", "worker", "opener", "shared", "client", "audit", "seccomp",
                    "man"):
        assert f"prguard/{package}/__init__.py" in names
    assert {"prguard/seccomp/broker.policy", "prguard/seccomp/worker.policy",
            "prguard/seccomp/opener.policy"} <= set(names)
    assert f"{dist_info}licenses/LICENSE" in names


def test_metadata_has_an_spdx_license_and_the_one_version(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        metadata = Parser().parsestr(
            wheel.read(f"prguard-{__version__}.dist-info/METADATA").decode())
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "GPL-3.0-or-later"
    assert not [c for c in metadata.get_all("Classifier", []) if c.startswith("License ::")]
    assert built.wheel.name == f"prguard-{__version__}-py3-none-any.whl"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert not re.search(r"^version\s*=", pyproject.split("[project.optional")[0], re.M)


def test_the_sdist_builds_and_installs_and_carries_no_tests(built: Built) -> None:
    """What `make install` needs from a release tarball; the tests stay in the repository
    (they need root, loop devices and the lab VM)."""
    top = f"prguard-{__version__}/"
    with tarfile.open(built.sdist) as sdist:
        names = {n.removeprefix(top) for n in sdist.getnames()}
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.split())
    wanted = {name for name in tracked if name.split("/")[0] in {
        "broker", "worker", "opener", "shared", "client", "audit", "seccomp", "man",
        "systemd", "docs"}
        or re.fullmatch(r"prguard/[^/]+\.py", name)}
    wanted |= {"Makefile", "README.md", "LICENSE", "pyproject.toml", "MANIFEST.in"}
    assert wanted <= names
    assert not [n for n in names if n.startswith(("tests/", "lab/", "fuzz/", "bench/",
                                                    "demo/", ".ci/"))]
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


def test_make_install_works_from_the_unpacked_sdist(built: Built, tmp_path: Path) -> None:
    # tar(1): Python 3.11 before 3.11.4 (Debian 12's) has no extraction filters
    subprocess.run(["tar", "-xzf", str(built.sdist), "-C", str(tmp_path)], check=True)
    tree = tmp_path / f"prguard-{__version__}"
    stage = tmp_path / "stage"
    proc = subprocess.run(["make", "-C", str(tree), "install", f"DESTDIR={stage}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    prefix = stage / "usr/local"
    assert (prefix / "share/man/man8/prguard.8").read_text().startswith(".TH PRGUARD 8 ")
    assert (prefix / "lib/systemd/system/prguard.socket").exists()
    assert list(prefix.glob("lib/prguard/lib/python3*/site-packages/prguard/broker/main.py"))
