"""`immunostrat simulate` through the real command line (small sizes)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from immunostrat.cli import app

runner = CliRunner()


def test_simulate_trial_prints_power_and_subgroups() -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "trial",
            "--design",
            "immunosep",
            "--n",
            "100",
            "--trials",
            "5",
            "--population-size",
            "400",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "power" in result.stdout
        and "subgroup MALS" in result.stdout
        and "subgroup immunoparalysis" in result.stdout
    )


def test_simulate_population_writes_patients_and_observations(tmp_path: Path) -> None:
    patients, observations = tmp_path / "vpop.parquet", tmp_path / "obs.parquet"
    result = runner.invoke(
        app,
        [
            "simulate",
            "population",
            "--size",
            "60",
            "--seed",
            "3",
            "--output",
            str(patients),
            "--observations",
            str(observations),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "chi-square" in result.stdout
    frame = pl.read_parquet(patients)
    assert frame.height == 60
    obs = pl.read_parquet(observations)
    assert {"ferritin", "mhla_dr"} <= set(obs["concept"].unique())


def test_unknown_design_is_an_error() -> None:
    result = runner.invoke(app, ["simulate", "trial", "--design", "magic"])
    assert result.exit_code == 2 and "unknown design" in result.output


def test_full_model_trial_reports_superinfection() -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "trial",
            "--design",
            "all-comers-anti-inflammatory",
            "--model",
            "full",
            "--n",
            "60",
            "--trials",
            "3",
            "--population-size",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "superinfection_d15" in result.stdout and "subgroup immunoparalysis" in result.stdout


def test_unknown_model_is_an_error() -> None:
    result = runner.invoke(app, ["simulate", "population", "--size", "10", "--model", "magic"])
    assert result.exit_code == 2 and "unknown model 'magic'" in result.output


def test_trial_endpoint_option() -> None:
    args = ["simulate", "trial", "--n", "60", "--trials", "3", "--population-size", "200"]
    result = runner.invoke(app, [*args, "--endpoint", "mortality_28d"])
    assert result.exit_code == 0, result.output
    assert "primary: mortality_28d" in result.stdout
    bad = runner.invoke(app, [*args, "--endpoint", "magic"])
    assert bad.exit_code == 2 and "unknown endpoint 'magic'" in bad.output


def test_simulate_size_prints_the_trial_size() -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "size",
            "--design",
            "all-comers-msc",
            "--trials",
            "20",
            "--population-size",
            "200",
            "--max-n",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "patients for power 0.80" in result.stdout or "not reached" in result.stdout
    assert "evaluated: n " in result.stdout


def test_population_bad_output_name_fails_before_simulating(tmp_path: Path) -> None:
    target = tmp_path / "vpop.xlsx"
    result = runner.invoke(app, ["simulate", "population", "--size", "10", "--output", str(target)])
    assert result.exit_code == 2
    assert "--output" in result.output and "vpop.xlsx" in result.output and ".parquet" in result.output
    assert "Traceback" not in result.output and "chi-square" not in result.output
    assert not target.exists()
    bad_obs = runner.invoke(app, ["simulate", "population", "--size", "10", "--observations", "obs.txt"])
    assert bad_obs.exit_code == 2 and "--observations" in bad_obs.output
