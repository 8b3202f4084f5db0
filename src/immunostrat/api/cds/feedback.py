"""``POST /cds-services/{id}/feedback`` (CDS Hooks 2.0): what the clinician did with a card, kept in
the hash-chained audit trail (one row per feedback entry)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from immunostrat.api.auth import Principal, confirm
from immunostrat.api.cds.discovery import SERVICE_ID
from immunostrat.api.cds.jwt_auth import CdsCaller, cds_caller
from immunostrat.trial.audit import Actor, append
from immunostrat.trial.db import transaction

router = APIRouter(tags=["cds-hooks"])


def _instant_text(value: Any) -> Any:
    """A FHIR instant is text: a number is not read as seconds since 1970 (pydantic's lax mode)."""
    if not isinstance(value, str | datetime):
        raise ValueError("an ISO 8601 date-time string is expected")
    return value


class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(min_length=1)
    system: str | None = None
    display: str | None = None


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=2000)


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=64)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")
    card: str = Field(min_length=1, max_length=64, description="the uuid of the card")
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = Field(default_factory=list)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: Annotated[datetime, BeforeValidator(_instant_text)]

    @model_validator(mode="after")
    def _consistent(self) -> Feedback:
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("an overridden card has no accepted suggestions")
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("an accepted card has no override reason")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    feedback: list[Feedback] = Field(min_length=1, max_length=100)


@router.post(f"/cds-services/{SERVICE_ID}/feedback")
def feedback(
    body: FeedbackRequest, request: Request, caller: Annotated[CdsCaller, Depends(cds_caller)]
) -> dict[str, Any]:
    """Record each feedback entry in the audit trail (an unknown service id is 404 by routing)."""
    with transaction(request.app.state.engine) as session:
        actor = confirm(session, caller) if isinstance(caller, Principal) else Actor(caller.iss[:64], "ehr")
        for item in body.feedback:
            append(
                session,
                actor,
                "cds-feedback",
                "cds_card",
                item.card,
                new={"service": SERVICE_ID, **item.model_dump(mode="json", exclude_none=True)},
            )
    return {}
