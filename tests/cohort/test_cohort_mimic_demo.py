"""The cohort engine on the real MIMIC-IV demo (../shared/data; skipped only where it is absent)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl

from immunostrat.sources import SourceData


def test_every_icu_stay_gets_hourly_sofa(mimic_demo: SourceData, mimic_result: Any) -> None:
    stays = set(mimic_demo.stays["stay_id"].to_list())
    assert len(stays) > 100
    assert set(mimic_result.hourly_sofa["stay_id"].unique().to_list()) == stays
    assert mimic_result.summary["stays_with_hourly_sofa"] == mimic_result.summary["stays"] == len(stays)
    assert mimic_result.hourly_sofa["sofa_total"].null_count() == 0
    assert mimic_result.hourly_sofa["sofa_total"].max() >= 10
    # the demo has antibiotics and cultures: Sepsis-3 is assessed, and found in some stays
    assert mimic_result.summary["sepsis3_assessable"]
    assert 0 < mimic_result.summary["septic_stays"] < len(stays)
    # monocyte HLA-DR is absent from MIMIC-IV: reported, with the adapter's reason
    missing = {m["concept"]: m for m in mimic_result.summary["missing_concepts"]}
    assert "mhla_dr" in missing and missing["mhla_dr"]["detail"]


def test_the_one_mals_stay_is_found_at_the_right_time(mimic_demo: SourceData, mimic_result: Any) -> None:
    high = mimic_demo.observations.filter((pl.col("concept") == "ferritin") & (pl.col("value") > 4420))
    assert high["patient_id"].n_unique() == 1
    first_high = high.sort("time").row(0, named=True)
    stay, drawn = first_high["patient_id"], first_high["time"]
    mals = mimic_result.endotypes.filter(pl.col("endotype") == "mals")
    assert mals["stay_id"].unique().to_list() == [stay]
    first = mals.filter(pl.col("first_of_endotype"))
    assert first.height == 1
    # the first hourly row at or after the ferritin draw (its (T - 1 h, T] bucket)
    assert drawn <= first["time"][0] < drawn + timedelta(hours=1)
    assert first["ferritin"][0] > 4420
    assert mimic_result.summary["endotype_first_known"].get("mals") == 1
    # MALS only while that ferritin is fresh (24 h), then unknown again
    hourly = mimic_result.hourly_sofa.filter((pl.col("stay_id") == stay) & (pl.col("endotype") == "mals"))
    assert hourly["time"].max() <= drawn + timedelta(hours=24)
