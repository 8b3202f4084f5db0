"""Endpoint derivations on hand-built exports: each rule on both sides of its cut-off."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from immunostrat.analysis import endpoints as ep
from immunostrat.analysis.schema import TrialExport, validate_export


def _export(
    sofa: dict[str, dict[int, int]], deaths: dict[str, int], baseline: dict[str, int | None]
) -> TrialExport:
    ids = sorted(set(sofa) | set(baseline))
    participants = pl.DataFrame(
        {
            "participant_id": ids,
            "site": ["S1"] * len(ids),
            "stratum": ["MALS"] * len(ids),
            "arm": ["immunotherapy" if i % 2 == 0 else "placebo" for i in range(len(ids))],
            "randomized_at": [datetime(2024, 1, 1, tzinfo=UTC)] * len(ids),
            "age": [60.0] * len(ids),
            "sex": ["F"] * len(ids),
            "baseline_sofa": [baseline.get(i) for i in ids],
            "itt": [True] * len(ids),
        }
    )
    rows = [
        {"participant_id": pid, "day": d, "sofa_total": v}
        for pid, days in sofa.items()
        for d, v in days.items()
    ]
    daily = pl.DataFrame(rows, schema={"participant_id": pl.Utf8, "day": pl.Int64, "sofa_total": pl.Int64})
    outcomes = pl.DataFrame(
        {
            "participant_id": ids,
            "death_day": [deaths.get(i) for i in ids],
            "last_contact_day": [deaths.get(i, 90) for i in ids],
        },
        schema={"participant_id": pl.Utf8, "death_day": pl.Int64, "last_contact_day": pl.Int64},
    )
    return validate_export({"participants": participants, "daily_assessments": daily, "outcomes": outcomes})


def _days(day1: int, later: list[int | None]) -> dict[int, int]:
    out = {1: day1}
    for d, v in enumerate(later, start=2):
        if v is not None:
            out[d] = v
    return out


def test_sofa_response_threshold_both_sides() -> None:
    # a mean of 8 integers moves in steps of 0.125: 1.375 (< 1.4) and 1.5 (>= 1.4) are the two
    # sides of the ImmunoSep threshold (domain.md A1)
    below = _days(10, [9, 9, 9, 9, 8, 8, 8, 9])  # sum 69 -> mean 8.625 -> reduction 1.375
    above = _days(10, [9, 9, 9, 8, 8, 8, 8, 9])  # sum 68 -> mean 8.5 -> reduction 1.5
    res = ep.sofa_response(_export({"A": below, "B": above}, {}, {}))
    got = {r["participant_id"]: r for r in res.iter_rows(named=True)}
    assert got["A"]["reduction"] == pytest.approx(1.375)
    assert got["A"]["responder"] is False
    assert got["B"]["reduction"] == pytest.approx(1.5)
    assert got["B"]["responder"] is True


def test_death_scores_24_after_death_and_locf_before() -> None:
    # dies on day 4; day 4 itself not measured -> LOCF (12); days 5-9 -> 24
    course = _days(10, [11, 12])
    res = ep.sofa_response(_export({"C": course}, {"C": 4}, {}))
    row = res.row(0, named=True)
    assert row["n_death_imputed"] == 5
    assert row["n_locf"] == 1
    assert row["mean_later_sofa"] == pytest.approx((11 + 12 + 12 + 24 * 5) / 8)
    assert row["responder"] is False
    assert row["status_last_day"] == "dead"


def test_death_on_day9_is_not_imputed_on_day9() -> None:
    # only days *after* death score 24: a death on day 9 with day 9 measured uses the measurement
    course = _days(12, [10, 10, 10, 10, 10, 10, 10, 10])
    row = ep.sofa_response(_export({"D": course}, {"D": 9}, {})).row(0, named=True)
    assert row["n_death_imputed"] == 0
    assert row["responder"] is True


def test_locf_for_missing_days() -> None:
    course = _days(10, [8, None, None, 8, 8, 8, 8, None])
    row = ep.sofa_response(_export({"E": course}, {}, {})).row(0, named=True)
    assert row["n_locf"] == 3
    assert row["mean_later_sofa"] == pytest.approx(8.0)
    assert row["status_last_day"] == "carried forward"


def test_day1_fallback_and_missing() -> None:
    later = {d: 6 for d in range(2, 10)}
    res = ep.sofa_response(_export({"F": later, "G": later}, {}, {"F": 8, "G": None}))
    got = {r["participant_id"]: r for r in res.iter_rows(named=True)}
    assert got["F"]["day1_source"] == "baseline_sofa" and got["F"]["responder"] is True
    assert got["G"]["responder"] is None and got["G"]["day1_source"] == "missing"
    # without a fallback the endpoint is missing
    res2 = ep.sofa_response(_export({"F": later}, {}, {"F": 8}), day1_fallback=None)
    assert res2["responder"][0] is None


def test_day15_variant_uses_days_2_to_15() -> None:
    course = _days(10, [10] * 8 + [2] * 6)  # days 2-9 flat, days 10-15 much lower
    e = _export({"H": course}, {}, {})
    assert ep.sofa_response(e, last_day=9)["responder"][0] is False
    row = ep.sofa_response(e, last_day=15).row(0, named=True)
    assert row["mean_later_sofa"] == pytest.approx((10 * 8 + 2 * 6) / 14)
    assert row["responder"] is True


def test_mortality_day_edges() -> None:
    e = _export({"A": {1: 5}, "B": {1: 5}, "C": {1: 5}}, {"A": 28, "B": 29}, {})
    # C: alive, last contact 90 by construction; make a lost one
    out = e.outcomes.with_columns(
        pl.when(pl.col("participant_id") == "C")
        .then(20)
        .otherwise(pl.col("last_contact_day"))
        .alias("last_contact_day")
    )
    e2 = TrialExport(e.participants, e.daily_assessments, out)
    m = {r["participant_id"]: r for r in ep.mortality(e2, day=28).iter_rows(named=True)}
    assert m["A"]["dead"] is True
    assert m["B"]["dead"] is False
    assert m["C"]["dead"] is None and m["C"]["status"] == "lost to follow-up"
    s = {r["participant_id"]: r for r in ep.survival(e2, horizon=90).iter_rows(named=True)}
    assert s["A"]["event"] and s["A"]["time"] == 28
    assert not s["C"]["event"] and s["C"]["time"] == 20


def test_immune_reversal_rules() -> None:
    e = _export({"M1": {1: 5}, "M2": {1: 5}, "I1": {1: 5}, "I2": {1: 5}, "I3": {1: 5}}, {}, {})
    p = e.participants.with_columns(
        pl.Series("stratum", ["immunoparalysis", "immunoparalysis", "immunoparalysis", "MALS", "MALS"]),
        pl.Series("ferritin_ng_ml", [1000.0, 1000.0, 1000.0, 10000.0, 10000.0]),
    )
    # ids sorted: I1, I2, I3, M1, M2
    d15 = pl.DataFrame(
        {
            "participant_id": ["I1", "I2", "I3", "M1", "M2"],
            "day": [15] * 5,
            "ferritin_ng_ml": [1000.0, 5000.0, 1000.0, 8500.0, 8501.0],
            "hla_dr_abc": [8001.0, 9000.0, 8000.0, None, None],
        }
    )
    daily = pl.concat([e.daily_assessments, d15], how="diagonal_relaxed")
    e2 = validate_export({"participants": p, "daily_assessments": daily, "outcomes": e.outcomes})
    r = {x["participant_id"]: x["reversed"] for x in ep.immune_reversal(e2).iter_rows(named=True)}
    assert r["I1"] is True  # HLA-DR 8,001 > 8,000 with ferritin < 4,420
    assert r["I2"] is False  # ferritin 5,000 >= 4,420
    assert r["I3"] is False  # HLA-DR 8,000 is not > 8,000
    assert r["M1"] is True  # 15% fall exactly: 10,000 -> 8,500
    assert r["M2"] is False  # 14.99% fall


def test_change_from_baseline(sle_export: TrialExport) -> None:
    ch = ep.change_from_baseline(sle_export, "mex_sledai", 0, 43)
    assert ch.height == sle_export.participants.height
    full = ch.drop_nulls("change")
    assert (full["change"] == full["value"] - full["baseline"]).all()
    long = ep.repeated_measure(sle_export, "mex_sledai", [22, 43], baseline_day=0)
    assert set(long["day"].unique().to_list()) == {22, 43}


_sofa = st.integers(min_value=0, max_value=24)


def _reference(day1: int, later: list[int | None], death: int | None) -> float:
    """Independent restatement of domain.md A1's rule, day by day."""
    vals, last = [], float(day1)
    for d, v in enumerate(later, start=2):
        if v is not None:
            last = float(v)
        elif death is not None and d > death:
            last = 24.0
        vals.append(last)
    return day1 - sum(vals) / len(vals)


