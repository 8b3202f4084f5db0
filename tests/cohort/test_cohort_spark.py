"""The same Ibis plan on PySpark (local[2]) gives exactly the DuckDB tables (sorted, compared frame by
frame, dtypes included). Kept to one build per data set: each Spark build costs tens of seconds."""

from __future__ import annotations

from typing import Any

import pytest
from polars.testing import assert_frame_equal

from immunostrat.cohort import TABLES, build_cohort
from immunostrat.sources import SourceData

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def assert_same_tables(duck: Any, spark: Any) -> None:
    for name in TABLES:
        assert_frame_equal(getattr(duck, name), getattr(spark, name), check_exact=True), name
    assert {k: v for k, v in duck.summary.items() if k != "engine"} == {
        k: v for k, v in spark.summary.items() if k != "engine"
    }


def test_duckdb_and_spark_identical_on_fixture(hand_source: SourceData, hand_result: Any, spark: Any) -> None:
    result = build_cohort(hand_source, engine="spark", spark=spark)
    assert result.summary["engine"] == "spark"
    assert_same_tables(hand_result, result)


def test_duckdb_and_spark_identical_on_mimic_demo(
    mimic_demo: SourceData, mimic_result: Any, spark: Any
) -> None:
    result = build_cohort(mimic_demo, engine="spark", spark=spark)
    assert_same_tables(mimic_result, result)
