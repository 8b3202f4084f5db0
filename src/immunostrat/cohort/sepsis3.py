"""Sepsis-3 per stay from the hourly SOFA table and every suspected-infection episode (Polars, on the
hourly table every engine returns), with the SOFA baseline rules of rules.yaml."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from immunostrat.scores import SOFA_COMPONENTS, load_definition

BASELINE_RULES = ("zero", "running-minimum")


def assess_sepsis3(
    stay_ids: pl.Series, hourly: pl.DataFrame, episodes: pl.DataFrame, baseline_rule: str = "zero"
) -> pl.DataFrame:
    """Sepsis-3 per stay: a suspected-infection episode with a SOFA rise >= ``sofa_rise`` over the
    baseline from ``sofa_window_before_hours`` before to ``sofa_window_after_hours`` after its onset
    (sepsis3.yaml). The baseline is ``baseline_sofa`` (``zero``, Singer 2016) or the lowest SOFA of the
    stay up to that hour (``running-minimum``, ricu ``delta_cummin``). The stay's episode is the first
    with a rise, else the first whose window holds grid hours with data, else the first (window outside
    the stay: ``sofa_hours_in_window`` 0, not assessable).

    ``hourly``: stay_id, time, sofa_total, sofa_missing; ``episodes``: stay_id, onset, antibiotic_time,
    culture_time (:func:`immunostrat.scores.sepsis3.suspicion_episodes`). One row per ``stay_ids``,
    sorted by stay_id.
    """
    spec = load_definition("sepsis3")
    rise = int(spec["sofa_rise"])
    h = hourly.select("stay_id", "time", "sofa_total", "sofa_missing")
    if baseline_rule == "running-minimum":
        # the minimum so far (a missing total keeps the minimum of the hours before it)
        h = h.sort("stay_id", "time").with_columns(
            baseline=pl.col("sofa_total").cum_min().forward_fill().over("stay_id").cast(pl.Int64)
        )
    elif baseline_rule == "zero":
        h = h.with_columns(baseline=pl.lit(int(spec["baseline_sofa"]), dtype=pl.Int64))
    else:
        raise ValueError(f"unknown SOFA baseline {baseline_rule!r}; use one of {', '.join(BASELINE_RULES)}")
    before = timedelta(hours=int(spec["sofa_window_before_hours"]))
    after = timedelta(hours=int(spec["sofa_window_after_hours"]))
    w = h.join(episodes.select("stay_id", "onset"), on="stay_id").filter(
        (pl.col("time") >= pl.col("onset") - before) & (pl.col("time") <= pl.col("onset") + after)
    )
    risen = pl.col("sofa_total") - pl.col("baseline") >= rise
    per = w.group_by("stay_id", "onset").agg(
        sofa_max_in_window=pl.col("sofa_total").max(),
        sofa_rise_time=pl.col("time").filter(risen).min(),
        # a running minimum never rises with time: the largest baseline among the risen hours is the
        # baseline at the first of them
        baseline_at_rise=pl.col("baseline").filter(risen).max(),
        baseline_min=pl.col("baseline").min(),
        sofa_hours_in_window=pl.col("time").count(),
        # hours with at least one SOFA component charted (all six missing: nothing could rise)
        sofa_hours_with_data=(pl.col("sofa_missing") < len(SOFA_COMPONENTS)).sum(),
    )
    ep = episodes.join(per, on=["stay_id", "onset"], how="left")
    rank = (
        pl.when(pl.col("sofa_rise_time").is_not_null())
        .then(0)
        .when(pl.col("sofa_hours_with_data").fill_null(0) > 0)
        .then(1)
        .otherwise(2)
    )
    first = (
        ep.with_columns(_rank=rank)
        .sort("stay_id", "_rank", "onset")
        .group_by("stay_id", maintain_order=True)
        .first()
        .select(
            "stay_id",
            suspicion_time="onset",
            antibiotic_time="antibiotic_time",
            culture_time="culture_time",
            sofa_rise_time="sofa_rise_time",
            sofa_max_in_window=pl.col("sofa_max_in_window").cast(pl.Int64),
            baseline_sofa=pl.coalesce("baseline_at_rise", "baseline_min").cast(pl.Int64),
            sofa_hours_in_window=pl.col("sofa_hours_in_window").fill_null(0).cast(pl.Int64),
            sofa_hours_with_data=pl.col("sofa_hours_with_data").fill_null(0).cast(pl.Int64),
        )
    )
    counts = episodes.group_by("stay_id").agg(suspicion_episodes=pl.len().cast(pl.Int64))
    out = (
        pl.DataFrame({"stay_id": stay_ids})
        .join(first, on="stay_id", how="left")
        .join(counts, on="stay_id", how="left")
    )
    septic = pl.col("suspicion_time").is_not_null() & pl.col("sofa_rise_time").is_not_null()
    return out.with_columns(
        suspicion_episodes=pl.col("suspicion_episodes").fill_null(0),
        sepsis3=septic,
        sepsis_time=pl.when(septic).then(pl.col("suspicion_time")).otherwise(None),
    ).sort("stay_id")
