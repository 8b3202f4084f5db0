"""The pages under ``/web``: sign-in, trials, screening and its log, randomization, the casebook
with forms rendered from the trial's form definitions, query threads, visit signatures and the work
lists. Each page checks the role the matching API operation allows and calls the same trial
function in the same kind of transaction (:func:`~immunostrat.api.app.unit_of_work`); what a page
adds is only turning HTML form strings into the JSON types the API receives.

Arms: pages never name one to a blinded role. The only arm on any page comes from
:func:`~immunostrat.trial.service.allocation_public`, which adds it for unblinded roles alone.
"""

from __future__ import annotations

import secrets
from datetime import date
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response

from immunostrat.api.app import unit_of_work
from immunostrat.api.auth import Principal, issue_token
from immunostrat.errors import InputError
from immunostrat.trial import datamanagement, forms, service
from immunostrat.trial.db import read_transaction
from immunostrat.trial.definition import FormDef
from immunostrat.trial.models import Trial, User
from immunostrat.trial.schemas import FormIn, QueryIn, ScreeningIn
from immunostrat.web.core import (
    ANY,
    CLINICAL_READERS,
    DATA_READERS,
    HERE,
    INVESTIGATOR,
    QUERY_MANAGERS,
    SCREENING_READERS,
    SIGNED_IN,
    STATIC_FILES,
    PageError,
    add_main_page,
    add_trial_page,
    field_key,
    field_units,
    form_values,
    page_router,
    posted,
    render,
    signed_in,
    trial_nav,
    user_of,
)
from immunostrat.web.session import CSRF_FIELD, clear_session, set_session

router = page_router()
fallback = page_router()
"""Last of all routes: any other address under /web is a page, not the API's JSON 404."""

add_main_page("/", "Home", SIGNED_IN)
add_trial_page("", "Overview", ANY, rank=0)
add_trial_page("/screen", "Screen a patient", INVESTIGATOR, rank=10)
add_trial_page("/screening-log", "Screening log", SCREENING_READERS, rank=11)
add_trial_page("/participants", "Participants", DATA_READERS, rank=12)
add_trial_page("/visits", "Overdue visits", CLINICAL_READERS, rank=13)
add_trial_page("/queries", "Open queries", CLINICAL_READERS, rank=14)

# ------------------------------------------------------------------------------------- static


@router.get("/static/{name}")
def static(name: str) -> Response:
    """htmx and the stylesheet, served by the app itself (works offline)."""
    if name not in STATIC_FILES:
        raise PageError(404, "no such file")
    response = FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name])
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


# ------------------------------------------------------------------------------------- sign-in


