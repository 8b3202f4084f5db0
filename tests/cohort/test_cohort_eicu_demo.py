"""The cohort engine on the real eICU-CRD demo (../shared/data; skipped only where it is absent)."""

from __future__ import annotations

from typing import Any

import polars as pl


def test_sepsis3_uses_treatment_antibiotics(eicu_result: Any) -> None:
    summary = eicu_result.summary
    assert summary["sepsis3_assessable"]
    # With medication antibiotics alone, 1 of the 2,520 stays had suspected infection and Sepsis-3:
    # microLab covers 64 stays and only 6 of them have medication rows. The treatment table's
    # antibacterial therapy supplies the antibiotic events for the others.
    suspected = eicu_result.sepsis3.filter(pl.col("suspicion_time").is_not_null())
    assert suspected.height > 1
    assert summary["septic_stays"] > 1
    assert summary["septic_stays"] <= suspected.height
