"""The command line end to end: real files in, real files out, errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from immunostrat.cli import app

runner = CliRunner()

OBS = """patient_id,time,concept,value,unit
p1,2025-03-01T08:00:00Z,ferritin,9000,ug/L
p1,2025-03-01T08:00:00Z,creatinine,221,umol/L
p1,2025-03-01T09:00:00Z,platelets,45,x10^3/uL
p1,2025-03-01T09:00:00Z,bilirubin,34.2,umol/L
p1,2025-03-01T09:00:00Z,gcs,13,
p1,2025-03-01T09:00:00Z,map,68,mmHg
p1,2025-03-01T10:00:00Z,fio2,50,%
p1,2025-03-01T10:05:00Z,mechanical_ventilation,1,
p1,2025-03-01T10:10:00Z,pao2,10,kPa
p2,2025-03-01T08:00:00Z,ferritin,900,ng/mL
p2,2025-03-01T08:30:00Z,mhla_dr,3000,AB/C
p2,2025-03-01T09:00:00Z,platelets,200,10^9/L
p3,2025-03-01T08:00:00Z,ferritin,900,ng/mL
"""
PATIENTS = """patient_id,age,sex,weight_kg,height_cm
p1,70,F,60,160
p2,55,M,80,180
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    obs = tmp_path / "obs.csv"
    obs.write_text(OBS)
    pts = tmp_path / "patients.csv"
    pts.write_text(PATIENTS)
    return obs, pts


