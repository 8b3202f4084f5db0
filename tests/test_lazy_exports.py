"""Packages that export on first use (``immunostrat.lazy``): every exported name resolves to its
submodule's object, and importing the package alone loads none of the heavy submodules."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

LAZY = {"immunostrat.trial": ("sqlalchemy", "odmlib"), "immunostrat.concepts": ("pint",)}


@pytest.mark.parametrize("package", sorted(LAZY))
def test_every_export_resolves_to_its_submodule(package: str) -> None:
    module = importlib.import_module(package)
    exports = module._SUBMODULE_EXPORTS
    # the three lists agree: __all__ (ruff holds the type-checking imports to it) and this mapping
    assert sorted(module.__all__) == sorted(n for names in exports.values() for n in names)
    for submodule, names in exports.items():
        source = importlib.import_module(f"{package}.{submodule}")
        for name in names:
            assert getattr(module, name) is getattr(source, name), name
    with pytest.raises(AttributeError, match="no attribute 'not_exported'"):
        module.not_exported  # noqa: B018


@pytest.mark.parametrize("package", sorted(LAZY))
def test_importing_the_package_loads_no_heavy_module(package: str) -> None:
    code = f"import sys, json, {package}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert not {m for m in LAZY[package] if m in loaded}, loaded & set(LAZY[package])
