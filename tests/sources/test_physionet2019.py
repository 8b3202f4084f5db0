"""PhysioNet/CinC 2019 adapter: two fixture files written here, and a sample of the real training
set B (a file limit keeps the test fast)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from sourcetools import FIXTURES, PHYSIONET_TEST_FILES, status

from immunostrat.concepts import DEFAULT_EPOCH
from immunostrat.sources import SourceData, load_physionet2019, load_source

EPOCH = DEFAULT_EPOCH


@pytest.fixture(scope="module")
def small() -> SourceData:
    return load_physionet2019(FIXTURES / "physionet2019")


def test_stays_from_files(small: SourceData) -> None:
    stays = small.stays.sort("stay_id")
    assert stays["stay_id"].to_list() == ["p000001", "p000002"]
    assert stays["sex"].to_list() == ["F", "M"]
    assert stays["age"].to_list() == [65.0, 80.5]
    assert stays["icu_intime"].to_list() == [EPOCH, EPOCH]
    assert stays["admission_time"].to_list()[0] == EPOCH - timedelta(hours=2.5)
    assert stays["icu_outtime"].to_list() == [EPOCH + timedelta(hours=4), EPOCH + timedelta(hours=2)]


def test_columns_to_concepts(small: SourceData) -> None:
    obs = small.observations
    one = obs.filter(pl.col("patient_id") == "p000001")
    at2 = {
        r["concept"]: r["value"]
        for r in one.filter(pl.col("time") == EPOCH + timedelta(hours=2)).iter_rows(named=True)
    }
    assert at2 == {"heart_rate": 90.0, "map": 64.0, "creatinine": 1.95, "platelets": 140.0, "bilirubin": 1.2}
    fio2 = obs.filter(pl.col("concept") == "fio2").sort("patient_id")["value"].to_list()
    assert fio2 == [0.5, 0.4]  # a fraction, and 40 (percent) told apart by magnitude
    assert obs.filter(pl.col("concept") == "wbc")["value"].to_list() == [12.5]
    row = obs.filter(pl.col("concept") == "lactate").row(0, named=True)
    assert row["source"] == "physionet2019:Lactate" and row["source_row"] == 3


def test_junk_is_dropped_and_counted(small: SourceData) -> None:
    assert 400.0 not in small.observations.filter(pl.col("concept") == "map")["value"].to_list()
    dropped = small.tables["dropped"].filter(pl.col("concept") == "map")
    assert dropped["reason"].to_list() == ["outside the plausible range"] and dropped["rows"].to_list() == [1]


def test_absent_concepts_are_reported(small: SourceData) -> None:
    for concept in ("gcs", "norepinephrine_rate", "urine_output", "antibiotic", "culture", "pao2"):
        state, rows, detail = status(small, concept)
        assert state == "absent" and rows == 0 and detail


def test_sepsis_label_kept(small: SourceData) -> None:
    labels = small.tables["labels"]
    assert labels.height == 6
    assert labels.filter(pl.col("stay_id") == "p000001")["sepsis_label"].to_list() == [0, 0, 1, 1]
    onset = small.tables["sepsis_onset"].sort("stay_id")
    assert onset["sepsis_label_any"].to_list() == [True, False]
    # first labelled hour (ICULOS 3) + 6 h: the challenge shifts labels 6 h early
    assert onset["sepsis_onset_time"].to_list()[0] == EPOCH + timedelta(hours=9)


def test_registry_and_limit() -> None:
    data = load_source("physionet2019", FIXTURES / "physionet2019", limit=1)
    assert data.stays["stay_id"].to_list() == ["p000001"]


def test_real_sample(physionet_sample: SourceData) -> None:
    data = physionet_sample
    assert data.stays.height == PHYSIONET_TEST_FILES
    counts = data.rows_by_concept()
    for concept in ("heart_rate", "map", "creatinine", "platelets", "bilirubin", "spo2"):
        assert counts[concept] > 0
    assert status(data, "gcs")[0] == "absent"
    assert data.tables["labels"].height == data.tables["labels"].select("stay_id", "time").unique().height
    assert data.tables["sepsis_onset"].height == PHYSIONET_TEST_FILES
    assert data.observations["time"].min() > datetime(1999, 12, 31, tzinfo=UTC)
