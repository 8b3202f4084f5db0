"""The band-table helpers every score is built from (scores/expressions.py)."""

from __future__ import annotations

import narwhals.stable.v2 as nw
import polars as pl
import pytest

from immunostrat.scores.expressions import band_points, compare, ensure_columns, missing_report

BANDS = [
    {"op": "<", "threshold": 150, "points": 1},
    {"op": "<", "threshold": 100, "points": 2},
    {"op": "<", "threshold": 50, "points": 3, "requires": "flag"},
]


def run(frame: pl.DataFrame, *exprs: nw.Expr) -> pl.DataFrame:
    return nw.from_native(frame).select(*exprs).to_native()


COMPARISONS = [
    ("<", [True, False, False]),
    ("<=", [True, True, False]),
    (">", [False, False, True]),
    (">=", [False, True, True]),
]


@pytest.mark.parametrize(("op", "expected"), COMPARISONS)
def test_compare_each_operator(op: str, expected: list[bool]) -> None:
    out = run(pl.DataFrame({"x": [1.0, 2.0, 3.0]}), compare(nw.col("x"), op, 2.0).alias("c"))
    assert out["c"].to_list() == expected


@pytest.mark.parametrize("op", ["==", "=<", "lt", ""])
def test_compare_rejects_unknown_operators(op: str) -> None:
    with pytest.raises(ValueError, match="unknown comparison"):
        compare(nw.col("x"), op, 1.0)


def test_band_points_most_severe_band_wins_null_stays_null() -> None:
    frame = pl.DataFrame({"x": [200.0, 150.0, 149.0, 99.0, 40.0, 40.0, None], "flag": [0, 0, 0, 0, 0, 1, 1]})
    out = run(frame, band_points(nw.col("x"), BANDS).alias("p"))
    assert out["p"].to_list() == [0, 0, 1, 2, 2, 3, None]
    assert out.schema["p"] == pl.Int64


def test_band_points_order_of_the_table_does_not_matter() -> None:
    frame = pl.DataFrame({"x": [149.0, 99.0, 40.0], "flag": [1, 1, 1]})
    forward = run(frame, band_points(nw.col("x"), BANDS).alias("p"))["p"].to_list()
    backward = run(frame, band_points(nw.col("x"), list(reversed(BANDS))).alias("p"))["p"].to_list()
    assert forward == backward == [1, 2, 3]


def test_band_points_requirement_from_an_extra_expression() -> None:
    frame = pl.DataFrame({"x": [40.0, 40.0], "other": [None, 1]})
    out = run(frame, band_points(nw.col("x"), BANDS, {"flag": nw.col("other")}).alias("p"))
    assert out["p"].to_list() == [2, 3]


def test_ensure_columns_adds_absent_inputs_as_nulls_only() -> None:
    frame = nw.from_native(pl.DataFrame({"a": [1.0]}))
    out = ensure_columns(frame, ["a", "b", "b", "c"]).to_native()
    assert out.columns == ["a", "b", "c"]
    assert out.row(0) == (1.0, None, None)
    assert ensure_columns(frame, ["a"]) is frame


def test_missing_report_counts_and_names() -> None:
    frame = pl.DataFrame({"a": [None, 1.0, None], "b": [None, 2.0, 3.0]})
    out = run(frame, *missing_report("s", {"first": nw.col("a").is_null(), "second": nw.col("b").is_null()}))
    assert out["s_missing"].to_list() == [2, 0, 1]
    assert out["s_missing_components"].to_list() == ["first,second", "", "first"]
