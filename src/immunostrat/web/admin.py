"""The admin's pages: users (list, create, deactivate or reactivate, change the role; as
``GET/POST /users`` and ``PATCH /users/{id}``) and the database lock of a trial (as
``POST /trials/{id}/lock``), confirmed with the password again and the trial's code typed."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from immunostrat.api import routes
from immunostrat.api.app import unit_of_work
from immunostrat.api.auth import Principal
from immunostrat.errors import InputError
from immunostrat.trial import blinding, service
from immunostrat.trial.db import read_transaction
from immunostrat.trial.models import Trial, User
from immunostrat.trial.passwords import MIN_PASSWORD_CHARS, hash_password
from immunostrat.trial.schemas import CARE_ROLES, TRIAL_ROLES, UserIn, UserUpdate
from immunostrat.web.core import (
    PageError,
    _roles,
    add_main_page,
    add_trial_page,
    page_router,
    posted,
    render,
    signed_in,
    trial_nav,
    user_of,
)

router = page_router()

ADMIN_ROLES = _roles(routes.ADMIN)
"""The roles of /users and POST /trials/{id}/lock."""
ROLES = (*TRIAL_ROLES, *CARE_ROLES)

add_main_page("/users", "Users", ADMIN_ROLES)
add_trial_page("/lock", "Database lock", ADMIN_ROLES, rank=60)


# ------------------------------------------------------------------------------------- users


def _users_context(request: Request, principal: Principal) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        users = [service.user_view(u) for u in session.scalars(select(User).order_by(User.id))]
        trials = [
            blinding.blind_trial_view(service.trial_view(session, t, actor), actor)
            for t in session.scalars(select(Trial).order_by(Trial.id))
        ]
        me = actor.user_id
    sites = {s["id"]: f"{t['code']} {s['code']}" for t in trials for s in t["sites"]}
    for u in users:
        u["site"] = sites.get(u["site_id"], "") if u["site_id"] is not None else ""
        u["is_me"] = u["id"] == me
    return {
        "user": user_of(request, principal),
        "users": users,
        "roles": ROLES,
        "min_password": MIN_PASSWORD_CHARS,
        "sites": [
            (f"{t['id']}:{s['code']}", f"{t['code']} site {s['code']} ({s['name']})")
            for t in trials
            for s in t["sites"]
        ],
        "values": {},
        "errors": {},
        "row_errors": {},
        "done": request.query_params.get("done"),
    }


@router.get("/users")
def users_page(request: Request) -> Response:
    principal = signed_in(request, ADMIN_ROLES)
    return render(request, "admin_users.html", _users_context(request, principal))


@router.post("/users")
async def create_user(request: Request) -> Response:
    """As ``POST /users``: the password policy and the username rules of :class:`UserIn`; each
    error next to its field; the password hashed before the transaction, as the API does."""
    principal, data = await posted(request, ADMIN_ROLES)
    context = await run_in_threadpool(_users_context, request, principal)
    values = {k: str(data.get(k, "")).strip() for k in ("username", "role", "site")}
    context["values"] = values
    errors: dict[str, str] = context["errors"]
    body: dict[str, Any] = {
        "username": values["username"],
        "password": str(data.get("password", "")),
        "role": values["role"],
    }
    if values["site"]:
        trial_text, _, site = values["site"].partition(":")
        body.update(trial_id=int(trial_text) if trial_text.isdigit() else None, site=site)
    try:
        spec = UserIn.model_validate(body, strict=False)
    except ValidationError as exc:
        for e in exc.errors():
            key = (
                "site"
                if e["loc"] and e["loc"][0] == "trial_id"
                else str(e["loc"][0])
                if e["loc"]
                else "username"
            )
            errors.setdefault(key, str(e["msg"]).removeprefix("Value error, "))
        return render(request, "admin_users.html", context, status=422)
    hashed = await run_in_threadpool(hash_password, spec.password)

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            service.create_user(session, actor, spec, password_hash=hashed)

    try:
        await run_in_threadpool(work)
    except (InputError, service.TrialError) as exc:
        message = str(exc) if isinstance(exc, InputError) else exc.message
        errors["site" if exc.field in ("site", "trial_id") else "username"] = message
        return render(request, "admin_users.html", context, status=422)
    return RedirectResponse(f"/web/users?done=created+{spec.username}", status_code=303)


@router.post("/users/{user_id}")
async def update_user(request: Request, user_id: int) -> Response:
    """As ``PATCH /users/{id}``: deactivate, reactivate or change the role (the admin cannot do
    either to themselves; the service refuses)."""
    principal, data = await posted(request, ADMIN_ROLES)
    change: dict[str, Any] = {}
    action = str(data.get("action", ""))
    if action in ("deactivate", "activate"):
        change["active"] = action == "activate"
    elif action == "role":
        change["role"] = str(data.get("role", ""))
    else:
        raise PageError(422, "no such change")
    try:
        spec = UserUpdate.model_validate(change, strict=False)
    except ValidationError as exc:
        raise PageError(422, f"{exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None

    def work() -> str:
        with unit_of_work(request, principal) as (session, actor):
            return str(service.update_user(session, actor, user_id, spec).username)

    try:
        username = await run_in_threadpool(work)
    except service.TrialError as exc:
        context = await run_in_threadpool(_users_context, request, principal)
        context["row_errors"] = {user_id: exc.message}
        return render(request, "admin_users.html", context, status=exc.status)
    done = {"activate": "reactivated", "deactivate": "deactivated", "role": "changed the role of"}[action]
    return RedirectResponse(f"/web/users?done={done}+{username}", status_code=303)


# ------------------------------------------------------------------------------------- lock


def _lock_context(request: Request, principal: Principal, trial_id: int) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        view = blinding.blind_trial_view(service.trial_view(session, trial, actor), actor)
    return {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "errors": {},
        "values": {},
    }


@router.get("/trials/{trial_id}/lock")
def lock_page(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, ADMIN_ROLES)
    return render(request, "admin_lock.html", _lock_context(request, principal, trial_id))


@router.post("/trials/{trial_id}/lock")
async def lock(request: Request, trial_id: int) -> Response:
    """As ``POST /trials/{id}/lock``, confirmed by the trial's code typed and the admin's password
    (checked outside the transaction, as at sign-in)."""
    principal, data = await posted(request, ADMIN_ROLES)
    context = await run_in_threadpool(_lock_context, request, principal, trial_id)
    trial = context["trial"]
    if trial["status"] == "locked":
        raise PageError(409, f"trial {trial['code']} is already locked")
    typed_code = str(data.get("code", "")).strip()
    context["values"] = {"code": typed_code}
    errors: dict[str, str] = context["errors"]
    if typed_code != trial["code"]:
        errors["code"] = f"type the trial's code, {trial['code']}, to confirm"
    password = str(data.get("password", ""))

    def check() -> bool:
        with read_transaction(request.app.state.engine) as session:
            user = session.scalars(select(User).where(User.username == principal.username)).one_or_none()
        return service.password_matches(user, password)

    if not await run_in_threadpool(check):
        errors["password"] = "wrong password"
    if errors:
        return render(request, "admin_lock.html", context, status=422)

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            service.lock_trial(session, actor, trial_id)

    await run_in_threadpool(work)
    return RedirectResponse(f"/web/trials/{trial_id}/lock", status_code=303)
