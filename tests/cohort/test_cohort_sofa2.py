"""SOFA-2 in the cohort engine: chosen per build (``sofa_version``), recorded in the summary, equal to
the bedside windows (scores.windows, ``sofa-2``) hour by hour on the organ systems both compute, the
urine-per-kg rules on both sides of each edge, and identical on DuckDB and Spark.

Times in hours from ICU admission at 08:30; grid hour k is 09:00 + k h and summarises (T - 24 h, T].
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from cohorttools import T0, at
from polars.testing import assert_frame_equal

from immunostrat.cohort import TABLES, build_cohort, format_summary
from immunostrat.concepts import CANONICAL_SCHEMA
from immunostrat.scores import score_windows
from immunostrat.sources import STAYS_SCHEMA, SourceData

STAY_HOURS = 40
WEIGHT_KG = {"urine": 100.0}
ROWS: list[tuple[str, float, str, float]] = [
    # S/F only: SpO2 95 / FiO2 0.9 = 105.6 with support -> 4; then a PaO2 of 300 (P/F 333) replaces it
    ("sf", 0.5, "mechanical_ventilation", 1.0),
    ("sf", 1, "fio2", 0.9),
    ("sf", 2, "spo2", 95.0),
    ("sf", 2.5, "spo2", 99.0),  # >= 98: never an S/F
    ("sf", 20, "fio2", 0.9),
    ("sf", 21, "pao2", 300.0),
    # norepinephrine 0.1 with vasopressin for 2 h -> 3 (SOFA-1996: NE <= 0.1 -> 3); GCS 9 -> 2 (1996: 3)
    ("cv", 1, "norepinephrine_rate", 0.1),
    ("cv", 1, "vasopressin_rate", 0.03),
    ("cv", 3, "norepinephrine_rate", 0.0),
    ("cv", 3, "vasopressin_rate", 0.0),
    ("cv", 4, "map", 65.0),
    ("cv", 5, "gcs", 9.0),
    ("cv", 6, "platelets", 80.0),
    ("cv", 6, "bilirubin", 3.0),
    # urine hourly: 60 mL for hours 1-20, then 20 mL (weight 100 kg)
    *[("urine", float(h), "urine_output", 60.0 if h <= 20 else 20.0) for h in range(1, STAY_HOURS + 1)],
    # no urine at all for 20 h, weight unknown: anuria needs no weight
    *[("anuria", float(h), "urine_output", 0.0) for h in range(1, 21)],
]
STAYS = sorted({s for s, *_ in ROWS})
BEDSIDE = ["respiration", "coagulation", "liver", "cardiovascular", "cns"]


def _source() -> SourceData:
    stays = pl.DataFrame(
        [
            {**dict.fromkeys(STAYS_SCHEMA), "stay_id": s, "patient_id": f"p_{s}", "icu_intime": T0}
            | {"icu_outtime": at(STAY_HOURS), "weight_kg": WEIGHT_KG.get(s)}
            for s in STAYS
        ],
        schema=STAYS_SCHEMA,
    )
    obs = (
        pl.DataFrame(
            [(s, at(h), c, v) for s, h, c, v in ROWS],
            schema=["patient_id", "time", "concept", "value"],
            orient="row",
        )
        .with_columns(
            pl.col("time").cast(pl.Datetime("us", "UTC")),
            pl.lit("").alias("unit"),
            pl.lit("sofa2").alias("source"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
        )
        .cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    )
    return SourceData(source="sofa2", stays=stays, observations=obs)


@pytest.fixture(scope="module")
def source() -> SourceData:
    return _source()


@pytest.fixture(scope="module")
def result(source: SourceData) -> Any:
    return build_cohort(source, engine="duckdb", sofa_version="sofa-2")


def value(hourly: pl.DataFrame, stay: str, hour: int, column: str) -> Any:
    row = hourly.filter((pl.col("stay_id") == stay) & (pl.col("hour") == hour))
    assert row.height == 1, (stay, hour)
    return row[column][0]


def test_summary_reports_the_variant(result: Any, source: SourceData) -> None:
    assert result.summary["sofa_variant"] == "sofa-2"
    assert result.summary["rules"]["sofa"] == "sofa-2"
    assert result.summary["sofa_options"]["rrt_criteria_creatinine"] == "gt-1.2"
    assert "SOFA sofa-2" in format_summary(result.summary)
    assert set(result.hourly_sofa["sofa_variant"].unique()) == {"sofa-2"}
    default = build_cohort(source, engine="duckdb")
    assert default.summary["sofa_variant"] == "sofa-1996"
    assert value(default.hourly_sofa, "cv", 10, "sofa_cns") == 3
    assert value(result.hourly_sofa, "cv", 10, "sofa_cns") == 2
    with pytest.raises(KeyError):
        build_cohort(source, engine="duckdb", sofa_version="sofa-3")
    with pytest.raises(KeyError):
        build_cohort(source, engine="duckdb", sofa_version="sofa-2", sofa_options={"nope": "x"})


def test_spo2_fio2_fallback(result: Any) -> None:
    h = result.hourly_sofa
    assert value(h, "sf", 2, "spo2_fio2_ratio") == pytest.approx(95 / 0.9, abs=1e-6)
    assert value(h, "sf", 2, "sofa_respiration") == 4
    assert value(h, "sf", 2, "mechanical_ventilation") == 1.0
    assert value(h, "sf", 21, "sofa_respiration") == 0  # a P/F in the window: no S/F
    assert value(h, "sf", 0, "sofa_respiration") == 0 and value(h, "sf", 0, "sofa_missing") == 6


@pytest.mark.parametrize(
    ("stay", "hour", "points"),
    [
        ("urine", 18, 0),  # 6 h and 12 h means 0.6 mL/kg/h; 24 h not yet covered
        ("urine", 26, 2),  # 6 h 0.2 (< 0.5: 1), 12 h 0.4 (< 0.5: 2), 24 h 0.5 (not < 0.3)
        ("urine", 40, 3),  # 24 h 640 mL: 0.27 < 0.3 -> 3
        ("anuria", 8, 0),  # 6 h of 0 mL but no weight: no rate; 12 h not yet covered
        ("anuria", 12, 3),  # 12 h of 0 mL: anuria
    ],
)
def test_urine_per_kg_windows(result: Any, stay: str, hour: int, points: int) -> None:
    assert value(result.hourly_sofa, stay, hour, "sofa_renal") == points


def test_engine_equals_bedside_every_hour(source: SourceData, result: Any) -> None:
    hourly = result.hourly_sofa
    tick = timedelta(microseconds=1)
    windows = hourly.select(
        pl.col("stay_id").alias("patient_id"),
        (pl.col("time") - timedelta(hours=24) + tick).alias("window_start"),
        (pl.col("time") + tick).alias("window_end"),
    )
    bedside = score_windows(source.observations, windows, "sofa-2").select(
        pl.col("patient_id").alias("stay_id"),
        (pl.col("window_end") - tick).alias("time"),
        *[pl.col(f"sofa_{c}").alias(f"bedside_{c}") for c in BEDSIDE],
    )
    joined = hourly.join(bedside, on=["stay_id", "time"], how="left")
    assert joined.height == len(STAYS) * (STAY_HOURS + 1)
    for c in BEDSIDE:
        differ = joined.filter(pl.col(f"sofa_{c}") != pl.col(f"bedside_{c}"))
        assert differ.is_empty(), (c, differ.select("stay_id", "hour", f"sofa_{c}", f"bedside_{c}"))
    assert joined["sofa_cardiovascular"].max() == 3 and joined["sofa_respiration"].max() == 4


@pytest.mark.spark
@pytest.mark.slow
def test_duckdb_and_spark_identical(source: SourceData, result: Any, spark: Any) -> None:
    other = build_cohort(source, engine="spark", spark=spark, sofa_version="sofa-2")
    for name in TABLES:
        assert_frame_equal(getattr(result, name), getattr(other, name), check_exact=True)


def test_missing_concepts_follow_the_version(result: Any, source: SourceData) -> None:
    """The summary lists the inputs of the SOFA version built: SOFA-2's organ support, GCS motor and
    RRT-criteria labs under sofa-2 (absent from this source), none of them under sofa-1996."""
    sofa2_only = {"ecmo", "mechanical_circulatory_support", "gcs_motor", "delirium_drug", "rrt", "potassium",
                  "ph", "bicarbonate"}  # fmt: skip
    missing2 = {m["concept"] for m in result.summary["missing_concepts"]}
    assert sofa2_only <= missing2
    assert "spo2" not in missing2  # charted in stay "sf": present
    default = build_cohort(source, engine="duckdb")
    missing1 = {m["concept"] for m in default.summary["missing_concepts"]}
    assert not sofa2_only & missing1
    assert "spo2" not in missing1
    # a concept the source does carry leaves the sofa-2 list
    with_k = _source()
    extra = with_k.observations.head(1).with_columns(
        pl.lit("potassium").alias("concept"), pl.lit(6.1).alias("value"), pl.lit("mmol/L").alias("unit")
    )
    observations = pl.concat([with_k.observations, extra])
    with_k = SourceData(source="sofa2", stays=with_k.stays, observations=observations)
    again = build_cohort(with_k, engine="duckdb", sofa_version="sofa-2")
    assert "potassium" not in {m["concept"] for m in again.summary["missing_concepts"]}