def test_classify_writes_one_row_per_patient(files: tuple[Path, Path], tmp_path: Path) -> None:
    obs, pts = files
    out = tmp_path / "classes.csv"
    result = runner.invoke(
        app, ["classify", "--input", str(obs), "--patients", str(pts), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(out)
    assert frame.columns[:5] == ["patient_id", "time", "endotype", "therapy", "dose"]
    got = dict(zip(frame["patient_id"], frame["endotype"], strict=True))
    assert got == {"p1": "mals", "p2": "immunoparalysis", "p3": "unknown"}
    p1 = frame.filter(pl.col("patient_id") == "p1").row(0, named=True)
    # 70-year-old woman, 60 kg, creatinine 2.5 mg/dL: CrCl = 70*60/(72*2.5)*0.85 = 19.8 -> every 48 h
    assert "every 48 h" in p1["dose"] and "every other day" in p1["dose"] and "renally adjusted" in p1["dose"]
    assert "ferritin 9000 ng/mL" in p1["reasons"]


def test_classify_json_has_every_reason(files: tuple[Path, Path], tmp_path: Path) -> None:
    obs, pts = files
    out = tmp_path / "classes.json"
    result = runner.invoke(
        app, ["classify", "-i", str(obs), "-p", str(pts), "-o", str(out), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    p2 = next(d for d in data if d["patient_id"] == "p2")
    assert p2["endotype"] == "immunoparalysis"
    assert {(r["rule"], r["concept"], r["outcome"]) for r in p2["reasons"]} == {
        ("mals", "ferritin", "not met"),
        ("immunoparalysis", "ferritin", "met"),
        ("immunoparalysis", "mhla_dr", "met"),
    }


def test_score_sofa_columns_and_values(files: tuple[Path, Path], tmp_path: Path) -> None:
    obs, pts = files
    out = tmp_path / "sofa.parquet"
    result = runner.invoke(app, ["score", "-i", str(obs), "-p", str(pts), "--score", "sofa", "-o", str(out)])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    expected = [
        "patient_id",
        "time",
        "sofa_respiration",
        "sofa_coagulation",
        "sofa_liver",
        "sofa_cardiovascular",
        "sofa_cns",
        "sofa_renal",
        "sofa_total",
        "sofa_missing",
    ]
    assert frame.columns[: len(expected)] == expected
    p1 = frame.filter(pl.col("patient_id") == "p1").row(0, named=True)
    # PaO2 10 kPa = 75 mmHg / 0.5 = 150 with ventilation -> 3; platelets 45 -> 3; bilirubin 2.0 -> 2;
    # MAP 68 -> 1; GCS 13 -> 1; creatinine 2.5 -> 2
    assert (p1["sofa_respiration"], p1["sofa_coagulation"], p1["sofa_liver"]) == (3, 3, 2)
    assert (p1["sofa_cardiovascular"], p1["sofa_cns"], p1["sofa_renal"]) == (1, 1, 2)
    assert p1["sofa_total"] == 12 and p1["sofa_missing"] == 0
    p3 = frame.filter(pl.col("patient_id") == "p3").row(0, named=True)
    assert p3["sofa_missing"] == 6 and p3["sofa_total"] == 0


def test_score_every_24h_and_stdout(files: tuple[Path, Path]) -> None:
    obs, pts = files
    result = runner.invoke(app, ["score", "-i", str(obs), "-p", str(pts), "--every", "24h", "-o", "-"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("patient_id,time,window_end,sofa_respiration")
    assert len(lines) == 1 + 3


@pytest.mark.parametrize("score", ["qsofa", "hscore", "mex-sledai", "sledai-2k"])
def test_other_scores_run(files: tuple[Path, Path], score: str) -> None:
    obs, pts = files
    result = runner.invoke(app, ["score", "-i", str(obs), "-p", str(pts), "--score", score, "-o", "-"])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0]
    prefix = score.replace("-", "_")
    assert f"{prefix}_total" in header and f"{prefix}_missing" in header


def test_bad_input_stops_with_one_line_and_no_output(tmp_path: Path) -> None:
    obs = tmp_path / "bad.csv"
    obs.write_text(OBS + "p4,2025-03-01T08:00:00Z,ferritin,lots,ng/mL\n")
    out = tmp_path / "never.csv"
    result = runner.invoke(app, ["classify", "-i", str(obs), "-o", str(out)])
    assert result.exit_code == 2
    assert "row 14" in result.output and "'value'" in result.output and "lots" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [obs]


def test_lenient_drops_and_reports_each_bad_row(tmp_path: Path) -> None:
    obs = tmp_path / "bad.csv"
    obs.write_text(OBS + "p4,2025-03-01T08:00:00Z,ferritin,lots,ng/mL\np5,2025-03-01T08:00:00Z,fio2,40,\n")
    out = tmp_path / "classes.csv"
    result = runner.invoke(app, ["classify", "-i", str(obs), "-o", str(out), "--lenient"])
    assert result.exit_code == 0, result.output
    assert "row 14" in result.output and "row 15" in result.output
    assert set(pl.read_csv(out)["patient_id"]) == {"p1", "p2", "p3"}


def test_unknown_protocol_and_output_format_are_input_errors(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    obs, _ = files
    result = runner.invoke(app, ["classify", "-i", str(obs), "-o", "-", "--protocol", "nope"])
    assert result.exit_code == 2 and "--protocol" in result.output
    result = runner.invoke(app, ["classify", "-i", str(obs), "-o", str(tmp_path / "x.xlsx")])
    assert result.exit_code == 2 and ".csv, .parquet or .json" in result.output


def test_listings() -> None:
    result = runner.invoke(app, ["protocols"])
    assert (
        result.exit_code == 0 and "immunosep-2025" in result.stdout and "mhla-dr-monitoring" in result.stdout
    )
    result = runner.invoke(app, ["concepts"])
    assert result.exit_code == 0 and "2276-4" in result.stdout and "ferritin" in result.stdout


def test_installed_entry_point_runs_the_demo(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("immunostrat")
    result = subprocess.run(
        [str(exe), "demo", "--output-dir", str(tmp_path), "--no-serve"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    classes = pl.read_csv(tmp_path / "classify.csv")
    assert classes.height == 300
    assert set(classes["endotype"]) == {"mals", "immunoparalysis", "intermediate", "unknown"}
    for name in ("classify.json", "sofa_daily.csv", "sepsis3.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert "immunosep-2025 on the demo cohort" in result.stdout
