"""``POST /cds-services/immunostrat-endotype``: the patient-view hook, decided at the time of the call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from immunostrat.api.cds.cards import endotype_cards
from immunostrat.api.cds.discovery import PROTOCOL_ID, SERVICE_ID
from immunostrat.api.cds.fhir_fetch import complete_prefetch
from immunostrat.api.cds.jwt_auth import CdsCaller, cds_caller
from immunostrat.api.cds.settings import CdsSettings, cds_settings
from immunostrat.api.clinical import ClassifyIn, canonical_frame, canonical_observations
from immunostrat.sources.fhir_patient import read_fhir
from immunostrat.trial import eligibility

router = APIRouter(tags=["cds-hooks"])


class HookContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    patientId: str = Field(min_length=1, max_length=64)
    userId: str | None = None


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")
    access_token: str = Field(
        pattern=r"^[A-Za-z0-9._~+/-]+=*$",
        max_length=4096,
        description="an OAuth 2.0 bearer token (RFC 6750 section 2.1, b64token): it is sent as is in the "
        "Authorization header of the FHIR requests, which holds ASCII only",
    )
    token_type: str = "Bearer"


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    hook: Literal["patient-view"] = Field(
        description="the hook this service answers (stated here: another is refused by the schema)"
    )
    hookInstance: str = Field(min_length=1)
    context: HookContext
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$", max_length=2048, description="the FHIR base URL"
    )
    fhirAuthorization: FhirAuthorization | None = None


@router.post(f"/cds-services/{SERVICE_ID}")
def patient_view(
    body: HookRequest,
    request: Request,
    caller: Annotated[CdsCaller, Depends(cds_caller)],
    settings: Annotated[CdsSettings, Depends(cds_settings)],
) -> dict[str, Any]:
    decided_at = datetime.now(UTC)
    patient_id = body.context.patientId
    auth = body.fhirAuthorization.model_dump() if body.fhirAuthorization else None
    data, _ = complete_prefetch(body.prefetch, body.context.model_dump(), body.fhirServer, auth)
    fhir = read_fhir(data, patient_id, field_name="prefetch")
    protocol = eligibility.load(PROTOCOL_ID)
    if fhir.records:
        frame, patient, _ = canonical_frame(ClassifyIn(bundle=data, protocol_id=PROTOCOL_ID, patient=None))
        observations = canonical_observations(frame)
    else:
        patient, observations = {**fhir.patient, "patient_id": patient_id}, []
    c = eligibility.classify(PROTOCOL_ID, patient, observations, decided_at)
    cards = endotype_cards(
        protocol,
        c,
        patient_id=patient_id,
        decided_at=decided_at,
        zone=settings.timezone,
        medications=fhir.medications,
        patient_page_url=settings.patient_page_url,
    )
    return {"cards": cards}
