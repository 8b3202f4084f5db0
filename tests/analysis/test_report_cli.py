"""`immunostrat analyze --analysis-data` and the console's P values, through the real command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from immunostrat.analysis.schema import TrialExport
from immunostrat.cli import app


def test_analyze_writes_analysis_data_and_prints_jama_p(tmp_path: Path, sle_export: TrialExport) -> None:
    export = sle_export.write(tmp_path / "export")
    adam = tmp_path / "adam"
    results = tmp_path / "results.json"
    out = CliRunner().invoke(
        app,
        ["analyze", "--data", str(export), "--plan", "sle-secretome-2025", "--json", str(results),
         "--analysis-data", str(adam)],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    for name in ("adsl.csv", "adeff.csv", "adrep.csv", "reproduce.R", "datasets.json"):
        assert (adam / name).exists(), name
    assert (adam / "adae.csv").exists() == (sle_export.adverse_events is not None)
    data = json.loads(results.read_text())
    adrep = pl.read_csv(adam / "adrep.csv")
    adsl = pl.read_csv(adam / "adsl.csv")
    assert adsl.height == sle_export.participants.height
    # every change endpoint's day-43 change in the file is the one the report summarises
    for e in data["endpoints"]:
        if e["result"].get("type") != "continuous":
            continue
        day = e["params"]["day"]
        rows = adrep.filter((pl.col("PARAMCD") == e["id"]) & (pl.col("AVISITN") == day)).join(
            adsl.filter(pl.col("ITTFL") == "Y").select("USUBJID", "ARM"), on="USUBJID"
        )
        for arm in data["data"]["arms"]:
            change = rows.filter(pl.col("ARM") == arm)["CHG"].drop_nulls()
            summary = e["result"]["summary"][arm]["change"]
            assert change.len() == summary["n"], (e["id"], arm)
            assert (
                float(change.mean()) == summary["mean"] or abs(float(change.mean()) - summary["mean"]) < 1e-9
            )
    # the console prints P values as JAMA does: "P = .04", "P < .001", never "0.04" or "4.2e-05"
    ps = re.findall(r"P [=<>] \S+", out.stdout)
    assert ps, out.stdout
    assert all(re.fullmatch(r"P (= \.\d{2,3}|< \.001|> \.99)", p.rstrip("│ ")) for p in ps), ps
    assert not re.search(r"\b0\.\d{3,}\b|\de-\d", out.stdout)
