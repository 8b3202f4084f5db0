"""The immune-endotype timeline of each stay, from the hourly table every engine returns (Polars)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl


def endotype_timeline(hourly: pl.DataFrame, biomarkers: Sequence[str]) -> pl.DataFrame:
    """The first hour of each stay and every hour where the endotype changes, with ``previous_endotype``
    and ``first_of_endotype`` marking the first time a stay entered each endotype; sorted by stay and
    time."""
    h = hourly.select("stay_id", "time", "hour", "endotype", "therapy", *biomarkers).sort("stay_id", "time")
    h = h.with_columns(previous_endotype=pl.col("endotype").shift(1).over("stay_id"))
    changes = h.filter(
        pl.col("previous_endotype").is_null() | (pl.col("previous_endotype") != pl.col("endotype"))
    )
    return changes.with_columns(first_of_endotype=pl.col("time").cum_count().over("stay_id", "endotype") == 1)
