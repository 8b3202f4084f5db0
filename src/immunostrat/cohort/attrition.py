"""Cohort attrition: adults, first ICU stay per person, minimum ICU length of stay (rules.yaml
``attrition``, each with its source), applied in that order with the stays left after each step."""

from __future__ import annotations

from typing import Any

import polars as pl


def apply_attrition(
    stays: pl.DataFrame,
    *,
    adults: bool = False,
    first_stay: bool = False,
    min_stay_hours: float | None = None,
    min_age_years: float = 18.0,
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """The stays kept and one record per step: ``{"step", "rule", "stays", "excluded"}`` (the first
    record is the source's stays). Steps that are off are not listed."""
    steps: list[dict[str, Any]] = [{"step": "all stays", "rule": "", "stays": stays.height, "excluded": 0}]
    kept = stays

    def record(step: str, rule: str, frame: pl.DataFrame) -> pl.DataFrame:
        steps.append(
            {"step": step, "rule": rule, "stays": frame.height, "excluded": steps[-1]["stays"] - frame.height}
        )
        return frame

    if adults:
        kept = record(
            "adults",
            f"age >= {min_age_years:g} years (unknown age excluded)",
            kept.filter(pl.col("age").fill_null(-1.0) >= min_age_years),
        )
    if first_stay:
        # rank within the person among the stays still kept; ties on time broken by stay id
        order = pl.struct(pl.col("icu_intime"), pl.col("stay_id"))
        first = kept.filter(
            pl.col("icu_intime").is_not_null()
            & (order.rank("ordinal").over(pl.coalesce("patient_id", "stay_id")) == 1)
        )
        kept = record("first stay", "first ICU stay of each person", first)
    if min_stay_hours is not None:
        length = (pl.col("icu_outtime") - pl.col("icu_intime")).dt.total_seconds() / 3600.0
        kept = record(
            "minimum length",
            f"ICU stay >= {min_stay_hours:g} h (unknown length excluded)",
            kept.filter(length.fill_null(-1.0) >= float(min_stay_hours)),
        )
    return kept, steps
