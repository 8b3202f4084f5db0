"""CDS Hooks discovery (``GET /cds-services``) and the prefetch templates it announces.

The same templates are used to fetch what the CDS Client did not prefetch (``fhir_fetch``)."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from immunostrat.concepts import load_concepts
from immunostrat.sources.fhir_patient import LOCAL_SYSTEM, LOINC
from immunostrat.trial import eligibility

router = APIRouter(tags=["cds-hooks"])
SERVICE_ID = "immunostrat-endotype"
PROTOCOL_ID = "immunosep-2025"
PREFETCH_CONCEPTS = ("ferritin", "mhla_dr", "creatinine")
# Body weight (LOINC 29463-7 measured, 3141-9 stated): for the creatinine clearance of renal dosing.
WEIGHT_CODES = ("29463-7", "3141-9")


def _codes(concept: str) -> str:
    c = load_concepts()[concept]
    parts = [f"{LOINC}|{code}" for code in c.loinc]
    if c.local_code:
        parts.append(f"{LOCAL_SYSTEM}|{c.local_code}")
    return ",".join(parts)


@cache
def prefetch_templates() -> dict[str, str]:
    """Prefetch key -> FHIR query with ``{{context.patientId}}`` (CDS Hooks 2.0 prefetch tokens)."""
    templates = {"patient": "Patient/{{context.patientId}}"}
    for concept in PREFETCH_CONCEPTS:
        templates[concept] = (
            f"Observation?patient={{{{context.patientId}}}}&code={_codes(concept)}&_sort=-date&_count=5"
        )
    weight = ",".join(f"{LOINC}|{code}" for code in WEIGHT_CODES)
    templates["weight"] = f"Observation?patient={{{{context.patientId}}}}&code={weight}&_sort=-date&_count=1"
    templates["medications"] = "MedicationRequest?patient={{context.patientId}}&status=active,draft"
    return templates


def fill_template(template: str, context: dict[str, Any]) -> str:
    """A template with its ``{{context.X}}`` tokens replaced by the hook context's values."""
    out = template
    for key, value in context.items():
        out = out.replace(f"{{{{context.{key}}}}}", str(value))
    return out


def service_description() -> dict[str, Any]:
    protocol = eligibility.load(PROTOCOL_ID)
    return {
        "hook": "patient-view",
        "id": SERVICE_ID,
        "title": "Sepsis immune endotype and precision immunotherapy",
        "description": (
            f"Classifies the patient with {protocol.label} (ferritin, monocyte HLA-DR) at the time of "
            "the call and shows the recommended immunotherapy and dose (renally adjusted where "
            "creatinine and weight allow) with the reasons; warns when an anti-inflammatory therapy "
            "is considered for an immunoparalysed patient."
        ),
        "prefetch": prefetch_templates(),
        "usageRequirements": (
            "A JWT signed by the EHR (RS384, ES384 or another asymmetric algorithm) from a configured "
            "issuer; or a bearer token from POST /token of this service."
        ),
    }


@router.get("/cds-services")
def discovery() -> dict[str, Any]:
    """CDS Hooks discovery (public)."""
    return {"services": [service_description()]}
