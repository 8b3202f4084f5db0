"""Agreement of a SOFA threshold with a source's own sepsis label (PhysioNet 2019).

PhysioNet/CinC 2019 carries no antibiotics or cultures, so the suspected-infection half of Sepsis-3
cannot be assessed there, and no GCS, so the SOFA is partial. What is compared, and named so in the
output: "partial SOFA >= 2 at any hour" - the first hour whose trailing-24 h total of the SOFA
components present reaches ``baseline_sofa + sofa_rise`` (sepsis3.yaml: 0 + 2). It is a threshold,
not a rise over a baseline. The challenge labels onset 6 h before clinical Sepsis-3 (``SepsisLabel``
is 1 from 6 h before onset), which the source adapter already undid in ``sepsis_onset_time``. Stays
with no laboratory SOFA input at any hour (platelets, bilirubin, creatinine, PaO2/FiO2) are "not
assessable" and left out of the confusion matrix. Reported, never asserted.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from immunostrat.scores import load_definition


def label_agreement(hourly_sofa: pl.DataFrame, onset: pl.DataFrame) -> dict[str, Any]:
    """Stay-level confusion matrix and onset-time differences of "partial SOFA >= 2 at any hour"
    vs the label, over the assessable stays.

    ``hourly_sofa``: stay_id, time, sofa_total (and, where present, the laboratory inputs of
    :data:`LAB_INPUTS`, which decide assessability); ``onset``: stay_id, sepsis_label_any,
    sepsis_onset_time (from the PhysioNet 2019 adapter).
    """
    spec = load_definition("sepsis3")
    rise = int(spec["sofa_rise"])
    baseline = int(spec["baseline_sofa"])
    labs = [c for c in LAB_INPUTS if c in hourly_sofa.columns]
    if labs:
        with_lab = hourly_sofa.filter(pl.any_horizontal(pl.col(c).is_not_null() for c in labs))
        assessable = with_lab.select("stay_id").unique()
        not_assessable = onset.join(assessable, on="stay_id", how="anti").height
        onset = onset.join(assessable, on="stay_id", how="semi")
    else:
        not_assessable = 0
    proxy = (
        hourly_sofa.filter(pl.col("sofa_total") - baseline >= rise)
        .group_by("stay_id")
        .agg(pl.col("time").min().alias("proxy_onset_time"))
    )
    joined = onset.select("stay_id", "sepsis_label_any", "sepsis_onset_time").join(
        proxy, on="stay_id", how="left"
    )
    joined = joined.with_columns(
        pl.col("proxy_onset_time").is_not_null().alias("proxy_any"),
        pl.col("sepsis_label_any").fill_null(False),
    )
    tp = joined.filter(pl.col("proxy_any") & pl.col("sepsis_label_any")).height
    fp = joined.filter(pl.col("proxy_any") & ~pl.col("sepsis_label_any")).height
    fn = joined.filter(~pl.col("proxy_any") & pl.col("sepsis_label_any")).height
    tn = joined.filter(~pl.col("proxy_any") & ~pl.col("sepsis_label_any")).height
    both = joined.filter(
        pl.col("proxy_any") & pl.col("sepsis_label_any") & pl.col("sepsis_onset_time").is_not_null()
    ).with_columns(
        ((pl.col("proxy_onset_time") - pl.col("sepsis_onset_time")).dt.total_seconds() / 3600).alias(
            "lead_hours"
        )
    )
    lead = both["lead_hours"]

    def ratio(a: int, b: int) -> float | None:
        return None if b == 0 else a / b

    return {
        "proxy": f"partial SOFA >= {baseline + rise} at any hour (the components present; a threshold, "
        "not a rise; no antibiotics or cultures here)",
        "stays": joined.height,
        "not_assessable_stays": not_assessable,
        "not_assessable_reason": "no laboratory SOFA input (platelets, bilirubin, creatinine, PaO2/FiO2)",
        "true_positive": tp,
        "false_positive": fp,
        "false_negative": fn,
        "true_negative": tn,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "onset_pairs": both.height,
        "median_proxy_minus_label_hours": _median(lead),
    }


LAB_INPUTS = ("platelets", "bilirubin", "creatinine", "pao2_fio2_ratio")


def _median(values: pl.Series) -> float | None:
    median = values.median()
    return None if median is None else float(median)  # type: ignore[arg-type]


def format_agreement(result: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    median = result["median_proxy_minus_label_hours"]
    return (
        f"agreement with the source's sepsis label ({result['stays']} stays; proxy: {result['proxy']}):\n"
        f"  TP {result['true_positive']}, FP {result['false_positive']}, FN {result['false_negative']}, "
        f"TN {result['true_negative']}; sensitivity {pct(result['sensitivity'])}, "
        f"specificity {pct(result['specificity'])}, PPV {pct(result['ppv'])}\n"
        f"  onset: proxy minus label, median {'-' if median is None else f'{median:+.1f} h'} "
        f"over {result['onset_pairs']} stays with both\n"
        f"  not assessable: {result.get('not_assessable_stays', 0)} stays "
        f"({result.get('not_assessable_reason', '')})"
    )
