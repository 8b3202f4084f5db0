"""The contract every source adapter fulfils: stays + canonical long observations + a concept report.

An adapter reads one database layout (MIMIC-IV, eICU-CRD, PhysioNet 2019, OMOP CDM, FHIR R4, our long
format) through its mapping file (``sources/<source>.yaml``: concepts as data, ricu-style) and returns
a :class:`SourceData`. The cohort engine consumes only this contract.

- ``stays``: one row per ICU stay (the unit of analysis), columns :data:`STAYS_SCHEMA`.
- ``observations``: the canonical long table of ``immunostrat.concepts`` (design.md section 2) whose
  ``patient_id`` column holds the **stay id**; values in canonical units, ``source`` and
  ``source_row`` tracing each value to its table and row.
- ``report``: per concept, how many rows were found, or why the concept is absent (table missing from
  this copy, not mapped for this source, ...). Absent concepts are reported, never silently zero.
- ``tables``: optional side tables by name (added with a default so older callers are unaffected):
  ``dropped`` (concept, table, reason, rows: what was read but not kept, and why), ``intervals``
  (infusions and ventilation as start/end periods), ``labels`` and ``sepsis_onset`` (PhysioNet 2019
  ``SepsisLabel``, hourly and per stay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

STAYS_SCHEMA: dict[str, pl.DataType] = {
    "stay_id": pl.String(),
    "patient_id": pl.String(),  # the person (subject) id in the source
    "hospital_admission_id": pl.String(),
    "admission_time": pl.Datetime("us", "UTC"),  # hospital admission
    "icu_intime": pl.Datetime("us", "UTC"),
    "icu_outtime": pl.Datetime("us", "UTC"),
    "age": pl.Float64(),
    "sex": pl.String(),  # "F" / "M" / null
    "weight_kg": pl.Float64(),
    "height_cm": pl.Float64(),
    "death_time": pl.Datetime("us", "UTC"),  # null when not known to have died
    "hospital_discharge_time": pl.Datetime("us", "UTC"),
}


@dataclass
class ConceptStatus:
    """How a concept fared in one source."""

    concept: str
    rows: int
    status: str  # "present" | "absent"
    detail: str = ""


@dataclass
class SourceData:
    source: str
    stays: pl.DataFrame
    observations: pl.DataFrame
    report: list[ConceptStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)

    def absent(self) -> list[ConceptStatus]:
        return [c for c in self.report if c.status != "present"]

    def rows_by_concept(self) -> dict[str, int]:
        """Rows kept per concept (present concepts only)."""
        return {c.concept: c.rows for c in self.report if c.status == "present"}


def empty_stays() -> pl.DataFrame:
    return pl.DataFrame(schema=STAYS_SCHEMA)
