"""REST endpoints for trials defined as data: templates and definitions (forms and visits, from
which pages render their forms), form capture with history, re-screening and the screening log,
data queries, visit signatures, the visit report and the expedited report of serious adverse
events, and the oversight counts (CONSORT flow, enrolment over time). Thin: parse, check the role,
call one function of the trial package.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from immunostrat.api.app import unit_of_work
from immunostrat.api.auth import Principal, require
from immunostrat.trial import blinding, consort, datamanagement, forms, ops, service
from immunostrat.trial.schemas import (
    MAX_ID,
    TRIAL_ROLES,
    AdverseEventReportIn,
    FormIn,
    QueryIn,
    QueryReply,
    RescreenIn,
    SignIn,
    TrialSpec,
)

router = APIRouter()

ANY = require(*TRIAL_ROLES)
INVESTIGATOR = require("investigator")
CLINICAL_READERS = require("investigator", "monitor", "statistician")
SCREENING_READERS = require("admin", "investigator", "monitor", "statistician")
QUERY_MANAGERS = require("monitor", "statistician")

TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="the trial's id")]
ParticipantId = Annotated[int, Path(ge=1, le=MAX_ID, description="the participant's id")]
RecordId = Annotated[int, Path(ge=1, le=MAX_ID, description="the form record's id")]
QueryId = Annotated[int, Path(ge=1, le=MAX_ID, description="the query's id")]
VisitId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_]+$")]
FormId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


@router.get("/trial-templates", tags=["trials"])
def list_templates(principal: Annotated[Principal, Depends(ANY)]) -> list[dict[str, Any]]:
    """The shipped trial files: a trial team copies one and edits it to write its own."""
    out = []
    for name in ops.template_names():
        spec = ops.load_trial_spec(ops.template_path(name))
        out.append({"name": name, "code": spec.code, "version": spec.version, "title": spec.title})
    return out


TEMPLATE_NAME = "^(" + "|".join(ops.template_names()) + ")$"
"""The shipped templates' names (each ``[a-z0-9-]+``), stated in the OpenAPI document: another
name is refused by the schema, not by a rule the document did not show."""


@router.get("/trial-templates/{name}", tags=["trials"])
def get_template(
    name: Annotated[str, Path(min_length=1, max_length=64, pattern=TEMPLATE_NAME)],
    principal: Annotated[Principal, Depends(ANY)],
) -> TrialSpec:
    """One shipped trial file, validated (POST it to ``/trials`` to set the trial up)."""
    return ops.load_trial_spec(ops.template_path(name))


@router.get("/trials/{trial_id}/definition", tags=["trials"])
def get_definition(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(ANY)]
) -> dict[str, Any]:
    """The trial's forms, visit schedule (each visit with its target day and window), eligibility and
    endpoints, as set up: what pages render their forms from. A blinded role reads the arms under
    neutral labels."""
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        spec = forms.trial_definition(trial)
        out = spec.model_dump(mode="json", exclude={"block_multipliers", "slots_per_stratum", "kits_per_arm"})
        out["schedule"] = [v.model_dump(mode="json") for v in spec.schedule()]
        return blinding.blind_definition(out, actor)


@router.post("/trials/{trial_id}/participants/{participant_id}/rescreen", tags=["participants"])
def rescreen(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: RescreenIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    """A new eligibility decision for a patient found not eligible (e.g. not assessable) before:
    the same pseudonym, the earlier observations plus the new ones; both decisions are kept."""
    with unit_of_work(request, principal) as (session, actor):
        return dataclasses.asdict(service.rescreen(session, actor, trial_id, participant_id, body))


@router.get("/trials/{trial_id}/screening-log", tags=["participants"])
def screening_log(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(SCREENING_READERS)]
) -> list[dict[str, Any]]:
    """Everyone screened, the ineligible included, with the latest decision (CONSORT's top box)."""
    with unit_of_work(request, principal) as (session, actor):
        return service.screening_log(session, actor, trial_id)


@router.put("/trials/{trial_id}/participants/{participant_id}/visits/{visit}/forms/{form}", tags=["data"])
def save_form(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    visit: VisitId,
    form: FormId,
    body: FormIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    """Enter or change one form of a visit. Values by field, in the field's unit or as
    ``{"value": v, "unit": u}``; fields not done under ``not_done`` with the reason; a change to
    saved data needs ``reason``. Derived scores are computed, never typed. Edit checks of severity
    ``warning`` save the form and open queries (returned in ``queries_opened``)."""
    with unit_of_work(request, principal) as (session, actor):
        record, opened = forms.save_form(session, actor, trial_id, participant_id, visit, form, body)
        out = forms.record_view(record)
        out["queries_opened"] = [datamanagement.query_view(q) for q in opened]
        return out


@router.get("/trials/{trial_id}/participants/{participant_id}/casebook", tags=["data"])
def casebook(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    principal: Annotated[Principal, Depends(CLINICAL_READERS)],
) -> dict[str, Any]:
    """The participant's visits as scheduled, each with its forms, queries and signature state."""
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.casebook(session, actor, trial_id, participant_id)


@router.get("/trials/{trial_id}/form-records/{record_id}/history", tags=["data"])
def form_history(
    request: Request,
    trial_id: TrialId,
    record_id: RecordId,
    principal: Annotated[Principal, Depends(CLINICAL_READERS)],
) -> list[dict[str, Any]]:
    """Every change of a form: field, old and new value, reason, who and when."""
    with unit_of_work(request, principal) as (session, actor):
        return forms.history(session, actor, trial_id, record_id)


@router.post("/trials/{trial_id}/participants/{participant_id}/queries", status_code=201, tags=["queries"])
def raise_query(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: QueryIn,
    principal: Annotated[Principal, Depends(QUERY_MANAGERS)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.query_view(
            datamanagement.raise_query(session, actor, trial_id, participant_id, body)
        )


@router.get("/trials/{trial_id}/queries", tags=["queries"])
def list_queries(
    request: Request,
    trial_id: TrialId,
    principal: Annotated[Principal, Depends(CLINICAL_READERS)],
    state: Annotated[Literal["open", "answered", "closed"] | None, Query()] = None,
) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.list_queries(session, actor, trial_id, state)


@router.post("/trials/{trial_id}/queries/{query_id}/answer", tags=["queries"])
def answer_query(
    request: Request,
    trial_id: TrialId,
    query_id: QueryId,
    body: QueryReply,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.query_view(
            datamanagement.answer_query(session, actor, trial_id, query_id, body.text)
        )


@router.post("/trials/{trial_id}/queries/{query_id}/close", tags=["queries"])
def close_query(
    request: Request,
    trial_id: TrialId,
    query_id: QueryId,
    body: QueryReply,
    principal: Annotated[Principal, Depends(QUERY_MANAGERS)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.query_view(
            datamanagement.close_query(session, actor, trial_id, query_id, body.text)
        )


@router.post("/trials/{trial_id}/queries/{query_id}/reopen", tags=["queries"])
def reopen_query(
    request: Request,
    trial_id: TrialId,
    query_id: QueryId,
    body: QueryReply,
    principal: Annotated[Principal, Depends(QUERY_MANAGERS)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.query_view(
            datamanagement.reopen_query(session, actor, trial_id, query_id, body.text)
        )


@router.post(
    "/trials/{trial_id}/participants/{participant_id}/visits/{visit}/signature",
    status_code=201,
    tags=["data"],
)
def sign_visit(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    visit: VisitId,
    body: SignIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    """The investigator's electronic signature of every form of a visit: the password again, and the
    trial's meaning of the signature (21 CFR 11.50, 11.200). A later change voids it."""
    with unit_of_work(request, principal) as (session, actor):
        s = datamanagement.sign_visit(
            session, actor, trial_id, participant_id, visit, body.password, body.meaning
        )
        return {
            "id": s.id,
            "visit": s.visit_id,
            "signed_by": s.username,
            "signed_at": s.signed_at,
            "meaning": s.meaning,
            "content_sha256": s.content_sha256,
        }


@router.get("/trials/{trial_id}/visit-report", tags=["data"])
def visit_report(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(CLINICAL_READERS)]
) -> dict[str, Any]:
    """Done, due, overdue and partial visits of every randomized participant, from the schedule."""
    with unit_of_work(request, principal) as (session, actor):
        return datamanagement.visit_report(session, actor, trial_id)


@router.post("/trials/{trial_id}/adverse-events/{ae_id}/report", tags=["data"])
def report_adverse_event(
    request: Request,
    trial_id: TrialId,
    ae_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: AdverseEventReportIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    """Record the expedited report of a serious adverse event to the sponsor (stops its clock)."""
    with unit_of_work(request, principal) as (session, actor):
        row = service.report_adverse_event(session, actor, trial_id, ae_id, body.reported_at, body.reference)
        return service.adverse_event_view(row)


# ------------------------------------------------------------------------------ oversight counts


class ExclusionCount(BaseModel):
    reason: str = Field(description="the exclusion reason of the latest decision ('no reason recorded')")
    count: int


class ArmCounts(BaseModel):
    arm: str
    allocated: int
    withdrawn: int
    completed: int
    analysed: int


class ConsortFlow(BaseModel):
    """The CONSORT flow of the participants the caller may list (a site-bound investigator: their
    site). ``arms`` (per-arm counts, in the trial's order) is present for unblinded roles only."""

    trial: str = Field(description="the trial's code")
    screened: int = Field(description="every participant registered at screening (re-screenings once)")
    not_eligible: int
    exclusions: list[ExclusionCount] = Field(description="not eligible, by reason, most frequent first")
    undecided: int = Field(description="screened without an eligibility decision either way")
    eligible: int
    eligible_not_randomized: int
    randomized: int = Field(description="an allocation exists")
    withdrawn: int = Field(description="randomized and later withdrawn")
    completed: int = Field(description="randomized, not withdrawn, the last scheduled visit complete")
    analysed: int = Field(description="randomized and the data not removed at withdrawal (ITT)")
    arms: list[ArmCounts] | None = Field(
        default=None, description="the split by arm: unblinded roles only (absent for the others)"
    )


class Enrolment(BaseModel):
    """Participants randomized over time (those the caller may list), cumulative: one count per date
    in ``dates`` for each series."""

    trial: str = Field(description="the trial's code")
    dates: list[str] = Field(description="the days (ISO dates, UTC) with at least one randomization")
    by_site: dict[str, list[int]] = Field(description="site code -> cumulative randomized per date")
    by_stratum: dict[str, list[int]] = Field(
        description="'site / stratum' (an endotype, a choice of the strata field, or 'all') -> cumulative"
    )
    total: int = Field(description="randomized")


@router.get(
    "/trials/{trial_id}/consort",
    tags=["trials"],
    response_model=ConsortFlow,
    response_model_exclude_none=True,
)
def consort_flow(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(ANY)]
) -> dict[str, Any]:
    """The live CONSORT flow (what the CONSORT page shows): screened, not eligible by reason,
    eligible, randomized, withdrawn, completed, analysed; split by arm for the pharmacist only."""
    with unit_of_work(request, principal) as (session, actor):
        return consort.consort(session, actor, trial_id)


@router.get("/trials/{trial_id}/enrolment", tags=["trials"], response_model=Enrolment)
def enrolment(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(ANY)]
) -> dict[str, Any]:
    """Enrolment over time by site and by stratum, cumulative (what the enrolment page plots)."""
    with unit_of_work(request, principal) as (session, actor):
        return consort.enrolment(session, actor, trial_id)
