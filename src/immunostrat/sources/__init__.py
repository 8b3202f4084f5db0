"""One mapping file per clinical database (MIMIC-IV, eICU, PhysioNet 2019, OMOP, FHIR, long)
and the small loaders that turn each into stays and canonical long observations for the cohort engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from immunostrat.sources.base import STAYS_SCHEMA, ConceptStatus, SourceData, empty_stays
from immunostrat.sources.eicu import load_eicu
from immunostrat.sources.fhir import load_fhir
from immunostrat.sources.long import load_long
from immunostrat.sources.mapping import load_mapping
from immunostrat.sources.mimic_iv import load_mimic_iv
from immunostrat.sources.omop import load_omop
from immunostrat.sources.physionet2019 import load_physionet2019

LOADERS: dict[str, Callable[..., SourceData]] = {
    "mimic-iv": load_mimic_iv,
    "eicu": load_eicu,
    "physionet2019": load_physionet2019,
    "omop": load_omop,
    "fhir": load_fhir,
    "long": load_long,
}
SOURCES = tuple(LOADERS)


def load_source(name: str, path: str | Path, **options: Any) -> SourceData:
    """Load source ``name`` (one of :data:`SOURCES`) from ``path``; options go to its loader
    (e.g. ``meds_path`` for mimic-iv, ``limit`` for physionet2019, ``schema`` for omop)."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}") from None
    return loader(path, **options)


__all__ = [
    "LOADERS",
    "SOURCES",
    "STAYS_SCHEMA",
    "ConceptStatus",
    "SourceData",
    "empty_stays",
    "load_eicu",
    "load_fhir",
    "load_long",
    "load_mapping",
    "load_mimic_iv",
    "load_omop",
    "load_physionet2019",
    "load_source",
]
