"""Synthetic scale data: deterministic from the seed, chunked into Parquet parts, plausible values, and
readable by the engine straight from Parquet."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from immunostrat.cohort import build_cohort, stays_for_rows, synthetic_input, write_synthetic
from immunostrat.concepts import CANONICAL_SCHEMA, load_concepts
from immunostrat.sources import STAYS_SCHEMA


def test_deterministic_chunked_and_plausible(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", 30, seed=5, chunk_stays=12)
    b = write_synthetic(tmp_path / "b", 30, seed=5, chunk_stays=12)
    assert a.parts == 3 and a.stays == 30 and a.rows == b.rows > 30 * 100
    obs_a = pl.read_parquet(tmp_path / "a" / "observations" / "*.parquet")
    obs_b = pl.read_parquet(tmp_path / "b" / "observations" / "*.parquet")
    assert obs_a.equals(obs_b)
    assert dict(obs_a.schema) == CANONICAL_SCHEMA
    stays = pl.read_parquet(tmp_path / "a" / "stays.parquet")
    assert dict(stays.schema) == STAYS_SCHEMA and stays["stay_id"].n_unique() == 30
    concepts = load_concepts()
    ranges = obs_a.group_by("concept").agg(
        pl.col("value").min().alias("lo"), pl.col("value").max().alias("hi")
    )
    for row in ranges.iter_rows(named=True):
        low, high = concepts[row["concept"]].plausible
        assert low <= row["lo"] and row["hi"] <= high, row
    # observations stay inside their ICU stay
    inside = obs_a.join(stays, left_on="patient_id", right_on="stay_id").filter(
        (pl.col("time") < pl.col("icu_intime") - pl.duration(hours=6))
        | (pl.col("time") > pl.col("icu_outtime"))
    )
    assert inside.filter(pl.col("concept") != "culture").is_empty()
    assert stays_for_rows(1_000_000) > 1000


def test_engine_reads_parquet_input(tmp_path: Path) -> None:
    info = write_synthetic(tmp_path / "syn", 8, seed=2, chunk_stays=5)
    result = build_cohort(synthetic_input(info.path))
    assert result.summary["stays"] == 8 == result.summary["stays_with_hourly_sofa"]
    assert result.summary["source"] == "synthetic"
    assert result.hourly_sofa["stay_id"].n_unique() == 8
