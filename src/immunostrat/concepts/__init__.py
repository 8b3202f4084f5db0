"""Concept dictionary (data), clinical units and their conversion, and reading and validating
observations into the canonical long table. Imports nothing of ours but the shared error type.
"""

from immunostrat.concepts.dictionary import (
    Concept,
    ConceptDictionary,
    is_valid_loinc,
    load_concepts,
    loinc_check_digit,
)
from immunostrat.concepts.observations import (
    CANONICAL_SCHEMA,
    DEFAULT_EPOCH,
    OBSERVATION_COLUMNS,
    PATIENT_SCHEMA,
    ObservationSet,
    canonicalize,
    empty_observations,
    empty_patients,
    observations_from_records,
    read_observations,
    read_patients,
    validate_patients,
)
from immunostrat.concepts.units import Conversion, UnitError, conversion_for, normalise_spelling, to_canonical

__all__ = [
    "CANONICAL_SCHEMA",
    "DEFAULT_EPOCH",
    "OBSERVATION_COLUMNS",
    "PATIENT_SCHEMA",
    "Concept",
    "ConceptDictionary",
    "Conversion",
    "ObservationSet",
    "UnitError",
    "canonicalize",
    "conversion_for",
    "empty_observations",
    "empty_patients",
    "is_valid_loinc",
    "load_concepts",
    "loinc_check_digit",
    "normalise_spelling",
    "observations_from_records",
    "read_observations",
    "read_patients",
    "to_canonical",
    "validate_patients",
]
