"""FHIR R4 adapter on fixture files written here: a Bundle (validated with fhir.resources R4B) and
the same resources as bulk NDJSON (read as plain JSON); both must agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from sourcetools import FIXTURES, status

from immunostrat.errors import InputError
from immunostrat.sources import SourceData, load_fhir, load_source

FOLDER = FIXTURES / "fhir"


@pytest.fixture(scope="module")
def bundle() -> SourceData:
    return load_fhir(FOLDER / "bundle.json")


def test_bundle_and_ndjson_agree(bundle: SourceData) -> None:
    bulk = load_source("fhir", FOLDER / "export.ndjson", validate=False)
    assert bundle.stays.equals(bulk.stays)
    cols = ["patient_id", "time", "concept", "value", "unit", "source_row"]
    assert bundle.observations.select(cols).equals(bulk.observations.select(cols))
    assert any("validated" in n for n in bundle.notes) and any("plain JSON" in n for n in bulk.notes)


def test_encounters_become_stays(bundle: SourceData) -> None:
    stays = bundle.stays
    assert stays["stay_id"].to_list() == ["e1"]  # the ambulatory encounter is not a stay
    row = stays.row(0, named=True)
    assert row["patient_id"] == "p1" and row["sex"] == "F" and row["age"] == 63.0
    assert row["weight_kg"] == 80.0  # body weight Observation (LOINC 29463-7)


def test_observations_by_loinc_and_ucum(bundle: SourceData) -> None:
    obs = bundle.observations
    got = {r["concept"]: r["value"] for r in obs.iter_rows(named=True)}
    assert got["ferritin"] == 5000.0  # ug/L
    assert got["creatinine"] == 1.3
    assert got["sbp"] == 95.0  # a component of the blood-pressure panel, mm[Hg]
    assert got["platelets"] == 120.0  # no encounter reference: placed by time in the patient's stay
    assert got["culture"] == 1.0 and got["antibiotic"] == 1.0
    creat = obs.filter(pl.col("concept") == "creatinine").row(0, named=True)
    assert creat["time"] == datetime(2024, 3, 1, 10, tzinfo=UTC)  # +01:00 converted to UTC
    assert "map" not in got  # 900 mmHg dropped; the entered-in-error 55 never read
    assert "outside the plausible range" in status(bundle, "map")[2]
    assert any("2345-7" in n for n in bundle.notes)


def test_vasopressor_rates(bundle: SourceData) -> None:
    ne = bundle.observations.filter(pl.col("concept") == "norepinephrine_rate")
    # 8 ug/min / 80 kg, hourly over 12:00-14:30, then 0 at 14:30 when the administration ended
    assert ne.sort("time")["value"].to_list() == [0.1, 0.1, 0.1, 0.0]
    assert ne["time"].max() == datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    assert bundle.tables["intervals"].height == 1
    assert bundle.observations.filter(pl.col("concept") == "epinephrine_rate")["value"].to_list() == [0.05]


def test_invalid_resources_are_left_out(tmp_path: Path) -> None:
    data = json.loads((FOLDER / "bundle.json").read_text())
    data["entry"][3]["resource"]["valueQuantity"]["value"] = "lots"  # the ferritin Observation
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    loaded = load_fhir(path)
    assert "ferritin" not in loaded.rows_by_concept()
    assert any("failed FHIR R4 validation" in n for n in loaded.notes)


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        load_fhir(tmp_path)
