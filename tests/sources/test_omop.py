"""OMOP CDM v5.4 adapter on a small CDM built here, once as a DuckDB file and once as Parquet tables:
both must give the same result."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from sourcetools import status

from immunostrat.sources import SourceData, load_omop, load_source


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def cdm() -> dict[str, pl.DataFrame]:
    person = pl.DataFrame(
        {"person_id": [1, 2], "gender_concept_id": [8532, 8507], "year_of_birth": [1960, 1950],
         "month_of_birth": [6, 1], "day_of_birth": [15, 1]}
    )  # fmt: skip
    visits = pl.DataFrame(
        {"visit_occurrence_id": [100, 200], "person_id": [1, 2], "visit_concept_id": [9201, 9201],
         "visit_start_date": [date(2020, 1, 1), date(2020, 3, 1)],
         "visit_start_datetime": [dt("2020-01-01 00:00:00"), dt("2020-03-01 00:00:00")],
         "visit_end_date": [date(2020, 1, 10), date(2020, 3, 5)],
         "visit_end_datetime": [dt("2020-01-10 00:00:00"), dt("2020-03-05 00:00:00")]}
    )  # fmt: skip
    details = pl.DataFrame(
        {"visit_detail_id": [1000, 1001, 2000], "person_id": [1, 1, 2],
         "visit_occurrence_id": [100, 100, 200],
         "visit_detail_concept_id": [32037, 9201, 32037],
         "visit_detail_start_date": [date(2020, 1, 2), date(2020, 1, 1), date(2020, 3, 1)],
         "visit_detail_start_datetime": [dt("2020-01-02 00:00:00"), dt("2020-01-01 00:00:00"),
                                         dt("2020-03-01 12:00:00")],
         "visit_detail_end_date": [date(2020, 1, 5), date(2020, 1, 2), date(2020, 3, 3)],
         "visit_detail_end_datetime": [dt("2020-01-05 00:00:00"), dt("2020-01-02 00:00:00"),
                                       dt("2020-03-03 00:00:00")]}
    )  # fmt: skip
    rows = [
        # id, person, concept_id, datetime, value, unit_concept_id, unit_source_value, source_value
        (1, 1, 3001122, "2020-01-02 08:00:00", 5000.0, None, "ng/mL", "ferritin"),  # standard id
        (2, 1, 0, "2020-01-02 09:00:00", 176.8, 8749, None, "14682-9"),  # LOINC source value, unit id
        (3, 1, 3024929, "2020-01-02 09:00:00", 90.0, 8848, None, "PLT"),
        (4, 1, 3025315, "2020-01-02 01:00:00", 80.0, 9529, "kg", "weight"),
        (5, 1, 0, "2020-01-02 10:00:00", None, None, None, "600-7"),  # blood culture drawn
        (6, 1, 3027598, "2020-01-02 11:00:00", 900.0, 8876, None, "MAP"),  # junk
        (7, 1, 123, "2020-01-02 11:00:00", 1.0, None, None, "local"),  # not a dictionary concept
        (8, 2, 3024128, "2020-03-01 13:00:00", 34.2, None, "umol/L", "bili"),
        (9, 2, 3024128, "2020-02-01 13:00:00", 1.0, None, "mg/dL", "bili"),  # in no ICU stay
    ]
    measurement = pl.DataFrame(
        rows,
        schema={"measurement_id": pl.Int64, "person_id": pl.Int64, "measurement_concept_id": pl.Int64,
                "measurement_datetime": pl.String, "value_as_number": pl.Float64, "unit_concept_id": pl.Int64,
                "unit_source_value": pl.String, "measurement_source_value": pl.String},
        orient="row",
    ).with_columns(
        pl.col("measurement_datetime").str.to_datetime(),
        pl.col("measurement_datetime").str.to_datetime().dt.date().alias("measurement_date"),
    )  # fmt: skip
    drugs = pl.DataFrame(
        {"drug_exposure_id": [1, 2, 3], "person_id": [1, 1, 2],
         "drug_exposure_start_datetime": [dt("2020-01-02 03:00:00"), dt("2020-01-02 03:00:00"),
                                          dt("2020-03-01 14:00:00")],
         "drug_exposure_start_date": [date(2020, 1, 2), date(2020, 1, 2), date(2020, 3, 1)],
         "drug_source_value": ["ceftriaxone 1 g IV", "erythromycin ophthalmic ointment", "paracetamol"],
         "route_source_value": ["IV", "OU", "PO"]}
    )  # fmt: skip
    return {"person": person, "visit_occurrence": visits, "visit_detail": details,
            "measurement": measurement, "drug_exposure": drugs}  # fmt: skip


def write_parquet(folder: Path, tables: dict[str, pl.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.write_parquet(folder / f"{name}.parquet")
    return folder


def write_duckdb(path: Path, tables: dict[str, pl.DataFrame], schema: str = "main") -> Path:
    import duckdb

    con = duckdb.connect(str(path))
    where = f'"{path.stem}".{schema}'  # catalog-qualified: the file cdm.duckdb may hold schema cdm
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {where}")
    for name, frame in tables.items():
        con.register("frame", frame.to_arrow())
        con.execute(f"CREATE TABLE {where}.{name} AS SELECT * FROM frame")
        con.unregister("frame")
    con.close()
    return path


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[SourceData, SourceData]:
    root = tmp_path_factory.mktemp("omop")
    tables = cdm()
    return (
        load_omop(write_duckdb(root / "cdm.duckdb", tables)),
        load_source("omop", write_parquet(root / "parquet", tables)),
    )


def test_duckdb_and_parquet_agree(both: tuple[SourceData, SourceData]) -> None:
    duck, parquet = both
    assert duck.stays.equals(parquet.stays)
    assert duck.observations.equals(parquet.observations)
    assert duck.rows_by_concept() == parquet.rows_by_concept()


def test_icu_stays_from_visit_detail(both: tuple[SourceData, SourceData]) -> None:
    stays = both[0].stays.sort("stay_id")
    assert stays["stay_id"].to_list() == ["1000", "2000"]  # the non-ICU visit_detail is not a stay
    assert stays["hospital_admission_id"].to_list() == ["100", "200"]
    assert stays["sex"].to_list() == ["F", "M"]
    assert stays["age"].to_list() == [59.0, 70.0]
    assert stays["weight_kg"].to_list() == [80.0, None]


def test_concepts_by_id_by_loinc_and_units(both: tuple[SourceData, SourceData]) -> None:
    obs = both[0].observations
    got = {(r["patient_id"], r["concept"]): r["value"] for r in obs.iter_rows(named=True)}
    assert got[("1000", "ferritin")] == 5000.0
    assert got[("1000", "creatinine")] == 2.0  # 176.8 umol/L (unit concept 8749) by LOINC 14682-9
    assert got[("1000", "platelets")] == 90.0
    assert got[("1000", "culture")] == 1.0
    assert got[("1000", "antibiotic")] == 1.0
    assert got[("2000", "bilirubin")] == 2.0  # 34.2 umol/L
    assert obs.filter(pl.col("concept") == "antibiotic").height == 1  # eye ointment, paracetamol left out
    assert ("1000", "map") not in got
    assert obs["time"].dtype == pl.Datetime("us", "UTC")
    row = obs.filter(pl.col("concept") == "ferritin").row(0, named=True)
    assert row["source"] == "omop:measurement" and row["source_row"] == 1
    assert row["time"] == datetime(2020, 1, 2, 8, tzinfo=UTC)


def test_report(both: tuple[SourceData, SourceData]) -> None:
    data = both[0]
    assert "outside the plausible range" in status(data, "map")[2]
    assert "outside every ICU stay window" in status(data, "bilirubin")[2]
    assert status(data, "norepinephrine_rate")[0] == "absent"
    assert "infusion rates" in status(data, "norepinephrine_rate")[2]


def test_vocabulary_table_maps_concept_ids(tmp_path: Path) -> None:
    tables = cdm()
    tables["measurement"] = tables["measurement"].with_columns(
        pl.when(pl.col("measurement_id") == 3).then(99999).otherwise(pl.col("measurement_concept_id"))
        .alias("measurement_concept_id")
    )  # fmt: skip
    tables["concept"] = pl.DataFrame(
        {
            "concept_id": [99999, 8848],
            "vocabulary_id": ["LOINC", "UCUM"],
            "concept_code": ["777-3", "10*3/uL"],
        }
    )
    data = load_omop(write_parquet(tmp_path / "cdm", tables))
    assert data.observations.filter(pl.col("concept") == "platelets")["value"].to_list() == [90.0]
    assert any("vocabulary" in n for n in data.notes)


def test_duckdb_schema(tmp_path: Path, both: tuple[SourceData, SourceData]) -> None:
    data = load_omop(write_duckdb(tmp_path / "cdm.duckdb", cdm(), schema="cdm"), schema="cdm")
    assert data.observations.equals(both[0].observations)
