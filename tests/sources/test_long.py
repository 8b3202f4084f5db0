"""Our long format: the package's demo data, a stays table, and junk rows counted per concept."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import polars as pl
from sourcetools import status, write_csv

from immunostrat.sources import load_long, load_source


def demo_folder() -> Path:
    return Path(str(resources.files("immunostrat").joinpath("data/demo")))


def test_package_demo() -> None:
    data = load_source("long", demo_folder())
    assert data.stays.height == 300
    assert data.stays["stay_id"].to_list() == data.stays["patient_id"].to_list()
    assert data.observations["patient_id"].is_in(data.stays["stay_id"].implode()).all()
    assert data.rows_by_concept()["ferritin"] == 600
    assert status(data, "il6")[0] == "absent"


def test_stays_table_and_junk(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "observations.csv",
        """
        patient_id,time,concept,value,unit
        p1,2024-01-01T10:00:00Z,ferritin,5000,ug/L
        p1,2024-01-01T11:00:00Z,creatinine,176.8,umol/L
        p1,2024-01-05T11:00:00Z,creatinine,1.0,mg/dL
        p1,2024-01-01T12:00:00Z,map,900,mmHg
        p1,2024-01-01T12:00:00Z,norepinephrine_rate,8,mcg/min
        p1,2024-01-01T12:00:00Z,lactate,abc,mmol/L
    """,
    )
    write_csv(
        tmp_path / "patients.csv",
        """
        patient_id,age,sex,weight_kg,height_cm
        p1,50,F,80,170
    """,
    )
    write_csv(
        tmp_path / "stays.csv",
        """
        stay_id,patient_id,icu_intime,icu_outtime,weight_kg
        s1,p1,2024-01-01T09:00:00Z,2024-01-03T09:00:00Z,80
    """,
    )
    data = load_long(tmp_path)
    obs = data.observations.sort("time")
    assert obs["patient_id"].unique().to_list() == ["s1"]
    assert dict(zip(obs["concept"], obs["value"], strict=True)) == {
        "ferritin": 5000.0,
        "creatinine": 2.0,
        "norepinephrine_rate": 0.1,
    }
    assert any("no stay" in n for n in data.notes)  # the creatinine on day 5
    assert "outside the plausible range" in status(data, "map")[2]
    dropped = data.tables["dropped"]
    assert set(dropped["concept"].to_list()) == {"map", "lactate"}
    assert data.stays["weight_kg"].to_list() == [80.0]


def test_single_file(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "obs.csv",
        """
        patient_id,time,concept,value,unit
        a,2024-01-01T10:00:00Z,platelets,90,10^9/L
    """,
    )
    data = load_long(path)
    assert data.stays["stay_id"].to_list() == ["a"]
    assert data.observations.filter(pl.col("concept") == "platelets")["value"].to_list() == [90.0]
