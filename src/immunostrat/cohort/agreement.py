"""Agreement of our Sepsis-3 onset proxy with a source's own sepsis label (PhysioNet 2019).

PhysioNet/CinC 2019 carries no antibiotics or cultures, so the suspected-infection half of Sepsis-3
cannot be assessed there. The proxy reported against the files' SepsisLabel is the organ-dysfunction
half: the first hour whose trailing-24 h total SOFA has risen by >= 2 points over the baseline
(``sepsis3.yaml``: rise 2, baseline 0). The challenge labels onset 6 h before clinical Sepsis-3
(``SepsisLabel`` is 1 from 6 h before onset), which the source adapter already undid in
``sepsis_onset_time``. Reported, never asserted: a partial SOFA cannot be expected to match.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from immunostrat.scores import load_definition


def label_agreement(hourly_sofa: pl.DataFrame, onset: pl.DataFrame) -> dict[str, Any]:
    """Stay-level confusion matrix and onset-time differences of the SOFA-rise proxy vs the label.

    ``hourly_sofa``: stay_id, time, sofa_total; ``onset``: stay_id, sepsis_label_any,
    sepsis_onset_time (from the PhysioNet 2019 adapter).
    """
    spec = load_definition("sepsis3")
    rise = int(spec["sofa_rise"])
    baseline = int(spec["baseline_sofa"])
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
        "proxy": f"first hour with total SOFA - {baseline} >= {rise} (no antibiotics or cultures here)",
        "stays": joined.height,
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
        f"over {result['onset_pairs']} stays with both"
    )
