"""REST endpoints over the trial domain. Thin: parse, check the role, call one service function.

Roles: ``admin`` sets up trials, sites and users; ``investigator`` (blinded) screens, randomizes,
records data and may unblind one participant in an emergency (reason required); ``pharmacist``
(unblinded) sees arms and the randomization list; ``monitor`` reads data, audit trail and
unblinding events; ``statistician`` reads data and exports (unblinded only after database lock).
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import zipfile
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import Field
from sqlalchemy import select

from immunostrat.api.app import one_at_a_time, unit_of_work
from immunostrat.api.auth import ALL_ROLES, Principal, _unauthorized, confirm, issue_token, require
from immunostrat.trial import blinding, service
from immunostrat.trial.anchor import snapshot
from immunostrat.trial.db import read_transaction
from immunostrat.trial.export_access import check_export
from immunostrat.trial.export_files import write_trial_export
from immunostrat.trial.models import AuditRow, Trial, User
from immunostrat.trial.passwords import hash_password
from immunostrat.trial.schemas import (
    MAX_ID,
    TRIAL_ROLES,
    AdverseEventIn,
    AssessmentIn,
    OutcomeIn,
    ScreeningIn,
    SiteSpec,
    TrialSpec,
    UnblindIn,
    UserIn,
    UserUpdate,
    WithdrawIn,
)

router = APIRouter()

SIGNED_IN = require(*ALL_ROLES)
ANY = require(*TRIAL_ROLES)
ADMIN = require("admin")
INVESTIGATOR = require("investigator")
DATA_READERS = require("investigator", "pharmacist", "monitor", "statistician")
CLINICAL_READERS = require("investigator", "monitor", "statistician")
OVERSIGHT = require("admin", "monitor")
PHARMACIST = require("pharmacist")
EXPORTERS = require("statistician", "monitor")

AnyUser = Annotated[Principal, Depends(ANY)]
# ids are 64-bit in both databases: the schema bounds them (a larger one overflowed the driver)
TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="the trial's id")]
ParticipantId = Annotated[int, Path(ge=1, le=MAX_ID, description="the participant's id")]


class SiteIn(SiteSpec):
    seed: str = Field(
        min_length=64,
        max_length=64,
        pattern=r"^[0-9A-Fa-f]{64}$",
        description="the trial's seed (hex), handed out at set-up",
    )


@router.get("/", tags=["service"], status_code=307, response_class=RedirectResponse)
def root() -> RedirectResponse:
    """The web application's start page (``/web/``): sign-in, trial pages, bedside."""
    return RedirectResponse("/web/", status_code=307)


@router.get("/health", tags=["service"])
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/token", tags=["auth"])
def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict[str, Any]:
    """OAuth2 password flow: a bearer token that expires (``expires_in`` seconds)."""
    with read_transaction(request.app.state.engine) as session:
        user = session.scalars(select(User).where(User.username == form.username)).one_or_none()
    # the password check (bcrypt, deliberately slow) runs outside the transaction: on SQLite a
    # transaction holds the write lock, and logins must not stall randomizations
    if not service.password_matches(user, form.password):
        raise _unauthorized("wrong username or password")
    assert user is not None
    token, seconds = issue_token(user, request.app.state.signing_key, request.app.state.token_minutes)
    return {"access_token": token, "token_type": "bearer", "expires_in": seconds, "role": user.role}


@router.get("/me", tags=["auth"])
def me(request: Request, principal: Annotated[Principal, Depends(SIGNED_IN)]) -> dict[str, Any]:
    with read_transaction(request.app.state.engine) as session:
        actor = confirm(session, principal)
        user = session.get(User, actor.user_id)
        assert user is not None
        return service.user_view(user)


# ------------------------------------------------------------------------------------------ users


