"""Score definitions (band tables) loaded from ``definitions/*.yaml``: data, versioned by id."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

SCORE_FILES = {
    "sofa": "sofa-1996.yaml",
    "sofa-1996": "sofa-1996.yaml",
    "sofa-2": "sofa-2.yaml",
    "qsofa": "qsofa.yaml",
    "sepsis3": "sepsis3.yaml",
    "hscore": "hscore.yaml",
    "mex-sledai": "mex-sledai.yaml",
    "sledai-2k": "sledai-2k.yaml",
}


@cache
def load_definition(name: str) -> dict[str, Any]:
    """The band table of score ``name`` (e.g. ``sofa``), as shipped."""
    if name not in SCORE_FILES:
        raise KeyError(f"unknown score {name!r}; known: {', '.join(SCORE_FILES)}")
    path = resources.files("immunostrat.scores").joinpath("definitions", SCORE_FILES[name])
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data
