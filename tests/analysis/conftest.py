"""Shared fixtures for the analysis tests: small synthetic exports written in the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from immunostrat.analysis.schema import TrialExport
from immunostrat.analysis.synthetic import synthetic_sle_trial, synthetic_trial


@pytest.fixture(scope="session")
def sepsis_export() -> TrialExport:
    return synthetic_trial(n=200, seed=7, effect=0.2, withdrawn_with_removal=3)


@pytest.fixture(scope="session")
def sepsis_dir(tmp_path_factory: pytest.TempPathFactory, sepsis_export: TrialExport) -> Path:
    return sepsis_export.write(tmp_path_factory.mktemp("sepsis"))


@pytest.fixture(scope="session")
def sle_export() -> TrialExport:
    return synthetic_sle_trial(n=30, seed=3)


@pytest.fixture(scope="session")
def sepsis_report(tmp_path_factory: pytest.TempPathFactory, sepsis_dir: Path) -> dict:
    """One end-to-end run (HTML, JSON and, where Chromium exists, PDF) shared by the runner and
    report tests: the analysis is the slow part, so it runs once per session."""
    from immunostrat.analysis.report import analyze, find_chromium

    out = tmp_path_factory.mktemp("report")
    has_browser = find_chromium() is not None
    results = analyze(
        sepsis_dir, "immunosep-2025", out / "report.html", pdf=has_browser, json_path=out / "results.json"
    )
    return {"dir": out, "results": results, "browser": has_browser}
