"""Stateless clinical endpoints: ``POST /classify`` (the protocol's endotype, therapy, dose and
reasons) and ``POST /score`` (SOFA, qSOFA, HScore, MEX-SLEDAI, SLEDAI-2K over a bedside window).
Both take observations in our long format or a FHIR Bundle; nothing is stored.

Both decide at the time of the request (the server's clock, UTC) unless the caller names another
time in ``at``; the answer says which (``decided_at``, ``decision_time``). A deciding value older
than the protocol's freshness window at that time makes the endotype ``unknown``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import polars as pl
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonValue

from immunostrat.api.auth import ALL_ROLES, Principal, require_current
from immunostrat.concepts import observations_from_records
from immunostrat.errors import InputError
from immunostrat.scores import score_windows, windows_at
from immunostrat.sources.fhir_patient import read_fhir
from immunostrat.trial import eligibility

router = APIRouter(tags=["clinical"])
EARLIEST_DECISION_YEAR = 1900
"""No bedside data comes from before 1900; the bound also keeps the look-back window's arithmetic
off the year-1 floor of Python's dates (``at`` = 0001-01-01 minus 24 hours was a server error)."""
# a deactivated or re-roled user's token stops here too, though nothing is stored
CLASSIFIERS = require_current(*ALL_ROLES)
AnyUser = Annotated[Principal, Depends(CLASSIFIERS)]


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str | None = Field(default=None, max_length=64)
    age: float | None = Field(default=None, ge=0, le=120)
    sex: Literal["F", "M", "other"] | None = None
    weight_kg: float | None = Field(default=None, ge=0.5, le=400)
    height_cm: float | None = Field(default=None, ge=20, le=260)


class LongObservation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str | None = Field(default=None, max_length=64)
    time: str
    concept: str
    value: float | str
    unit: str = ""


ONE_SOURCE: list[JsonValue] = [
    {"required": ["observations"], "properties": {"observations": {"type": "array"}}},
    {"required": ["bundle"], "properties": {"bundle": {"type": "object"}}},
]
"""Exactly one of ``observations`` and ``bundle`` (not null): the rule of ``_one_source``, stated in
the OpenAPI document so that a request it allows is not refused by a rule it did not show."""


class ObservationsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": ONE_SOURCE})
    patient: PatientIn | None = None
    observations: list[LongObservation] | None = None
    bundle: dict[str, Any] | None = Field(default=None, description="a FHIR R4 Bundle (or one resource)")
    at: datetime | None = Field(
        default=None,
        description="decision time (default: the time of the request; naive times are UTC)",
    )

    @field_validator("at")
    @classmethod
    def _plausible_at(cls, at: datetime | None) -> datetime | None:
        if at is not None and at.year < EARLIEST_DECISION_YEAR:
            raise ValueError(f"decision time before {EARLIEST_DECISION_YEAR}")
        return at

    def decision_time(self) -> tuple[datetime, Literal["request", "caller"]]:
        """The caller's ``at`` (naive = UTC), else now: the bedside decides at the time of asking."""
        if self.at is None:
            return datetime.now(UTC), "request"
        return (self.at.replace(tzinfo=UTC) if self.at.tzinfo is None else self.at.astimezone(UTC)), "caller"

    @model_validator(mode="after")
    def _one_source(self) -> ObservationsRequest:
        if (self.observations is None) == (self.bundle is None):
            raise ValueError("give exactly one of 'observations' (long format) or 'bundle' (FHIR)")
        return self


class ClassifyIn(ObservationsRequest):
    protocol_id: str = "immunosep-2025"


class ScoreIn(ObservationsRequest):
    score: Literal["sofa", "sofa-2", "qsofa", "hscore", "mex-sledai", "sledai-2k"] = "sofa"
    window_hours: float = Field(default=24.0, gt=0, le=24 * 30)


def canonical_frame(body: ObservationsRequest) -> tuple[pl.DataFrame, dict[str, Any], list[str]]:
    """The request's observations as the canonical long table, the patient, and ignored resources."""
    patient = body.patient.model_dump(exclude_none=True) if body.patient else {}
    ignored: list[str] = []
    if body.bundle is not None:
        data = read_fhir(body.bundle, patient.get("patient_id"))
        patient = {**data.patient, **patient}
        records = data.records
        ignored = data.ignored
        field = "bundle"
    else:
        assert body.observations is not None
        pid = patient.get("patient_id") or next(
            (o.patient_id for o in body.observations if o.patient_id), "patient"
        )
        records = [{**o.model_dump(), "patient_id": o.patient_id or pid} for o in body.observations]
        ids = {r["patient_id"] for r in records}
        if len(ids) > 1:
            raise InputError("one patient per request", field="observations", value=sorted(ids)[:3])
        patient.setdefault("patient_id", pid)
        field = "observations"
    patient_id = str(patient.get("patient_id") or "patient")
    patient["patient_id"] = patient_id
    if not records:
        raise InputError(
            "no usable observations", field=field, expected="observations with known concepts and units"
        )
    prow = [{k: patient.get(k) for k in ("patient_id", "age", "sex", "weight_kg", "height_cm")}]
    try:
        result = observations_from_records(records, prow, source=field)
    except InputError as exc:
        where = f"{field}[{exc.row - 1}].{exc.field}" if exc.row is not None and exc.field else exc.field
        raise InputError(exc.message, field=where, value=exc.value, expected=exc.expected) from None
    return result.observations, patient, ignored


def canonical_observations(frame: pl.DataFrame) -> list[eligibility.CanonicalObservation]:
    return [
        eligibility.CanonicalObservation(
            r["concept"], r["value"], r["unit"], r["value"], r["unit"], r["time"]
        )
        for r in frame.iter_rows(named=True)
    ]


@router.post("/classify")
def classify(body: ClassifyIn, principal: AnyUser) -> dict[str, Any]:
    """The protocol's endotype, therapy, dose and reasons for one patient (nothing is stored)."""
    frame, patient, ignored = canonical_frame(body)
    decided_at, decided_by = body.decision_time()
    c = eligibility.classify(body.protocol_id, patient, canonical_observations(frame), decided_at)
    return {
        "patient_id": patient["patient_id"],
        "protocol_id": c.protocol_id,
        "protocol_version": c.protocol_version,
        "decided_at": decided_at.isoformat(),
        "decision_time": decided_by,
        "endotype": c.endotype,
        "therapy": c.therapy,
        "dose": c.dose,
        "dose_detail": c.dose_detail,
        "reasons": c.reasons,
        "warnings": c.warnings,
        "ignored": ignored,
    }


@router.post("/score")
def score(body: ScoreIn, principal: AnyUser) -> dict[str, Any]:
    """One bedside score over the ``window_hours`` up to the decision time (worst value per component)."""
    frame, patient, ignored = canonical_frame(body)
    decided_at, decided_by = body.decision_time()
    windows = windows_at(frame, decided_at, body.window_hours)
    scored = score_windows(frame, windows, body.score)
    rows = scored.to_dicts()
    row = rows[0] if rows else {}
    return {
        "patient_id": patient["patient_id"],
        "score": body.score,
        "decided_at": decided_at.isoformat(),
        "decision_time": decided_by,
        "window_hours": body.window_hours,
        "result": row,
        "ignored": ignored,
    }
