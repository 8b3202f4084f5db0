"""Helpers for the source adapter tests (a uniquely named module: tests/ folders have no __init__)."""

from __future__ import annotations

from pathlib import Path

import pytest

from immunostrat.sources import SourceData

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHYSIONET_TEST_FILES = 300


def shared(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"real demo data not available: {path} is absent (shared data folder missing)")
    return path


def status(data: SourceData, concept: str) -> tuple[str, int, str]:
    for item in data.report:
        if item.concept == concept:
            return item.status, item.rows, item.detail
    raise AssertionError(f"{concept} not in the report")


def write_csv(path: Path, text: str) -> Path:
    """A CSV fixture from an indented literal (leading spaces stripped on every line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n", encoding="utf-8")
    return path
