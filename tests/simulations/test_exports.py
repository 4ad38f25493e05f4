"""``simulations.__all__`` is exactly what it exports, sorted as the code base sorts it
(the same checks as tests/test_exports.py makes for crypto and mesh)."""

from __future__ import annotations

import importlib
import pkgutil
import types

import simulations


def sort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_matches_the_exports() -> None:
    exported = simulations.__all__
    assert exported == sorted(exported, key=sort_key)
    assert len(set(exported)) == len(exported)
    public = {
        name
        for name, value in vars(simulations).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(exported) == public


def test_private_modules_list_what_they_define() -> None:
    for info in pkgutil.iter_modules(simulations.__path__, "simulations."):
        if info.name == "simulations.__main__":
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        assert names is not None, f"{info.name} has no __all__"
        assert len(set(names)) == len(names), info.name
        for name in names:
            assert hasattr(module, name), f"{info.name}.{name}"
    for name in simulations.__all__:
        assert name.isupper() or getattr(simulations, name).__module__.startswith("simulations")