@router.get("/sign-in")
def sign_in_page(request: Request) -> Response:
    return render(request, "sign_in.html", {"error": None, "username": ""})


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """The API's password check (bcrypt, outside any transaction) and its throttling limits; the
    sign-in form has no session yet, so SameSite=Strict and the Origin check guard it."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PageError(403, "sign-in from another site is refused")
    data = await request.form()
    username = str(data.get("username", ""))[:64]
    password = str(data.get("password", ""))
    # The API's sign-in counts (in the service's database): shared by the API, the pages and every worker.
    counts = request.app.state.sign_in_counts
    address = request.client.host if request.client else None
    refused = await run_in_threadpool(counts.refused, username, address)
    if refused is not None:
        wait_s = refused[0]
        context = {"error": f"Too many failed sign-ins: try again in {wait_s} s.", "username": username}
        response: Response = render(request, "sign_in.html", context, status=429)
        response.headers["Retry-After"] = str(wait_s)
        return response

    def check() -> User | None:
        with read_transaction(request.app.state.engine) as session:
            user = session.scalars(select(User).where(User.username == username)).one_or_none()
        return user if service.password_matches(user, password) else None

    user = await run_in_threadpool(check)
    if user is None:
        await run_in_threadpool(counts.failed, username, address)
        context = {"error": "Wrong username or password.", "username": username}
        return render(request, "sign_in.html", context, status=401)
    await run_in_threadpool(counts.succeeded, username)
    token, seconds = issue_token(user, request.app.state.signing_key, request.app.state.token_minutes)
    response = RedirectResponse("/web/", status_code=303)
    set_session(response, request, token, seconds)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    await posted(request, SIGNED_IN)
    response = RedirectResponse("/web/sign-in", status_code=303)
    clear_session(response, request)
    return response


# ------------------------------------------------------------------------------------- trials


@router.get("/")
def home(request: Request) -> Response:
    """Trials for the trial roles; for everyone, the pages of their role (the navigation)."""
    principal = signed_in(request, SIGNED_IN)
    trials = None
    if principal.role in ANY:
        with unit_of_work(request, principal) as (session, actor):
            trials = [
                service.trial_view(session, t, actor)
                for t in session.scalars(select(Trial).order_by(Trial.id))
            ]
    return render(request, "home.html", {"user": user_of(request, principal), "trials": trials})


def _trial(session: Any, trial_id: int) -> tuple[Trial, Any]:
    trial = service.trial_by_id(session, trial_id)
    spec = forms.trial_definition(trial) if forms.has_forms(trial) else None
    return trial, spec


@router.get("/trials/{trial_id}")
def trial_page(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, ANY)
    with unit_of_work(request, principal) as (session, actor):
        trial, spec = _trial(session, trial_id)
        view = service.trial_view(session, trial, actor)
        schedule = spec.schedule() if spec is not None else []
    context = {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "schedule": schedule,
    }
    return render(request, "trial.html", context)


def _screening_form(spec: Any) -> FormDef | None:
    if spec is None or spec.screening_form is None:
        return None
    return forms.form_definition(spec, spec.screening_form)


def _screen_context(request: Request, principal: Principal, trial_id: int) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        trial, spec = _trial(session, trial_id)
        view = service.trial_view(session, trial, actor)
        site_id = actor.site_id
    return {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "form": _screening_form(spec),
        "units": field_units(_screening_form(spec)),
        "sites": [s for s in view["sites"] if site_id is None or s["id"] == site_id],
        "values": {},
        "errors": {},
        "error": None,
        "idempotency_key": secrets.token_hex(16),
    }


@router.get("/trials/{trial_id}/screen")
def screen_page(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, INVESTIGATOR)
    return render(request, "screen.html", _screen_context(request, principal, trial_id))


@router.post("/trials/{trial_id}/screen")
async def screen(request: Request, trial_id: int) -> Response:
    """As ``POST /trials/{id}/participants``: decide outside the write transaction, then register."""
    principal, data = await posted(request, INVESTIGATOR)
    context = await run_in_threadpool(_screen_context, request, principal, trial_id)
    form: FormDef | None = context["form"]
    context["values"] = {k: str(v) for k, v in data.items() if k != CSRF_FIELD}
    body: dict[str, Any] = {
        "site": str(data.get("site", "")),
        "age": str(data.get("age", "")).strip() or None,
        "sex": str(data.get("sex", "")),
    }
    weight = str(data.get("weight_kg", "")).strip()
    if weight:
        body["weight_kg"] = weight
    if form is not None:
        body["form"], _ = form_values(form, data, prefix="form__")
    key = str(data.get("idempotency_key", "")) or None
    try:
        screening = ScreeningIn.model_validate(body, strict=False)
    except ValidationError as exc:
        for e in exc.errors():
            context["errors"][".".join(str(p) for p in e["loc"])] = str(e["msg"])
        return render(request, "screen.html", context, status=422)

    def work() -> int:
        with read_transaction(request.app.state.engine) as session:
            rules = service.screening_rules(service.trial_by_id(session, trial_id))
        evaluated = service.evaluate_screening(rules, screening)
        with unit_of_work(request, principal) as (session, actor):
            result = service.screen(session, actor, trial_id, screening, evaluated, key)
            return int(result.participant_id)

    try:
        participant_id = await run_in_threadpool(work)
    except InputError as exc:
        context["errors"][_screen_error_key(form, exc.field or "")] = str(exc)
        return render(request, "screen.html", context, status=422)
    return RedirectResponse(f"/web/trials/{trial_id}/participants/{participant_id}", status_code=303)


def _screen_error_key(form: FormDef | None, field: str) -> str:
    """Where a screening error is shown: a screening-form field as ``form.NAME``, else the field."""
    if form is not None:
        last = field.rsplit(".", 1)[-1]
        if form.field(last) is not None:
            return f"form.{last}"
    return field


@router.get("/trials/{trial_id}/screening-log")
def screening_log(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, SCREENING_READERS)
    with unit_of_work(request, principal) as (session, actor):
        view = service.trial_view(session, service.trial_by_id(session, trial_id), actor)
        rows = service.screening_log(session, actor, trial_id)
    context = {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "rows": rows,
    }
    return render(request, "screening_log.html", context)


@router.get("/trials/{trial_id}/participants")
def participants(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, DATA_READERS)
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        view = service.trial_view(session, trial, actor)
        rows = []
        for p in service.list_participants(session, actor, trial_id):
            row = service.participant_view(session, p)
            if p.status == "randomized" and actor.role == "pharmacist":
                # the arm reaches a page through allocation_public only (unblinded roles; audited)
                row["allocation"] = service.allocation_public(
                    service.get_allocation(session, actor, trial_id, p.id), actor
                )
            rows.append(row)
    context = {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "rows": rows,
        "show_arm": any("arm" in r.get("allocation", {}) for r in rows),
    }
    return render(request, "participants.html", context)


@router.get("/trials/{trial_id}/participants/{participant_id}")
def participant_page(request: Request, trial_id: int, participant_id: int) -> Response:
    principal = signed_in(request, DATA_READERS)
    with unit_of_work(request, principal) as (session, actor):
        trial, spec = _trial(session, trial_id)
        view = service.trial_view(session, trial, actor)
        p = service.participant_by_id(session, trial, participant_id, actor)
        participant = service.participant_view(session, p)
        allocation = None
        if p.status in ("randomized", "withdrawn") and participant["kit_number"] is not None:
            allocation = service.allocation_public(
                service.get_allocation(session, actor, trial_id, participant_id), actor
            )
        casebook = None
        if spec is not None and actor.role in CLINICAL_READERS and participant["kit_number"] is not None:
            casebook = datamanagement.casebook(session, actor, trial_id, participant_id)
    context = {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "p": participant,
        "allocation": allocation,
        "casebook": casebook,
        "can_randomize": principal.role in INVESTIGATOR and participant["status"] == "eligible",
        "idempotency_key": secrets.token_hex(16),
        "meaning": spec.signature_meaning if spec is not None else "",
        "form_labels": {k: f.label for k, f in spec.forms.items()} if spec is not None else {},
        "sign_error": request.query_params.get("sign_error"),
    }
    return render(request, "participant.html", context)


@router.post("/trials/{trial_id}/participants/{participant_id}/randomize")
async def randomize(request: Request, trial_id: int, participant_id: int) -> Response:
    principal, data = await posted(request, INVESTIGATOR)
    key = str(data.get("idempotency_key", "")) or None

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            service.randomize(session, actor, trial_id, participant_id, key)

    await run_in_threadpool(work)
    return RedirectResponse(f"/web/trials/{trial_id}/participants/{participant_id}", status_code=303)


@router.post("/trials/{trial_id}/participants/{participant_id}/visits/{visit}/sign")
async def sign_visit(request: Request, trial_id: int, participant_id: int, visit: str) -> Response:
    """The investigator's signature: the password again and the trial's meaning (21 CFR 11.200)."""
    principal, data = await posted(request, INVESTIGATOR)
    password, meaning = str(data.get("password", "")), str(data.get("meaning", ""))
    if data.get("affirm") != "yes":
        meaning = ""  # not affirmed: the signature function refuses a meaning that differs

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            datamanagement.sign_visit(session, actor, trial_id, participant_id, visit, password, meaning)

    target = f"/web/trials/{trial_id}/participants/{participant_id}"
    try:
        await run_in_threadpool(work)
    except (service.TrialError, InputError) as exc:
        message = exc.message if isinstance(exc, service.TrialError) else str(exc)
        return RedirectResponse(
            f"{target}?{urlencode({'sign_error': message})}#visit-{visit}", status_code=303
        )
    return RedirectResponse(f"{target}#visit-{visit}", status_code=303)


# ------------------------------------------------------------------------------------- forms


def _form_context(
    request: Request, principal: Principal, trial_id: int, participant_id: int, visit: str, form_id: str
) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        trial, spec = _trial(session, trial_id)
        if spec is None:
            raise PageError(404, "this trial has no forms")
        view = service.trial_view(session, trial, actor)
        p = service.participant_by_id(session, trial, participant_id, actor)
        schedule = {v.id: v for v in spec.schedule()}
        if visit not in schedule or form_id not in schedule[visit].forms:
            raise PageError(404, f"form {form_id} is not collected at visit {visit}")
        form = forms.form_definition(spec, form_id)
        book = datamanagement.casebook(session, actor, trial_id, participant_id)
        record = next(v for v in book["visits"] if v["visit"] == visit)["forms"][form_id]
        queries = [
            q
            for q in next(v for v in book["visits"] if v["visit"] == visit)["queries"]
            if q.get("form") == form_id
        ]
        history = forms.history(session, actor, trial_id, record["id"]) if record else []
    values: dict[str, str] = {}
    if record:
        values = {k: _shown(v) for k, v in record["values"].items()}
        values.update({f"{k}__not_done": str(v) for k, v in record["not_done"].items()})
    return {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "pseudonym": p.pseudonym,
        "participant_id": participant_id,
        "visit": schedule[visit],
        "form_id": form_id,
        "form": form,
        "record": record,
        "queries": queries,
        "history": history,
        "values": values,
        "visit_date": record["visit_date"] if record else date.today().isoformat(),
        "errors": {},
        "error": None,
        "form_url": _form_url(trial_id, participant_id, visit, form_id),
        "field_labels": {f.name: f.label for f in form.fields},
        "units": field_units(form),
        "reason": "",
        "can_edit": principal.role in INVESTIGATOR,
        "can_raise": principal.role in QUERY_MANAGERS,
        "can_answer": principal.role in INVESTIGATOR,
        "saved": request.query_params.get("saved") == "1",
    }


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _form_url(trial_id: int, participant_id: int, visit: str, form_id: str) -> str:
    return f"/web/trials/{trial_id}/participants/{participant_id}/visits/{visit}/forms/{form_id}"


@router.get("/trials/{trial_id}/participants/{participant_id}/visits/{visit}/forms/{form_id}")
def form_page(request: Request, trial_id: int, participant_id: int, visit: str, form_id: str) -> Response:
    principal = signed_in(request, CLINICAL_READERS)
    context = _form_context(request, principal, trial_id, participant_id, visit, form_id)
    return render(request, "form.html", context)


@router.post("/trials/{trial_id}/participants/{participant_id}/visits/{visit}/forms/{form_id}")
async def save_form(
    request: Request, trial_id: int, participant_id: int, visit: str, form_id: str
) -> Response:
    """As ``PUT .../forms/{form}``: :func:`~immunostrat.trial.forms.save_form` checks and saves;
    its error is shown next to the field it names, and nothing is written."""
    principal, data = await posted(request, INVESTIGATOR)
    context = await run_in_threadpool(
        _form_context, request, principal, trial_id, participant_id, visit, form_id
    )
    form: FormDef = context["form"]
    values, not_done = form_values(form, data)
    context["values"] = {k: str(v) for k, v in data.items() if k != CSRF_FIELD}
    context["visit_date"] = str(data.get("visit_date", ""))
    reason = str(data.get("reason", "")).strip() or None
    context["reason"] = reason or ""
    try:
        body = FormIn.model_validate(
            {"visit_date": context["visit_date"], "values": values, "not_done": not_done, "reason": reason},
            strict=False,
        )
    except ValidationError as exc:
        for e in exc.errors():
            context["errors"][str(e["loc"][0])] = f"{e['loc'][0]}: {e['msg']}"
        return render(request, "form.html", context, status=422)

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            forms.save_form(session, actor, trial_id, participant_id, visit, form_id, body)

    try:
        await run_in_threadpool(work)
    except InputError as exc:
        context["errors"][field_key(form_id, exc.field)] = str(exc)
        return render(request, "form.html", context, status=422)
    return RedirectResponse(_form_url(trial_id, participant_id, visit, form_id) + "?saved=1", status_code=303)


# ------------------------------------------------------------------------------------- queries


@router.post("/trials/{trial_id}/participants/{participant_id}/visits/{visit}/forms/{form_id}/queries")
async def raise_query(
    request: Request, trial_id: int, participant_id: int, visit: str, form_id: str
) -> Response:
    principal, data = await posted(request, QUERY_MANAGERS)
    try:
        body = QueryIn.model_validate(
            {
                "visit": visit,
                "form": form_id,
                "field": str(data.get("field", "")),
                "text": str(data.get("text", "")),
            },
            strict=False,
        )
    except ValidationError as exc:
        raise PageError(422, "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from None

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            datamanagement.raise_query(session, actor, trial_id, participant_id, body)

    await run_in_threadpool(work)
    return await _thread_or_page(request, principal, trial_id, participant_id, visit, form_id)


@router.post("/trials/{trial_id}/queries/{query_id}/{action}")
async def query_action(request: Request, trial_id: int, query_id: int, action: str) -> Response:
    """Answer (investigator), close or re-raise (monitor, statistician) a query."""
    actions = {
        "answer": (INVESTIGATOR, datamanagement.answer_query),
        "close": (QUERY_MANAGERS, datamanagement.close_query),
        "reopen": (QUERY_MANAGERS, datamanagement.reopen_query),
    }
    if action not in actions:
        raise PageError(404, "no such action")
    roles, act = actions[action]
    principal, data = await posted(request, roles)
    text = str(data.get("text", "")).strip()
    if len(text) < 3:
        raise PageError(422, "the reply needs at least 3 characters")

    def work() -> dict[str, Any]:
        with unit_of_work(request, principal) as (session, actor):
            query = act(session, actor, trial_id, query_id, text)
            record = forms.record_by_id(
                session, service.trial_by_id(session, trial_id), query.record_id, actor
            )
            return {"participant_id": record.participant_id, "visit": record.visit_id, "form": record.form_id}

    where = await run_in_threadpool(work)
    return await _thread_or_page(
        request, principal, trial_id, where["participant_id"], where["visit"], where["form"]
    )


async def _thread_or_page(
    request: Request, principal: Principal, trial_id: int, participant_id: int, visit: str, form_id: str
) -> Response:
    """For htmx the form's query threads as a fragment; without script, back to the form page."""
    if not request.headers.get("HX-Request"):
        return RedirectResponse(_form_url(trial_id, participant_id, visit, form_id), status_code=303)
    context = await run_in_threadpool(
        _form_context, request, principal, trial_id, participant_id, visit, form_id
    )
    return render(request, "_queries.html", context)


