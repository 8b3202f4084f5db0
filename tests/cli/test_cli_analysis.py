"""`immunostrat analyze`, `published` and `design samplesize` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from immunostrat.analysis import write_synthetic_trial
from immunostrat.cli import app

runner = CliRunner()


def test_analyze_writes_json_results(tmp_path: Path) -> None:
    export = write_synthetic_trial(tmp_path / "export", n=120, seed=3)
    results = tmp_path / "results.json"
    result = runner.invoke(
        app, ["analyze", "--data", str(export), "--plan", "immunosep-2025", "--json", str(results)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(results.read_text())
    assert data["plan"]["id"] == "immunosep-2025"
    primary = next(e for e in data["endpoints"] if e["role"] == "primary")
    assert primary["id"] == "sofa_response_day9"
    assert "SOFA response by day 9" in result.stdout


def test_analyze_rejects_a_missing_export(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["analyze", "--data", str(tmp_path / "nothing"), "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "r.json").exists()


def test_samplesize_reproduces_immunosep_117_per_arm() -> None:
    result = runner.invoke(
        app,
        [
            "design",
            "samplesize",
            "proportions",
            "--p-control",
            "0.2",
            "--p-treated",
            "0.4",
            "--dropout",
            "0.15",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "117 + 117 = 234" in result.stdout
    assert "276 allowing for drop-out" in result.stdout


def test_published_lists_and_reproduces() -> None:
    listing = runner.invoke(app, ["published"])
    assert listing.exit_code == 0 and "immunosep-jama-2025" in listing.stdout
    table = runner.invoke(app, ["published", "immunosep-jama-2025"])
    assert table.exit_code == 0 and "Newcombe" in table.stdout
    bad = runner.invoke(app, ["published", "nope"])
    assert bad.exit_code == 2


def test_published_prints_p_values_matching_test_notes_and_full_title() -> None:
    immunosep = runner.invoke(app, ["published", "immunosep-jama-2025"], env={"COLUMNS": "200"})
    assert immunosep.exit_code == 0, immunosep.output
    text = immunosep.stdout
    assert "e2524175" in text  # the end of the citation: nothing cut at 100 characters
    assert "P, fisher" in text and "(the paper's test)" in text
    assert "test matching the printed P" in text
    assert "No standard 2x2 test gives .04" in text  # the MALS note
    sepcell = runner.invoke(app, ["published", "sepcell-jcc-2024"], env={"COLUMNS": "200"})
    assert sepcell.exit_code == 0 and "13/15, 26/30" in sepcell.stdout and "12.2 days" in sepcell.stdout
    sle = runner.invoke(app, ["published", "sle-secretome-narra-2025"], env={"COLUMNS": "200"})
    assert sle.exit_code == 0 and "fell more with secretome than placebo" in sle.stdout


SIZE_PROPORTIONS = ["design", "samplesize", "proportions", "--p-control", "0.2", "--p-treated", "0.4"]


def test_samplesize_prints_achieved_power_and_takes_an_allocation_ratio() -> None:
    res = runner.invoke(
        app,
        [
            "design",
            "samplesize",
            "proportions",
            "--p-control",
            "0.2",
            "--p-treated",
            "0.4",
            "--ratio",
            "2",
            "--method",
            "normal",
        ],
    )
    assert res.exit_code == 0, res.output
    # rpact getSampleSizeRates(0.4, 0.2, allocationRatioPlanned = 2): 163.75 + 81.88 -> 164 + 82
    assert "164 + 82 = 246" in res.stdout and "achieved power" in res.stdout
    bad = runner.invoke(
        app,
        [
            "design",
            "samplesize",
            "proportions",
            "--p-control",
            "0.2",
            "--p-treated",
            "0.4",
            "--method",
            "wald",
        ],
    )
    assert bad.exit_code == 2


def test_analyze_prints_not_estimable_reasons_in_words(tmp_path: Path) -> None:
    """One week of follow-up and nobody dead: the console says why, never a Python exception."""
    import polars as pl

    from immunostrat.analysis.schema import TrialExport
    from immunostrat.analysis.synthetic import synthetic_trial

    e = synthetic_trial(n=80, seed=11)
    outcomes = e.outcomes.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("death_day"),
        pl.lit(9, dtype=pl.Int64).alias("last_contact_day"),
    )
    folder = tmp_path / "export"
    TrialExport(e.participants, e.daily_assessments, outcomes, e.screening, None, e.manifest).write(folder)
    result = runner.invoke(app, ["analyze", "--data", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "logrank: not estimable: no events" in result.stdout
    assert "an arm has no evaluable participant" in result.stdout
    assert "Error" not in result.stdout
