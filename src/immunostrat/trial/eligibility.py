"""Screening: observations into canonical units (``immunostrat.concepts``) and the eligibility
decision from the pinned protocol (``immunostrat.protocols``). The protocol engine is called in
exactly one place, :func:`classify`; thresholds are never restated here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from immunostrat.errors import InputError
from immunostrat.protocols import PROTOCOL_FILES, Protocol, classify_patient, load_protocol


@dataclass(frozen=True)
class CanonicalObservation:
    concept: str
    value_entered: float
    unit_entered: str
    value: float
    unit: str
    time: datetime


@dataclass(frozen=True)
class Classification:
    """What the protocol engine says about one patient."""

    protocol_id: str
    protocol_version: str
    endotype: str
    therapy: str
    dose: str | None
    reasons: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EligibilityResult:
    classification: Classification
    eligible: bool
    exclusion_reason: str | None


def canonical_observations(
    patient_id: str,
    observations: Sequence[Mapping[str, Any]],
    weight_kg: float | None = None,
    *,
    source: str = "observations",
) -> list[CanonicalObservation]:
    """Validate and convert entered observations; an error names ``observations[i].field``."""
    from immunostrat.concepts import observations_from_records

    if not observations:
        return []
    records = [
        {
            "patient_id": patient_id,
            "time": _iso(o["time"]),
            "concept": o["concept"],
            "value": o["value"],
            "unit": o.get("unit") or "",
        }
        for o in observations
    ]
    patients = [{"patient_id": patient_id, "weight_kg": weight_kg}] if weight_kg is not None else None
    try:
        result = observations_from_records(records, patients, source=source)
    except InputError as exc:
        row = exc.row
        where = f"{source}[{row - 1}].{exc.field}" if row is not None and exc.field else exc.field
        raise InputError(exc.message, field=where, value=exc.value, expected=exc.expected) from None
    frame = result.observations.sort("source_row")
    out: list[CanonicalObservation] = []
    for rec in frame.iter_rows(named=True):
        entered = observations[int(rec["source_row"]) - 1]
        out.append(
            CanonicalObservation(
                concept=rec["concept"],
                value_entered=float(entered["value"]),
                unit_entered=str(entered.get("unit") or ""),
                value=float(rec["value"]),
                unit=str(rec["unit"]),
                time=rec["time"],
            )
        )
    return out


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def observation_frame(patient_id: str, observations: Sequence[CanonicalObservation]) -> pl.DataFrame:
    """Canonical observations as the long table every engine reads."""
    from immunostrat.concepts import CANONICAL_SCHEMA

    rows = [
        {
            "patient_id": patient_id,
            "time": o.time,
            "concept": o.concept,
            "value": o.value,
            "unit": o.unit,
            "source": "trial",
            "source_row": i + 1,
        }
        for i, o in enumerate(observations)
    ]
    return pl.DataFrame(rows, schema=CANONICAL_SCHEMA)


def classify(
    protocol_id: str,
    patient: Mapping[str, Any],
    observations: Sequence[CanonicalObservation],
    at: datetime | None = None,
) -> Classification:
    """The single call into the protocol engine (``immunostrat.protocols.classify_patient``)."""
    protocol = load(protocol_id)
    pid = str(patient.get("patient_id") or "patient")
    result = classify_patient(protocol, observation_frame(pid, observations), patient, patient_id=pid, at=at)
    return Classification(
        protocol_id=result.protocol_id,
        protocol_version=result.protocol_version,
        endotype=result.endotype,
        therapy=result.therapy,
        dose=result.dose.text if result.dose is not None else None,
        reasons=[{**r.model_dump(mode="json"), "text": r.text()} for r in result.reasons],
        warnings=list(result.warnings),
    )


def load(protocol_id: str) -> Protocol:
    """A shipped protocol by id; an unknown id is an input error naming ``protocol_id``."""
    try:
        return load_protocol(protocol_id)
    except (KeyError, ValueError) as exc:
        raise InputError(
            "unknown protocol", field="protocol_id", value=protocol_id, expected=", ".join(PROTOCOL_FILES)
        ) from exc


def decide(
    protocol_id: str,
    patient: Mapping[str, Any],
    observations: Sequence[CanonicalObservation],
    exclusions: Mapping[str, bool],
    randomized_endotypes: Sequence[str],
) -> EligibilityResult:
    """Eligible = no exclusion criterion present and an endotype the trial randomizes."""
    result = classify(protocol_id, patient, observations)
    present = sorted(name for name, flag in exclusions.items() if flag)
    if present:
        return EligibilityResult(result, False, "exclusion criterion: " + ", ".join(present))
    if result.endotype not in randomized_endotypes:
        return EligibilityResult(result, False, f"endotype {result.endotype}: not a randomized stratum")
    return EligibilityResult(result, True, None)
