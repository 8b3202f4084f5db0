"""SOFA-2's own inputs in the cohort engine: motor GCS, the RRT criteria labs (potassium, pH,
bicarbonate), RRT, ECMO, mechanical circulatory support, delirium drugs and the other vasoactive
agents reach the hourly table over the trailing 24-h window with their worst-value rule, on DuckDB and
on Spark.

Each stay charts a harmless value at 1 h, the decisive one at 2 h and a harmless one again at 20 h
(hours from ICU admission at 08:30; grid hour k is 09:00 + k h and summarises (T - 24 h, T]). The
decisive value is inside the windows of hours 3 to 25 and outside from hour 26 on, when the harmless
values at 1 h (outside too) and 20 h (inside) are all the window holds. A worst-value rule taken the
wrong way round (highest instead of lowest) would pick the harmless value at hours 3 to 25.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from cohorttools import T0, at
from polars.testing import assert_frame_equal

from immunostrat.cohort import TABLES, build_cohort
from immunostrat.concepts import CANONICAL_SCHEMA
from immunostrat.sources import STAYS_SCHEMA, SourceData

STAY_HOURS = 40
# stay: (concept, harmless value, decisive value), plus values every window holds (background)
RULES: dict[str, tuple[str, float, float]] = {
    "motor": ("gcs_motor", 6.0, 2.0),  # lowest: M2 -> brain 4 (no total GCS charted)
    "potassium": ("potassium", 5.0, 6.5),  # highest: >= 6.0 with creatinine 2.0 -> kidney 4
    "ph": ("ph", 7.35, 7.10),  # lowest: <= 7.20 with bicarbonate 10 and creatinine 2.0 -> kidney 4
    "bicarbonate": ("bicarbonate", 20.0, 10.0),  # lowest: <= 12 with pH 7.10 and creatinine 2.0 -> 4
    "rrt": ("rrt", 0.0, 1.0),  # present -> kidney 4
    "ecmo": ("ecmo", 0.0, 1.0),  # present -> respiratory 4
    "mcs": ("mechanical_circulatory_support", 0.0, 1.0),  # present -> cardiovascular 4
    "delirium": ("delirium_drug", 0.0, 1.0),  # present -> brain at least 1 with GCS 15
}
BACKGROUND: dict[str, list[tuple[str, float]]] = {
    "potassium": [("creatinine", 2.0)],
    "ph": [("creatinine", 2.0), ("bicarbonate", 10.0)],
    "bicarbonate": [("creatinine", 2.0), ("ph", 7.10)],
    "delirium": [("gcs", 15.0)],
}
# stay: (component, points with the decisive value in the window, points without)
EXPECTED: dict[str, tuple[str, int, int]] = {
    "motor": ("sofa_cns", 4, 0),
    "potassium": ("sofa_renal", 4, 1),
    "ph": ("sofa_renal", 4, 1),
    "bicarbonate": ("sofa_renal", 4, 1),
    "rrt": ("sofa_renal", 4, 0),
    "ecmo": ("sofa_respiration", 4, 0),
    "mcs": ("sofa_cardiovascular", 4, 0),
    "delirium": ("sofa_cns", 1, 0),
}
# Other vasoactive agents (SOFA-2 "any other vasopressor or inotrope" alone -> 2): 1.0 from 1 h to 3 h
# (a run of 2 h), stopped at 3 h; its last hourly bucket (12:00) is in the windows of hours 3 to 26.
AGENTS = {"phenylephrine": "phenylephrine_rate", "milrinone": "milrinone_rate"}


def _rows() -> list[tuple[str, float, str, float]]:
    rows: list[tuple[str, float, str, float]] = []
    for stay, (concept, harmless, decisive) in RULES.items():
        rows += [
            (stay, 1.0, concept, harmless),
            (stay, 2.0, concept, decisive),
            (stay, 20.0, concept, harmless),
        ]
        for other, v in BACKGROUND.get(stay, []):
            rows += [(stay, 1.0, other, v), (stay, 20.0, other, v)]
    for stay, concept in AGENTS.items():
        rows += [(stay, 1.0, concept, 1.0), (stay, 3.0, concept, 0.0)]
    return rows


def _source() -> SourceData:
    rows = _rows()
    stays = sorted({s for s, *_ in rows})
    stay_frame = pl.DataFrame(
        [
            {**dict.fromkeys(STAYS_SCHEMA), "stay_id": s, "patient_id": f"p_{s}", "icu_intime": T0}
            | {"icu_outtime": at(STAY_HOURS), "weight_kg": 80.0}
            for s in stays
        ],
        schema=STAYS_SCHEMA,
    )
    obs = (
        pl.DataFrame(
            [(s, at(h), c, v) for s, h, c, v in rows],
            schema=["patient_id", "time", "concept", "value"],
            orient="row",
        )
        .with_columns(
            pl.col("time").cast(pl.Datetime("us", "UTC")),
            pl.lit("").alias("unit"),
            pl.lit("sofa2-inputs").alias("source"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
        )
        .cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    )
    return SourceData(source="sofa2-inputs", stays=stay_frame, observations=obs)


@pytest.fixture(scope="module")
def source() -> SourceData:
    return _source()


@pytest.fixture(scope="module")
def duckdb_result(source: SourceData) -> Any:
    return build_cohort(source, engine="duckdb", sofa_version="sofa-2")


@pytest.fixture(scope="module")
def spark_result(source: SourceData, spark: Any) -> Any:
    return build_cohort(source, engine="spark", spark=spark, sofa_version="sofa-2")


@pytest.fixture(params=["duckdb", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])])
def result(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_result")


def value(hourly: pl.DataFrame, stay: str, hour: int, column: str) -> Any:
    row = hourly.filter((pl.col("stay_id") == stay) & (pl.col("hour") == hour))
    assert row.height == 1, (stay, hour)
    return row[column][0]


@pytest.mark.parametrize("stay", sorted(RULES))
def test_worst_value_inside_the_window(result: Any, stay: str) -> None:
    concept, harmless, decisive = RULES[stay]
    component, inside, outside = EXPECTED[stay]
    h = result.hourly_sofa
    # hour 1 holds only the harmless value: the input alone does not score
    assert value(h, stay, 1, concept) == harmless
    assert value(h, stay, 1, component) == outside
    for hour in (3, 25):  # harmless and decisive values in the window: the worst one counts
        assert value(h, stay, hour, concept) == decisive, (stay, hour)
        assert value(h, stay, hour, component) == inside, (stay, hour)
    # hour 26: the decisive value lies more than 24 h back; only the harmless one at 20 h is left
    assert value(h, stay, 26, concept) == harmless
    assert value(h, stay, 26, component) == outside


@pytest.mark.parametrize("stay", sorted(AGENTS))
def test_other_vasoactive_agent_counts_inside_the_window(result: Any, stay: str) -> None:
    concept = AGENTS[stay]
    h = result.hourly_sofa
    assert value(h, stay, 3, concept) == 1.0
    assert value(h, stay, 3, "sofa_cardiovascular") == 2
    assert value(h, stay, 26, "sofa_cardiovascular") == 2  # the 11:00-12:00 bucket of day 1 is in
    assert value(h, stay, 27, concept) is None
    assert value(h, stay, 27, "sofa_cardiovascular") == 0


def test_sofa_1996_does_not_read_them(source: SourceData) -> None:
    """The sofa-1996 build reads none of these inputs: its hourly table has no such columns and scores
    the motor-GCS, RRT, ECMO and support stays as missing those organ systems."""
    default = build_cohort(source, engine="duckdb")
    h = default.hourly_sofa
    for concept in {c for c, *_ in RULES.values()}:
        assert concept not in h.columns
    assert value(h, "motor", 3, "sofa_cns") == 0
    assert value(h, "rrt", 3, "sofa_renal") == 0
    assert value(h, "ecmo", 3, "sofa_respiration") == 0
    assert value(h, "mcs", 3, "sofa_cardiovascular") == 0


@pytest.mark.spark
@pytest.mark.slow
def test_duckdb_and_spark_identical(duckdb_result: Any, spark_result: Any) -> None:
    for name in TABLES:
        assert_frame_equal(getattr(duckdb_result, name), getattr(spark_result, name), check_exact=True)
