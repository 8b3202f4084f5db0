"""``simulate population --observations`` is read by ``classify`` as it is, at the stated decision time."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from immunostrat.cli import app


def test_population_observations_classify_as_the_population(tmp_path: Path) -> None:
    obs, patients, out = tmp_path / "obs.parquet", tmp_path / "vpop.csv", tmp_path / "classes.csv"
    runner = CliRunner()
    made = runner.invoke(
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
            str(obs),
        ],
    )
    assert made.exit_code == 0, made.output
    at = re.search(r"--at (\S+)", made.output)
    assert at is not None and at.group(1) == "2025-01-02T00:00:00Z"  # enrolment: day 1 after onset
    assert set(pl.read_parquet(obs)["concept"].unique()) == {"ferritin", "mhla_dr"}
    done = runner.invoke(app, ["classify", "--input", str(obs), "--at", at.group(1), "--output", str(out)])
    assert done.exit_code == 0, done.output
    got = dict(pl.read_csv(out).select("patient_id", "endotype").iter_rows())
    want = {pid: e.lower() for pid, e in pl.read_csv(patients).select("patient_id", "endotype").iter_rows()}
    assert got == want
