"""Monte Carlo error on every power and per-trial results (``simulate trial --output``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from immunostrat.analysis.stats import fisher_exact
from immunostrat.cli import app
from immunostrat.simulation.population import VirtualPopulation
from immunostrat.simulation.trial import OutcomeTable, simulate_trials


def test_per_trial_rows_add_up_to_the_summary(vpop: VirtualPopulation, outcome_table: OutcomeTable) -> None:
    res = simulate_trials("immunosep", 80, 30, seed=9, population=vpop, outcomes=outcome_table)
    frame = res.per_trial_frame()
    assert frame.height == 30
    assert res.power == pytest.approx(float(frame["significant_benefit"].mean()))
    assert res.power_mc_se == pytest.approx(math.sqrt(res.power * (1 - res.power) / 30))
    assert res.type1_error == pytest.approx(float((frame["p_value_null"] < 0.05).mean()))
    np.testing.assert_array_equal(frame["p_value"].to_numpy(), res.p_values)
    assert ((frame["n_treatment"] + frame["n_placebo"]) == 80).all()
    row = frame.row(3, named=True)  # each P is the Fisher test of the row's own counts
    want = fisher_exact(row["events_treatment"], row["n_treatment"], row["events_placebo"], row["n_placebo"])
    assert row["p_value"] == pytest.approx(want.p_value)
    assert f"Monte Carlo SE {res.power_mc_se:.3f}" in res.summary()


def test_trial_command_writes_per_trial_results(tmp_path: Path) -> None:
    out = tmp_path / "trials.parquet"
    args = [
        "simulate",
        "trial",
        "--n",
        "60",
        "--trials",
        "12",
        "--population-size",
        "200",
        "--output",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Monte Carlo SE" in result.output
    frame = pl.read_parquet(out)
    assert frame.height == 12 and {"p_value", "events_treatment", "significant_benefit"} <= set(frame.columns)
    bad = CliRunner().invoke(app, ["simulate", "trial", "--output", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and not (tmp_path / "x.txt").exists()
