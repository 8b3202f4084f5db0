"""What every page shares: the router class that turns errors into pages and adds the security
headers, rendering, the signed-in check (the roles of the API operation a page stands for), the
CSRF-checked POST, role-aware navigation that each area's module extends, and turning HTML form
strings into the JSON types the API receives."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from immunostrat.api import clinical, data_routes, routes
from immunostrat.api.auth import Principal, RoleDependency
from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.definition import FieldDef, FormDef
from immunostrat.web.session import (
    CSRF_FIELD,
    SignedOut,
    clear_session,
    csrf_ok,
    csrf_token,
    principal_of,
    secure,
)

logger = logging.getLogger("immunostrat.web")
HERE = Path(__file__).resolve().parent
STATIC_FILES = {"htmx.min.js": "text/javascript", "site.css": "text/css"}


def _roles(dependency: RoleDependency) -> frozenset[str]:
    """The roles the API's dependency lets through: one source for the API and the pages."""
    return frozenset(dependency.allowed_roles)  # type: ignore[attr-defined]


ANY = _roles(routes.ANY)
"""Every trial role."""
SIGNED_IN = _roles(routes.SIGNED_IN)
"""Every role, trial roles and care roles (clinician, researcher, modeller) alike."""
CLASSIFIERS = _roles(clinical.CLASSIFIERS)
"""The roles of POST /classify (the bedside page)."""
INVESTIGATOR = _roles(routes.INVESTIGATOR)
DATA_READERS = _roles(routes.DATA_READERS)
CLINICAL_READERS = _roles(data_routes.CLINICAL_READERS)
SCREENING_READERS = _roles(data_routes.SCREENING_READERS)
QUERY_MANAGERS = _roles(data_routes.QUERY_MANAGERS)

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", {"status": status, "message": message}, status=status)


class WebRoute(APIRoute):
    """Every page's answer carries the security headers; a missing or expired session sends the
    browser to the sign-in page; errors become pages, never JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignedOut:
                response = to_sign_in(request)
            except HTTPException as exc:
                if exc.status_code == 401:
                    response = to_sign_in(request)
                else:
                    response = error_page(request, exc.status_code, str(exc.detail))
            except PageError as exc:
                response = error_page(request, exc.status, exc.message)
            except service.TrialError as exc:
                response = error_page(request, exc.status, exc.message)
            except InputError as exc:
                response = error_page(request, 422, str(exc))
            except RequestValidationError:
                response = error_page(request, 404, "no such page")
            except Exception:  # logged with its traceback; the answer is still a page with the headers
                logger.exception("unhandled error in %s %s", request.method, request.url.path)
                response = error_page(request, 500, "internal server error (logged)")
            return secure(response)

        return page


def page_router() -> APIRouter:
    """A router for one area's pages: under /web, answered by :class:`WebRoute`, not in the OpenAPI."""
    return APIRouter(prefix="/web", route_class=WebRoute, include_in_schema=False)


def to_sign_in(request: Request) -> Response:
    response = RedirectResponse("/web/sign-in", status_code=303)
    if request.headers.get("HX-Request"):
        response.headers["HX-Redirect"] = "/web/sign-in"
    clear_session(response, request)
    return response


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    values = {"user": None, "nav": None, **context}
    if values["user"] is not None:
        values["main_nav"] = main_nav(values["user"]["role"])
    html = env.get_template(template).render(
        request=request, csrf=csrf_token(request), csrf_field=CSRF_FIELD, **values
    )
    return HTMLResponse(html, status_code=status)


def signed_in(request: Request, roles: Iterable[str]) -> Principal:
    """The session's principal, when its role may see the page (the role the API operation allows)."""
    principal = principal_of(request)
    if principal.role not in roles:
        raise PageError(403, f"role {principal.role!r} may not open this page")
    return principal


