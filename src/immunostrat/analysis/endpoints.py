"""Endpoint derivations from a validated trial export (one row per participant, or long per visit).

Each function takes a :class:`~immunostrat.analysis.schema.TrialExport` and the endpoint's
parameters (the plan file supplies them; the defaults below are ImmunoSep's, domain.md A1) and
returns a polars frame with ``participant_id, arm, stratum`` plus the endpoint and the columns
that say how each value was obtained (measured, death rule, carried forward, missing), so the
missing-data handling is reported, not hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from immunostrat.analysis.schema import INFECTION_STATUS_ORDER, TrialExport

# domain.md A1 (JAMA 2025 Table 2; SAP): responder = day-1 SOFA - mean(days 2-9) >= 1.4; a patient
# who dies scores 24 every day after death; other missing days: last value carried forward.
SOFA_RESPONSE_THRESHOLD = 1.4
SOFA_DEATH_SCORE = 24  # SOFA maximum, 6 organ systems x 4 (Vincent 1996, domain.md B1)
# domain.md A1 (SAP): MALS reversal = ferritin fall >= 15% at day 15; immunoparalysis reversal =
# HLA-DR > 8,000 AB/C with ferritin < 4,420 ng/mL at day 15.
MALS_REVERSAL_FERRITIN_FALL = 0.15
IMMUNOPARALYSIS_REVERSAL_HLA_DR = 8000.0
MALS_FERRITIN_NG_ML = 4420.0

_KEYS = ("participant_id", "arm", "stratum")


def sofa_responder(reduction: Any, threshold: float = SOFA_RESPONSE_THRESHOLD) -> Any:
    """The responder rule on a SOFA reduction (a float or an array): reduction >= threshold. The 1e-9
    tolerance only absorbs float error, since a mean of k integers moves in steps of 1/k. Used by
    :func:`sofa_response` and by the in-silico trials, so the rule exists once."""
    return np.asarray(reduction, dtype=np.float64) >= threshold - 1e-9


def _base(export: TrialExport, population: str | None) -> pl.DataFrame:
    p = export.participants
    if population:
        if population not in p.columns:
            raise KeyError(f"population flag {population!r} not in participants")
        flag = pl.col(population)
        if population == "safety":
            flag = pl.col("safety").fill_null(pl.col("itt"))
        p = p.filter(flag.fill_null(False))
    return p


def sofa_response(
    export: TrialExport,
    last_day: int = 9,
    first_day: int = 1,
    threshold: float = SOFA_RESPONSE_THRESHOLD,
    death_score: int = SOFA_DEATH_SCORE,
    day1_fallback: str | None = "baseline_sofa",
    population: str | None = "itt",
) -> pl.DataFrame:
    """ImmunoSep primary endpoint (domain.md A1) with ``last_day=9``; the day-15 variant with 15.

    reduction = SOFA(day ``first_day``) - mean(SOFA on days first_day+1 .. last_day); responder when
    reduction >= threshold. Imputation per day, in this order: measured value; ``death_score`` on
    every day after the death day; otherwise the last value carried forward (LOCF). A missing
    day-1 SOFA is taken from ``day1_fallback`` (the participants column, e.g. baseline SOFA) when
    given, else the endpoint is missing for that participant.

    Returns one row per participant: day1, mean_later, reduction, responder (null when missing),
    n_measured, n_death_imputed, n_locf over days first_day+1..last_day, and ``status_last_day``
    ("measured", "dead", "carried forward" or "missing") as in ImmunoSep eTable 8.
    """
    base = _base(export, population).select(*_KEYS, *([day1_fallback] if day1_fallback else []))
    deaths = export.outcomes.select("participant_id", "death_day")
    sofa = export.daily_assessments.filter(pl.col("sofa_total").is_not_null()).select(
        "participant_id", "day", "sofa_total"
    )
    sofa_by_id: dict[str, dict[int, int]] = {}
    for pid, day, value in sofa.iter_rows():
        sofa_by_id.setdefault(pid, {})[int(day)] = int(value)
    death_by_id = {pid: d for pid, d in deaths.iter_rows()}
    later_days = list(range(first_day + 1, last_day + 1))
    rows: list[dict[str, object]] = []
    for rec in base.iter_rows(named=True):
        pid = rec["participant_id"]
        obs = sofa_by_id.get(pid, {})
        death = death_by_id.get(pid)
        day1 = obs.get(first_day)
        day1_source = "measured"
        if day1 is None and day1_fallback and rec.get(day1_fallback) is not None:
            day1 = int(rec[day1_fallback])
            day1_source = day1_fallback
        values: list[float] = []
        n_meas = n_dead = n_locf = 0
        status = "missing"
        last: float | None = float(day1) if day1 is not None else None
        for d in later_days:
            if d in obs:
                v: float | None = float(obs[d])
                status = "measured"
                n_meas += 1
            elif death is not None and d > death:
                v = float(death_score)
                status = "dead"
                n_dead += 1
            elif last is not None:
                v = last
                status = "carried forward"
                n_locf += 1
            else:
                v = None
                status = "missing"
            if v is not None:
                values.append(v)
                last = v
        complete = day1 is not None and len(values) == len(later_days)
        mean_later = sum(values) / len(values) if complete and values else None
        reduction = (
            (float(day1) - mean_later) if complete and mean_later is not None and day1 is not None else None
        )
        responder = None if reduction is None else bool(sofa_responder(reduction, threshold))
        rows.append(
            {
                "participant_id": pid,
                "arm": rec["arm"],
                "stratum": rec["stratum"],
                "day1_sofa": day1,
                "day1_source": day1_source if day1 is not None else "missing",
                "mean_later_sofa": mean_later,
                "reduction": reduction,
                "responder": responder,
                "n_measured": n_meas,
                "n_death_imputed": n_dead,
                "n_locf": n_locf,
                "status_last_day": status,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "participant_id": pl.Utf8,
            "arm": pl.Utf8,
            "stratum": pl.Utf8,
            "day1_sofa": pl.Int64,
            "day1_source": pl.Utf8,
            "mean_later_sofa": pl.Float64,
            "reduction": pl.Float64,
            "responder": pl.Boolean,
            "n_measured": pl.Int64,
            "n_death_imputed": pl.Int64,
            "n_locf": pl.Int64,
            "status_last_day": pl.Utf8,
        },
    )


def mortality(export: TrialExport, day: int = 28, population: str | None = "itt") -> pl.DataFrame:
    """Death by study day ``day`` (death_day <= day). A participant alive at last contact before
    ``day`` has an unknown status (``dead`` null, ``status`` "lost to follow-up")."""
    base = _base(export, population).select(*_KEYS)
    o = export.outcomes.select("participant_id", "death_day", "last_contact_day")
    df = base.join(o, on="participant_id", how="left")
    dead = pl.col("death_day").is_not_null() & (pl.col("death_day") <= day)
    known_alive = pl.col("last_contact_day") >= day
    return df.with_columns(
        pl.when(dead).then(True).when(known_alive).then(False).otherwise(None).alias("dead"),
        pl.when(dead)
        .then(pl.lit("dead"))
        .when(known_alive)
        .then(pl.lit("alive"))
        .otherwise(pl.lit("lost to follow-up"))
        .alias("status"),
    )


def survival(export: TrialExport, horizon: int = 90, population: str | None = "itt") -> pl.DataFrame:
    """Time to death censored at last contact and at ``horizon`` days: columns time, event."""
    base = _base(export, population).select(*_KEYS)
    o = export.outcomes.select("participant_id", "death_day", "last_contact_day")
    df = base.join(o, on="participant_id", how="left")
    event = pl.col("death_day").is_not_null() & (pl.col("death_day") <= horizon)
    time = (
        pl.when(event)
        .then(pl.col("death_day"))
        .otherwise(pl.min_horizontal("last_contact_day", pl.lit(horizon)))
    )
    return df.with_columns(time.cast(pl.Float64).alias("time"), event.alias("event"))


def infection_status(
    export: TrialExport, levels: Sequence[str] = INFECTION_STATUS_ORDER, population: str | None = "itt"
) -> pl.DataFrame:
    """Day-15 infection status (ordered best -> worst, JAMA 2025 Table 2) with its ordinal score 0..k-1."""
    base = _base(export, population).select(*_KEYS)
    o = export.outcomes.select("participant_id", "infection_status_day15")
    df = base.join(o, on="participant_id", how="left").rename({"infection_status_day15": "status"})
    mapping = {lvl: i for i, lvl in enumerate(levels)}
    return df.with_columns(
        pl.col("status").replace_strict(mapping, default=None, return_dtype=pl.Int64).alias("score")
    )


def _value_on_day(export: TrialExport, column: str, day: int) -> pl.DataFrame:
    return export.daily_assessments.filter(pl.col("day") == day).select(
        "participant_id", pl.col(column).alias(f"{column}_d{day}")
    )


def immune_reversal(
    export: TrialExport,
    day: int = 15,
    mals_label: str = "MALS",
    immunoparalysis_label: str = "immunoparalysis",
    ferritin_fall: float = MALS_REVERSAL_FERRITIN_FALL,
    hla_dr_threshold: float = IMMUNOPARALYSIS_REVERSAL_HLA_DR,
    ferritin_threshold: float = MALS_FERRITIN_NG_ML,
    population: str | None = "itt",
) -> pl.DataFrame:
    """Immune-dysfunction reversal at ``day`` (domain.md A1, SAP): MALS -> ferritin fell >= 15% from
    baseline; immunoparalysis -> HLA-DR > 8,000 AB/C and ferritin < 4,420 ng/mL. Baseline ferritin is
    the participants column, else the day-0 then day-1 assessment. ``reversed`` is null when the
    day-``day`` sample (or the baseline) is missing: the analysis is on the subset with samples."""
    base = _base(export, population).select(*_KEYS, "ferritin_ng_ml")
    o = export.outcomes.select("participant_id", "ferritin_day15_ng_ml", "hla_dr_day15_abc")
    d0 = _value_on_day(export, "ferritin_ng_ml", 0)
    d1 = _value_on_day(export, "ferritin_ng_ml", 1)
    fer_t = _value_on_day(export, "ferritin_ng_ml", day)
    hla_t = _value_on_day(export, "hla_dr_abc", day)
    df = (
        base.join(d0, on="participant_id", how="left")
        .join(d1, on="participant_id", how="left")
        .join(fer_t, on="participant_id", how="left")
        .join(hla_t, on="participant_id", how="left")
        .join(o, on="participant_id", how="left")
    )
    use_outcome_cols = day == 15
    fer_day = (
        pl.coalesce("ferritin_day15_ng_ml", f"ferritin_ng_ml_d{day}")
        if use_outcome_cols
        else pl.col(f"ferritin_ng_ml_d{day}")
    )
    hla_day = (
        pl.coalesce("hla_dr_day15_abc", f"hla_dr_abc_d{day}")
        if use_outcome_cols
        else pl.col(f"hla_dr_abc_d{day}")
    )
    df = df.with_columns(
        pl.coalesce("ferritin_ng_ml", "ferritin_ng_ml_d0", "ferritin_ng_ml_d1").alias("ferritin_baseline"),
        fer_day.alias("ferritin_followup"),
        hla_day.alias("hla_dr_followup"),
    )
    mals = (pl.col("ferritin_followup") <= pl.col("ferritin_baseline") * (1 - ferritin_fall)).fill_null(False)
    mals_known = pl.col("ferritin_followup").is_not_null() & pl.col("ferritin_baseline").is_not_null()
    ip = (
        (pl.col("hla_dr_followup") > hla_dr_threshold) & (pl.col("ferritin_followup") < ferritin_threshold)
    ).fill_null(False)
    ip_known = pl.col("hla_dr_followup").is_not_null() & pl.col("ferritin_followup").is_not_null()
    is_mals = pl.col("stratum") == mals_label
    is_ip = pl.col("stratum") == immunoparalysis_label
    rev = pl.when(is_mals & mals_known).then(mals).when(is_ip & ip_known).then(ip).otherwise(None)
    return df.select(
        *_KEYS, "ferritin_baseline", "ferritin_followup", "hla_dr_followup", rev.alias("reversed")
    )


def repeated_measure(
    export: TrialExport,
    variable: str,
    days: Sequence[int],
    baseline_day: int | None = None,
    population: str | None = "itt",
) -> pl.DataFrame:
    """Long frame of ``variable`` on ``days``: participant_id, arm, stratum, day, value, and, when
    ``baseline_day`` is given, baseline and change = value - baseline. No imputation: missing visits
    are absent rows (mixed models use all observed visits)."""
    base = _base(export, population).select(*_KEYS)
    long = (
        export.daily_assessments.filter(pl.col("day").is_in(list(days)) & pl.col(variable).is_not_null())
        .select("participant_id", "day", pl.col(variable).cast(pl.Float64).alias("value"))
        .join(base, on="participant_id", how="inner")
    )
    if baseline_day is not None:
        b = export.daily_assessments.filter(
            (pl.col("day") == baseline_day) & pl.col(variable).is_not_null()
        ).select("participant_id", pl.col(variable).cast(pl.Float64).alias("baseline"))
        long = long.join(b, on="participant_id", how="left").with_columns(
            (pl.col("value") - pl.col("baseline")).alias("change")
        )
    return long.select(*_KEYS, *[c for c in long.columns if c not in _KEYS]).sort("participant_id", "day")


def change_from_baseline(
    export: TrialExport,
    variable: str,
    baseline_day: int,
    day: int,
    population: str | None = "itt",
) -> pl.DataFrame:
    """One row per participant: baseline, value at ``day`` and change (null when either is missing);
    e.g. the SLE secretome trial's MEX-SLEDAI change day 0 -> day 43 (domain.md C)."""
    base = _base(export, population).select(*_KEYS)
    da = export.daily_assessments
    b = da.filter(pl.col("day") == baseline_day).select(
        "participant_id", pl.col(variable).cast(pl.Float64).alias("baseline")
    )
    v = da.filter(pl.col("day") == day).select(
        "participant_id", pl.col(variable).cast(pl.Float64).alias("value")
    )
    return (
        base.join(b, on="participant_id", how="left")
        .join(v, on="participant_id", how="left")
        .with_columns((pl.col("value") - pl.col("baseline")).alias("change"))
    )
