"""The cohort engine's rule fixes and variants, each on both sides of its rule, on DuckDB and Spark.

One hand-built source holds a stay per rule (times in hours from ICU admission at 08:30; the first
grid hour 09:00 is hour 0, hour k is 09:00 + k h and summarises (T - 24 h, T]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cohorttools import T0, at

from immunostrat.cohort import build_cohort, cohort_summary, format_summary
from immunostrat.concepts import CANONICAL_SCHEMA
from immunostrat.sources import STAYS_SCHEMA, SourceData

STAY_HOURS = {
    "vaso_tail": 100,
    "vaso_gap": 100,
    "vaso_runs": 60,
    "vent": 30,
    "novent": 30,
    "two_episodes": 60,
    "outside_only": 60,
    "abx_only": 40,
    "chronic": 80,
    "acute": 80,
    "site_a": 30,
    "site_b": 30,
    "site_a_cultures": 30,
    "no_data": 30,
    "urine_early": 30,
    "urine_none": 30,
    "urine_late": 10,
    "vaso_end": 10,
}


def _observations() -> list[tuple[str, float, str, float]]:
    r: list[tuple[str, float, str, float]] = [
        # defect 1: the last charted rate (h5) is not carried to the end of the stay
        ("vaso_tail", 1, "norepinephrine_rate", 0.2),
        ("vaso_tail", 3, "norepinephrine_rate", 0.2),
        ("vaso_tail", 5, "norepinephrine_rate", 0.2),
        # ... a charting 4.5 h later continues the infusion (ricu's 5-h gap); 6.5 h later starts anew
        ("vaso_gap", 1, "norepinephrine_rate", 0.1),
        ("vaso_gap", 5.5, "norepinephrine_rate", 0.1),
        ("vaso_gap", 12, "norepinephrine_rate", 0.1),
        # defect 10: four 30-min segments of one 2-h infusion count; a 45-min infusion does not
        ("vaso_runs", 1, "dopamine_rate", 5.0),
        ("vaso_runs", 1.5, "dopamine_rate", 5.0),
        ("vaso_runs", 2, "dopamine_rate", 5.0),
        ("vaso_runs", 2.5, "dopamine_rate", 5.0),
        ("vaso_runs", 3, "dopamine_rate", 0.0),
        ("vaso_runs", 20, "epinephrine_rate", 0.3),
        ("vaso_runs", 20.5, "epinephrine_rate", 0.3),
        ("vaso_runs", 20.75, "epinephrine_rate", 0.0),
        # defect 8: ventilated with a ratio of 300 (respiration 1) is still ventilated
        ("vent", 1, "mechanical_ventilation", 1.0),
        ("vent", 1.5, "fio2", 1.0),
        ("vent", 2, "pao2", 300.0),
        ("novent", 1.5, "fio2", 0.5),
        ("novent", 2, "pao2", 75.0),
        # defect 5: an episode 100 h before the stay must not hide the one inside it
        ("two_episodes", -100, "antibiotic", 1.0),
        ("two_episodes", -99, "culture", 1.0),
        ("two_episodes", 10, "antibiotic", 1.0),
        ("two_episodes", 11, "culture", 1.0),
        ("two_episodes", 12, "platelets", 40.0),
        ("outside_only", -100, "antibiotic", 1.0),
        ("outside_only", -99, "culture", 1.0),
        ("outside_only", 12, "platelets", 40.0),
        # antibiotic-only suspicion (ricu's eICU mode)
        ("abx_only", 5, "antibiotic", 1.0),
        ("abx_only", 6, "platelets", 40.0),
        # running-minimum baseline: platelets 40 from admission (no rise) vs from hour 40 (rise 3)
        ("chronic", 30, "antibiotic", 1.0),
        ("chronic", 31, "culture", 1.0),
        ("acute", 30, "antibiotic", 1.0),
        ("acute", 31, "culture", 1.0),
        ("acute", 40, "platelets", 40.0),
        # defect 9: care site A records cultures, B does not
        ("site_a", 5, "antibiotic", 1.0),
        ("site_b", 5, "antibiotic", 1.0),
        ("site_a_cultures", 5, "culture", 1.0),
        # suspected infection, but not one SOFA component charted: nothing could rise
        ("no_data", 5, "antibiotic", 1.0),
        ("no_data", 6, "culture", 1.0),
    ]
    r += [("chronic", k, "platelets", 40.0) for k in range(-1, 80, 12)]
    # the urine charting span is the stay's whole span: a volume 60 h before admission (before the
    # 48-h look-back) covers the early windows, one after discharge (4 h past the grid) the last ones
    # a rate charted 30 min before discharge runs until the stop charted 2 h after it (2.5 h >= 1 h)
    r += [("vaso_end", 9.5, "norepinephrine_rate", 0.2), ("vaso_end", 12, "norepinephrine_rate", 0.0)]
    r += [("urine_early", -60, "urine_output", 100.0)]
    r += [(s, k, "urine_output", 100.0) for s in ("urine_early", "urine_none") for k in range(1, 31)]
    r += [("urine_late", k, "urine_output", 100.0) for k in (-20, 1, 2, 3, 4, 5, 6, 7, 14)]
    return r


def _source() -> SourceData:
    stays = pl.DataFrame(
        [
            {
                **dict.fromkeys(STAYS_SCHEMA),
                "stay_id": s,
                "patient_id": f"p_{s}",
                "icu_intime": T0,
                "icu_outtime": at(h),
            }
            for s, h in STAY_HOURS.items()
        ],
        schema=STAYS_SCHEMA,
    )
    obs = (
        pl.DataFrame(
            [(s, at(h), c, v) for s, h, c, v in _observations()],
            schema=["patient_id", "time", "concept", "value"],
            orient="row",
        )
        .with_columns(
            pl.col("time").cast(pl.Datetime("us", "UTC")),
            pl.lit("").alias("unit"),
            pl.lit("rules").alias("source"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
        )
        .cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    )
    care_sites = pl.DataFrame(
        {"stay_id": ["site_a", "site_b", "site_a_cultures"], "care_site": ["A", "B", "A"]}
    )
    dropped = pl.DataFrame(
        {
            "concept": ["norepinephrine_rate", "norepinephrine_rate", "pao2"],
            "table": ["infusiondrug", "infusiondrug", "lab"],
            "reason": ["unit: ml/hr", "unit: ml/hr", "outside the plausible range"],
            "rows": [3, 4, 2],
        }
    )
    return SourceData(
        source="rules",
        stays=stays,
        observations=obs,
        tables={"care_sites": care_sites, "dropped": dropped},
    )


ENGINES = ["duckdb", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])]
_BUILDS: dict[tuple[str, str | None, str | None], Any] = {}


def built(
    request: pytest.FixtureRequest,
    engine: str,
    suspected_infection: str | None = None,
    sofa_baseline: str | None = None,
) -> Any:
    """One build per engine and rule choice for the whole module (Spark builds cost seconds)."""
    key = (engine, suspected_infection, sofa_baseline)
    if key not in _BUILDS:
        spark = request.getfixturevalue("spark") if engine == "spark" else None
        _BUILDS[key] = build_cohort(
            _source(),
            engine=engine,
            spark=spark,
            suspected_infection=suspected_infection,
            sofa_baseline=sofa_baseline,
        )
    return _BUILDS[key]


def at_hour(result: Any, stay: str, hour: int, column: str) -> Any:
    row = result.hourly_sofa.filter((pl.col("stay_id") == stay) & (pl.col("hour") == hour))
    assert row.height == 1, (stay, hour)
    return row[column][0]


def sepsis_row(result: Any, stay: str) -> dict[str, Any]:
    rows = result.sepsis3.filter(pl.col("stay_id") == stay).to_dicts()
    assert len(rows) == 1, stay
    return rows[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_last_vasopressor_rate_is_not_carried_to_the_end(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    # charted 10:00, 12:00, 14:00 (bucket hour 5); in the 24-h windows up to hour 28, gone at hour 29
    assert at_hour(r, "vaso_tail", 5, "norepinephrine_rate") == 0.2
    assert at_hour(r, "vaso_tail", 28, "norepinephrine_rate") == 0.2
    assert at_hour(r, "vaso_tail", 29, "norepinephrine_rate") is None
    assert at_hour(r, "vaso_tail", 90, "sofa_cardiovascular") == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_charting_after_discharge_ends_the_last_rate(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    assert at_hour(r, "vaso_end", 10, "norepinephrine_rate") == 0.2
    assert at_hour(r, "vaso_end", 10, "sofa_cardiovascular") == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_vasopressor_gap_rule(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    # 10:00 -> 14:30 (4.5 h, within 5 h) is one infusion: it runs through 12:00
    assert at_hour(r, "vaso_gap", 3, "norepinephrine_rate") == 0.1
    # 14:30 -> 21:00 (6.5 h) is a silence: the lone charting at 21:00 is no 1-h infusion
    assert at_hour(r, "vaso_gap", 5 + 23, "norepinephrine_rate") == 0.1
    assert at_hour(r, "vaso_gap", 5 + 24, "norepinephrine_rate") is None


@pytest.mark.parametrize("engine", ENGINES)
def test_one_hour_rule_applies_to_the_infusion_not_the_segment(
    request: pytest.FixtureRequest, engine: str
) -> None:
    r = built(request, engine)
    # dopamine 10:00-12:00 charted every 30 min: a 2-h infusion, counted
    assert at_hour(r, "vaso_runs", 2, "dopamine_rate") == 5.0
    # epinephrine 04:30-05:15: 45 min in all, never counted
    stay = r.hourly_sofa.filter(pl.col("stay_id") == "vaso_runs")
    assert stay["epinephrine_rate"].is_null().all()


@pytest.mark.parametrize("engine", ENGINES)
def test_urine_coverage_reads_the_whole_charting_span(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    # window (-19 h, 5 h]: 500 mL, covered since charting began 60 h before admission
    assert at_hour(r, "urine_early", 5, "urine_output_24h") == 500.0
    assert at_hour(r, "urine_none", 5, "urine_output_24h") is None  # charting from 1 h: not covered
    assert at_hour(r, "urine_none", 23, "urine_output_24h") == 2300.0  # covered from 1 h - 24 h + 2 h
    # window (-14 h, 10 h]: 700 mL; covered because charting went on after discharge (14 h > 10 h - 2 h)
    assert at_hour(r, "urine_late", 10, "urine_output_24h") == 700.0


@pytest.mark.parametrize("engine", ENGINES)
def test_mechanical_ventilation_is_the_support_status(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    # PaO2 300 / FiO2 1.0 while ventilated: respiration 1, and ventilated all the same
    assert at_hour(r, "vent", 2, "pao2_fio2_ratio") == 300.0
    assert at_hour(r, "vent", 2, "sofa_respiration") == 1
    assert at_hour(r, "vent", 2, "mechanical_ventilation") == 1.0
    # PaO2 75 / FiO2 0.5 = 150 without support: respiration 2, not ventilated
    assert at_hour(r, "novent", 2, "pao2_fio2_ratio") == 150.0
    assert at_hour(r, "novent", 2, "sofa_respiration") == 2
    assert at_hour(r, "novent", 2, "mechanical_ventilation") == 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_every_suspicion_episode_is_assessed(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    two = sepsis_row(r, "two_episodes")
    assert two["suspicion_episodes"] == 2
    assert two["sepsis3"] is True and two["suspicion_time"] == at(10)
    assert two["sofa_rise_time"] == at(12.5)
    only = sepsis_row(r, "outside_only")
    assert only["sepsis3"] is False and only["suspicion_time"] == at(-100)
    assert only["sepsis3_assessable"] is False
    assert only["sepsis3_reason"].startswith("not assessable: every suspected-infection window")


@pytest.mark.parametrize("engine", ENGINES)
def test_no_sofa_data_in_the_window_is_not_assessable(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    row = sepsis_row(r, "no_data")
    assert row["suspicion_time"] == at(5) and row["sofa_hours_in_window"] > 0
    assert row["sofa_hours_with_data"] == 0 and row["sepsis3_assessable"] is False
    assert (
        row["sepsis3_reason"] == "not assessable: no SOFA component charted in any suspected-infection window"
    )
    # the other side: charted, and no rise (acute stay before its platelets) is assessed
    assert sepsis_row(r, "two_episodes")["sofa_hours_with_data"] > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_suspected_infection_rule_variants(request: pytest.FixtureRequest, engine: str) -> None:
    default = built(request, engine)
    assert sepsis_row(default, "abx_only")["sepsis3"] is False
    assert sepsis_row(default, "abx_only")["sepsis3_reason"].startswith("no suspected infection")
    assert default.summary["rules"]["suspected_infection"] == "antibiotic-and-culture"
    abx = built(request, engine, suspected_infection="antibiotic-only")
    row = sepsis_row(abx, "abx_only")
    assert row["sepsis3"] is True and row["suspicion_time"] == at(5) and row["culture_time"] is None
    assert row["suspected_infection_rule"] == "antibiotic-only"
    assert abx.summary["rules"]["suspected_infection"] == "antibiotic-only"


@pytest.mark.parametrize("engine", ENGINES)
def test_sofa_baseline_variants(request: pytest.FixtureRequest, engine: str) -> None:
    zero = built(request, engine)
    assert sepsis_row(zero, "chronic")["sepsis3"] is True  # SOFA 3 over a baseline of 0
    assert sepsis_row(zero, "acute")["sepsis3"] is True
    running = built(request, engine, sofa_baseline="running-minimum")
    chronic = sepsis_row(running, "chronic")
    assert chronic["sepsis3"] is False and chronic["baseline_sofa"] == 3
    acute = sepsis_row(running, "acute")
    assert acute["sepsis3"] is True and acute["baseline_sofa"] == 0
    assert acute["sofa_rise_time"] == at(40.5)
    assert running.summary["rules"]["sofa_baseline"] == "running-minimum"


@pytest.mark.parametrize("engine", ENGINES)
def test_not_assessable_per_care_site(request: pytest.FixtureRequest, engine: str) -> None:
    r = built(request, engine)
    a, b = sepsis_row(r, "site_a"), sepsis_row(r, "site_b")
    assert a["sepsis3_assessable"] is True and a["sepsis3_reason"].startswith("no suspected infection")
    assert b["sepsis3_assessable"] is False
    assert b["sepsis3_reason"] == "not assessable: no culture events at this stay's care site"
    # a source-level flag stays true: the source does record cultures
    assert r.summary["sepsis3_assessable"] is True
    assert r.summary["sepsis3_not_assessable_stays"] == 3  # site_b, outside_only, no_data


def test_dropped_rows_in_summary(tmp_path: Path) -> None:
    r = build_cohort(_source(), output_dir=tmp_path / "cohort")
    assert r.summary["dropped_rows"] == [
        {"concept": "norepinephrine_rate", "table": "infusiondrug", "reason": "unit: ml/hr", "rows": 7},
        {"concept": "pao2", "table": "lab", "reason": "outside the plausible range", "rows": 2},
    ]
    text = format_summary(r.summary)
    assert "rows not kept (9)" in text and "norepinephrine_rate: 7 unit: ml/hr (infusiondrug)" in text
    shown = cohort_summary(tmp_path / "cohort")
    assert "norepinephrine_rate: 7 unit: ml/hr" in shown.text()
    page = (tmp_path / "cohort" / "summary.html").read_text(encoding="utf-8")
    assert "<td>norepinephrine_rate</td><td>7</td><td>unit: ml/hr</td>" in page


def test_mortality_not_in_the_source_is_not_zero(hand_result: Any) -> None:
    # no stay of the rules source records a death or a discharge: no follow-up, not "no deaths"
    r = built_duckdb_default()
    assert r.summary["mortality_28d_known"] is False and r.summary["mortality_28d_by_endotype"] == {}
    assert "28-day mortality by first known endotype: not in the source" in format_summary(r.summary)
    assert hand_result.summary["mortality_28d_known"] is True  # the hand source records deaths


def built_duckdb_default() -> Any:
    key = ("duckdb", None, None)
    if key not in _BUILDS:
        _BUILDS[key] = build_cohort(_source())
    return _BUILDS[key]


def test_unknown_rule_names_fail() -> None:
    with pytest.raises(ValueError, match="suspected-infection rule"):
        build_cohort(_source(), suspected_infection="culture-only")
    with pytest.raises(ValueError, match="SOFA baseline"):
        build_cohort(_source(), sofa_baseline="first-day")
