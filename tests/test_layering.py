"""Conventions that keep the privilege split honest and the layout as docs/ARCHITECTURE.md
describes it, checked over the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

from lab.processes import REPO

#: Source directories of the installed packages; prguard/ itself is the launcher (its
#: subpackage entries are links to these directories).
PACKAGES = ("shared", "broker", "worker", "opener", "prguard", "client", "audit", "seccomp")


#: Top-level directories that are not installed: the lab (VM harness, helper processes,
#: scripted and hostile clients), and what uses it.
TOOLS = ("lab", "bench", "demo", "fuzz", "man", "tests")


def files(package: str) -> list[Path]:
    if package == "prguard":
        return sorted((REPO / package).glob("*.py"))
    return sorted((REPO / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Dotted names a module imports; `from a.b import c` gives both a.b and a.b.c (c may
    be a module or a name in a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _top(module: str) -> str:
    """`prguard.broker.server` -> `broker`; `prguard.main` -> `prguard`; `os` -> `os`."""
    parts = module.split(".")
    if parts[0] == "prguard" and len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    return parts[0]


def imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in files(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {_top(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(_top(node.module))
    return found


def test_packages_import_each_other_only_through_the_prguard_namespace() -> None:
    for package in PACKAGES:
        for path in files(package):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.module
                         and not node.level else [])
                for name in names:
                    assert name.split(".")[0] not in {p for p in PACKAGES if p != "prguard"}, (
                        f"{path.relative_to(REPO)} imports {name}")


def test_shared_imports_neither_side() -> None:
    assert not imports("shared") & {"broker", "worker", "opener", "prguard", "client", "audit"}


def test_broker_and_worker_never_import_each_other() -> None:
    assert "worker" not in imports("broker")
    assert "broker" not in imports("worker")
    assert not (imports("broker") | imports("worker")) & {"prguard", "client", "audit"}


def test_the_path_opener_imports_no_other_process() -> None:
    """It shares the message schema and sysfs reading with the others, nothing more."""
    assert not imports("opener") & {"broker", "worker", "prguard", "client", "audit"}
    assert "opener" not in imports("broker") | imports("worker")


def test_the_operator_client_uses_only_shared() -> None:
    assert not imports("client") & {"broker", "worker", "prguard", "audit"}


def test_the_audit_tool_uses_only_shared() -> None:
    """prguard-audit reads files the worker wrote: the record schema and the chain are
    shared; nothing of the running processes."""
    assert not imports("audit") & {"broker", "worker", "client"}


def _entry_point_names(module: str) -> set[str]:
    import importlib
    names: list[str] = importlib.import_module(module).__all__
    return set(names)


def test_the_launcher_uses_only_the_entry_points_of_the_processes() -> None:
    """prguard/*.py configures and starts each process through its main module, and
    uses only what that module names in __all__."""
    entry = {"prguard.broker": "prguard.broker.main", "prguard.worker": "prguard.worker.main",
             "prguard.opener": "prguard.opener.main"}
    for path in files("prguard"):
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> entry-point module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    side = ".".join(alias.name.split(".")[:2])
                    assert side not in entry, f"{path.name}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                side = ".".join(node.module.split(".")[:2])
                if side not in entry:
                    continue
                for alias in node.names:
                    if node.module == side:  # from prguard.broker import main
                        assert f"{side}.{alias.name}" == entry[side], (
                            f"{path.name}: from {side} import {alias.name}")
                        aliases[alias.asname or alias.name] = entry[side]
                    else:  # from prguard.broker.main import NAME
                        assert node.module == entry[side], f"{path.name}: {node.module}"
                        assert alias.name in _entry_point_names(node.module), (
                            f"{path.name}: {alias.name} is not in {node.module}.__all__")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                assert node.attr in _entry_point_names(aliases[node.value.id]), (
                    f"{path.name}: {node.value.id}.{node.attr} is not in its __all__")


def test_nothing_outside_tests_imports_tests() -> None:
    for package in (*PACKAGES, *TOOLS):
        if package == "tests":
            continue
        for path in files(package):
            assert not {n for n in imported(path) if n.split(".")[0] == "tests"}, path


def test_the_lab_imports_none_of_its_users() -> None:
    for path in files("lab"):
        assert not {n.split(".")[0] for n in imported(path)} & {"bench", "demo", "tests"}, path


def test_the_tests_folder_holds_only_tests() -> None:
    """Helpers that tests, bench and demo share are in lab/."""
    for path in files("tests"):
        assert path.name in ("__init__.py", "conftest.py") or path.name.startswith("test_"), path


def sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in files(pkg)]


def calls_to(name: str) -> set[str]:
    where: set[str] = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == name):
                where.add(str(path.relative_to(REPO)))
    return where


def test_one_ioctl_call_site() -> None:
    assert calls_to("ioctl") == {"worker/sgio.py"}


#: What a message field may hold: immutable scalars, nothing ad hoc (no dict, list, Any),
#: the reply triple or a map's path, themselves frozen classes of such scalars (checked
#: below as well), or tuples of those.
FIELD_TYPES = {"int", "bytes", "str", "bool", "PrReply", "tuple[int, ...]",
               "tuple[PathState, ...]"}


def test_every_message_class_is_frozen_and_plainly_typed() -> None:
    from dataclasses import fields, is_dataclass

    from prguard.shared import messages, qemu_protocol, scsi
    checked = []
    for module in (messages, qemu_protocol, scsi):
        for obj in vars(module).values():
            if isinstance(obj, type) and is_dataclass(obj) and obj.__module__ == module.__name__:
                assert obj.__dataclass_params__.frozen, obj  # type: ignore[attr-defined]
                for f in fields(obj):
                    assert f.type in FIELD_TYPES, (obj, f.name, f.type)
                    if f.type == "PrReply":
                        assert {g.type for g in fields(scsi.PrReply)} <= {"int", "bytes"}
                    if f.type == "tuple[PathState, ...]":
                        assert {g.type for g in fields(messages.PathState)} <= {
                            "int", "str", "bool"}
                checked.append(obj.__name__)
    assert {"SgIoRequest", "SgIoResult", "Refused", "PrRequest", "PrReply"} <= set(checked)


def test_broad_excepts_only_at_process_boundaries() -> None:
    allowed = {"worker/main.py", "prguard/main.py"}
    found: set[str] = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and (
                    node.type is None or (isinstance(node.type, ast.Name)
                                          and node.type.id in ("Exception", "BaseException"))):
                found.add(str(path.relative_to(REPO)))
    assert found <= allowed