# ------------------------------------------------------------------------------------- work lists


@router.get("/trials/{trial_id}/visits")
def overdue_visits(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, CLINICAL_READERS)
    with unit_of_work(request, principal) as (session, actor):
        view = service.trial_view(session, service.trial_by_id(session, trial_id), actor)
        report = datamanagement.visit_report(session, actor, trial_id)
    context = {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "report": report,
        "rows": [v for v in report["visits"] if v["state"] in ("overdue", "due", "partial")],
    }
    return render(request, "visits.html", context)


@router.get("/trials/{trial_id}/queries")
def open_queries(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, CLINICAL_READERS)
    with unit_of_work(request, principal) as (session, actor):
        view = service.trial_view(session, service.trial_by_id(session, trial_id), actor)
        rows = datamanagement.list_queries(session, actor, trial_id, "open")
        rows += datamanagement.list_queries(session, actor, trial_id, "answered")
        pids = {p.pseudonym: p.id for p in service.list_participants(session, actor, trial_id)}
    for row in rows:
        row["participant_id"] = pids.get(row.get("pseudonym", ""))
    context = {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "rows": rows,
    }
    return render(request, "queries.html", context)


@fallback.get("/{rest:path}")
def not_found(request: Request, rest: str) -> Response:
    """Any other address under /web: a page (with the security headers), not the API's JSON 404."""
    raise PageError(404, "no such page")
