"""Conventions that keep the privilege split honest, checked over the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

from lab.processes import REPO

#: Source directories of the installed packages; prguard/ itself is the launcher (its
#: subpackage entries are links to these directories).
PACKAGES = ("shared", "broker", "worker", "prguard", "client", "seccomp")


def files(package: str) -> list[Path]:
    if package == "prguard":
        return sorted((REPO / package).glob("*.py"))
    return sorted((REPO / package).rglob("*.py"))


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
    assert not imports("shared") & {"broker", "worker", "prguard"}


def test_broker_and_worker_never_import_each_other() -> None:
    assert "worker" not in imports("broker")
    assert "broker" not in imports("worker")
    assert "prguard" not in imports("broker") | imports("worker")


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


def test_every_message_class_is_frozen() -> None:
    from dataclasses import fields, is_dataclass

    from prguard.shared import messages, qemu_protocol
    for module in (messages, qemu_protocol):
        for obj in vars(module).values():
            if isinstance(obj, type) and is_dataclass(obj) and obj.__module__ == module.__name__:
                assert obj.__dataclass_params__.frozen, obj  # type: ignore[attr-defined]
                assert fields(obj) is not None


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
