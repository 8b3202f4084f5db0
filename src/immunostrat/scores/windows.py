"""Worst values per window at the bedside (polars), feeding the score expressions.

SOFA is scored on the worst value of each organ system in a window (domain.md B1). This module
turns canonical long observations into one row per (patient, window) with the SOFA inputs:

- respiration: each PaO2 is paired with the latest FiO2 in the preceding ``fio2_lookback_hours``
  and the latest respiratory-support status (within ``support_lookback_hours``); the pairing with the
  worst respiration points (then the lowest ratio) represents the window; for SOFA-2 the SpO2
  readings below its limit (< 98 %, footnote f) are paired the same way for the S/F fallback;
- platelets, GCS, MAP: minimum; bilirubin, creatinine: maximum;
- vasopressor rates (the rules of ``sofa-1996.yaml``): a charted rate runs until the next charted
  rate of the same drug when that comes within ``vasopressor_max_gap_hours``, else it ends where it
  was charted (the last charting is not carried on); a rate of 0 is a stop. Consecutive positive
  rates form one infusion run, counted only when the run lasted at least ``vasopressor_min_hours``
  (per infusion, not per charted segment). The window takes the highest counted rate running in it;
  a rate charted before the window and still running counts;
- urine output: events summed over a 24-h window when the charting covers it (first and last urine
  events within ``urine_coverage_slack_hours`` of the window's edges), else the window gets no
  24-h volume; recorded ``urine_output_24h`` values take their minimum.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from immunostrat.scores.definitions import load_definition
from immunostrat.scores.simple import hscore, mex_sledai, qsofa, sledai_2k
from immunostrat.scores.sofa import SOFA_OUTPUTS, SOFA_VARIANTS, sofa, sofa_variant_id

VASOPRESSORS = (
    "dopamine_rate",
    "dobutamine_rate",
    "epinephrine_rate",
    "norepinephrine_rate",
    "vasopressin_rate",
    # SOFA-2's other vasoactive agents (sofa-2.yaml)
    "phenylephrine_rate",
    "milrinone_rate",
)
WORST_MIN = (
    "platelets",
    "gcs",
    "map",
    "sbp",
    "hemoglobin",
    "wbc",
    "lymphocytes",
    "fibrinogen",
    "c3",
    "c4",
    "spo2",
    "urine_output_24h",
    # SOFA-2 inputs (sofa-2.yaml): the worst value of the window, as the cohort engine takes it
    "gcs_motor",
    "ph",
    "bicarbonate",
)
WORST_MAX = (
    "bilirubin",
    "creatinine",
    "lactate",
    "ferritin",
    "triglycerides",
    "ast",
    "temperature",
    "resp_rate",
    "heart_rate",
    "crp",
    "il6",
    "tnf_alpha",
    "anti_dsdna",
    "reticulocytes_percent",
    "urine_rbc_hpf",
    "urine_wbc_hpf",
    "proteinuria_24h",
    "potassium",
)
# Binary findings: present if recorded present at any time in the window.
FINDINGS_ANY = (
    "immunosuppression",
    "hepatomegaly",
    "splenomegaly",
    "hemophagocytosis",
    "mechanical_ventilation",
    # SOFA-2 organ support and delirium treatment (sofa-2.yaml)
    "rrt",
    "ecmo",
    "mechanical_circulatory_support",
    "delirium_drug",
)

# Design choices (not clinical constants): how far back a FiO2 or support status may be carried to pair
# with a PaO2, and the slack allowed when deciding that urine charting covers a 24-h window.
FIO2_LOOKBACK_HOURS = 4.0
SUPPORT_LOOKBACK_HOURS = 24.0
URINE_COVERAGE_SLACK_HOURS = 2.0


# Windows are half-open, [window_start, window_end): a value charted exactly at a boundary belongs to
# the window it opens. A window "at T" therefore ends one microsecond after T, so that T is inside.
_TICK = timedelta(microseconds=1)


def windows_at(observations: pl.DataFrame, at: datetime | None, hours: float) -> pl.DataFrame:
    """One window per patient covering the ``hours`` up to and including ``at`` (default: each
    patient's last observation)."""
    ends = observations.group_by("patient_id").agg(pl.col("time").max().alias("window_end"))
    if at is not None:
        ends = ends.with_columns(pl.lit(at).cast(pl.Datetime("us", "UTC")).alias("window_end"))
    ends = ends.with_columns(pl.col("window_end") + _TICK)
    return (
        ends.with_columns((pl.col("window_end") - timedelta(hours=hours)).alias("window_start"))
        .select("patient_id", "window_start", "window_end")
        .sort("patient_id")
    )


def windows_every(
    observations: pl.DataFrame, hours: float, start: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Consecutive windows of ``hours`` from each patient's first observation (or ``start`` times)."""
    span = observations.group_by("patient_id").agg(
        pl.col("time").min().alias("first"), pl.col("time").max().alias("last")
    )
    if start is not None:
        span = (
            span.join(
                start.select("patient_id", pl.col("admission_time").alias("_start")),
                on="patient_id",
                how="left",
            )
            .with_columns(pl.coalesce("_start", "first").alias("first"))
            .drop("_start")
        )
    step = timedelta(hours=hours)
    span = span.with_columns(
        (
            (pl.col("last") - pl.col("first")).dt.total_microseconds() // int(step.total_seconds() * 1e6) + 1
        ).alias("_n")
    )
    frame = span.with_columns(pl.int_ranges(0, pl.col("_n")).alias("_k")).explode("_k")
    return (
        frame.select(
            "patient_id",
            (
                pl.col("first") + pl.duration(microseconds=pl.col("_k") * int(step.total_seconds() * 1e6))
            ).alias("window_start"),
        )
        .with_columns((pl.col("window_start") + step).alias("window_end"))
        .sort("patient_id", "window_start")
    )


def _in_window(obs: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Observations joined to the windows that contain them ([start, end))."""
    joined = obs.join(windows, on="patient_id", how="inner")
    return joined.filter((pl.col("time") >= pl.col("window_start")) & (pl.col("time") < pl.col("window_end")))


def _respiration(
    obs: pl.DataFrame,
    windows: pl.DataFrame,
    *,
    numerator: str = "pao2",
    ratio_name: str = "pao2_fio2_ratio",
    below: float | None = None,
    variant: str = "sofa",
) -> pl.DataFrame:
    """The worst ``numerator``/FiO2 pairing per window (PaO2, or SpO2 for SOFA-2's S/F fallback, then
    only readings ``below`` the definition's SpO2 limit)."""
    pao2 = obs.filter(pl.col("concept") == numerator)
    if below is not None:
        pao2 = pao2.filter(pl.col("value") < below)
    pao2 = pao2.select("patient_id", "time", pl.col("value").alias("pao2"))
    fio2 = obs.filter(pl.col("concept") == "fio2").select("patient_id", "time", pl.col("value").alias("fio2"))
    vent = obs.filter(pl.col("concept") == "mechanical_ventilation").select(
        "patient_id", "time", pl.col("value").alias("mechanical_ventilation")
    )
    if pao2.is_empty():
        return pl.DataFrame(
            schema={
                "patient_id": pl.String,
                "window_start": pl.Datetime("us", "UTC"),
                ratio_name: pl.Float64,
                "mechanical_ventilation": pl.Float64,
            }
        )
    pairs = (
        pao2.sort("patient_id", "time")
        .join_asof(
            fio2.sort("patient_id", "time"),
            on="time",
            by="patient_id",
            strategy="backward",
            tolerance=timedelta(hours=FIO2_LOOKBACK_HOURS),
            check_sortedness=False,
        )
        .join_asof(
            vent.sort("patient_id", "time"),
            on="time",
            by="patient_id",
            strategy="backward",
            tolerance=timedelta(hours=SUPPORT_LOOKBACK_HOURS),
            check_sortedness=False,
        )
        .with_columns(
            (pl.col("pao2") / pl.col("fio2")).round(6).alias(ratio_name),
            pl.col("mechanical_ventilation").fill_null(0.0),
        )
        .filter(pl.col(ratio_name).is_not_null())
    )
    scored = sofa(pairs.select("patient_id", "time", ratio_name, "mechanical_ventilation"), variant)
    in_window = _in_window(scored, windows)
    worst = (
        in_window.sort(
            ["patient_id", "window_start", "sofa_respiration", ratio_name],
            descending=[False, False, True, False],
        )
        .group_by("patient_id", "window_start", maintain_order=True)
        .first()
    )
    return worst.select("patient_id", "window_start", ratio_name, "mechanical_ventilation")


def _vasopressors(
    obs: pl.DataFrame, windows: pl.DataFrame, min_hours: float, max_gap_hours: float
) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"patient_id": pl.String, "window_start": pl.Datetime("us", "UTC")})
    rates = (
        obs.filter(pl.col("concept").is_in(VASOPRESSORS))
        .group_by("patient_id", "concept", "time")
        .agg(pl.col("value").max())
        .sort("patient_id", "concept", "time")
    )
    if rates.is_empty():
        return empty
    drug = ("patient_id", "concept")
    max_gap = timedelta(hours=max_gap_hours)
    next_time = pl.col("time").shift(-1).over(drug)
    prev_time = pl.col("time").shift(1).over(drug)
    prev_value = pl.col("value").shift(1).over(drug)
    # A rate runs to the next charting within the gap; after a longer silence it ends where charted.
    until = pl.when(next_time - pl.col("time") <= max_gap).then(next_time).otherwise(pl.col("time"))
    # A positive rate after a stop (0), a silence or nothing starts a new infusion run.
    run_start = (pl.col("value") > 0) & (
        prev_value.is_null() | (prev_value <= 0) | (pl.col("time") - prev_time > max_gap)
    )
    rates = (
        rates.with_columns(until.alias("until"), run_start.cast(pl.Int64).cum_sum().over(drug).alias("_run"))
        .filter(pl.col("value") > 0)
        .filter(
            pl.col("until").max().over(*drug, "_run") - pl.col("time").min().over(*drug, "_run")
            >= timedelta(hours=min_hours)
        )
    )
    # A rate overlaps the window while it runs; one that ended where charted counts at that instant.
    joined = rates.join(windows, on="patient_id", how="inner").filter(
        (pl.col("time") < pl.col("window_end"))
        & ((pl.col("until") > pl.col("window_start")) | (pl.col("time") >= pl.col("window_start")))
    )
    if joined.is_empty():
        return empty
    return joined.pivot(
        on="concept", index=["patient_id", "window_start"], values="value", aggregate_function="max"
    )


def _urine(obs: pl.DataFrame, windows: pl.DataFrame, hours: float) -> pl.DataFrame:
    events = obs.filter(pl.col("concept") == "urine_output")
    empty = pl.DataFrame(
        schema={"patient_id": pl.String, "window_start": pl.Datetime("us", "UTC"), "_urine_sum": pl.Float64}
    )
    if events.is_empty() or abs(hours - 24.0) > 1e-9:
        return empty
    span = events.group_by("patient_id").agg(
        pl.col("time").min().alias("_u_first"), pl.col("time").max().alias("_u_last")
    )
    slack = timedelta(hours=URINE_COVERAGE_SLACK_HOURS)
    inside = events.join(windows, on="patient_id").filter(
        (pl.col("time") >= pl.col("window_start")) & (pl.col("time") < pl.col("window_end"))
    )
    sums = inside.group_by("patient_id", "window_start", "window_end").agg(
        pl.col("value").sum().alias("_urine_sum")
    )
    covered = sums.join(span, on="patient_id").filter(
        (pl.col("_u_first") <= pl.col("window_start") + slack)
        & (pl.col("_u_last") >= pl.col("window_end") - slack)
    )
    return covered.select("patient_id", "window_start", "_urine_sum")


def worst_values(
    observations: pl.DataFrame,
    windows: pl.DataFrame,
    *,
    vasopressor_min_hours: float | None = None,
    vasopressor_max_gap_hours: float | None = None,
    variant: str = "sofa",
) -> pl.DataFrame:
    """One row per window with the worst value of every score input (see module docstring); the
    vasopressor rules default to the SOFA ``variant``'s definition. For ``sofa-2`` the window also
    gets ``spo2_fio2_ratio``: the worst SpO2/FiO2 pairing of SpO2 readings below the definition's
    limit (footnote f), paired like PaO2."""
    spec = load_definition(sofa_variant_id(variant))
    min_hours = float(
        spec["vasopressor_min_hours"] if vasopressor_min_hours is None else vasopressor_min_hours
    )
    max_gap_hours = float(
        spec["vasopressor_max_gap_hours"] if vasopressor_max_gap_hours is None else vasopressor_max_gap_hours
    )
    hours = windows.select((pl.col("window_end") - pl.col("window_start")).dt.total_seconds().max()).item()
    hours = (hours or 0) / 3600.0
    base = windows.select("patient_id", "window_start", "window_end")
    inside = _in_window(observations, windows)
    aggs = [pl.col("value").filter(pl.col("concept") == c).min().alias(c) for c in WORST_MIN]
    aggs += [pl.col("value").filter(pl.col("concept") == c).max().alias(c) for c in WORST_MAX]
    aggs += [pl.col("value").filter(pl.col("concept") == c).max().alias(c) for c in FINDINGS_ANY]
    lupus = sorted({str(c) for c in inside["concept"].unique() if str(c).startswith(("sledai_", "mex_"))})
    aggs += [pl.col("value").filter(pl.col("concept") == c).max().alias(c) for c in lupus]
    simple = inside.group_by("patient_id", "window_start").agg(aggs)
    frame = base.join(simple, on=["patient_id", "window_start"], how="left")
    resp = _respiration(observations, windows)
    frame = frame.drop("mechanical_ventilation").join(resp, on=["patient_id", "window_start"], how="left")
    if "spo2_fio2_max_spo2_exclusive" in spec:
        sf = _respiration(
            observations,
            windows,
            numerator="spo2",
            ratio_name="spo2_fio2_ratio",
            below=float(spec["spo2_fio2_max_spo2_exclusive"]),
            variant=variant,
        ).rename({"mechanical_ventilation": "_sf_vent"})
        frame = (
            frame.join(sf, on=["patient_id", "window_start"], how="left")
            .with_columns(pl.coalesce("mechanical_ventilation", "_sf_vent").alias("mechanical_ventilation"))
            .drop("_sf_vent")
        )
    vaso = _vasopressors(observations, windows, min_hours, max_gap_hours)
    frame = frame.join(vaso, on=["patient_id", "window_start"], how="left")
    for name in VASOPRESSORS:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(name))
    urine = _urine(observations, windows, hours)
    frame = (
        frame.join(urine, on=["patient_id", "window_start"], how="left")
        .with_columns(pl.min_horizontal("urine_output_24h", "_urine_sum").alias("urine_output_24h"))
        .drop("_urine_sum")
    )
    return frame.sort("patient_id", "window_start")


def score_windows(
    observations: pl.DataFrame, windows: pl.DataFrame, score: str, **parameters: float | None
) -> pl.DataFrame:
    """Worst values per window, scored by ``score`` (sofa = sofa-1996, sofa-2, qsofa, hscore,
    mex-sledai, sledai-2k)."""
    if score in ("sofa", *SOFA_VARIANTS):
        scored = sofa(worst_values(observations, windows, variant=score), score)
        keep = ["patient_id", "window_start", "window_end", *SOFA_OUTPUTS]
        return scored.select(keep).rename({"window_start": "time"})
    values = worst_values(observations, windows)
    functions = {"qsofa": qsofa, "hscore": hscore, "mex-sledai": mex_sledai}
    if score == "sledai-2k":
        scored = sledai_2k(values, **parameters)
        prefix = "sledai_2k_"
    elif score in functions:
        scored = functions[score](values)
        prefix = score.replace("-", "_") + "_"
    else:
        raise KeyError(f"unknown score {score!r}")
    keep = ["patient_id", "window_start", "window_end", *[c for c in scored.columns if c.startswith(prefix)]]
    return scored.select(keep).rename({"window_start": "time"})
