"""Reading observations (CSV, Parquet, in-memory records) into the canonical long table, and every
bad-input error naming file, row, field, value and what was expected (issue 2, item 5)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from immunostrat.concepts import (
    CANONICAL_SCHEMA,
    DEFAULT_EPOCH,
    OBSERVATION_COLUMNS,
    PATIENT_SCHEMA,
    observations_from_records,
    read_observations,
    read_patients,
)
from immunostrat.errors import InputError

FORMATS = ["csv", "parquet"]
T0 = "2024-03-01T08:00:00Z"


def row(
    patient_id: str = "p1", time: str = T0, concept: str = "fio2", value: str = "0.4", unit: str = ""
) -> dict:
    return {"patient_id": patient_id, "time": time, "concept": concept, "value": value, "unit": unit}


def write_table(
    directory: Path, name: str, rows: list[dict], fmt: str, columns: list[str] | None = None
) -> Path:
    """Write rows as text columns: CSV with the csv module (what a user types), Parquet by polars."""
    columns = columns or list(OBSERVATION_COLUMNS)
    path = directory / f"{name}.{fmt}"
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([[str(r.get(c, "")) for c in columns] for r in rows])
    else:
        frame = pl.DataFrame(
            {c: [str(r.get(c, "")) for r in rows] for c in columns}, schema=dict.fromkeys(columns, pl.String)
        )
        frame.write_parquet(path)
    return path


def write_obs(tmp_path: Path, rows: list[dict], fmt: str = "csv", columns: list[str] | None = None) -> Path:
    return write_table(tmp_path, "obs", rows, fmt, columns)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------- happy path, schema, tracing


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_schema_is_the_canonical_schema(tmp_path: Path, fmt: str) -> None:
    path = write_obs(tmp_path, [row(), row(concept="pao2", value="10", unit="kPa")], fmt)
    result = read_observations(path)
    assert dict(result.observations.schema) == CANONICAL_SCHEMA
    assert list(result.observations.columns) == list(CANONICAL_SCHEMA)
    assert result.rejected == []
    assert result.time_anchor == "absolute"


def test_empty_input_keeps_the_canonical_schema(tmp_path: Path) -> None:
    result = read_observations(write_obs(tmp_path, [], "parquet"))
    assert result.observations.height == 0
    assert dict(result.observations.schema) == CANONICAL_SCHEMA
    assert dict(observations_from_records([]).observations.schema) == CANONICAL_SCHEMA


@pytest.mark.parametrize("fmt", FORMATS)
def test_values_are_converted_and_units_made_canonical(tmp_path: Path, fmt: str) -> None:
    rows = [
        row(concept="bilirubin", value="34.2", unit="umol/L"),
        row(concept="bilirubin", value="2.0", unit="mg/dL", time="2024-03-01T09:00:00Z"),
        row(concept="creatinine", value="442", unit="µmol/L"),
        row(concept="platelets", value="99", unit="x10^3/uL"),
        row(concept="fio2", value="40", unit="%"),
        row(concept="pao2", value="10", unit="kPa"),
        row(concept="ferritin", value="4.42", unit="mg/L"),
        row(concept="mhla_dr", value="5000", unit="receptors/cell"),
    ]
    out = read_observations(write_obs(tmp_path, rows, fmt)).observations
    got = {(r["concept"], r["source_row"]): (r["value"], r["unit"]) for r in out.iter_rows(named=True)}
    assert got[("bilirubin", 1)] == (2.0, "mg/dL")
    assert got[("bilirubin", 2)] == (2.0, "mg/dL")
    assert got[("creatinine", 3)] == (5.0, "mg/dL")
    assert got[("platelets", 4)] == (99.0, "1e9/L")
    assert got[("fio2", 5)] == (0.4, "1")
    assert got[("pao2", 6)][0] == pytest.approx(75.0062, rel=1e-6)
    assert got[("ferritin", 7)] == (4420.0, "ng/mL")
    assert got[("mhla_dr", 8)] == (5000.0, "AB/C")


@pytest.mark.parametrize("fmt", FORMATS)
def test_source_and_source_row_trace_each_value_to_its_row(tmp_path: Path, fmt: str) -> None:
    rows = [
        row("p2", "2024-03-01T10:00:00Z", "gcs", "12"),
        row("p1", "2024-03-01T11:00:00Z", "map", "64", "mmHg"),
        row("p1", "2024-03-01T07:00:00Z", "platelets", "120", "10^9/L"),
        row("p3", "2024-03-01T07:30:00Z", "lactate", "18.02", "mg/dL"),
        row("p2", "2024-03-01T06:00:00Z", "bilirubin", "17.1", "umol/L"),
    ]
    path = write_obs(tmp_path, rows, fmt)
    out = read_observations(path).observations
    assert out.height == len(rows)
    assert set(out["source"]) == {str(path)}
    assert sorted(out["source_row"]) == [1, 2, 3, 4, 5]
    expected_values = {1: 12.0, 2: 64.0, 3: 120.0, 4: 2.0, 5: 1.0}
    for r in out.iter_rows(named=True):
        original = rows[r["source_row"] - 1]
        assert r["patient_id"] == original["patient_id"]
        assert r["concept"] == original["concept"]
        assert r["time"] == datetime.fromisoformat(original["time"])
        assert r["value"] == pytest.approx(expected_values[r["source_row"]])


def test_output_is_sorted_by_patient_and_time(tmp_path: Path) -> None:
    rows = [
        row("p2", "2024-03-01T10:00:00Z"),
        row("p1", "2024-03-01T12:00:00Z"),
        row("p1", "2024-03-01T09:00:00Z"),
    ]
    out = read_observations(write_obs(tmp_path, rows, "parquet")).observations
    assert out["source_row"].to_list() == [3, 2, 1]


def test_records_give_the_same_result_as_a_file(tmp_path: Path) -> None:
    rows = [row(), row(concept="creatinine", value="176.8", unit="umol/L"), row(concept="gcs", value="14")]
    from_file = read_observations(write_obs(tmp_path, rows, "parquet")).observations.drop("source")
    from_records = observations_from_records(rows, source="api")
    assert from_records.observations.drop("source").equals(from_file)
    assert set(from_records.observations["source"]) == {"api"}
    assert set(observations_from_records(rows).observations["source"]) == {"request"}


def test_records_accept_numbers_not_only_text() -> None:
    records = [{"patient_id": "p1", "time": 2.0, "concept": "fio2", "value": 40, "unit": "%"}]
    out = observations_from_records(records).observations
    assert out["value"].to_list() == [0.4]
    assert out["time"].to_list() == [DEFAULT_EPOCH + timedelta(hours=2)]


def test_binary_concepts_take_yes_no() -> None:
    records = [
        row(concept="mechanical_ventilation", value="yes"),
        row(concept="mechanical_ventilation", value="0", time="2024-03-01T09:00:00Z"),
        row(concept="hepatomegaly", value="true"),
    ]
    out = observations_from_records(records).observations
    assert sorted(out["value"].to_list()) == [0.0, 1.0, 1.0]


# ---------------------------------------------------------------- FiO2 percent vs fraction


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("40", "%", 0.4),
        ("0.4", "", 0.4),
        ("21", "%", 0.21),
        ("100", "%", 1.0),
        ("1", "", 1.0),
        ("0.21", "", 0.21),
    ],
)
def test_fio2_percent_or_fraction(value: str, unit: str, expected: float) -> None:
    out = observations_from_records([row(value=value, unit=unit)]).observations
    assert out["value"].to_list() == [expected]
    assert out["unit"].to_list() == ["1"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fio2_percentage_without_unit_is_an_error(tmp_path: Path, fmt: str) -> None:
    path = write_obs(tmp_path, [row(), row(value="40", unit="")], fmt)
    with pytest.raises(InputError) as info:
        read_observations(path)
    err = info.value
    assert (err.file, err.row, err.field, err.value) == (str(path), 2, "value", "40")
    assert "fraction" in err.expected
    assert "%" in err.expected


@pytest.mark.parametrize(
    ("value", "unit"), [("0.15", ""), ("0.2", ""), ("15", "%"), ("101", "%"), ("1.5", "")]
)
def test_fio2_outside_the_plausible_range(value: str, unit: str) -> None:
    with pytest.raises(InputError) as info:
        observations_from_records([row(value=value, unit=unit)])
    assert (info.value.row, info.value.field, info.value.value) == (1, "value", value)
    assert "0.21" in info.value.expected


# ---------------------------------------------------------------- bad input: one error per kind


BAD_ROWS = {
    # name: (bad row, field, value, text expected to be mentioned in `expected`)
    "unknown concept": (
        row(concept="ferritine", value="100", unit="ng/mL"),
        "concept",
        "ferritine",
        "concept",
    ),
    "unknown unit": (row(concept="pao2", value="80", unit="blorp"), "unit", "blorp", "mmHg"),
    "incompatible unit": (row(concept="pao2", value="80", unit="mg/dL"), "unit", "mg/dL", "kPa"),
    "incompatible unit (mass for count)": (
        row(concept="platelets", value="99", unit="mg/dL"),
        "unit",
        "mg/dL",
        "10^9/L",
    ),
    "non-numeric value": (row(concept="map", value="sixty", unit="mmHg"), "value", "sixty", "number"),
    "decimal comma": (row(concept="lactate", value="2,5", unit="mmol/L"), "value", "2,5", "decimal point"),
    "empty value": (row(concept="lactate", value="", unit="mmol/L"), "value", "", "number"),
    "nan value": (row(concept="lactate", value="NaN", unit="mmol/L"), "value", "NaN", "number"),
    "out of range high": (row(concept="platelets", value="3000", unit="10^9/L"), "value", "3000", "2500"),
    "out of range low": (row(concept="gcs", value="2"), "value", "2", "15"),
    "out of range after conversion": (
        row(concept="bilirubin", value="2000", unit="umol/L"),
        "value",
        "2000",
        "80",
    ),
    "bad time": (row(time="yesterday"), "time", "yesterday", "2024-03-01T08:00:00Z"),
    "impossible date": (row(time="2024-02-30T08:00:00Z"), "time", "2024-02-30T08:00:00Z", "12.5"),
    "missing patient": (row(patient_id=""), "patient_id", "", "patient"),
    "binary finding out of range": (row(concept="mechanical_ventilation", value="2"), "value", "2", "1"),
    "AB/C count given as percent positive": (
        row(concept="mhla_dr_percent", value="5000", unit="%"),
        "value",
        "5000",
        "100",
    ),
    "rate without weight": (
        row(concept="norepinephrine_rate", value="7", unit="ug/min"),
        "unit",
        "ug/min",
        "weight_kg",
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_stops_with_file_row_field_value_expected(tmp_path: Path, fmt: str, case: str) -> None:
    bad, field, value, mentioned = BAD_ROWS[case]
    rows = [row(), row(concept="gcs", value="15"), bad, row(concept="map", value="70", unit="mmHg")]
    path = write_obs(tmp_path, rows, fmt)
    with pytest.raises(InputError) as info:
        read_observations(path)
    err = info.value
    assert err.file == str(path)
    assert err.row == 3
    assert err.field == field
    # An empty CSV cell may come back as "" or as None (no value); anything else must match exactly.
    assert err.value == value or (value == "" and err.value is None)
    assert err.expected and mentioned in err.expected
    text = str(err)
    assert str(path) in text and "row 3" in text and f"'{field}'" in text


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_record_in_memory(case: str) -> None:
    bad, field, value, _ = BAD_ROWS[case]
    with pytest.raises(InputError) as info:
        observations_from_records([row(), bad], source="api")
    assert (info.value.file, info.value.row, info.value.field, info.value.value) == ("api", 2, field, value)


@pytest.mark.parametrize(
    ("concept", "value", "unit"),
    [
        ("mhla_dr", "5000", "%"),
        ("mhla_dr", "5000", "mg/L"),
        ("anti_dsdna", "30", "mg/L"),
        ("urine_rbc_hpf", "3", "mg"),
    ],
)
def test_wrong_unit_on_factor_only_concept_is_an_input_error(concept: str, value: str, unit: str) -> None:
    """AB/C, IU/mL and /hpf are not pint units: a wrong unit there must still be a clean InputError."""
    with pytest.raises(InputError) as info:
        observations_from_records([row(concept=concept, value=value, unit=unit)])
    assert (info.value.row, info.value.field, info.value.value) == (1, "unit", unit)


def test_strict_mode_reports_the_first_bad_row_in_file_order(tmp_path: Path) -> None:
    rows = [row(), row(concept="zzz"), row(value="abc"), row(time="never")]
    with pytest.raises(InputError) as info:
        read_observations(write_obs(tmp_path, rows, "parquet"))
    assert (info.value.row, info.value.field) == (2, "concept")


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_column(tmp_path: Path, fmt: str) -> None:
    path = write_obs(tmp_path, [row()], fmt, columns=["patient_id", "time", "concept", "value"])
    with pytest.raises(InputError) as info:
        read_observations(path)
    err = info.value
    assert (err.file, err.field, err.row) == (str(path), "unit", None)
    assert "unit" in err.expected and "patient_id" in err.expected


def test_duplicate_header(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("patient_id,time,concept,value,unit,value\np1,2024-03-01T08:00:00Z,fio2,0.4,,0.5\n")
    with pytest.raises(InputError) as info:
        read_observations(path)
    err = info.value
    assert (err.file, err.field, err.value) == (str(path), "value", "value")
    assert "once" in err.expected
    # The header is not a data row: errors.InputError says row is 1-based over data rows, or None.
    assert err.row is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(InputError) as info:
        read_observations(path)
    assert info.value.file == str(path)
    assert info.value.row is None
    assert "file" in info.value.expected


def test_missing_patient_file(tmp_path: Path) -> None:
    obs = write_obs(tmp_path, [row()], "parquet")
    with pytest.raises(InputError) as info:
        read_observations(obs, tmp_path / "patients.csv")
    assert info.value.file == str(tmp_path / "patients.csv")


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "obs.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(InputError) as info:
        read_observations(path)
    assert info.value.value == ".xlsx"


def test_csv_header_with_bom_spaces_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "obs.csv"
    path.write_text(
        "\ufeffpatient_id, time ,concept,value,unit,comment\np1,2024-03-01T08:00:00Z,fio2,40,%,ward round\n",
        encoding="utf-8",
    )
    out = read_observations(path).observations
    assert out["value"].to_list() == [0.4]
    assert out.columns == list(CANONICAL_SCHEMA)


def test_csv_empty_unit_cell_means_no_unit(tmp_path: Path) -> None:
    path = tmp_path / "obs.csv"
    path.write_text("patient_id,time,concept,value,unit\np1,2024-03-01T08:00:00Z,fio2,0.4,\np1,1,gcs,14,\n")
    out = read_observations(path).observations
    assert sorted(out["value"].to_list()) == [0.4, 14.0]


# ---------------------------------------------------------------- lenient mode


@pytest.mark.parametrize("fmt", FORMATS)
def test_lenient_drops_exactly_the_bad_rows_and_reports_each(tmp_path: Path, fmt: str) -> None:
    rows = [
        row(),  # 1 good
        row(concept="zzz"),  # 2 unknown concept
        row(concept="pao2", value="80", unit="mg/dL"),  # 3 incompatible unit
        row(concept="gcs", value="14"),  # 4 good
        row(value="abc"),  # 5 non-numeric
        row(concept="platelets", value="5000", unit="10^9/L"),  # 6 out of range
        row(time="tomorrow"),  # 7 bad time
        row(concept="pao2", value="10", unit="kPa"),  # 8 good
        row(concept="fio2", value="40", unit=""),  # 9 FiO2 percent without unit
        row(concept="dopamine_rate", value="350", unit="ug/min"),  # 10 no weight
    ]
    path = write_obs(tmp_path, rows, fmt)
    result = read_observations(path, lenient=True)
    assert sorted(result.observations["source_row"].to_list()) == [1, 4, 8]
    reported = [(e.row, e.field) for e in result.rejected]
    assert reported == [
        (2, "concept"),
        (3, "unit"),
        (5, "value"),
        (6, "value"),
        (7, "time"),
        (9, "value"),
        (10, "unit"),
    ]
    assert all(isinstance(e, InputError) and e.file == str(path) for e in result.rejected)
    assert all(e.expected for e in result.rejected)


def test_lenient_reports_a_row_with_several_problems_once() -> None:
    result = observations_from_records([row(time="bad", value="abc"), row()], lenient=True)
    assert [e.row for e in result.rejected] == [1]
    assert result.observations["source_row"].to_list() == [2]


def test_lenient_with_nothing_wrong_rejects_nothing() -> None:
    result = observations_from_records([row(), row(concept="gcs", value="15")], lenient=True)
    assert result.rejected == []
    assert result.observations.height == 2


# ---------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T08:00:00Z", utc(2024, 3, 1, 8)),
        ("2024-03-01T08:00:00+02:00", utc(2024, 3, 1, 6)),
        ("2024-03-01T08:00:00-05:00", utc(2024, 3, 1, 13)),
        ("2024-03-01T08:00:00+00:00", utc(2024, 3, 1, 8)),
        ("2024-03-01T08:00:00", utc(2024, 3, 1, 8)),
        ("2024-03-01 08:00:00", utc(2024, 3, 1, 8)),
        ("2024-03-01T08:00", utc(2024, 3, 1, 8)),
        ("2024-03-01T08:00:30.5Z", utc(2024, 3, 1, 8, 0, 30, 500000)),
        ("2024-03-01T23:30:00-01:00", utc(2024, 3, 2, 0, 30)),
        ("2024-03-01T08:00:00.123456+05:30", utc(2024, 3, 1, 2, 30, 0, 123456)),
        ("20240301T080000Z", utc(2024, 3, 1, 8)),
        ("2024-03-01", utc(2024, 3, 1)),
        (" 2024-03-01T08:00:00Z ", utc(2024, 3, 1, 8)),
    ],
)
def test_iso_times_become_utc(text: str, expected: datetime) -> None:
    result = observations_from_records([row(time=text)])
    assert result.observations["time"].to_list() == [expected]
    assert result.time_anchor == "absolute"


@pytest.mark.parametrize("fmt", FORMATS)
def test_mixed_offsets_in_one_file(tmp_path: Path, fmt: str) -> None:
    rows = [
        row(time="2024-03-01T08:00:00Z"),
        row(time="2024-03-01T10:00:00+02:00"),
        row(time="2024-03-01T09:00:00"),
    ]
    out = read_observations(write_obs(tmp_path, rows, fmt)).observations
    by_row = dict(zip(out["source_row"], out["time"], strict=True))
    assert by_row == {1: utc(2024, 3, 1, 8), 2: utc(2024, 3, 1, 8), 3: utc(2024, 3, 1, 9)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_hours_since_admission_use_the_patients_admission_time(tmp_path: Path, fmt: str) -> None:
    obs = write_obs(tmp_path, [row("p1", "12.5"), row("p1", "0"), row("p1", "-1.5")], fmt)
    patients = write_table(
        tmp_path,
        "patients",
        [{"patient_id": "p1", "admission_time": "2024-03-01T08:00:00+02:00"}],
        fmt,
        ["patient_id", "admission_time"],
    )
    result = read_observations(obs, patients)
    by_row = dict(zip(result.observations["source_row"], result.observations["time"], strict=True))
    admission = utc(2024, 3, 1, 6)
    assert by_row == {1: admission + timedelta(hours=12.5), 2: admission, 3: admission - timedelta(hours=1.5)}
    assert result.time_anchor == "hours since admission_time"


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e30"])
def test_non_finite_or_absurd_hours_are_input_errors(text: str) -> None:
    with pytest.raises(InputError) as info:
        observations_from_records([row(), row(time=text)])
    assert (info.value.row, info.value.field, info.value.value) == (2, "time", text)


def test_iso_basic_date_is_not_read_as_hours_since_admission() -> None:
    """'20240301' is an ISO 8601 (basic format) date: 1 March 2024, or an error, never 20,240,301 hours."""
    try:
        result = observations_from_records([row(time="20240301")])
    except InputError as err:
        assert err.field == "time"
        return
    assert result.observations["time"].to_list() == [utc(2024, 3, 1)]


def test_hours_without_admission_time_use_the_default_epoch_and_say_so() -> None:
    result = observations_from_records([row(time="36")])
    assert result.observations["time"].to_list() == [DEFAULT_EPOCH + timedelta(hours=36)]
    assert DEFAULT_EPOCH.isoformat() in result.time_anchor
    assert "no admission_time" in result.time_anchor


def test_each_patient_is_anchored_to_its_own_admission() -> None:
    patients = [
        {"patient_id": "p1", "admission_time": "2024-01-01T10:00:00Z"},
        {"patient_id": "p2", "admission_time": "2024-06-01T00:00:00Z"},
    ]
    records = [row("p1", "2"), row("p2", "2"), row("p3", "2")]
    result = observations_from_records(records, patients=patients)
    times = dict(zip(result.observations["patient_id"], result.observations["time"], strict=True))
    assert times == {
        "p1": utc(2024, 1, 1, 12),
        "p2": utc(2024, 6, 1, 2),
        "p3": DEFAULT_EPOCH + timedelta(hours=2),
    }
    assert "hours since admission_time" in result.time_anchor
    assert DEFAULT_EPOCH.isoformat() in result.time_anchor


def test_absolute_times_ignore_the_admission_anchor() -> None:
    result = observations_from_records(
        [row(time=T0)], patients=[{"patient_id": "p1", "admission_time": "2020-01-01"}]
    )
    assert result.observations["time"].to_list() == [utc(2024, 3, 1, 8)]
    assert result.time_anchor == "absolute"


def test_parquet_with_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pl.DataFrame(
        {
            "patient_id": [1, 2],
            "time": [datetime(2024, 3, 1, 8, tzinfo=UTC), datetime(2024, 3, 1, 9, tzinfo=UTC)],
            "concept": ["fio2", "pao2"],
            "value": [40.0, 10.0],
            "unit": ["%", "kPa"],
        }
    ).write_parquet(path)
    out = read_observations(path).observations
    assert out["patient_id"].to_list() == ["1", "2"]
    assert out["time"].to_list() == [utc(2024, 3, 1, 8), utc(2024, 3, 1, 9)]
    assert out["value"][0] == 0.4


# ---------------------------------------------------------------- weight-based rates and the patient table


@pytest.mark.parametrize("fmt", FORMATS)
def test_weight_based_rates_use_each_patients_weight(tmp_path: Path, fmt: str) -> None:
    rows = [
        row("p1", T0, "norepinephrine_rate", "7", "ug/min"),
        row("p2", T0, "norepinephrine_rate", "7", "ug/min"),
        row("p3", T0, "norepinephrine_rate", "0.1", "ug/kg/min"),
    ]
    obs = write_obs(tmp_path, rows, fmt)
    patients = write_table(
        tmp_path,
        "patients",
        [{"patient_id": "p1", "weight_kg": "70"}, {"patient_id": "p2", "weight_kg": "35"}],
        fmt,
        ["patient_id", "weight_kg"],
    )
    out = read_observations(obs, patients).observations
    got = dict(zip(out["patient_id"], out["value"], strict=True))
    assert got == {"p1": pytest.approx(0.1), "p2": pytest.approx(0.2), "p3": pytest.approx(0.1)}
    assert set(out["unit"]) == {"ug/kg/min"}


def test_weight_based_rate_for_a_patient_without_weight() -> None:
    patients = [{"patient_id": "p1", "weight_kg": "70"}, {"patient_id": "p2", "age": "60"}]
    records = [
        row("p1", T0, "dopamine_rate", "350", "ug/min"),
        row("p2", T0, "dopamine_rate", "350", "ug/min"),
    ]
    with pytest.raises(InputError) as info:
        observations_from_records(records, patients=patients)
    assert (info.value.row, info.value.field, info.value.value) == (2, "unit", "ug/min")
    assert "weight_kg" in info.value.expected


def test_patient_table_as_dataframe(tmp_path: Path) -> None:
    patients = pl.DataFrame({"patient_id": ["p1"], "weight_kg": [50.0]}).with_columns(
        age=pl.lit(None, pl.Float64),
        sex=pl.lit(None, pl.String),
        height_cm=pl.lit(None, pl.Float64),
        admission_time=pl.lit(None, pl.Datetime("us", "UTC")),
    )
    obs = write_obs(tmp_path, [row(concept="epinephrine_rate", value="5", unit="ug/min")], "parquet")
    assert read_observations(obs, patients).observations["value"].to_list() == [0.1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_patient_table_is_validated_and_typed(tmp_path: Path, fmt: str) -> None:
    rows = [
        {
            "patient_id": "p1",
            "age": "50",
            "sex": "female",
            "weight_kg": "70",
            "height_cm": "170",
            "admission_time": "2024-01-01T06:00:00+01:00",
        },
        {"patient_id": "p2", "age": "", "sex": "M", "weight_kg": "", "height_cm": "", "admission_time": ""},
    ]
    path = write_table(
        tmp_path,
        "patients",
        rows,
        fmt,
        ["patient_id", "age", "sex", "weight_kg", "height_cm", "admission_time"],
    )
    patients = read_patients(path)
    assert dict(patients.schema) == PATIENT_SCHEMA
    first, second = patients.iter_rows(named=True)
    assert first == {
        "patient_id": "p1",
        "age": 50.0,
        "sex": "F",
        "weight_kg": 70.0,
        "height_cm": 170.0,
        "admission_time": utc(2024, 1, 1, 5),
    }
    assert second["sex"] == "M" and second["weight_kg"] is None and second["admission_time"] is None


BAD_PATIENTS = {
    "weight not a number": ({"weight_kg": "heavy"}, "weight_kg", "heavy", "0.5"),
    "weight zero": ({"weight_kg": "0"}, "weight_kg", "0", "0.5"),
    "weight in grams": ({"weight_kg": "70000"}, "weight_kg", "70000", "400"),
    "age too high": ({"age": "130"}, "age", "130", "120"),
    "negative age": ({"age": "-1"}, "age", "-1", "120"),
    "height in metres": ({"height_cm": "1.7"}, "height_cm", "1.7", "260"),
    "unknown sex": ({"sex": "X"}, "sex", "X", "F or M"),
    "bad admission time": ({"admission_time": "soon"}, "admission_time", "soon", "2024"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(BAD_PATIENTS))
def test_bad_patient_table_value(tmp_path: Path, fmt: str, case: str) -> None:
    change, field, value, mentioned = BAD_PATIENTS[case]
    columns = ["patient_id", "age", "sex", "weight_kg", "height_cm", "admission_time"]
    good = {
        "patient_id": "p1",
        "age": "60",
        "sex": "F",
        "weight_kg": "70",
        "height_cm": "165",
        "admission_time": "2024-01-01T00:00:00Z",
    }
    bad = {**good, "patient_id": "p2", **change}
    path = write_table(tmp_path, "patients", [good, bad], fmt, columns)
    obs = write_obs(tmp_path, [row()], fmt)
    with pytest.raises(InputError) as info:
        read_observations(obs, path)
    err = info.value
    assert (err.file, err.row, err.field, err.value) == (str(path), 2, field, value)
    assert mentioned in err.expected


def test_patient_listed_twice(tmp_path: Path) -> None:
    path = write_table(
        tmp_path,
        "patients",
        [{"patient_id": "p1"}, {"patient_id": "p2"}, {"patient_id": "p1"}],
        "parquet",
        ["patient_id"],
    )
    with pytest.raises(InputError) as info:
        read_patients(path)
    assert (info.value.row, info.value.field, info.value.value) == (3, "patient_id", "p1")


def test_patient_listed_twice_names_the_repeated_row() -> None:
    """p1 and p2 each appear twice: the first repeat is row 3 (p1); row 2 is p2's first, valid, listing."""
    patients = [{"patient_id": "p1"}, {"patient_id": "p2"}, {"patient_id": "p1"}, {"patient_id": "p2"}]
    with pytest.raises(InputError) as info:
        observations_from_records([], patients=patients)
    assert (info.value.row, info.value.field, info.value.value) == (3, "patient_id", "p1")


def test_bad_patient_record_in_memory() -> None:
    with pytest.raises(InputError) as info:
        observations_from_records(
            [row()], patients=[{"patient_id": "p1", "weight_kg": "heavy"}], source="api"
        )
    assert (info.value.file, info.value.row, info.value.field, info.value.value) == (
        "api",
        1,
        "weight_kg",
        "heavy",
    )
