"""Attrition steps of rules.yaml (adults, first ICU stay, minimum length), each on both sides of its
edge, and their counts in the cohort summary (excluded stays leave every table)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from immunostrat.cohort import build_cohort, format_summary
from immunostrat.cohort.attrition import apply_attrition
from immunostrat.sources import STAYS_SCHEMA, SourceData

T0 = datetime(2024, 1, 1, 8, 30, tzinfo=UTC)


def stays(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame([{n: r.get(n) for n in STAYS_SCHEMA} for r in rows], schema=STAYS_SCHEMA)


def stay(stay_id: str, person: str, age: float | None, start_h: float, hours: float | None) -> dict[str, Any]:
    out = None if hours is None else T0 + timedelta(hours=start_h + hours)
    return {
        "stay_id": stay_id,
        "patient_id": person,
        "age": age,
        "icu_intime": T0 + timedelta(hours=start_h),
        "icu_outtime": out,
    }


@pytest.mark.parametrize(("age", "kept"), [(18.0, True), (17.9, False), (None, False), (90.0, True)])
def test_adults(age: float | None, kept: bool) -> None:
    frame, steps = apply_attrition(stays([stay("a", "p", age, 0, 10)]), adults=True)
    assert frame.height == int(kept)
    assert [s["step"] for s in steps] == ["all stays", "adults"]
    assert steps[-1]["excluded"] == int(not kept)


def test_first_stay_per_person_after_the_adult_step() -> None:
    rows = [
        stay("later", "p", 40, 100, 10),
        stay("earlier", "p", 40, 0, 10),
        stay("child_first", "q", 17, 0, 10),  # excluded as a child: q's adult stay becomes the first
        stay("adult_second", "q", 18, 50, 10),
        stay("alone", "r", 60, 5, 10),
    ]
    frame, steps = apply_attrition(stays(rows), adults=True, first_stay=True)
    assert sorted(frame["stay_id"]) == ["adult_second", "alone", "earlier"]
    assert [(s["step"], s["stays"], s["excluded"]) for s in steps] == [
        ("all stays", 5, 0),
        ("adults", 4, 1),
        ("first stay", 3, 1),
    ]
    frame, _ = apply_attrition(stays(rows), first_stay=True)
    assert sorted(frame["stay_id"]) == ["alone", "child_first", "earlier"]


@pytest.mark.parametrize(("hours", "kept"), [(4.0, True), (3.99, False), (None, False)])
def test_minimum_length(hours: float | None, kept: bool) -> None:
    frame, steps = apply_attrition(stays([stay("a", "p", 50, 0, hours)]), min_stay_hours=4)
    assert frame.height == int(kept)
    assert steps[-1]["rule"].startswith("ICU stay >= 4 h")


def test_all_off_keeps_every_stay() -> None:
    rows = [stay("a", "p", None, 0, None), stay("b", "p", 5, 1, 1)]
    frame, steps = apply_attrition(stays(rows))
    assert frame.height == 2 and len(steps) == 1


def test_cohort_summary_counts(hand_source: SourceData) -> None:
    source = SourceData(
        source=hand_source.source,
        stays=hand_source.stays.with_columns(
            pl.Series("age", [70.0, 16.0, 45.0, 80.0]), pl.Series("patient_id", ["p1", "p2", "p1", "p4"])
        ),
        observations=hand_source.observations,
    )
    result = build_cohort(source, engine="duckdb", adults=True, first_stay=True, min_stay_hours=6)
    attrition = result.summary["attrition"]
    # s2 is 16; s1 and s3 are p1's stays with the same admission time: the lower id s1 is first;
    # s4 lasted 5.5 h
    assert [(a["step"], a["stays"]) for a in attrition] == [
        ("all stays", 4),
        ("adults", 3),
        ("first stay", 2),
        ("minimum length", 1),
    ]
    for table in (result.stays, result.sepsis3):
        assert table["stay_id"].to_list() == ["s1"]
    assert set(result.hourly_sofa["stay_id"]) == {"s1"}
    assert result.summary["stays"] == 1
    assert "attrition: all stays 4 -> adults 3" in format_summary(result.summary)
