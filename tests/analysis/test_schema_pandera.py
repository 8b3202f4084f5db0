"""The per-table rules run through pandera (polars backend); our one-line error on top still names
the table, the 1-based row, the field, the value found and what was expected."""

from __future__ import annotations

import polars as pl
import pytest

from immunostrat.analysis.schema import TABLES, TrialExport, pandera_schema, validate_export
from immunostrat.errors import InputError


def _with(export: TrialExport, table: str, field: str, row: int, value: object) -> dict[str, object]:
    """The export as a mapping with one cell (1-based row) replaced."""
    frames = export.as_mapping()
    frame = frames[table]
    assert isinstance(frame, pl.DataFrame)
    values = frame[field].to_list()
    values[row - 1] = value
    frames[table] = frame.with_columns(pl.Series(field, values, dtype=frame.schema[field]))
    return frames


def test_every_table_is_a_pandera_schema() -> None:
    import pandera.polars as pa

    for name, table in TABLES.items():
        schema = pandera_schema(name)
        assert isinstance(schema, pa.DataFrameSchema)
        assert list(schema.columns) == [c.name for c in table.columns]
        for column in table.columns:
            assert schema.columns[column.name].nullable == column.nullable
            assert schema.columns[column.name].unique == column.unique


@pytest.mark.parametrize(
    ("table", "field", "row", "value", "message", "expected"),
    [
        ("participants", "age", 4, 17.5, "below the allowed range", "float >= 18 <= 120 not empty"),
        ("participants", "baseline_sofa", 2, 25, "above the allowed range", "int >= 0 <= 24"),
        ("participants", "sex", 7, "X", "value not allowed", "str one of F, M, other not empty"),
        ("participants", "arm", 3, None, "empty value", "str not empty"),
        ("daily_assessments", "sofa_cns", 11, 5, "above the allowed range", "int >= 0 <= 4"),
        ("outcomes", "death_day", 5, 0, "below the allowed range", "int >= 1"),
        ("adverse_events", "ctcae_grade", 2, 6, "above the allowed range", "int >= 1 <= 5"),
    ],
)
def test_pandera_failures_name_row_field_value_expectation(
    sepsis_export: TrialExport, table: str, field: str, row: int, value: object, message: str, expected: str
) -> None:
    with pytest.raises(InputError) as info:
        validate_export(_with(sepsis_export, table, field, row, value))
    err = info.value
    assert (err.file, err.row, err.field, err.message) == (table, row, field, message)
    assert err.value == value
    assert err.expected == expected


def test_first_failure_in_schema_order(sepsis_export: TrialExport) -> None:
    """Two bad cells: the column declared first is reported (as before pandera), then the lower row."""
    frames = _with(sepsis_export, "participants", "sex", 9, "X")
    bad = TrialExport(**{**sepsis_export.__dict__, "participants": frames["participants"]})  # type: ignore[arg-type]
    frames = _with(bad, "participants", "age", 12, 200.0)
    frames = _with(TrialExport(**{**bad.__dict__, "participants": frames["participants"]}), "participants",
                   "age", 10, 5.0)  # fmt: skip
    with pytest.raises(InputError) as info:
        validate_export(frames)
    assert (info.value.field, info.value.row, info.value.message) == ("age", 10, "below the allowed range")


def test_duplicate_names_both_rows(sepsis_export: TrialExport) -> None:
    first = sepsis_export.participants["participant_id"][2]
    with pytest.raises(InputError) as info:
        validate_export(_with(sepsis_export, "participants", "participant_id", 6, first))
    err = info.value
    assert err.message == "duplicate value (rows 3, 6)"
    assert (err.row, err.field, err.value) == (6, "participant_id", first)
