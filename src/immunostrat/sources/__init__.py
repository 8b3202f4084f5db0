"""One mapping file per clinical database (MIMIC-IV, eICU, PhysioNet 2019, OMOP, FHIR, long)
and the small loaders that turn each into stays and canonical long observations for the cohort engine.
"""

from immunostrat.sources.base import STAYS_SCHEMA, ConceptStatus, SourceData, empty_stays

__all__ = ["STAYS_SCHEMA", "ConceptStatus", "SourceData", "empty_stays"]
