"""The cohort engine (DuckDB) and the bedside windows (scores.windows) apply the same vasopressor rules
of sofa-1996.yaml: every hourly row of stays built on each side of the gap rule, the per-infusion
1-hour rule and the stop at 0 gives the same rates and cardiovascular score.

Times in hours from ICU admission at 08:30; grid hour k is 09:00 + k h and summarises (T - 24 h, T].
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from cohorttools import T0, at

from immunostrat.cohort import build_cohort
from immunostrat.concepts import CANONICAL_SCHEMA
from immunostrat.scores import score_windows, worst_values
from immunostrat.sources import STAYS_SCHEMA, SourceData

STAY_HOURS = 40
RATES: list[tuple[str, float, str, float]] = [
    # 0.3 charted 10:30 runs to the 0.05 of 15:00 (4.5 h later, within the gap)
    ("gap_carried", 1, "norepinephrine_rate", 0.05),
    ("gap_carried", 2, "norepinephrine_rate", 0.3),
    ("gap_carried", 6.5, "norepinephrine_rate", 0.05),
    ("gap_carried", 8, "norepinephrine_rate", 0.0),
    # ... 6 h later is a silence: the 0.3 ends at 10:30; the lone 0.05 of 16:30 is no 1-h infusion
    ("gap_silence", 1, "norepinephrine_rate", 0.05),
    ("gap_silence", 2, "norepinephrine_rate", 0.3),
    ("gap_silence", 8, "norepinephrine_rate", 0.05),
    # two 40-min segments, 80 min in all: counted; one 40-min infusion: not counted
    ("two_segments", 1, "dopamine_rate", 8.0),
    ("two_segments", 1 + 40 / 60, "dopamine_rate", 8.0),
    ("two_segments", 1 + 80 / 60, "dopamine_rate", 0.0),
    ("one_segment", 1, "epinephrine_rate", 0.2),
    ("one_segment", 1 + 40 / 60, "epinephrine_rate", 0.0),
    # 0 stops: 0.08 for 2 h then a separate 30-min run of 0.3 (not counted) ...
    ("zero_stop", 1, "norepinephrine_rate", 0.08),
    ("zero_stop", 2.9, "norepinephrine_rate", 0.0),
    ("zero_stop", 3, "norepinephrine_rate", 0.3),
    ("zero_stop", 3.5, "norepinephrine_rate", 0.0),
    # ... without the stop it is one 2.5-h run and the 0.3 counts
    ("no_stop", 1, "norepinephrine_rate", 0.08),
    ("no_stop", 3, "norepinephrine_rate", 0.3),
    ("no_stop", 3.5, "norepinephrine_rate", 0.0),
]
STAYS = sorted({s for s, *_ in RATES})
DRUGS = ["dopamine_rate", "dobutamine_rate", "epinephrine_rate", "norepinephrine_rate"]


def _source() -> SourceData:
    stays = pl.DataFrame(
        [
            {**dict.fromkeys(STAYS_SCHEMA), "stay_id": s, "patient_id": f"p_{s}", "icu_intime": T0}
            | {"icu_outtime": at(STAY_HOURS)}
            for s in STAYS
        ],
        schema=STAYS_SCHEMA,
    )
    obs = (
        pl.DataFrame(
            [(s, at(h), c, v) for s, h, c, v in RATES],
            schema=["patient_id", "time", "concept", "value"],
            orient="row",
        )
        .with_columns(
            pl.col("time").cast(pl.Datetime("us", "UTC")),
            pl.lit("ug/kg/min").alias("unit"),
            pl.lit("vasopressors").alias("source"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
        )
        .cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    )
    return SourceData(source="vasopressors", stays=stays, observations=obs)


@pytest.fixture(scope="module")
def source() -> SourceData:
    return _source()


@pytest.fixture(scope="module")
def engine_hourly(source: SourceData) -> pl.DataFrame:
    hourly: pl.DataFrame = build_cohort(source, engine="duckdb").hourly_sofa
    return hourly.sort("stay_id", "time")


def _bedside_windows(hourly: pl.DataFrame) -> pl.DataFrame:
    tick = timedelta(microseconds=1)
    return hourly.select(
        pl.col("stay_id").alias("patient_id"),
        (pl.col("time") - timedelta(hours=24) + tick).alias("window_start"),
        (pl.col("time") + tick).alias("window_end"),
    )


def cardiovascular(hourly: pl.DataFrame, stay: str, hour: int) -> Any:
    row = hourly.filter((pl.col("stay_id") == stay) & (pl.col("hour") == hour))
    assert row.height == 1, (stay, hour)
    return row["sofa_cardiovascular"][0]


def test_fixture_hits_each_side_of_the_rules(engine_hourly: pl.DataFrame) -> None:
    # within the gap the 0.3 of 10:30 still runs in the window at 14:00 day 2, gone at 15:00
    assert cardiovascular(engine_hourly, "gap_carried", 29) == 4
    assert cardiovascular(engine_hourly, "gap_carried", 30) == 3
    # after the silence: the 0.3 is in the windows up to 10:00 day 2, then nothing (not the lone 0.05)
    assert cardiovascular(engine_hourly, "gap_silence", 25) == 4
    assert cardiovascular(engine_hourly, "gap_silence", 26) == 0
    assert cardiovascular(engine_hourly, "gap_silence", STAY_HOURS) == 0
    assert cardiovascular(engine_hourly, "two_segments", 1) == 3
    assert engine_hourly.filter(pl.col("stay_id") == "one_segment")["sofa_cardiovascular"].max() == 0
    assert engine_hourly.filter(pl.col("stay_id") == "zero_stop")["sofa_cardiovascular"].max() == 3
    assert engine_hourly.filter(pl.col("stay_id") == "no_stop")["sofa_cardiovascular"].max() == 4


def test_engine_equals_bedside_every_hour(source: SourceData, engine_hourly: pl.DataFrame) -> None:
    windows = _bedside_windows(engine_hourly)
    scored = score_windows(source.observations, windows, "sofa").select(
        pl.col("patient_id").alias("stay_id"),
        pl.col("window_end").alias("_end"),
        pl.col("sofa_cardiovascular").alias("bedside_sofa_cardiovascular"),
    )
    rates = worst_values(source.observations, windows).select(
        pl.col("patient_id").alias("stay_id"),
        pl.col("window_end").alias("_end"),
        *[pl.col(d).alias(f"bedside_{d}") for d in DRUGS],
    )
    ours = engine_hourly.with_columns((pl.col("time") + timedelta(microseconds=1)).alias("_end"))
    joined = ours.join(scored, on=["stay_id", "_end"], how="left").join(
        rates, on=["stay_id", "_end"], how="left"
    )
    assert joined.height == len(STAYS) * (STAY_HOURS + 1)
    for column in ["sofa_cardiovascular", *DRUGS]:
        differ = joined.filter(pl.col(column).ne_missing(pl.col(f"bedside_{column}")))
        assert differ.is_empty(), (column, differ.select("stay_id", "hour", column, f"bedside_{column}"))
    assert (joined["sofa_cardiovascular"] > 0).sum() > 0 and (joined["sofa_cardiovascular"] == 0).sum() > 0
