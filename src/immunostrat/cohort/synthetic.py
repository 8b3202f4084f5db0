"""Synthetic ICU cohorts at scale, in our canonical long format (Parquet), for benchmarks and tests.

Sampling rates follow a typical ICU chart: vital signs (MAP, heart rate, respiratory rate, SpO2,
temperature) and urine output hourly, GCS every 4 h, labs (platelets, bilirubin, creatinine, lactate,
WBC) daily, arterial gases (PaO2 with a charted FiO2) a few times a day, respiratory-support status at
changes, vasopressors in runs (rate changes every 1-3 h, a final 0 to stop), ferritin and monocyte
HLA-DR at screening (and again on day 3 for longer stays), antibiotics and cultures for most stays.
Values stay inside the concept dictionary's plausible ranges and scale with a per-stay severity.

Data are written in chunks of stays (one Parquet part file each), so 100M rows never sit in memory;
everything is deterministic from ``seed`` (each chunk draws from ``numpy.random.default_rng([seed,
chunk])``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from immunostrat.cohort.engine import ParquetInput
from immunostrat.sources import STAYS_SCHEMA

HOURLY = ("map", "heart_rate", "resp_rate", "spo2", "temperature", "urine_output")
DAILY_LABS = ("platelets", "bilirubin", "creatinine", "lactate", "wbc")
UNITS = {
    "map": "mmHg",
    "heart_rate": "/min",
    "resp_rate": "/min",
    "spo2": "%",
    "temperature": "degC",
    "urine_output": "mL",
    "gcs": "1",
    "platelets": "10^9/L",
    "bilirubin": "mg/dL",
    "creatinine": "mg/dL",
    "lactate": "mmol/L",
    "wbc": "10^9/L",
    "pao2": "mmHg",
    "fio2": "1",
    "mechanical_ventilation": "1",
    "norepinephrine_rate": "ug/kg/min",
    "ferritin": "ng/mL",
    "mhla_dr": "AB/C",
    "antibiotic": "1",
    "culture": "1",
}
CONCEPTS = tuple(UNITS)
ROWS_PER_STAY_ESTIMATE = 536.0  # measured on the generator's output (about 6.9 rows per grid hour)
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
_HOUR_US = 3_600_000_000


@dataclass
class SyntheticInfo:
    path: Path
    stays: int
    rows: int
    patient_hours: int
    parts: int

    def as_input(self) -> ParquetInput:
        return synthetic_input(self.path)


def synthetic_input(path: str | Path) -> ParquetInput:
    """The :class:`ParquetInput` of a folder written by :func:`write_synthetic`."""
    folder = Path(path)
    return ParquetInput(
        stays=folder / "stays.parquet",
        observations=str(folder / "observations" / "*.parquet"),
        source="synthetic",
        notes=["synthetic cohort (immunostrat.cohort.synthetic)"],
    )


def stays_for_rows(rows: int) -> int:
    """About how many stays give ``rows`` observation rows (about 536 rows and 78 grid hours a stay)."""
    return max(1, round(rows / ROWS_PER_STAY_ESTIMATE))


class _Rows:
    """Column buffers for one chunk."""

    def __init__(self) -> None:
        self.stay: list[np.ndarray] = []
        self.hour: list[np.ndarray] = []
        self.concept: list[np.ndarray] = []
        self.value: list[np.ndarray] = []

    def add(self, stay: np.ndarray, hour: np.ndarray, concept: str | np.ndarray, value: np.ndarray) -> None:
        if stay.size == 0:
            return
        self.stay.append(stay.astype(np.int64))
        self.hour.append(hour.astype(np.float64))
        code = np.full(stay.size, CONCEPTS.index(concept)) if isinstance(concept, str) else concept
        self.concept.append(code.astype(np.int8))
        self.value.append(value.astype(np.float64))


def _chunk(rng: np.random.Generator, first: int, n: int) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Stays ``first .. first+n-1``: the stays frame, the observations frame and the grid hours."""
    severity = rng.beta(2.0, 3.0, n)
    los_h = np.clip(rng.lognormal(np.log(60.0), 0.7, n), 6.0, 30 * 24.0)
    start_us = (rng.uniform(0, 4 * 365 * 24, n) * _HOUR_US).astype(np.int64)
    hours = np.ceil(los_h).astype(np.int64)
    rows = _Rows()

    # hourly vitals and urine: one row per stay-hour per concept, a few minutes jitter
    stay_h = np.repeat(np.arange(n), hours)
    k = np.concatenate([np.arange(h) for h in hours]) if n else np.zeros(0, np.int64)
    sev_h = severity[stay_h]
    trend = np.exp(-k / 72.0)  # the worst early, recovering
    base = {
        "map": rng.normal(82 - 22 * sev_h * trend, 8),
        "heart_rate": rng.normal(85 + 30 * sev_h * trend, 10),
        "resp_rate": rng.normal(17 + 8 * sev_h * trend, 3),
        "spo2": rng.normal(96 - 4 * sev_h, 1.5),
        "temperature": rng.normal(37.2 + 1.2 * sev_h * trend, 0.5),
        "urine_output": rng.gamma(2.0, (60 - 45 * sev_h * trend) / 2.0),
    }
    limits = {
        "map": (25, 160),
        "heart_rate": (30, 200),
        "resp_rate": (5, 50),
        "spo2": (60, 100),
        "temperature": (33, 42),
        "urine_output": (0, 1000),
    }
    for concept in HOURLY:
        jitter = rng.uniform(0.0, 0.25, stay_h.size)
        rows.add(stay_h, k + jitter, concept, np.round(np.clip(base[concept], *limits[concept]), 1))

    # GCS every 4 h
    m = k % 4 == 0
    gcs = np.clip(np.round(15 - 9 * sev_h[m] * trend[m] + rng.normal(0, 1.5, m.sum())), 3, 15)
    rows.add(stay_h[m], k[m] + rng.uniform(0, 0.5, m.sum()), "gcs", gcs)

    # daily labs at about 05:00 of each ICU day
    m = k % 24 == 3
    s, kk, sv = stay_h[m], k[m], sev_h[m]
    labs = {
        "platelets": np.clip(rng.normal(230 - 170 * sv, 40), 5, 900),
        "bilirubin": np.clip(rng.lognormal(np.log(0.6 + 4 * sv**2), 0.5), 0.1, 40),
        "creatinine": np.clip(rng.lognormal(np.log(0.8 + 2.5 * sv**2), 0.35), 0.2, 15),
        "lactate": np.clip(rng.lognormal(np.log(1.0 + 3 * sv**2), 0.4), 0.3, 20),
        "wbc": np.clip(rng.lognormal(np.log(9 + 8 * sv), 0.4), 0.2, 80),
    }
    for concept in DAILY_LABS:
        rows.add(s, kk + rng.uniform(0, 1, s.size), concept, np.round(labs[concept], 2))

    # ventilation: about half the stays, from admission for a while; gases 4 a day when ventilated
    ventilated = rng.uniform(0, 1, n) < 0.3 + 0.5 * severity
    vent_h = np.where(ventilated, np.minimum(hours, np.ceil(rng.uniform(0.2, 1.0, n) * hours)), 0)
    vs = np.flatnonzero(ventilated)
    rows.add(vs, rng.uniform(0, 0.5, vs.size), "mechanical_ventilation", np.ones(vs.size))
    ends = vs[vent_h[vs] < hours[vs]]
    rows.add(ends, vent_h[ends].astype(np.float64), "mechanical_ventilation", np.zeros(ends.size))
    m = (k % 6 == 1) | (~ventilated[stay_h] & (k % 24 == 7))
    s, kk, sv = stay_h[m], k[m], sev_h[m]
    fio2 = np.clip(np.round(0.3 + 0.5 * sv * np.exp(-kk / 96.0) + rng.normal(0, 0.08, s.size), 2), 0.21, 1.0)
    t = kk + rng.uniform(0, 0.5, s.size)
    rows.add(s, t, "fio2", fio2)
    rows.add(s, t + rng.uniform(0.05, 1.0, s.size), "pao2", np.clip(rng.normal(95 - 25 * sv, 18), 35, 500))

    # norepinephrine runs: a third of the stays, early, rate changes every 1-3 h, then 0
    on = rng.uniform(0, 1, n) < 0.15 + 0.5 * severity
    for i in np.flatnonzero(on):
        t0 = rng.uniform(0, min(24.0, hours[i] * 0.5))
        length = min(rng.uniform(3, 60), hours[i] - t0)
        steps = np.cumsum(rng.uniform(1, 3, 40))
        steps = np.concatenate([[0.0], steps[steps < length]])
        rates = np.round(
            np.clip(rng.lognormal(np.log(0.05 + 0.3 * severity[i]), 0.5, steps.size), 0.01, 2), 3
        )
        rows.add(
            np.full(steps.size + 1, i),
            np.concatenate([t0 + steps, [t0 + length]]),
            "norepinephrine_rate",
            np.concatenate([rates, [0.0]]),
        )

    # biomarkers at screening (hour 2-12) and on day 3 for stays still there
    screen = rng.uniform(2, 12, n)
    ferritin = np.clip(rng.lognormal(np.log(700), 1.0, n), 5, 100000)
    mhla = np.clip(rng.lognormal(np.log(9000), 0.7, n), 300, 80000)
    alln = np.arange(n)
    rows.add(alln, screen, "ferritin", np.round(ferritin))
    rows.add(alln, screen + 0.1, "mhla_dr", np.round(mhla))
    later = np.flatnonzero(hours > 80)
    rows.add(
        later,
        np.full(later.size, 74.0),
        "ferritin",
        np.round(ferritin[later] * rng.lognormal(0, 0.4, later.size)),
    )
    rows.add(
        later,
        np.full(later.size, 74.1),
        "mhla_dr",
        np.round(mhla[later] * rng.lognormal(0.2, 0.4, later.size)),
    )

    # infection work-up: antibiotic + culture for most stays, antibiotics daily for a few days
    infected = np.flatnonzero(rng.uniform(0, 1, n) < 0.55 + 0.3 * severity)
    abx0 = rng.uniform(-6, 24, infected.size)
    rows.add(infected, abx0 + rng.uniform(-10, 20, infected.size), "culture", np.ones(infected.size))
    for day in range(4):
        rows.add(infected, abx0 + 24 * day, "antibiotic", np.ones(infected.size))

    stay_codes = np.concatenate(rows.stay)
    hour_all = np.concatenate(rows.hour)
    keep = hour_all <= los_h[stay_codes]  # nothing after ICU discharge
    stay_codes, hour_all = stay_codes[keep], hour_all[keep]
    concept_codes = np.concatenate(rows.concept)[keep]
    values = np.concatenate(rows.value)[keep]
    time_us = start_us[stay_codes] + (hour_all * _HOUR_US).astype(np.int64)
    order = np.lexsort((time_us, stay_codes))
    stay_names = np.array([f"S{first + i:09d}" for i in range(n)])
    epoch_us = int(_EPOCH.timestamp() * 1_000_000)
    obs = pl.DataFrame(
        {
            "patient_id": stay_names[stay_codes[order]],
            "time": pl.Series(time_us[order] + epoch_us).cast(pl.Datetime("us", "UTC")),
            "concept": np.array(CONCEPTS)[concept_codes[order]],
            "value": values[order],
        }
    ).with_columns(
        pl.col("concept").replace_strict(UNITS, return_dtype=pl.String).alias("unit"),
        pl.lit("synthetic").alias("source"),
        (pl.int_range(0, pl.len(), dtype=pl.Int64) + 1).alias("source_row"),
    )
    intime = start_us + epoch_us
    outtime = intime + (los_h * _HOUR_US).astype(np.int64)
    dies = rng.uniform(0, 1, n) < 0.08 + 0.45 * severity**2
    death = np.where(
        dies, intime + (rng.uniform(0.5, 40, n) * 24 * _HOUR_US).astype(np.int64), np.iinfo(np.int64).min
    )
    ts = pl.Datetime("us", "UTC")
    stays = pl.DataFrame(
        {
            "stay_id": stay_names,
            "patient_id": np.array([f"P{first + i:09d}" for i in range(n)]),
            "hospital_admission_id": np.array([f"H{first + i:09d}" for i in range(n)]),
            "admission_time": pl.Series(intime - 6 * _HOUR_US).cast(ts),
            "icu_intime": pl.Series(intime).cast(ts),
            "icu_outtime": pl.Series(outtime).cast(ts),
            "age": np.round(rng.normal(64, 15, n).clip(18, 100), 0),
            "sex": np.where(rng.uniform(0, 1, n) < 0.42, "F", "M"),
            "weight_kg": np.round(rng.normal(80, 18, n).clip(35, 200), 1),
            "height_cm": np.round(rng.normal(171, 10, n).clip(140, 210), 0),
            "death_time": pl.Series(np.where(dies, death, 0)).cast(ts),
            "hospital_discharge_time": pl.Series(outtime + 72 * _HOUR_US).cast(ts),
        }
    ).with_columns(pl.when(pl.Series(dies)).then(pl.col("death_time")).otherwise(None).alias("death_time"))
    grid_hours = int(np.sum(hours + 1))
    return stays.cast(STAYS_SCHEMA), obs, grid_hours  # type: ignore[arg-type]


