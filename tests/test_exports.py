"""Each package's ``__all__`` is exactly what it exports (as httpx's
tests/test_exported_members.py checks), sorted the way the code base sorts it.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import crypto
import mesh
import node
import simulations

PACKAGES = [crypto, mesh, node, simulations]


def sort_key(name: str) -> tuple[int, str]:
    # isort's (and ruff RUF022's) order for __all__: CONSTANTS, then Classes, then
    # functions; alphabetical within each group.
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_all_matches_the_exports(package: types.ModuleType) -> None:
    exported = package.__all__
    assert exported == sorted(exported, key=sort_key)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(package, name), name
    assert set(exported) == public_names(package)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_private_modules_list_what_they_define(package: types.ModuleType) -> None:
    # A module's __all__ names only what it has, and the package re-exports from there.
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):
            continue  # importing it runs the program
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        if names is None:
            continue
        assert len(set(names)) == len(names), info.name
        for name in names:
            assert hasattr(module, name), f"{info.name}.{name}"


def test_crypto_exports_come_from_its_modules() -> None:
    for name in crypto.__all__:
        owners = [
            module_name
            for module_name in (
                "_address",
                "_capability",
                "_cbor",
                "_coords",
                "_envelope",
                "_errors",
                "_frames",
                "_identity",
            )
            if name in getattr(importlib.import_module(f"crypto.{module_name}"), "__all__", ())
        ]
        assert owners, f"crypto.{name} is not in any crypto module's __all__"
        owner = importlib.import_module(f"crypto.{owners[0]}")
        assert getattr(crypto, name) is getattr(owner, name)
