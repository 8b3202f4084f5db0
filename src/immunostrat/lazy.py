"""Package exports imported on first use (PEP 562), so that a command pays only for what it runs.

``immunostrat --help`` imported every layer (trial storage, ODM, units) before printing a line;
a package whose ``__init__`` re-exports heavy modules names them here instead of importing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` for ``package``: ``exports`` maps a public name to the submodule
    (relative to ``package``) that defines it; the value is imported once and cached."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        importlib.import_module(package).__dict__[name] = value
        return value

    return __getattr__
