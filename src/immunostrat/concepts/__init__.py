"""Concept dictionary (data), clinical units and their conversion, and reading and validating
observations into the canonical long table. Imports nothing of ours but the shared error type (and
the lazy-export helper).
"""

from typing import TYPE_CHECKING

from immunostrat.lazy import lazy_exports

if TYPE_CHECKING:
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
    from immunostrat.concepts.units import (
        Conversion,
        UnitError,
        conversion_for,
        normalise_spelling,
        to_canonical,
    )

# submodule -> the names it exports, imported on first use (immunostrat.lazy)
_SUBMODULE_EXPORTS: dict[str, tuple[str, ...]] = {
    "dictionary": ("Concept", "ConceptDictionary", "is_valid_loinc", "load_concepts", "loinc_check_digit"),
    "observations": (
        "CANONICAL_SCHEMA",
        "DEFAULT_EPOCH",
        "OBSERVATION_COLUMNS",
        "PATIENT_SCHEMA",
        "ObservationSet",
        "canonicalize",
        "empty_observations",
        "empty_patients",
        "observations_from_records",
        "read_observations",
        "read_patients",
        "validate_patients",
    ),
    "units": ("Conversion", "UnitError", "conversion_for", "normalise_spelling", "to_canonical"),
}
__getattr__ = lazy_exports(__name__, {n: m for m, names in _SUBMODULE_EXPORTS.items() for n in names})

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
