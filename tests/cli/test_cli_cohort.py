"""`immunostrat cohort build|summary` through the real command line."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from immunostrat.cli import app

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "src" / "immunostrat" / "data" / "demo"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_build_and_summary_on_the_bundled_long_cohort(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    result = runner.invoke(
        app, ["cohort", "build", "--source", "long", "--path", str(DEMO), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    for table in ("stays", "hourly_sofa", "sepsis3", "endotypes"):
        assert (out / f"{table}.parquet").exists()
    assert "stays: 300" in result.stdout
    # The cohort's first known endotypes agree with the bedside classification of the same data.
    assert "immunoparalysis 123, intermediate 92, mals 63, unknown 22" in result.stdout
    hourly = pl.read_parquet(out / "hourly_sofa.parquet")
    assert hourly["sofa_total"].max() <= 24 and hourly.height > 300
    summary = runner.invoke(app, ["cohort", "summary", str(out)])
    assert summary.exit_code == 0, summary.output
    for name in ("endotype_prevalence.png", "sofa_trajectories.png", "mortality_28d.png", "summary.html"):
        assert (out / name).stat().st_size > 0


def test_unknown_source_and_missing_folder_are_errors(tmp_path: Path) -> None:
    bad = runner.invoke(
        app, ["cohort", "build", "--source", "hirid", "--path", ".", "--output", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "--source" in bad.output
    missing = runner.invoke(app, ["cohort", "summary", str(tmp_path / "nothing")])
    assert missing.exit_code == 2


def test_mimic_demo_finds_the_mals_stay(tmp_path: Path) -> None:
    root = SHARED / "mimic-iv-demo-2.2"
    meds = SHARED / "mimic-iv-demo-meds" / "mimic_iv_demo_meds_events.parquet"
    if not root.exists():
        pytest.skip(f"MIMIC-IV demo not found at {root}")
    out = tmp_path / "mimic"
    result = runner.invoke(
        app,
        [
            "cohort",
            "build",
            "--source",
            "mimic-iv",
            "--path",
            str(root),
            "--meds",
            str(meds),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stays: 140" in result.stdout
    assert "mals 1" in result.stdout
    assert "mhla_dr" in result.stdout  # reported absent, with the reason


def test_physionet_partial_sofa_and_label_agreement(tmp_path: Path) -> None:
    root = SHARED / "physionet-challenge-2019"
    if not root.exists():
        pytest.skip(f"PhysioNet 2019 files not found at {root}")
    out = tmp_path / "pn"
    result = runner.invoke(
        app,
        [
            "cohort",
            "build",
            "--source",
            "physionet2019",
            "--path",
            str(root),
            "--limit",
            "300",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stays: 300" in result.stdout
    assert "not assessable" in result.stdout  # no antibiotics or cultures in these files
    assert "gcs" in result.stdout  # a missing SOFA component, reported
    assert "agreement with the source's sepsis label" in result.stdout
    assert (out / "label_agreement.json").exists()


def test_rule_variants_are_options_written_into_the_summary(tmp_path: Path) -> None:
    import json

    default, variant = tmp_path / "default", tmp_path / "variant"
    base = ["cohort", "build", "--source", "long", "--path", str(DEMO)]
    first = runner.invoke(app, [*base, "--output", str(default)])
    assert first.exit_code == 0, first.output
    rules = json.loads((default / "summary.json").read_text())["rules"]
    assert rules["suspected_infection"] == "antibiotic-and-culture" and rules["sofa_baseline"] == "zero"
    second = runner.invoke(
        app,
        [
            *base,
            "--output",
            str(variant),
            "--suspected-infection",
            "antibiotic-only",
            "--sofa-baseline",
            "running-minimum",
        ],
    )
    assert second.exit_code == 0, second.output
    assert "rules: suspected infection antibiotic-only, SOFA baseline running-minimum" in second.stdout
    summary = json.loads((variant / "summary.json").read_text())
    assert summary["rules"]["suspected_infection"] == "antibiotic-only"
    assert summary["rules"]["sofa_baseline"] == "running-minimum"
    sepsis = pl.read_parquet(variant / "sepsis3.parquet")
    assert set(sepsis["sofa_baseline_rule"]) == {"running-minimum"}
    bad = runner.invoke(app, [*base, "--output", str(tmp_path / "x"), "--sofa-baseline", "first-day"])
    assert bad.exit_code == 2 and "--sofa-baseline" in bad.output
    assert not (tmp_path / "x").exists()
