"""Cohort fixtures: a hand-built source with known answers, and one local Spark session per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cohorttools import T0, at

from immunostrat.concepts import CANONICAL_SCHEMA
from immunostrat.sources import STAYS_SCHEMA, SourceData


def _stays() -> pl.DataFrame:
    rows: list[dict[str, Any]] = [
        # s1: 72 h stay, dies on day 5 (within 28 days)
        {"stay_id": "s1", "patient_id": "p1", "icu_intime": T0, "icu_outtime": at(72), "death_time": at(100)},
        # s2: infection work-up outside the Seymour windows
        {"stay_id": "s2", "patient_id": "p2", "icu_intime": T0, "icu_outtime": at(120)},
        # s3: biomarkers exactly on the hour, to test the freshness boundary
        {
            "stay_id": "s3",
            "patient_id": "p3",
            "icu_intime": T0,
            "icu_outtime": at(50),
            "death_time": at(24 * 40),
        },
        # s4: no observations at all
        {"stay_id": "s4", "patient_id": "p4", "icu_intime": T0, "icu_outtime": at(5.5)},
    ]
    full = [{name: r.get(name) for name in STAYS_SCHEMA} for r in rows]
    return pl.DataFrame(full, schema=STAYS_SCHEMA)


def _observations() -> pl.DataFrame:
    r: list[tuple[str, datetime, str, float]] = [
        ("s1", at(0.5), "mechanical_ventilation", 1.0),  # 09:00
        ("s1", at(1.0), "platelets", 90.0),  # 09:30 -> coagulation 2 from 10:00
        ("s1", at(1.5), "fio2", 0.5),  # 10:00
        ("s1", at(2.0), "pao2", 80.0),  # 10:30 -> ratio 160 ventilated -> respiration 3 from 11:00
        ("s1", at(7.5), "pao2", 40.0),  # 16:00: FiO2 older than 4 h -> not paired
        ("s1", at(2.0), "gcs", 9.0),  # 10:30 -> cns 3 from 11:00
        ("s1", at(3.0), "norepinephrine_rate", 0.05),  # 11:30 .. 13:30 -> cardiovascular 3
        ("s1", at(5.0), "norepinephrine_rate", 0.0),
        ("s1", at(11.5), "epinephrine_rate", 0.2),  # 20:00 .. 20:30: under 1 h -> does not count
        ("s1", at(12.0), "epinephrine_rate", 0.0),
        ("s1", at(4.0), "antibiotic", 1.0),  # 12:30
        ("s1", at(10.0), "culture", 1.0),  # 18:30: within 24 h -> suspicion at 12:30
        ("s1", at(6.0), "ferritin", 1000.0),  # 14:30 -> immunoparalysis from 15:00
        ("s1", at(6.0), "mhla_dr", 3000.0),
        ("s1", at(30.0), "ferritin", 6000.0),  # 14:30 day 2 -> MALS from 15:00 day 2, stale from 15:00 day 3
        ("s2", at(1.0), "culture", 1.0),  # culture first, antibiotic 80 h later: no suspicion
        ("s2", at(81.0), "antibiotic", 1.0),
        ("s2", at(2.0), "platelets", 40.0),
        ("s3", at(3.5), "ferritin", 500.0),  # exactly 12:00
        ("s3", at(3.5), "mhla_dr", 9000.0),  # -> intermediate 12:00 day 1 .. 12:00 day 2 (24 h: fresh)
        ("s3", at(-3.5), "creatinine", 2.5),  # 05:00, before ICU admission: counts in the first windows
    ]
    r += [("s1", at(k), "urine_output", 15.0) for k in range(72)]  # 360 mL a day -> renal 3 when covered
    frame = pl.DataFrame(r, schema=["patient_id", "time", "concept", "value"], orient="row")
    return frame.with_columns(
        pl.col("time").cast(pl.Datetime("us", "UTC")),
        pl.lit("").alias("unit"),
        pl.lit("fixture").alias("source"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
    ).cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def hand_source() -> SourceData:
    return SourceData(source="fixture", stays=_stays(), observations=_observations())


@pytest.fixture(scope="session")
def hand_result(hand_source: SourceData) -> Any:
    from immunostrat.cohort import build_cohort

    return build_cohort(hand_source, engine="duckdb")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local[2] Spark session for the whole test session (each start costs seconds)."""
    if shutil.which("java") is None:
        pytest.skip("Java is not installed: the Spark engine cannot run here")
    pytest.importorskip("pyspark")
    from immunostrat.cohort import spark_session

    session = spark_session("local[2]", shuffle_partitions=2)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mimic_demo() -> SourceData:
    """The MIMIC-IV demo through the sources adapter (skipped only where the shared data is absent)."""
    path = SHARED_DATA / "mimic-iv-demo-2.2"
    if not path.exists():
        pytest.skip(f"real demo data not available: {path} is absent (shared data folder missing)")
    from immunostrat.sources import load_source

    return load_source("mimic-iv", path)


@pytest.fixture(scope="session")
def mimic_result(mimic_demo: SourceData) -> Any:
    from immunostrat.cohort import build_cohort

    return build_cohort(mimic_demo, engine="duckdb")


@pytest.fixture(scope="session")
def eicu_result() -> Any:
    """The eICU-CRD demo through the sources adapter and the cohort engine."""
    path = SHARED_DATA / "eicu-crd-demo-2.0.1"
    if not path.exists():
        pytest.skip(f"real demo data not available: {path} is absent (shared data folder missing)")
    from immunostrat.cohort import build_cohort
    from immunostrat.sources import load_source

    return build_cohort(load_source("eicu", path), engine="duckdb")