@router.post("/users", status_code=201, tags=["admin"])
def create_user(
    request: Request, body: UserIn, principal: Annotated[Principal, Depends(ADMIN)]
) -> dict[str, Any]:
    hashed = hash_password(body.password)  # slow on purpose: before the transaction, not inside it
    with unit_of_work(request, principal) as (session, actor):
        return service.user_view(service.create_user(session, actor, body, password_hash=hashed))


@router.patch("/users/{user_id}", tags=["admin"])
def update_user(
    request: Request,
    user_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: UserUpdate,
    principal: Annotated[Principal, Depends(ADMIN)],
) -> dict[str, Any]:
    """Deactivate or reactivate a user, change the role or the password; tokens already issued to
    the user stop working at their next request."""
    hashed = hash_password(body.password) if body.password is not None else None
    with unit_of_work(request, principal) as (session, actor):
        return service.user_view(service.update_user(session, actor, user_id, body, hashed))


@router.get("/users", tags=["admin"])
def list_users(request: Request, principal: Annotated[Principal, Depends(ADMIN)]) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, _):
        return [service.user_view(u) for u in session.scalars(select(User).order_by(User.id))]


# ------------------------------------------------------------------------------------------ trials


@router.post("/trials", status_code=201, tags=["trials"])
def create_trial(
    request: Request, body: TrialSpec, principal: Annotated[Principal, Depends(ADMIN)]
) -> dict[str, Any]:
    """Set up a trial; the response carries ``seed`` once (keep it in escrow: it is not stored)."""
    with unit_of_work(request, principal) as (session, actor):
        setup = service.setup_trial(session, actor, body)
        trial = service.trial_by_id(session, setup.trial_id)
        out = service.trial_view(session, trial)
        out["seed"] = setup.seed_hex
        out["kits"] = setup.n_kits
        return out


@router.get("/trials", tags=["trials"])
def list_trials(request: Request, principal: AnyUser) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, actor):
        return [
            blinding.blind_trial_view(service.trial_view(session, t, actor), actor)
            for t in session.scalars(select(Trial).order_by(Trial.id))
        ]


@router.get("/trials/{trial_id}", tags=["trials"])
def get_trial(request: Request, trial_id: TrialId, principal: AnyUser) -> dict[str, Any]:
    """The trial; a blinded role reads its arms under neutral labels (``arm 1``, ``arm 2``)."""
    with unit_of_work(request, principal) as (session, actor):
        view = service.trial_view(session, service.trial_by_id(session, trial_id), actor)
        return blinding.blind_trial_view(view, actor)


@router.post("/trials/{trial_id}/sites", status_code=201, tags=["trials"])
def add_site(
    request: Request, trial_id: TrialId, body: SiteIn, principal: Annotated[Principal, Depends(ADMIN)]
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        site = service.add_site(session, actor, trial_id, SiteSpec(code=body.code, name=body.name), body.seed)
        return {"id": site.id, "code": site.code, "name": site.name}


@router.post("/trials/{trial_id}/lock", tags=["trials"])
def lock_trial(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(ADMIN)]
) -> dict[str, Any]:
    """Database lock: data entry stops and the unblinded export becomes available."""
    with unit_of_work(request, principal) as (session, actor):
        view = service.trial_view(session, service.lock_trial(session, actor, trial_id), actor)
        return blinding.blind_trial_view(view, actor)


# ------------------------------------------------------------------------------------------ participants


@router.post("/trials/{trial_id}/participants", status_code=201, tags=["participants"])
def screen(
    request: Request,
    response: Response,
    trial_id: TrialId,
    body: ScreeningIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    """Screen a patient: observations in any accepted unit, the protocol's decision with reasons.
    Send an ``Idempotency-Key`` header: a retry with the same key and body returns the same
    participant (200, ``replayed``) instead of registering a second one."""
    with read_transaction(request.app.state.engine) as session:
        confirm(session, principal)
        rules = service.screening_rules(service.trial_by_id(session, trial_id))
    # converting observations and deciding need no lock: done before the write transaction opens
    work = service.evaluate_screening(rules, body)
    with unit_of_work(request, principal) as (session, actor):
        result = service.screen(session, actor, trial_id, body, work, idempotency_key)
        response.status_code = 200 if result.replayed else 201
        return dataclasses.asdict(result)


@router.get("/trials/{trial_id}/participants", tags=["participants"])
def list_participants(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(DATA_READERS)]
) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, actor):
        return [
            service.participant_view(session, p) for p in service.list_participants(session, actor, trial_id)
        ]


