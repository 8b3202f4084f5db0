"""Sepsis-3 onset and septic shock (Singer 2016; Seymour 2016; domain.md B2), bedside in polars.

Parameters (windows, SOFA rise, lactate and MAP thresholds) live in ``definitions/sepsis3.yaml``;
the cohort engine reads the same file.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from immunostrat.scores.definitions import load_definition

_VASOPRESSORS = ("norepinephrine_rate", "epinephrine_rate", "dopamine_rate", "vasopressin_rate")
_T = pl.Datetime("us", "UTC")


SUSPICION_RULES = ("antibiotic-and-culture", "antibiotic-only")


def suspicion_episodes(
    observations: pl.DataFrame, mode: str = "antibiotic-and-culture", key: str = "patient_id"
) -> pl.DataFrame:
    """Every suspected-infection episode per ``key`` (one row per onset), from the ``antibiotic`` and
    ``culture`` rows of ``observations`` (``key``, time, concept, value; value >= 1 = given or drawn).

    ``antibiotic-and-culture`` (Seymour 2016, windows from sepsis3.yaml): an antibiotic with a culture in
    the following 24 h (onset = the antibiotic) or a culture with an antibiotic in the following 72 h
    (onset = the culture), both ends inclusive; an onset found both ways keeps the earliest partner of
    each kind. ``antibiotic-only`` (ricu ``si_mode = "abx"``): every antibiotic (culture_time null).
    Columns: ``key``, onset, antibiotic_time, culture_time; sorted by ``key`` and onset.
    """
    if mode not in SUSPICION_RULES:
        raise ValueError(
            f"unknown suspected-infection rule {mode!r}; use one of {', '.join(SUSPICION_RULES)}"
        )
    spec = load_definition("sepsis3")
    given = observations.filter(pl.col("concept").is_in(("antibiotic", "culture")) & (pl.col("value") >= 1))
    abx = given.filter(pl.col("concept") == "antibiotic").select(key, pl.col("time").cast(_T)).unique()
    if mode == "antibiotic-only":
        return abx.select(
            key, onset="time", antibiotic_time="time", culture_time=pl.lit(None, dtype=_T)
        ).sort(key, "onset")
    cult = given.filter(pl.col("concept") == "culture").select(key, pl.col("time").cast(_T)).unique()

    def first_after(start: pl.DataFrame, partner: pl.DataFrame, hours: float) -> pl.DataFrame:
        """Per ``start`` time, the earliest ``partner`` time in [time, time + hours]."""
        pairs = start.join(partner.rename({"time": "partner"}), on=key).filter(
            (pl.col("partner") >= pl.col("time"))
            & (pl.col("partner") <= pl.col("time") + timedelta(hours=hours))
        )
        return pairs.group_by(key, "time").agg(pl.col("partner").min())

    from_abx = first_after(abx, cult, float(spec["culture_after_antibiotic_hours"])).select(
        key, onset="time", antibiotic_time="time", culture_time="partner"
    )
    from_cult = first_after(cult, abx, float(spec["antibiotic_after_culture_hours"])).select(
        key, onset="time", antibiotic_time="partner", culture_time="time"
    )
    return (
        pl.concat([from_abx, from_cult])
        .group_by(key, "onset")
        .agg(pl.col("antibiotic_time").min(), pl.col("culture_time").min())
        .sort(key, "onset")
    )


def suspected_infection(observations: pl.DataFrame) -> pl.DataFrame:
    """First suspected-infection time per patient (Seymour 2016; :func:`suspicion_episodes`' first).

    Antibiotic and body-fluid culture both present: if the antibiotic came first, the culture within
    24 h; if the culture came first, the antibiotic within 72 h; onset = the earlier of the two.
    Columns: patient_id, suspicion_time, antibiotic_time, culture_time.
    """
    episodes = suspicion_episodes(observations)
    first = episodes.group_by("patient_id", maintain_order=True).first()
    return first.select(
        "patient_id", suspicion_time="onset", antibiotic_time="antibiotic_time", culture_time="culture_time"
    )


def sepsis3(
    sofa_scores: pl.DataFrame,
    suspicion: pl.DataFrame,
    baseline: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Sepsis-3 per patient: suspected infection plus a SOFA rise >= 2 over baseline.

    ``sofa_scores``: patient_id, time, sofa_total (e.g. hourly or 24-h windows); ``suspicion``: from
    :func:`suspected_infection`; ``baseline``: optional patient_id, baseline_sofa (default 0: no known
    pre-existing dysfunction). The rise is looked for from 48 h before to 24 h after the suspicion
    time; ``sepsis_time`` is the suspicion time (Seymour's onset), ``sofa_rise_time`` the first time
    the rise was seen. Patients without suspicion get sepsis3 = false and the reason.
    """
    spec = load_definition("sepsis3")
    before = timedelta(hours=float(spec["sofa_window_before_hours"]))
    after = timedelta(hours=float(spec["sofa_window_after_hours"]))
    rise = int(spec["sofa_rise"])
    patients = sofa_scores.select("patient_id").unique()
    base = (
        baseline.select("patient_id", "baseline_sofa")
        if baseline is not None
        else patients.with_columns(pl.lit(int(spec["baseline_sofa"])).alias("baseline_sofa"))
    )
    joined = sofa_scores.join(suspicion.select("patient_id", "suspicion_time"), on="patient_id", how="inner")
    in_window = (
        joined.filter(
            (pl.col("time") >= pl.col("suspicion_time") - before)
            & (pl.col("time") <= pl.col("suspicion_time") + after)
        )
        .join(base, on="patient_id", how="left")
        .with_columns(pl.col("baseline_sofa").fill_null(int(spec["baseline_sofa"])))
    )
    risen = in_window.filter(pl.col("sofa_total") - pl.col("baseline_sofa") >= rise)
    per_patient = in_window.group_by("patient_id").agg(
        pl.col("sofa_total").max().alias("sofa_max_in_window"), pl.col("baseline_sofa").first()
    )
    first_rise = risen.group_by("patient_id").agg(pl.col("time").min().alias("sofa_rise_time"))
    out = (
        patients.join(suspicion.select("patient_id", "suspicion_time"), on="patient_id", how="left")
        .join(per_patient, on="patient_id", how="left")
        .join(first_rise, on="patient_id", how="left")
        .with_columns(
            (pl.col("suspicion_time").is_not_null() & pl.col("sofa_rise_time").is_not_null()).alias(
                "sepsis3"
            ),
        )
        .with_columns(
            pl.when(pl.col("sepsis3")).then(pl.col("suspicion_time")).otherwise(None).alias("sepsis_time"),
            pl.when(pl.col("suspicion_time").is_null())
            .then(pl.lit("no suspected infection (antibiotic + culture)"))
            .when(pl.col("sofa_rise_time").is_null())
            .then(pl.lit(f"no SOFA rise >= {rise} in the window"))
            .otherwise(pl.lit("suspected infection with SOFA rise"))
            .alias("sepsis3_reason"),
        )
    )
    return out.sort("patient_id")


def septic_shock(observations: pl.DataFrame, window_hours: float = 24.0) -> pl.DataFrame:
    """Septic shock per patient: a vasopressor running and lactate > 2 mmol/L within ``window_hours``.

    Sepsis-3 asks for vasopressors "to keep MAP >= 65 mmHg" despite adequate fluids: fluid adequacy is
    not in the data, so the flag is the measurable part (vasopressor > 0 and lactate > 2 mmol/L).
    Columns: patient_id, septic_shock, shock_time (first lactate meeting the rule).
    """
    spec = load_definition("sepsis3")
    lactate = observations.filter(
        (pl.col("concept") == "lactate") & (pl.col("value") > float(spec["shock_lactate_mmol_l"]))
    ).select("patient_id", "time")
    pressor = observations.filter(pl.col("concept").is_in(_VASOPRESSORS) & (pl.col("value") > 0)).select(
        "patient_id", pl.col("time").alias("pressor_time")
    )
    window = timedelta(hours=window_hours)
    hits = lactate.join(pressor, on="patient_id").filter(
        (pl.col("time") - pl.col("pressor_time")).abs() <= window
    )
    first = hits.group_by("patient_id").agg(pl.col("time").min().alias("shock_time"))
    patients = observations.select("patient_id").unique()
    return (
        patients.join(first, on="patient_id", how="left")
        .with_columns(pl.col("shock_time").is_not_null().alias("septic_shock"))
        .select("patient_id", "septic_shock", "shock_time")
        .sort("patient_id")
    )
