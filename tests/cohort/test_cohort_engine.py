"""Cohort engine on a hand-built source with known answers: hourly SOFA at chosen hours, the bedside
window rules reproduced exactly, Sepsis-3 onset, the endotype timeline (immunoparalysis -> MALS ->
stale), the summary, the written folder and the figures."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cohorttools import T0, at

from immunostrat.cohort import build_cohort, cohort_summary
from immunostrat.cohort.synthetic import synthetic_source
from immunostrat.protocols import classify_patient, load_protocol
from immunostrat.scores import SOFA_COMPONENTS, score_windows
from immunostrat.scores.sepsis3 import suspected_infection
from immunostrat.sources import SourceData


def hours_of(result: Any, stay: str) -> pl.DataFrame:
    return result.hourly_sofa.filter(pl.col("stay_id") == stay).sort("hour")


def value_at(result: Any, stay: str, hour: int, column: str) -> Any:
    row = hours_of(result, stay).filter(pl.col("hour") == hour)
    assert row.height == 1, (stay, hour)
    return row[column][0]


def test_every_stay_gets_an_hourly_grid(hand_result: Any) -> None:
    grid = hand_result.hourly_sofa.group_by("stay_id").agg(
        pl.len().alias("n"), pl.col("time").min().alias("first"), pl.col("hour").max().alias("last_hour")
    )
    n = dict(zip(grid["stay_id"], grid["n"], strict=True))
    # 08:30 admission -> first grid hour 09:00; 72 h -> 08:30 day 4 -> last grid hour 09:00 day 4
    assert n == {"s1": 73, "s2": 121, "s3": 51, "s4": 6}
    assert set(grid["first"].to_list()) == {T0 + timedelta(minutes=30)}
    empty = hours_of(hand_result, "s4")
    assert empty["sofa_total"].to_list() == [0] * 6
    assert empty["sofa_missing"].to_list() == [6] * 6
    assert set(empty["endotype"]) == {"unknown"}


@pytest.mark.parametrize(
    ("hour", "total"),
    [(0, 0), (1, 2), (2, 8), (3, 11), (21, 11), (22, 14), (25, 12), (26, 6), (28, 6), (29, 3)],
)
def test_hourly_sofa_known_values(hand_result: Any, hour: int, total: int) -> None:
    assert value_at(hand_result, "s1", hour, "sofa_total") == total


def test_component_rules(hand_result: Any) -> None:
    # hour 3 (12:00): PaO2 80 / FiO2 0.5 ventilated, platelets 90, norepinephrine 0.05, GCS 9
    got = {c: value_at(hand_result, "s1", 3, f"sofa_{c}") for c in SOFA_COMPONENTS}
    assert got == {"respiration": 3, "coagulation": 2, "liver": 0, "cardiovascular": 3, "cns": 3, "renal": 0}
    assert value_at(hand_result, "s1", 3, "pao2_fio2_ratio") == 160.0
    # the PaO2 of 16:00 has no FiO2 within 4 h: it is not paired (the ratio stays 160)
    assert value_at(hand_result, "s1", 8, "pao2_fio2_ratio") == 160.0
    # epinephrine 0.2 ran 30 minutes (< 1 h): never counted
    assert hours_of(hand_result, "s1")["epinephrine_rate"].is_null().all()
    # norepinephrine ran 11:30-13:30: still in the window at 13:00 day 2, gone at 14:00 day 2
    assert value_at(hand_result, "s1", 28, "norepinephrine_rate") == 0.05
    assert value_at(hand_result, "s1", 29, "norepinephrine_rate") is None
    # urine: 15 mL hourly from 08:30; the window is covered from 07:00 day 2 (23 events = 345 mL)
    assert value_at(hand_result, "s1", 21, "urine_output_24h") is None
    assert value_at(hand_result, "s1", 22, "urine_output_24h") == 345.0
    assert value_at(hand_result, "s1", 23, "urine_output_24h") == 360.0
    # a creatinine drawn before ICU admission counts in the first windows only
    assert value_at(hand_result, "s3", 0, "sofa_renal") == 2
    assert value_at(hand_result, "s3", 19, "creatinine") == 2.5
    assert value_at(hand_result, "s3", 20, "creatinine") is None


def _bedside(observations: pl.DataFrame, hourly: pl.DataFrame) -> pl.DataFrame:
    windows = hourly.select(
        "stay_id",
        (pl.col("time") - timedelta(hours=24) + timedelta(microseconds=1)).alias("window_start"),
        (pl.col("time") + timedelta(microseconds=1)).alias("window_end"),
    ).rename({"stay_id": "patient_id"})
    scored = score_windows(observations, windows, "sofa")
    return scored.select(
        pl.col("patient_id").alias("stay_id"),
        (pl.col("window_end") - timedelta(microseconds=1)).alias("time"),
        "sofa_total",
        *[f"sofa_{c}" for c in SOFA_COMPONENTS],
    ).sort("stay_id", "time")


def test_equals_bedside_windows_on_fixture(hand_source: SourceData, hand_result: Any) -> None:
    """Every hourly row equals the bedside worst-value logic (scores.windows) over (T - 24 h, T]."""
    columns = ["stay_id", "time", "sofa_total", *[f"sofa_{c}" for c in SOFA_COMPONENTS]]
    ours = hand_result.hourly_sofa.select(columns).sort("stay_id", "time")
    bedside = _bedside(hand_source.observations, hand_result.hourly_sofa)
    joined = ours.join(bedside, on=["stay_id", "time"], how="left", suffix="_bedside")
    for column in columns[2:]:
        diff = joined.filter(pl.col(column) != pl.col(f"{column}_bedside").fill_null(0))
        assert diff.is_empty(), diff


def test_equals_bedside_windows_on_synthetic() -> None:
    stays, obs = synthetic_source(12, seed=7)
    result = build_cohort(SourceData(source="synthetic", stays=stays, observations=obs))
    columns = ["stay_id", "time", "sofa_total", *[f"sofa_{c}" for c in SOFA_COMPONENTS]]
    ours = result.hourly_sofa.select(columns).sort("stay_id", "time")
    bedside = _bedside(obs, result.hourly_sofa)
    assert ours.height == bedside.height > 500
    joined = ours.join(bedside, on=["stay_id", "time"], how="left", suffix="_bedside")
    for column in columns[2:]:
        diff = joined.filter(pl.col(column) != pl.col(f"{column}_bedside"))
        assert diff.is_empty(), (column, diff)
    assert (ours["sofa_total"] >= 8).any()  # the synthetic stays are not trivially healthy


def test_sepsis3_onset(hand_source: SourceData, hand_result: Any) -> None:
    s = {row["stay_id"]: row for row in hand_result.sepsis3.iter_rows(named=True)}
    assert s["s1"]["sepsis3"] is True
    assert s["s1"]["suspicion_time"] == at(4) == s["s1"]["sepsis_time"] == s["s1"]["antibiotic_time"]
    assert s["s1"]["culture_time"] == at(10)
    assert s["s1"]["sofa_rise_time"] == at(1.5)  # 10:00: platelets 90 -> SOFA 2 (48 h before counts)
    assert s["s2"]["sepsis3"] is False
    assert s["s2"]["suspicion_time"] is None
    assert s["s2"]["sepsis3_reason"].startswith("no suspected infection")
    assert s["s4"]["sepsis3"] is False
    # the same suspicion times as the bedside function
    bedside = suspected_infection(hand_source.observations)
    assert dict(zip(bedside["patient_id"], bedside["suspicion_time"], strict=True)) == {"s1": at(4)}


def test_endotype_timeline(hand_result: Any) -> None:
    e = hand_result.endotypes.filter(pl.col("stay_id") == "s1")
    assert e.select("hour", "endotype").rows() == [
        (0, "unknown"),
        (6, "immunoparalysis"),  # 15:00: ferritin 1,000 and mHLA-DR 3,000 AB/C of 14:30
        (30, "mals"),  # 15:00 day 2: ferritin 6,000 > 4,420 (mHLA-DR now stale: MALS needs ferritin only)
        (54, "unknown"),  # 15:00 day 3: the ferritin of 14:30 day 2 is 24.5 h old -> stale
    ]
    assert e["time"][2] == at(30.5)
    assert e["first_of_endotype"].to_list() == [True, True, True, False]
    assert e["therapy"].to_list() == ["none", "interferon_gamma", "anakinra", "none"]
    # exactly 24 h old is still fresh; 25 h is not
    s3 = hand_result.endotypes.filter(pl.col("stay_id") == "s3").select("hour", "endotype").rows()
    assert s3 == [(0, "unknown"), (3, "intermediate"), (28, "unknown")]


def test_endotypes_agree_with_bedside_protocol(hand_source: SourceData, hand_result: Any) -> None:
    protocol = load_protocol("immunosep-2025")
    for stay, hour in [
        ("s1", 5),
        ("s1", 6),
        ("s1", 29),
        ("s1", 30),
        ("s1", 53),
        ("s1", 54),
        ("s3", 27),
        ("s3", 28),
    ]:
        when = value_at(hand_result, stay, hour, "time")
        bedside = classify_patient(protocol, hand_source.observations, patient_id=stay, at=when)
        assert value_at(hand_result, stay, hour, "endotype") == bedside.endotype, (stay, hour)


def test_summary(hand_result: Any) -> None:
    s = hand_result.summary
    assert s["stays"] == 4 and s["septic_stays"] == 1 and s["sepsis3_assessable"]
    assert s["endotype_first_known"] == {"immunoparalysis": 1, "intermediate": 1, "unknown": 2}
    assert s["mortality_28d_by_endotype"]["immunoparalysis"] == {"stays": 1, "deaths": 1, "mortality": 1.0}
    assert s["mortality_28d_by_endotype"]["intermediate"]["deaths"] == 0  # died on day 40
    missing = {m["concept"] for m in s["missing_concepts"]}
    assert {"bilirubin", "map", "dopamine_rate"} <= missing and "platelets" not in missing
    stays = hand_result.stays
    assert stays.filter(pl.col("stay_id") == "s1")["death_28d"][0] is True


def test_source_without_cultures_says_so(hand_source: SourceData) -> None:
    obs = hand_source.observations.filter(pl.col("concept") != "culture")
    result = build_cohort(SourceData(source="no-cultures", stays=hand_source.stays, observations=obs))
    assert not result.sepsis3["sepsis3"].any()
    assert not result.sepsis3["sepsis3_assessable"].any()
    assert "culture" in result.sepsis3["sepsis3_reason"][0]
    assert result.summary["sepsis3_assessable"] is False
    assert "culture" in result.summary["sepsis3_note"]
    assert "culture" in {m["concept"] for m in result.summary["missing_concepts"]}


def test_written_folder_and_figures(hand_source: SourceData, tmp_path: Path) -> None:
    steps: list[tuple[str, int, int]] = []
    out = tmp_path / "cohort"
    result = build_cohort(hand_source, output_dir=out, progress=lambda s, i, n: steps.append((s, i, n)))
    assert result.output_dir == out
    names = {p.name for p in out.iterdir()}
    assert names == {
        "stays.parquet",
        "hourly_sofa.parquet",
        "sepsis3.parquet",
        "endotypes.parquet",
        "summary.json",
    }
    assert [i for _, i, _ in steps] == sorted(i for _, i, _ in steps) and steps[-1][1] == steps[-1][2]
    assert pl.read_parquet(out / "hourly_sofa.parquet").equals(result.hourly_sofa)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # rewriting replaces the folder
    build_cohort(hand_source, output_dir=out)
    summary = cohort_summary(out)
    assert summary.summary["stays"] == 4
    assert {p.name for p in summary.figures} == {
        "endotype_prevalence.png",
        "sofa_trajectories.png",
        "mortality_28d.png",
        "summary.html",
    }
    assert all(p.stat().st_size > 1000 for p in summary.figures)
    assert "septic stays (Sepsis-3): 1" in summary.text()


def test_unknown_engine(hand_source: SourceData) -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        build_cohort(hand_source, engine="sqlite")


def test_stay_without_discharge_time_ends_at_its_last_observation(hand_source: SourceData) -> None:
    stays = hand_source.stays.filter(pl.col("stay_id") == "s2").with_columns(
        pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("icu_outtime")
    )
    obs = hand_source.observations.filter(pl.col("patient_id") == "s2")
    result = build_cohort(SourceData(source="open", stays=stays, observations=obs))
    # last observation: antibiotic at 08:30 + 81 h = 17:30 day 4 -> last grid hour 18:00 day 4 (hour 81)
    assert result.hourly_sofa["hour"].max() == 81
    assert result.hourly_sofa["time"].max() == at(81.5)


def test_compiled_plan_cache_gives_the_same_tables(hand_source: SourceData) -> None:
    from immunostrat.cohort.engine import _PLAN_CACHE, TABLES

    _PLAN_CACHE.clear()
    cold = build_cohort(hand_source)
    assert len(_PLAN_CACHE) == 1
    warm = build_cohort(hand_source)  # from the cached SQL
    for name in TABLES:
        assert getattr(cold, name).equals(getattr(warm, name)), name
    # other rule choices compile their own plan, never the cached one
    other = build_cohort(hand_source, sofa_baseline="running-minimum", sofa_version="sofa-2")
    assert len(_PLAN_CACHE) == 2
    assert other.summary["rules"]["sofa"] != cold.summary["rules"]["sofa"]
    assert set(other.sepsis3["sofa_baseline_rule"].to_list()) == {"running-minimum"}
    assert not other.hourly_sofa.equals(cold.hourly_sofa)