@settings(max_examples=60, deadline=None)
@given(
    day1=_sofa,
    later=st.lists(st.one_of(st.none(), _sofa), min_size=8, max_size=8),
    death=st.one_of(st.none(), st.integers(min_value=2, max_value=9)),
)
def test_sofa_response_matches_reference(day1: int, later: list[int | None], death: int | None) -> None:
    if death is not None:  # nothing is measured after death
        later = [v if d <= death else None for d, v in enumerate(later, start=2)]
    row = ep.sofa_response(_export({"X": _days(day1, later)}, {"X": death} if death else {}, {})).row(
        0, named=True
    )
    expected = _reference(day1, later, death)
    assert row["reduction"] == pytest.approx(expected)
    assert row["responder"] is (expected >= 1.4 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(day1=_sofa, later=st.lists(_sofa, min_size=8, max_size=8), k=st.integers(0, 7))
def test_lower_later_sofa_never_loses_response(day1: int, later: list[int], k: int) -> None:
    """Monotone: improving (lowering) any day-2..9 SOFA cannot turn a responder into a non-responder."""
    better = list(later)
    better[k] = max(0, better[k] - 1)
    a = ep.sofa_response(_export({"A": _days(day1, list(later))}, {}, {}))["responder"][0]
    b = ep.sofa_response(_export({"A": _days(day1, list(better))}, {}, {}))["responder"][0]
    assert not (a and not b)
