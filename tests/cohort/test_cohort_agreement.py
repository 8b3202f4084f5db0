"""The Sepsis-3 proxy vs a source's own label: counts and onset differences on hand-made stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from immunostrat.cohort import format_agreement, label_agreement

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def test_confusion_matrix_and_onset_difference() -> None:
    hours = {"a": [0, 1, 3, 4], "b": [0, 0, 1, 1], "c": [2, 2, 2, 2], "d": [0, 0, 0, 0]}
    hourly = pl.DataFrame(
        [
            {"stay_id": s, "time": T0 + timedelta(hours=h), "sofa_total": v}
            for s, values in hours.items()
            for h, v in enumerate(values)
        ]
    )
    onset = pl.DataFrame(
        {
            "stay_id": ["a", "b", "c", "d"],
            "sepsis_label_any": [True, True, False, False],
            "sepsis_onset_time": [T0 + timedelta(hours=1), T0 + timedelta(hours=2), None, None],
        }
    )
    result = label_agreement(hourly, onset)
    # a: proxy at h2 (3 >= 2), labelled -> TP; b: never >= 2, labelled -> FN; c: proxy at h0, unlabelled -> FP
    assert (
        result["true_positive"],
        result["false_negative"],
        result["false_positive"],
        result["true_negative"],
    ) == (
        1,
        1,
        1,
        1,
    )
    assert result["sensitivity"] == pytest.approx(0.5) and result["specificity"] == pytest.approx(0.5)
    assert result["onset_pairs"] == 1
    assert result["median_proxy_minus_label_hours"] == pytest.approx(1.0)
    assert "sensitivity 50.0%" in format_agreement(result)


def test_stays_without_any_laboratory_input_are_not_assessable() -> None:
    rows = [
        # a: platelets charted, partial SOFA 2 -> counted; e: vital signs only -> not assessable
        {"stay_id": "a", "time": T0, "sofa_total": 2, "platelets": 120.0},
        {"stay_id": "e", "time": T0, "sofa_total": 2, "platelets": None},
    ]
    hourly = pl.DataFrame(rows, schema_overrides={"platelets": pl.Float64})
    onset = pl.DataFrame(
        {"stay_id": ["a", "e"], "sepsis_label_any": [False, False], "sepsis_onset_time": [None, None]},
        schema_overrides={"sepsis_onset_time": pl.Datetime("us", "UTC")},
    )
    result = label_agreement(hourly, onset)
    assert result["stays"] == 1 and result["false_positive"] == 1 and result["not_assessable_stays"] == 1
    assert result["proxy"].startswith("partial SOFA >= 2 at any hour")
    assert "not assessable: 1 stays" in format_agreement(result)
