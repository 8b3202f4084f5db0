"""Small inputs (up to ``SMALL_ROWS`` rows: a bedside request) are validated row by row; every other
input by polars columns. Both paths must give the same canonical frame, the same rejected rows and
the same first error (message, row, field, value, expected) for every input, strict and lenient:
random valid and invalid rows, mixed units, bad times, unknown concepts, commas, NaN, values out of
range or under a unit-slip floor, missing weights, site codes, patient tables, named date formats."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from immunostrat.concepts import load_concepts, observations
from immunostrat.concepts.observations import (
    OBSERVATION_COLUMNS,
    canonicalize,
    observations_from_records,
    validate_patients,
)
from immunostrat.concepts.site_codes import SiteCode, SiteCodes
from immunostrat.errors import InputError

CONCEPTS = list(load_concepts())
SITE_CODES = SiteCodes(
    {
        "FERR": SiteCode(concept="ferritin", unit="ug/L"),
        "http://lab.example.org|HLADR": SiteCode(concept="mhla_dr", unit="AB/C"),
        "CREA": SiteCode(concept="creatinine"),
    },
    "test site codes",
)
OTHER_NAMES = [
    "FERRITIN",
    " ferritin ",
    "mHLA-DR",
    "ferritn",
    "serum feritin",
    "unknown thing",
    "",
    "  ",
    "\x1cferritin",
    "\u3000creatinine\u3000",
    "FERR",
    "CREA",
    "http://lab.example.org|HLADR",
]
OTHER_UNITS = [
    "",
    "  ",
    "bogus",
    "g/L",
    "mg/dL",
    "umol/L",
    "µmol/L",
    "ug/L",
    "ng/mL",
    "%",
    "mcg/min",
    "mg/h",
    "kg",
    "MMHG",
    "G/L",
    "  mg/dL  ",
    "10^9/L",
    "/min",
    "degF",
    "K",
    "\x1cmg/dL",
]
ODD_VALUES = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "yes",
    "TRUE",
    "No",
    "false",
    "abc",
    "",
    " ",
    "1,5",
    "-2,25",
    "1.000,5",
    "12,000",
    "1_000",
    "\x1c5",
    "٣",
    "٣,٤",
    "+5",
    ".5",
    "5.",
    "-0",
    "0x10",
    " 42 ",
    "4.9e-325",
    "1e308",
    "1.7976931348623157e308",
    "\u200b7",
]
ODD_TIMES = [
    "06/01/2025",
    "13/01/2025 08:00",
    "1.2.2025",
    "2025-02-30T08:00:00Z",
    "2025-03-01T24:00:00Z",
    "2025-03-01T08:00:60Z",
    "2025-03-01T08:60:00Z",
    "0000-03-01T08:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00",
    "2025-03-01T08:00:00+24:00",
    "2025-03-01T08:00:00+05:60",
    "2025-03-01t08:00:00z",
    "2025-03-01T08:00:00,5Z",
    "2025-03-01T08:00:00.1234567Z",
    "20250301T0800Z",
    "20250301",
    "00000012",
    "2025-03-01T08:00:00Z\x1c",
    "\u20032025-03-01T08:00:00Z",
    "garbage",
    "",
    "  ",
    "nan",
    "inf",
    "1e9",
    "-87840",
    "87840.0001",
    "12.5",
    " 3 ",
    "٣",
]


@contextmanager
def column_path() -> Iterator[None]:
    """Every input through the polars column path (no input is small enough for the row path)."""
    saved = observations.SMALL_ROWS
    observations.SMALL_ROWS = -1
    try:
        yield
    finally:
        observations.SMALL_ROWS = saved


def number_texts(low: float, high: float) -> st.SearchStrategy[str]:
    numbers = st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    return st.one_of(
        numbers.map(repr),
        numbers.map(lambda x: f"{x:.3g}"),
        numbers.map(lambda x: f"{x:.2f}"),
        numbers.map(lambda x: str(round(x))),
    )


def values_for(concept: Any) -> st.SearchStrategy[str | None]:
    low, high = concept.plausible
    span = max(high - low, 1.0)
    options = [
        number_texts(low - span * 0.2, high * 1.3 + 1),
        number_texts(-5.0, 5.0),
        st.sampled_from(ODD_VALUES),
        st.none(),
    ]
    if concept.unit_slip_floor is not None:
        options.append(number_texts(0.0, concept.unit_slip_floor.below * 1.5))
    return st.one_of(*options)


OFFSETS = ["Z", "", "+01:00", "-05:30", "+00:00", "-00:00", "+0100", "+01", "+13:45", "-11:00", "+23:59"]


@st.composite
def iso_time(draw: st.DrawFn) -> str:
    when = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)))
    sep = draw(st.sampled_from(["T", " "]))
    clock = draw(st.sampled_from(["%H:%M:%S", "%H:%M", "%H:%M:%S.%f"]))
    text = when.strftime(f"%Y-%m-%d{sep}{clock}")
    if clock.endswith("%f"):
        text = text[: len(text) - draw(st.integers(0, 5))]  # 1 to 6 decimals
        if draw(st.booleans()):
            text += draw(st.sampled_from(["7", "123"]))  # more than 6
    if draw(st.integers(0, 9)) == 0:
        text = when.strftime(draw(st.sampled_from(["%Y-%m-%d", "%Y%m%dT%H%M", "%Y%m%d"])))
    return text + draw(st.sampled_from(OFFSETS))


def times() -> st.SearchStrategy[str | None]:
    hours = st.floats(min_value=-100000, max_value=100000, allow_nan=False)
    return st.one_of(
        iso_time(),
        iso_time(),
        hours.map(repr),
        st.integers(-100, 10000).map(str),
        st.sampled_from(ODD_TIMES),
        st.none(),
    )


PATIENT_IDS = st.sampled_from(["p1", "p1", "p1", "p2", " p1 ", "", None, "  ", "\x1cp1"])


@st.composite
def observation(draw: st.DrawFn) -> dict[str, str | None]:
    concept = draw(st.sampled_from(CONCEPTS))
    own_names = [concept.id, concept.id.upper(), f" {concept.id} ", *concept.aliases, *concept.loinc]
    name = draw(st.one_of(st.sampled_from(own_names), st.sampled_from(OTHER_NAMES), st.none()))
    unit = draw(st.one_of(st.sampled_from(list(concept.units)), st.sampled_from(OTHER_UNITS), st.none()))
    return {
        "patient_id": draw(PATIENT_IDS),
        "time": draw(times()),
        "concept": name,
        "value": draw(values_for(concept)),
        "unit": unit,
    }


@st.composite
def patient(draw: st.DrawFn, pid: str | None) -> dict[str, str | None]:
    def pick(*options: str | None) -> str | None:
        return draw(st.sampled_from(options))

    return {
        "patient_id": pid,
        "age": pick(None, "64", " 70.5 ", "abc", "130", "nan", "", "-1"),
        "sex": pick(None, "F", "m", "female", " Male ", "x", "", "WOMAN"),
        "weight_kg": pick(None, None, "70", "0.4", "abc", "nan", "500", " 80 ", "inf", "", "55.5"),
        "height_cm": pick(None, "170", "10", "", "1e3"),
        "admission_time": draw(st.one_of(st.none(), iso_time(), st.sampled_from(["bad", "", "06/01/2025"]))),
    }


@st.composite
def patient_table(draw: st.DrawFn) -> list[dict[str, str | None]] | None:
    if draw(st.booleans()):
        return None
    ids = draw(st.lists(st.sampled_from(["p1", "p2", "p3", None]), min_size=1, max_size=3))
    return [draw(patient(pid)) for pid in ids]


def floats_exactly(value: Any) -> Any:
    if isinstance(value, float):
        return value.hex()  # -0.0 and 0.0 differ, NaN is equal to itself
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def frame_facts(frame: pl.DataFrame) -> tuple[Any, ...]:
    rows = [tuple(floats_exactly(v) for v in row) for row in frame.rows()]
    return (list(frame.schema.items()), rows)


def error_facts(error: InputError) -> tuple[Any, ...]:
    return (error.message, error.file, error.row, error.field, error.value, error.expected)


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        result = call()
    except InputError as exc:
        return ("input error", error_facts(exc))
    except Exception as exc:  # a crash must stay the same crash
        return ("crash", type(exc).__name__)
    return ("ok", result)


def both_paths(call: Callable[[], Any]) -> None:
    rows = outcome(call)
    with column_path():
        columns = outcome(call)
    assert rows == columns


def canonical_facts(result: tuple[pl.DataFrame, list[InputError], str]) -> tuple[Any, ...]:
    frame, rejected, anchor = result
    return (frame_facts(frame), [error_facts(e) for e in rejected], anchor)


def set_facts(result: Any) -> tuple[Any, ...]:
    return (
        frame_facts(result.observations),
        frame_facts(result.patients),
        [error_facts(e) for e in result.rejected],
        result.time_anchor,
    )


def validated_patients(records: list[dict[str, str | None]] | None) -> pl.DataFrame | None:
    """A patient table as the column path validates it (None when it is refused)."""
    if records is None:
        return None
    columns = sorted({k for r in records for k in r})
    raw = pl.DataFrame(records, schema={c: pl.String for c in columns})
    with column_path():
        try:
            return validate_patients(raw)
        except InputError:
            return None


RECORDS = st.lists(observation(), min_size=0, max_size=8)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    records=RECORDS,
    table=patient_table(),
    lenient=st.booleans(),
    codes=st.booleans(),
    order=st.sampled_from(["file", "shuffled", "repeated"]),
)
def test_canonicalize_row_path_equals_column_path(
    records: list[dict[str, str | None]],
    table: list[dict[str, str | None]] | None,
    lenient: bool,
    codes: bool,
    order: str,
) -> None:
    raw = pl.DataFrame(records, schema={c: pl.String for c in OBSERVATION_COLUMNS})
    patients = validated_patients(table)
    n = len(records)
    source_rows = None
    if order == "shuffled":
        source_rows = pl.Series([(i * 7) % (n + 3) + 2 for i in range(n)], dtype=pl.Int64)
    elif order == "repeated":
        source_rows = pl.Series([i // 2 + 1 for i in range(n)], dtype=pl.Int64)

    def run() -> tuple[Any, ...]:
        return canonical_facts(
            canonicalize(
                raw,
                source="obs.csv",
                patients=patients,
                lenient=lenient,
                source_rows=source_rows,
                site_codes=SITE_CODES if codes else None,
            )
        )

    both_paths(run)


@SETTINGS
@given(records=RECORDS, table=patient_table(), lenient=st.booleans())
def test_records_row_path_equals_column_path(
    records: list[dict[str, str | None]], table: list[dict[str, str | None]] | None, lenient: bool
) -> None:
    """What the API calls: records and patient records (numbers as numbers), errors by position."""
    as_given: list[dict[str, Any]] = []
    for r in records:
        value: Any = r["value"]
        with suppress(ValueError):
            value = float(value) if value is not None and math.isfinite(float(value)) else value
        as_given.append({**r, "value": value})
    patients: list[dict[str, Any]] | None = None
    if table is not None:
        patients = [{k: v for k, v in p.items() if v is not None} for p in table]

    def run() -> tuple[Any, ...]:
        return set_facts(observations_from_records(as_given, patients, source="request", lenient=lenient))

    both_paths(run)


@SETTINGS
@given(table=st.lists(st.sampled_from(["p1", "p2", " p3", "", None]).flatmap(patient), max_size=4))
def test_patient_table_row_path_equals_column_path(table: list[dict[str, str | None]]) -> None:
    if not table:
        table = [{"patient_id": "p1"}]
    columns = sorted({k for r in table for k in r})
    raw = pl.DataFrame(table, schema={c: pl.String for c in columns})
    both_paths(lambda: frame_facts(validate_patients(raw, "patients.csv")))


DATE_FORMATS = ["%d/%m/%Y %H:%M", "%Y-%m-%d", "%H:%M %d.%m.%Y", "%Y-%m-%dT%H:%M:%S%z", "%Q bad"]


@SETTINGS
@given(
    records=st.lists(observation(), min_size=1, max_size=6),
    date_format=st.sampled_from(DATE_FORMATS),
    stamps=st.lists(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)), max_size=6),
    lenient=st.booleans(),
)
def test_named_date_format_row_path_equals_column_path(
    records: list[dict[str, str | None]], date_format: str, stamps: list[datetime], lenient: bool
) -> None:
    for record, stamp in zip(records, stamps, strict=False):
        if "%Q" not in date_format:
            record["time"] = stamp.replace(tzinfo=UTC).strftime(date_format)
    raw = pl.DataFrame(records, schema={c: pl.String for c in OBSERVATION_COLUMNS})

    def run() -> tuple[Any, ...]:
        return canonical_facts(canonicalize(raw, source="obs.csv", lenient=lenient, date_format=date_format))

    both_paths(run)


def test_bedside_request_is_read_row_by_row_and_agrees() -> None:
    """The three observations of a bedside request, in mixed units: the row path answers, in
    canonical units, exactly as the column path does."""
    records = [
        {
            "patient_id": "p1",
            "time": "2025-03-01T08:00:00Z",
            "concept": "ferritin",
            "value": 5200,
            "unit": "ug/L",
        },
        {
            "patient_id": "p1",
            "time": "2025-03-01T08:05:00+01:00",
            "concept": "mHLA-DR",
            "value": 3100,
            "unit": "AB/C",
        },
        {
            "patient_id": "p1",
            "time": "2025-03-01T07:30:00Z",
            "concept": "creatinine",
            "value": 133,
            "unit": "umol/L",
        },
    ]
    patients = [{"patient_id": "p1", "age": 64, "sex": "F", "weight_kg": 71}]
    result = observations_from_records(records, patients)
    frame = result.observations
    assert frame["concept"].to_list() == ["mhla_dr", "creatinine", "ferritin"]
    assert frame["time"].to_list()[0] == datetime(2025, 3, 1, 7, 5, tzinfo=UTC)
    assert frame["value"].to_list() == pytest.approx([3100.0, 133 / 88.4, 5200.0], rel=1e-3)
    assert frame["unit"].to_list() == ["AB/C", "mg/dL", "ng/mL"]
    with column_path():
        columns = observations_from_records(records, patients)
    assert set_facts(result) == set_facts(columns)


def test_row_path_numbers_round_as_polars_does() -> None:
    """Rounding to 9 decimals (half to even, sign kept, large numbers left alone) and the comparison
    with NaN above every number: the row path's two arithmetic rules, checked against polars itself."""
    from immunostrat.concepts.observations import _greater, _round

    values = [k / 2e9 for k in range(-400, 400)] + [
        0.1 + 0.2,
        -0.4e-9,
        2.5e-9,
        1e300,
        -1e300,
        5e298,
        9.1e299,
        math.inf,
        -math.inf,
        123456.0000000005,
        1 / 3,
        -2 / 3,
    ]
    expected = pl.Series(values).round(9).to_list()
    assert [v.hex() for v in map(_round, values)] == [v.hex() for v in expected]
    assert math.isnan(_round(math.nan))
    grid = [-math.inf, -1.0, 0.0, 1.0, math.inf, math.nan]
    frame = pl.DataFrame({"a": [a for a in grid for _ in grid], "b": [b for _ in grid for b in grid]})
    polars_greater = frame.select(pl.col("a") > pl.col("b")).to_series().to_list()
    assert [_greater(a, b) for a, b in frame.rows()] == polars_greater