async def posted(request: Request, roles: Iterable[str]) -> tuple[Principal, FormData]:
    """A POST from a signed-in user of ``roles`` with the session's CSRF token (403 otherwise)."""
    principal = signed_in(request, roles)
    data = await request.form()
    if not csrf_ok(request, data.get(CSRF_FIELD)):
        raise PageError(403, "the form's security token is missing or wrong: reload the page and try again")
    return principal, data


def user_of(request: Request, principal: Principal) -> dict[str, Any]:
    return {"username": principal.username, "role": principal.role}


def field_key(form_id: str, field: str | None) -> str:
    """The form field an error names (``sle_visit.hemoglobin`` -> ``hemoglobin``)."""
    if not field:
        return ""
    return field.split(".", 1)[1] if field.startswith(form_id + ".") else field


def typed(f: FieldDef, raw: str) -> Any:
    """An HTML input's text as the JSON type the API takes; what does not parse is passed on as
    text, for the form's own check to refuse with its message."""
    if f.type in ("number", "integer"):
        try:
            number = float(raw)
        except ValueError:
            return raw
        return int(number) if f.type == "integer" and number.is_integer() else number
    if f.type == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    return raw


def field_units(form: FormDef | None) -> dict[str, list[str]]:
    """The units a number field may be typed in: its own first, then its concept's accepted units
    (the form's check converts them, as for ``{"value": v, "unit": u}`` on the API)."""
    if form is None:
        return {}
    concepts = load_concepts()
    out = {}
    for f in form.fields:
        if f.type in ("number", "integer") and f.concept is not None:
            out[f.name] = list(dict.fromkeys([f.stored_unit, *concepts[f.concept].accepted_units]))
    return out


def form_values(form: FormDef, data: FormData, prefix: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    not_done: dict[str, str] = {}
    for f in form.fields:
        raw = str(data.get(prefix + f.name, "")).strip()
        reason = str(data.get(prefix + f.name + "__not_done", "")).strip()
        unit = str(data.get(prefix + f.name + "__unit", "")).strip()
        if raw:
            value = typed(f, raw)
            values[f.name] = {"value": value, "unit": unit} if unit and unit != f.stored_unit else value
        elif reason:
            not_done[f.name] = reason
    return values, not_done


# ------------------------------------------------------------------------------------- navigation


@dataclass(frozen=True)
class NavEntry:
    path: str
    """Under /web (main pages) or under /web/trials/{id} (trial pages; "" is the overview)."""
    label: str
    roles: frozenset[str]
    rank: int = 50
    """Order in the trial navigation (lower first)."""


MAIN_PAGES: list[NavEntry] = []
TRIAL_PAGES: list[NavEntry] = []


def add_main_page(path: str, label: str, roles: Iterable[str]) -> None:
    """List a page in the top navigation for ``roles`` (each area's module lists its own)."""
    MAIN_PAGES.append(NavEntry(path, label, frozenset(roles)))


def add_trial_page(path: str, label: str, roles: Iterable[str], rank: int = 50) -> None:
    """List a trial's page (``path`` under /web/trials/{id}) in the trial navigation for ``roles``
    (``rank`` orders it: the data-entry pages are 10-19, oversight 20-39, records 40-59, admin 60+)."""
    TRIAL_PAGES.append(NavEntry(path, label, frozenset(roles), rank))


def main_nav(role: str) -> list[tuple[str, str]]:
    """Home first, then the other pages in the order of their paths (stable whatever the import order)."""
    ordered = sorted(MAIN_PAGES, key=lambda e: (e.path != "/", e.path))
    return [(f"/web{e.path}", e.label) for e in ordered if role in e.roles]


def trial_nav(principal: Principal, trial_id: int) -> list[tuple[str, str]]:
    """The trial's pages this role may open (role-aware navigation)."""
    base = f"/web/trials/{trial_id}"
    ordered = sorted(TRIAL_PAGES, key=lambda e: e.rank)
    return [(f"{base}{e.path}", e.label) for e in ordered if principal.role in e.roles]
