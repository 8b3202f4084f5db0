"""`immunostrat simulate ... --engine`: the engine changes speed, not the printed or written tables; an engine
that cannot run the model is a clear error before any simulation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from immunostrat.cli import app
from immunostrat.simulation.engines import unsupported
from immunostrat.simulation.model import DeactivationParameters, SecondaryInfection
from immunostrat.simulation.observables import BiomarkerObserver
from immunostrat.simulation.population import MODEL_VARIANTS, model_variant

runner = CliRunner()

#: columns of the population table that are continuous model read-outs (equal across engines to round-off)
CONTINUOUS = ("ferritin_ng_ml", "mhla_dr_abc")


def _reason(engine: str, model: str) -> str | None:
    """Why ``engine`` cannot run ``model``'s virtual patients (None: it can)."""
    options = model_variant(model)
    deact, sec = options.get("deactivation"), options.get("secondary")
    assert deact is None or isinstance(deact, DeactivationParameters)
    assert sec is None or isinstance(sec, SecondaryInfection)
    return unsupported(engine, observer=BiomarkerObserver(), deactivation=deact, secondary=sec)


def _population(tmp_path: Path, engine: str, model: str) -> tuple[str, pl.DataFrame]:
    target = tmp_path / f"vpop-{engine}.csv"
    args = ["simulate", "population", "--size", "60", "--seed", "4", "--model", model]
    result = runner.invoke(app, [*args, "--engine", engine, "--output", str(target)])
    assert result.exit_code == 0, result.output
    return result.stdout, pl.read_csv(target)


@pytest.mark.parametrize("model", ["full"])
def test_population_table_is_the_same_on_numpy_and_numba(tmp_path: Path, model: str) -> None:
    reason = _reason("numba", model)
    if reason is not None:  # numba missing, or not (yet) running this model: a clear error, nothing run
        bad = runner.invoke(
            app, ["simulate", "population", "--size", "60", "--model", model, "--engine", "numba"]
        )
        assert bad.exit_code == 2 and reason in bad.output and "chi-square" not in bad.output
        return
    fit_numpy, numpy_table = _population(tmp_path, "numpy", model)
    fit_numba, numba_table = _population(tmp_path, "numba", model)
    assert fit_numba == fit_numpy and "chi-square" in fit_numpy
    exact = [c for c in numpy_table.columns if c not in CONTINUOUS]
    assert numba_table.select(exact).equals(numpy_table.select(exact))
    assert numpy_table["died_28d"].any() and not numpy_table["died_28d"].all()
    for column in CONTINUOUS:
        np.testing.assert_allclose(numba_table[column].to_numpy(), numpy_table[column].to_numpy(), rtol=1e-9)


def test_trial_table_is_the_same_on_numpy_and_numba() -> None:
    model = "deactivation"
    reason = _reason("numba", model)
    args = ["simulate", "trial", "--design", "immunosep", "--model", model, "--n", "80", "--trials", "20"]
    args += ["--population-size", "150", "--seed", "2"]
    if reason is not None:
        bad = runner.invoke(app, [*args, "--engine", "numba"])
        assert bad.exit_code == 2 and reason in bad.output
        return
    tables = {}
    summaries = {}
    for engine in ("numpy", "numba"):
        per_trial = runner.invoke(app, [*args, "--engine", engine, "--output", "-"])
        assert per_trial.exit_code == 0, per_trial.output
        tables[engine] = per_trial.stdout
        summary = runner.invoke(app, [*args, "--engine", engine])
        assert summary.exit_code == 0, summary.output
        summaries[engine] = summary.stdout
    assert tables["numba"] == tables["numpy"]
    assert len(tables["numpy"].splitlines()) == 21  # header and one row per trial
    assert summaries["numba"] == summaries["numpy"] and "power" in summaries["numpy"]


@pytest.mark.parametrize("command", ["population", "trial", "size", "validate"])
def test_unknown_engine_is_an_error_before_simulating(command: str) -> None:
    result = runner.invoke(app, ["simulate", command, "--engine", "fortran"])
    assert result.exit_code == 2, result.output
    assert "unknown engine 'fortran'" in result.output and "auto, numpy, numba, jax" in result.output
    assert "Traceback" not in result.output and "power" not in result.output


def test_engine_that_cannot_run_the_model_is_an_error() -> None:
    """Naming an engine that cannot run a model's virtual patients (e.g. JAX and the MALS loop, or an engine
    not installed) is an error that says why, from ``engines.unsupported``, on every simulate command."""
    refused = [
        (engine, model, reason)
        for engine in ("jax", "numba")
        for model in MODEL_VARIANTS
        if (reason := _reason(engine, model)) is not None
    ]
    assert refused  # JAX refuses the MALS loop (or is not installed)
    engine, model, reason = refused[0]
    for command in ("population", "trial", "size", "validate"):
        result = runner.invoke(app, ["simulate", command, "--model", model, "--engine", engine])
        assert result.exit_code == 2, result.output
        assert re.search(re.escape(reason), result.output.replace("\n", " ")), result.output
        assert f"--engine {engine}" in result.output and "Traceback" not in result.output