@router.get("/trials/{trial_id}/participants/{participant_id}", tags=["participants"])
def get_participant(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    principal: Annotated[Principal, Depends(DATA_READERS)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        return service.participant_view(
            session, service.participant_by_id(session, trial, participant_id, actor)
        )


@router.post("/trials/{trial_id}/participants/{participant_id}/randomize", tags=["randomization"])
def randomize(
    request: Request,
    response: Response,
    trial_id: TrialId,
    participant_id: ParticipantId,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    """Allocate the next unused slot of the participant's stratum. Send an ``Idempotency-Key``
    header: a retry with the same key returns the same allocation. Blinded roles get a kit number."""
    with one_at_a_time(request, "randomize"), unit_of_work(request, principal) as (session, actor):
        result = service.randomize(session, actor, trial_id, participant_id, idempotency_key)
        response.status_code = 200 if result.replayed else 201
        return service.allocation_public(result, actor)


@router.get("/trials/{trial_id}/participants/{participant_id}/allocation", tags=["randomization"])
def get_allocation(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    principal: Annotated[Principal, Depends(DATA_READERS)],
) -> dict[str, Any]:
    """Kit number for blinded roles; the arm too for unblinded roles (audited)."""
    with unit_of_work(request, principal) as (session, actor):
        result = service.get_allocation(session, actor, trial_id, participant_id)
        return service.allocation_public(result, actor)


@router.post("/trials/{trial_id}/participants/{participant_id}/unblind", tags=["randomization"])
def emergency_unblind(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: UnblindIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    """Emergency unblinding of one participant (reason required; recorded and audited)."""
    with unit_of_work(request, principal) as (session, actor):
        return service.emergency_unblind(session, actor, trial_id, participant_id, body.reason)


@router.post("/trials/{trial_id}/participants/{participant_id}/withdraw", tags=["participants"])
def withdraw(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: WithdrawIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        service.withdraw(session, actor, trial_id, participant_id, body.reason, body.data_removed)
        trial = service.trial_by_id(session, trial_id)
        return service.participant_view(session, service.participant_by_id(session, trial, participant_id))


@router.post("/trials/{trial_id}/participants/{participant_id}/assessments", status_code=201, tags=["data"])
def record_assessment(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: AssessmentIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    """Create or update the assessment of one study day (day 1 = day of randomization)."""
    work = None
    if body.observations:
        with read_transaction(request.app.state.engine) as session:
            weight = service.assessment_weight(session, confirm(session, principal), trial_id, participant_id)
        # converting observations needs no lock: done before the write transaction opens
        work = service.evaluate_assessment(body, weight)
    with unit_of_work(request, principal) as (session, actor):
        return service.assessment_view(
            service.record_assessment(session, actor, trial_id, participant_id, body, work)
        )


@router.get("/trials/{trial_id}/participants/{participant_id}/assessments", tags=["data"])
def list_assessments(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    principal: Annotated[Principal, Depends(CLINICAL_READERS)],
) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, actor):
        rows = service.list_assessments(session, actor, trial_id, participant_id)
        return [service.assessment_view(r) for r in rows]


@router.put("/trials/{trial_id}/participants/{participant_id}/outcome", tags=["data"])
def record_outcome(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: OutcomeIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        return service.outcome_view(service.record_outcome(session, actor, trial_id, participant_id, body))


@router.post(
    "/trials/{trial_id}/participants/{participant_id}/adverse-events", status_code=201, tags=["data"]
)
def record_adverse_event(
    request: Request,
    trial_id: TrialId,
    participant_id: ParticipantId,
    body: AdverseEventIn,
    principal: Annotated[Principal, Depends(INVESTIGATOR)],
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        row = service.record_adverse_event(session, actor, trial_id, participant_id, body)
        return service.adverse_event_view(row)


@router.get("/trials/{trial_id}/adverse-events", tags=["data"])
def list_adverse_events(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(CLINICAL_READERS)]
) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, actor):
        return service.list_adverse_events(session, actor, trial_id)


# ------------------------------------------------------------------------------ unblinded / oversight


@router.get("/trials/{trial_id}/randomization-list", tags=["randomization"])
def randomization_list(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(PHARMACIST)]
) -> list[dict[str, Any]]:
    """The concealed list with arms (pharmacist only; every view is audited)."""
    with unit_of_work(request, principal) as (session, actor):
        return service.randomization_list(session, actor, trial_id)


@router.get("/trials/{trial_id}/unblindings", tags=["randomization"])
def unblindings(
    request: Request, trial_id: TrialId, principal: Annotated[Principal, Depends(OVERSIGHT)]
) -> list[dict[str, Any]]:
    with unit_of_work(request, principal) as (session, _):
        return service.unblinding_events(session, trial_id)


@router.get(
    "/trials/{trial_id}/export",
    tags=["export"],
    response_class=Response,
    responses={
        200: {
            "description": "the export, a zip archive (Content-Disposition names the file)",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def export(
    request: Request,
    trial_id: TrialId,
    principal: Annotated[Principal, Depends(EXPORTERS)],
    blinded: bool = True,
    format: Annotated[Literal["csv", "parquet", "odm", "xpt", "dta", "sav"], Query()] = "csv",
) -> Response:
    """The export as a zip: the analysis tables (schema of ``immunostrat.analysis.schema``) as CSV
    or Parquet, CDISC ODM 1.3.2 (``odm``, trials set up with forms), or SAS XPT, Stata or SPSS files
    with labels; each with ``data_dictionary.csv`` and ``manifest.json``. Unblinded: statistician
    only, after the database lock."""
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        check_export(trial, actor, blinded)
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_trial_export(session, actor, trial.id, blinded, format, FilePath(tmp) / "export")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for f in sorted(folder.iterdir()):
                    archive.write(f, f.name)
    name = f"{trial.code}-{'blinded' if blinded else 'unblinded'}.zip"
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/audit", tags=["audit"])
def audit_rows(
    request: Request,
    principal: Annotated[Principal, Depends(OVERSIGHT)],
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The audit trail from ``after`` on; the concealed set-up is left out for the monitor, and arms
    are named under neutral labels for blinded roles (the stored rows and their hashes stay whole)."""
    with unit_of_work(request, principal) as (session, actor):
        rows = session.scalars(
            select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit)
        )
        return blinding.blind_audit_rows(session, [service.audit_row_view(r, actor) for r in rows], actor)


@router.get("/audit/verify", tags=["audit"])
def audit_verify(request: Request, principal: Annotated[Principal, Depends(OVERSIGHT)]) -> dict[str, Any]:
    """The chain and the records, read in one snapshot (rows appended meanwhile are not forged ones)."""
    with read_transaction(request.app.state.engine) as session:
        confirm(session, principal)
    with snapshot(request.app.state.engine) as session:
        result = service.verify_audit(session)
        return {
            "ok": result.ok,
            "rows_checked": result.rows_checked,
            "first_bad_seq": result.first_bad_seq,
            "problem": result.problem,
            "head_hash": result.head_hash,
            "message": str(result),
        }


# trials defined as data: forms, queries, signatures, screening log (one module of their own)
from immunostrat.api.data_routes import router as _data_router  # noqa: E402

router.include_router(_data_router)
