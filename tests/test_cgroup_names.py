"""A client's systemd unit and libvirt domain, from its cgroup."""

from __future__ import annotations

import pytest

from prguard.shared.cgroup_names import cgroup_path, domain_of, machine_name, unescape, unit_of

LIBVIRT = "/machine.slice/machine-qemu\\x2d1\\x2dweb02.scope/libvirt/emulator"


@pytest.mark.parametrize(("text", "path"), [
    ("0::/machine.slice/x.scope\n", "/machine.slice/x.scope"),
    # hybrid: the unified hierarchy wins over the v1 lines
    ("9:name=systemd:/system.slice/a.service\n4:memory:/m\n0::/system.slice/b.service\n",
     "/system.slice/b.service"),
    # v1 only: systemd's named hierarchy
    ("4:memory:/m\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n",
     "/user.slice/user-1000.slice/session-2.scope"),
    ("4:memory:/m\n", None),
    ("", None),
    ("garbage\n0:x\n", None),
    ("0::relative\n", None),
])
def test_cgroup_path(text: str, path: str | None) -> None:
    assert cgroup_path(text) == path


@pytest.mark.parametrize(("path", "unit"), [
    (LIBVIRT, "machine-qemu\\x2d1\\x2dweb02.scope"),
    ("/system.slice/prguard.service", "prguard.service"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/vm.service", "user@1000.service"),
    ("/machine.slice/tenant-a.slice/machine-qemu\\x2d3\\x2dx.scope",
     "machine-qemu\\x2d3\\x2dx.scope"),
    ("/system.slice/_cpu.service", "cpu.service"),  # cg_escape's leading underscore
    ("/", None),
    ("/machine.slice", None),
    ("/prguard-test/vm-a", None),  # not systemd's: no unit
    ("/init.scope", "init.scope"),
])
def test_unit(path: str, unit: str | None) -> None:
    assert unit_of(path) == unit


@pytest.mark.parametrize(("path", "machine", "domain"), [
    (LIBVIRT, "qemu-1-web02", "web02"),
    ("/machine.slice/machine-qemu\\x2d12\\x2dweb\\x2d2.scope", "qemu-12-web-2", "web-2"),
    # a domain whose name starts with digits and dashes
    ("/machine.slice/machine-qemu\\x2d7\\x2d3\\x2dx.scope", "qemu-7-3-x", "3-x"),
    # a session daemon's machine names carry the user
    ("/user.slice/user-1000.slice/user@1000.service/machine.slice/"
     "machine-qemu\\x2dalice\\x2d3\\x2dweb.scope", "qemu-alice-3-web", "web"),
    # an embedded driver's: a hash of its root
    ("/machine.slice/machine-qemu\\x2dembed\\x2d1a2b3c4d\\x2d5\\x2dweb.scope",
     "qemu-embed-1a2b3c4d-5-web", "web"),
    # libvirt on cgroupfs without systemd
    ("/machine/qemu-4-db01.libvirt-qemu/emulator", "qemu-4-db01", "db01"),
    # other machines (systemd-nspawn) and plain services are no VM
    ("/machine.slice/machine-container1.scope", None, None),
    ("/system.slice/libvirtd.service", None, None),
    ("/machine.slice/machine-qemu\\x2dnoid.scope", "qemu-noid", None),
    ("/", None, None),
])
def test_machine_and_domain(path: str, machine: str | None, domain: str | None) -> None:
    assert machine_name(path) == machine
    assert domain_of(path) == domain


def test_unescape() -> None:
    assert unescape("machine-qemu\\x2d1\\x2dweb02.scope") == "machine-qemu-1-web02.scope"
    assert unescape("a\\x2fb\\x5c") == "a/b\\"
    assert unescape("no\\xzz") == "no\\xzz"