def test_a_patient_frame_with_a_patient_twice_is_left_to_the_column_path() -> None:
    """A given patient frame listing a patient twice joins each observation twice in polars; the row
    path does not guess and hands such input to the column path."""
    frame = pl.DataFrame(
        {
            "patient_id": ["p1", "p1"],
            "age": [60.0, 61.0],
            "sex": ["F", "F"],
            "weight_kg": [70.0, 80.0],
            "height_cm": [None, None],
            "admission_time": [None, None],
        },
        schema=observations.PATIENT_SCHEMA,
    )
    raw = pl.DataFrame(
        [{"patient_id": "p1", "time": "1", "concept": "norepinephrine_rate", "value": "7", "unit": "ug/min"}],
        schema={c: pl.String for c in OBSERVATION_COLUMNS},
    )
    both_paths(lambda: canonical_facts(canonicalize(raw, source="x", patients=frame)))
    assert canonicalize(raw, source="x", patients=frame)[0].height == 2


def test_hours_with_an_admission_time_near_the_calendar_end_are_left_to_the_column_path() -> None:
    frame = pl.DataFrame(
        {"patient_id": ["p1"], "admission_time": [datetime(9999, 12, 31, 23, tzinfo=UTC)]}
    ).with_columns(
        pl.lit(None, dtype=pl.Float64).alias("age"),
        pl.lit(None, dtype=pl.String).alias("sex"),
        pl.lit(None, dtype=pl.Float64).alias("weight_kg"),
        pl.lit(None, dtype=pl.Float64).alias("height_cm"),
    )
    frame = frame.select(list(observations.PATIENT_SCHEMA)).cast(observations.PATIENT_SCHEMA)  # type: ignore[arg-type]
    raw = pl.DataFrame(
        [{"patient_id": "p1", "time": "48", "concept": "ferritin", "value": "500", "unit": "ng/mL"}],
        schema={c: pl.String for c in OBSERVATION_COLUMNS},
    )
    both_paths(lambda: canonical_facts(canonicalize(raw, source="x", patients=frame)))