def write_synthetic(
    path: str | Path,
    n_stays: int,
    seed: int = 0,
    chunk_stays: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticInfo:
    """Write ``n_stays`` synthetic stays under ``path`` (``stays.parquet`` and
    ``observations/part-NNNNN.parquet``); returns counts (:func:`stays_for_rows` sizes a run)."""
    folder = Path(path)
    (folder / "observations").mkdir(parents=True, exist_ok=True)
    stays_parts: list[pl.DataFrame] = []
    rows = hours = 0
    parts = 0
    for chunk, first in enumerate(range(0, n_stays, chunk_stays)):
        n = min(chunk_stays, n_stays - first)
        rng = np.random.default_rng([seed, chunk])
        stays, obs, grid_hours = _chunk(rng, first, n)
        obs.write_parquet(folder / "observations" / f"part-{chunk:05d}.parquet", row_group_size=1_000_000)
        stays_parts.append(stays)
        rows += obs.height
        hours += grid_hours
        parts += 1
        if progress is not None:
            progress(first + n, n_stays)
    stays_all = pl.concat(stays_parts) if stays_parts else pl.DataFrame(schema=STAYS_SCHEMA)
    stays_all.write_parquet(folder / "stays.parquet")
    return SyntheticInfo(path=folder, stays=n_stays, rows=rows, patient_hours=hours, parts=parts)


def synthetic_source(n_stays: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A small synthetic cohort in memory: (stays, observations) - for tests and examples."""
    stays, obs, _ = _chunk(np.random.default_rng([seed, 0]), 0, n_stays)
    return stays, obs
