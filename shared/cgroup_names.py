"""What a client's cgroup says about it: the systemd unit and the libvirt domain.

The cgroup is what the host put the process in, not something the client chooses (its
argv and comm are). From `/proc/<pid>/cgroup` the broker takes the unified (v2)
hierarchy's path, or on a system with only v1 hierarchies the `name=systemd` one.

- unit: systemd's rule (cg_path_get_unit): after the leading `*.slice` components, the
  first component that is a unit name, e.g. `machine-qemu\\x2d1\\x2dweb02.scope` or
  `user@1000.service`. Kept escaped, as `systemctl` and the journal name it.
- domain: libvirt runs a QEMU in `machine-<machine name>.scope` under systemd (or
  `<machine name>.libvirt-qemu` without it), where the machine name is `qemu-<id>-<name>`
  (`qemu-<user>-<id>-<name>` for a session daemon). The domain is that `<name>` as libvirt
  spells it there: only letters, digits, `-` and `.`, and the whole machine name at most
  64 characters (so `web_02` is `web02`).
"""

from __future__ import annotations

import re

#: systemd's unit types (unit-name.h).
UNIT_SUFFIXES = frozenset({"service", "socket", "device", "mount", "automount", "swap",
                           "target", "path", "timer", "slice", "scope"})
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_MACHINE_SCOPE = re.compile(r"^machine-(.+)\.scope$")
_LIBVIRT_CGROUPFS = re.compile(r"^(.+)\.libvirt-qemu$")
_PRIVILEGED = re.compile(r"^qemu-(\d+)-(.+)$")
_OTHER = re.compile(r"^qemu-.+?-(\d+)-(.+)$")


def cgroup_path(proc_cgroup: str) -> str | None:
    """The path a /proc/<pid>/cgroup file gives for the unified hierarchy (`0::`), or
    for systemd's v1 hierarchy when there is no unified one; None if neither."""
    systemd_v1 = None
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep or not path.startswith("/"):
            continue
        if number == "0" and controllers == "":
            return path
        if controllers == "name=systemd":
            systemd_v1 = path
    return systemd_v1


def unescape(name: str) -> str:
    """systemd's unit name escaping (\\x2d is '-') undone."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def _component(name: str) -> str:
    """A cgroup directory name as systemd escapes it (cg_escape: a leading '_' is added
    to names that could clash with the kernel's files), unescaped."""
    return name[1:] if name.startswith("_") else name


def _is_unit(name: str) -> bool:
    prefix, dot, suffix = name.rpartition(".")
    return bool(dot and prefix and suffix in UNIT_SUFFIXES)


def unit_of(path: str) -> str | None:
    for raw in path.split("/"):
        name = _component(raw)
        if not name:
            continue
        if name.endswith(".slice"):
            continue
        return name if _is_unit(name) else None
    return None


def machine_name(path: str) -> str | None:
    """libvirt's machine name (`qemu-1-web02`) from a component of the path."""
    for raw in path.split("/"):
        name = _component(raw)
        match = _MACHINE_SCOPE.match(name) or _LIBVIRT_CGROUPFS.match(name)
        if match:
            machine = unescape(match.group(1)) if name.endswith(".scope") else match.group(1)
            if machine.startswith("qemu-"):
                return machine
    return None


def domain_of(path: str) -> str | None:
    machine = machine_name(path)
    if machine is None:
        return None
    match = _PRIVILEGED.match(machine) or _OTHER.match(machine)
    return match.group(2) if match else None
