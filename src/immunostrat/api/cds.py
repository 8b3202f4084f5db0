"""CDS Hooks 2.0: ``GET /cds-services`` (discovery) and the ``patient-view`` service
``POST /cds-services/immunostrat-endotype``.

The service reads prefetched FHIR Observations (ferritin, monocyte HLA-DR, creatinine), the Patient
and MedicationRequests, runs the trial's protocol engine and answers with a card: the endotype, the
recommended therapy and dose, the reasons, and a warning card when an anti-inflammatory therapy is
active or proposed for an immunoparalysed patient. It never fetches from the EHR itself: without
prefetch it says which measurements are missing. Discovery is public (as the specification
expects); calls need a bearer token from ``POST /token``.
"""

from __future__ import annotations

import uuid
from functools import cache
from importlib import resources
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from immunostrat.api.auth import ALL_ROLES, Principal, require
from immunostrat.api.clinical import ClassifyIn, canonical_frame
from immunostrat.sources.fhir_patient import LOCAL_SYSTEM, LOINC, read_fhir
from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.trial import eligibility

router = APIRouter(tags=["cds-hooks"])
SERVICE_ID = "immunostrat-endotype"
PROTOCOL_ID = "immunosep-2025"
PREFETCH_CONCEPTS = ("ferritin", "mhla_dr", "creatinine")


@cache
def anti_inflammatory_terms() -> tuple[str, ...]:
    text = resources.files("immunostrat.api").joinpath("anti_inflammatory.yaml").read_text(encoding="utf-8")
    return tuple(str(t).lower() for t in yaml.safe_load(text)["terms"])


def _codes(concept: str) -> str:
    c = load_concepts()[concept]
    parts = [f"{LOINC}|{code}" for code in c.loinc]
    if c.local_code:
        parts.append(f"{LOCAL_SYSTEM}|{c.local_code}")
    return ",".join(parts)


def service_description() -> dict[str, Any]:
    prefetch = {"patient": "Patient/{{context.patientId}}"}
    for concept in PREFETCH_CONCEPTS:
        prefetch[concept] = (
            f"Observation?patient={{{{context.patientId}}}}&code={_codes(concept)}&_sort=-date&_count=5"
        )
    prefetch["medications"] = "MedicationRequest?patient={{context.patientId}}&status=active,draft"
    protocol = eligibility.load(PROTOCOL_ID)
    return {
        "hook": "patient-view",
        "id": SERVICE_ID,
        "title": "Sepsis immune endotype and precision immunotherapy",
        "description": (
            f"Classifies the patient with {protocol.label} (ferritin, monocyte HLA-DR) and shows the "
            "recommended immunotherapy and dose with the reasons; warns when an anti-inflammatory "
            "therapy is considered for an immunoparalysed patient."
        ),
        "prefetch": prefetch,
        "usageRequirements": "Bearer token from POST /token of this service.",
    }


@router.get("/cds-services")
def discovery() -> dict[str, Any]:
    """CDS Hooks discovery (public)."""
    return {"services": [service_description()]}


class HookContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    patientId: str = Field(min_length=1)
    userId: str | None = None


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    hook: str
    hookInstance: str = Field(min_length=1)
    context: HookContext
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = None


def _card(summary: str, indicator: str, detail: str, label: str) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary[:140],
        "indicator": indicator,
        "detail": detail,
        "source": {"label": label},
    }


@router.post(f"/cds-services/{SERVICE_ID}")
def patient_view(
    body: HookRequest, principal: Annotated[Principal, Depends(require(*ALL_ROLES))]
) -> dict[str, Any]:
    if body.hook != "patient-view":
        raise InputError("this service answers the patient-view hook", field="hook", value=body.hook)
    protocol = eligibility.load(PROTOCOL_ID)
    label = f"immunostrat {protocol.label}"
    prefetch = {k: v for k, v in (body.prefetch or {}).items() if v is not None}
    data = read_fhir(prefetch, body.context.patientId, field_name="prefetch") if prefetch else None
    if data is None or not data.records:
        missing = ", ".join(PREFETCH_CONCEPTS[:2])
        return {
            "cards": [
                _card(
                    "Immune endotype unknown: no ferritin or HLA-DR result",
                    "info",
                    f"No prefetched {missing} observations for this patient; measure them to classify "
                    f"with {protocol.label}.",
                    label,
                )
            ]
        }
    request = ClassifyIn(bundle=prefetch, protocol_id=PROTOCOL_ID, patient=None)
    frame, patient, _ = canonical_frame(request)
    observations = [
        eligibility.CanonicalObservation(
            r["concept"], r["value"], r["unit"], r["value"], r["unit"], r["time"]
        )
        for r in frame.iter_rows(named=True)
    ]
    c = eligibility.classify(PROTOCOL_ID, patient, observations)
    therapy = c.dose or ("no biomarker-guided immunotherapy" if c.therapy == "none" else c.therapy)
    reasons = "\n".join(f"- {r.get('text', r)}" for r in c.reasons) or "- no rule decided"
    warnings = "".join(f"\n\n**Warning:** {w}" for w in c.warnings)
    indicator = "warning" if any("clinician review" in w for w in c.warnings) else "info"
    cards = [
        _card(
            f"Immune endotype: {c.endotype}. Therapy: {therapy}",
            indicator,
            f"**Endotype:** {c.endotype}\n\n**Recommended therapy:** {therapy}\n\n"
            f"**Reasons:**\n{reasons}{warnings}",
            label,
        )
    ]
    if c.endotype == "immunoparalysis":
        terms = anti_inflammatory_terms()
        conflicting = [m for m in data.medications if any(t in m["search"] for t in terms)]
        if conflicting:
            names = ", ".join(sorted({m["name"] for m in conflicting}))
            caution = protocol.cautions.get("immunoparalysis", "")
            cards.append(
                _card(
                    f"Anti-inflammatory therapy considered for an immunoparalysed patient: {names}",
                    "warning",
                    f"{names} ({', '.join(sorted({m['status'] for m in conflicting}))}) while the patient is "
                    f"immunoparalysed by {protocol.label}. {caution}",
                    label,
                )
            )
    return {"cards": cards}
