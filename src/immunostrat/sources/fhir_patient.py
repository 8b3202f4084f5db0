"""One patient's FHIR R4 resources (as JSON) into our long-format records, for the bedside (API,
CDS Hooks, CLI): Observations by LOINC code (or our local code for concepts without one), Patients
into age/sex, MedicationRequests into names.

Bulk input reads the JSON directly (design.md section 4: full model validation is for the bedside).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError

LOINC = "http://loinc.org"
LOCAL_SYSTEM = "urn:immunostrat:local"
_SKIP_STATUS = {"entered-in-error", "cancelled"}


@dataclass
class FhirPatientData:
    patient: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def resources(obj: Any) -> Iterable[Mapping[str, Any]]:
    """Every resource in a Bundle, a list, a single resource, or a mapping of prefetch results."""
    if obj is None:
        return
    if isinstance(obj, list):
        for item in obj:
            yield from resources(item)
        return
    if not isinstance(obj, Mapping):
        return
    kind = obj.get("resourceType")
    if kind == "Bundle":
        for entry in obj.get("entry") or []:
            if isinstance(entry, Mapping):
                yield from resources(entry.get("resource"))
    elif kind is not None:
        yield obj
    else:  # a prefetch mapping: key -> resource or bundle
        for value in obj.values():
            yield from resources(value)


def _concept_for(coding: Mapping[str, Any]) -> str | None:
    concepts = load_concepts()
    code = str(coding.get("code") or "")
    system = str(coding.get("system") or "")
    if system == LOINC:
        c = concepts.by_loinc(code)
        return c.id if c else None
    for c in concepts:
        if c.local_code and c.local_code == code:
            return c.id
    return None


def _age(birth: str, at: datetime) -> float | None:
    try:
        born = date.fromisoformat(birth[:10])
    except ValueError:
        return None
    return round((at.date() - born).days / 365.25, 2)


def _sex(gender: Any) -> str | None:
    return {"female": "F", "male": "M", "other": "other"}.get(str(gender or "").lower())


def _time(obs: Mapping[str, Any]) -> str | None:
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if obs.get(key):
            return str(obs[key])
    period = obs.get("effectivePeriod")
    if isinstance(period, Mapping) and period.get("start"):
        return str(period["start"])
    return None


def read_fhir(obj: Any, patient_id: str | None = None, *, field_name: str = "bundle") -> FhirPatientData:
    """Collect one patient's data; ``patient_id`` defaults to the first Patient (or subject) seen."""
    out = FhirPatientData()
    now = datetime.now(UTC)
    items = list(resources(obj))
    if not items:
        raise InputError("no FHIR resources found", field=field_name, expected="a Bundle or resources")
    for res in items:
        kind = res.get("resourceType")
        if kind == "Patient":
            pid = str(res.get("id") or patient_id or "patient")
            if patient_id is None:
                patient_id = pid
            if pid != patient_id:
                continue
            out.patient = {"patient_id": pid, "sex": _sex(res.get("gender"))}
            if res.get("birthDate"):
                out.patient["age"] = _age(str(res["birthDate"]), now)
    for res in items:
        kind = res.get("resourceType")
        subject = str((res.get("subject") or {}).get("reference") or "")
        subject_id = subject.split("/")[-1] if subject else None
        if patient_id is not None and subject_id is not None and subject_id != patient_id:
            continue
        if kind == "Observation":
            if str(res.get("status") or "") in _SKIP_STATUS:
                continue
            codings = (res.get("code") or {}).get("coding") or []
            concept = next(
                (c for c in (_concept_for(x) for x in codings if isinstance(x, Mapping)) if c), None
            )
            label = ", ".join(
                f"{x.get('system', '')}|{x.get('code', '')}" for x in codings if isinstance(x, Mapping)
            )
            quantity = res.get("valueQuantity")
            when = _time(res)
            if (
                concept is None
                or not isinstance(quantity, Mapping)
                or quantity.get("value") is None
                or when is None
            ):
                out.ignored.append(f"Observation {res.get('id', '?')} ({label or 'no code'})")
                continue
            if patient_id is None:
                patient_id = subject_id or "patient"
            out.records.append(
                {
                    "patient_id": patient_id,
                    "time": when,
                    "concept": concept,
                    "value": quantity.get("value"),
                    "unit": str(quantity.get("unit") or quantity.get("code") or ""),
                }
            )
        elif kind == "MedicationRequest":
            if str(res.get("status") or "") in _SKIP_STATUS | {"stopped", "completed"}:
                continue
            med = res.get("medicationCodeableConcept") or {}
            names = [str(med.get("text") or "")]
            names += [str(c.get("display") or c.get("code") or "") for c in med.get("coding") or []]
            out.medications.append(
                {
                    "name": next((n for n in names if n), "unnamed medication"),
                    "search": " ".join(names).lower(),
                    "status": str(res.get("status") or ""),
                }
            )
    if not out.patient:
        out.patient = {"patient_id": patient_id or "patient"}
    for r in out.records:
        r["patient_id"] = out.patient["patient_id"]
    return out
