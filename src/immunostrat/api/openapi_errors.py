"""The error answers of every operation, in the OpenAPI document as the service gives them.

FastAPI documents only the success status and a 422 whose body (``detail`` as a list) is not the one
this service sends. :func:`install_error_responses` adds, to each operation of the generated
document, the error statuses it can answer, each with the body every error here has
(:data:`ERROR_BODY`: ``detail`` and ``field``, plus ``errors`` for a request that fails validation
and ``error`` for a refused value), and answers a method a path does not have (405) with an
``Allow`` header that lists every method of that path, not only those of the first route that
matched it. Which statuses an operation gets follows from the route itself:

- 400: a body that is not JSON or not a form (the framework's parser), or a domain refusal;
- 401: any operation with a security requirement (no token, a bad or expired one, a user no longer
  active with the token's role), and the sign-in itself (wrong username or password);
- 403: a role dependency narrower than every role (``require(...).allowed_roles``), or the domain
  refusing the caller (a site-bound user outside their site);
- 404: a path that names a record, and the user operations (a site or trial that does not exist);
- 409: any write, and any read under a trial (its state: not locked, not randomized, ...);
- 412: the CDS Hooks service when neither the prefetch nor the FHIR server gives what it needs;
- 413: any request with a body (the size limit holds for every route);
- 422: any operation with a parameter or a body (schema, domain values, duplicate keys, NUL,
  numbers that are not finite);
- 429: the sign-in routes, documented with ``Retry-After`` where throttling is installed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from immunostrat.api.auth import ALL_ROLES

ERROR_SCHEMA = "ErrorBody"
ERROR_BODY: dict[str, Any] = {
    "title": ERROR_SCHEMA,
    "type": "object",
    "description": "Every error answer: what went wrong and, where one field is to blame, which.",
    "properties": {
        "detail": {"type": "string", "description": "the reason, for a person"},
        "field": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "the field at fault (dotted path into the body, or a parameter's name)",
        },
        "errors": {
            "type": "array",
            "description": "every validation problem of the request (422 from validation)",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["field", "message"],
            },
        },
        "error": {
            "type": "object",
            "description": "the refused value and what was expected (422 from a domain check)",
        },
    },
    "required": ["detail"],
}
"""The body of every error answer (``app._install_error_handlers``, the middleware's 413/422/500,
the framework's HTTPException handler for 401/403/405/412, the sign-in throttle's 429)."""

DESCRIPTIONS = {
    "400": "The body could not be parsed (not JSON, not a form), or the request cannot be honoured",
    "401": "No token, an invalid or expired one, or its user is no longer active with that role",
    "403": "This role (or this user's site) may not do this",
    "404": "A record named in the request does not exist",
    "409": "Conflicts with the state of the record (locked, already done, written at the same time)",
    "412": "The prefetch lacks what the service needs and the FHIR server did not give it",
    "413": "The request body is larger than the service accepts",
    "422": "A parameter or the body is invalid (schema, domain rules, duplicate keys, NUL, infinities)",
    "429": "Too many failed sign-ins for this username or address",
}
_WRITES = frozenset({"post", "put", "patch", "delete"})
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def install_error_responses(app: FastAPI) -> None:
    """Document the error answers of every operation (wrapping ``app.openapi``, so whatever was
    documented before stays) and answer 405 with the path's full ``Allow`` header."""
    build = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        schema = build()
        if not done:
            add_error_responses(schema, app)
            app.openapi_schema = schema
            done = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(StarletteHTTPException, _allow_all_methods)


def add_error_responses(schema: dict[str, Any], app: FastAPI) -> None:
    """Add the error statuses of :func:`statuses_for` to each operation of ``schema`` (an existing
    entry keeps its description and headers; its body becomes :data:`ERROR_BODY`)."""
    schema.setdefault("components", {}).setdefault("schemas", {})[ERROR_SCHEMA] = ERROR_BODY
    routes = {(path, m.lower()): r for path, r in _api_routes(app.router.routes) for m in r.methods or ()}
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in statuses_for(path, method, operation, routes.get((path, method))):
                entry = responses.setdefault(status, {"description": DESCRIPTIONS[status]})
                entry["content"] = content
                if status == "401":
                    entry.setdefault("headers", {})["WWW-Authenticate"] = {
                        "description": "Bearer (where a token was expected)",
                        "schema": {"type": "string"},
                    }
    _drop_unused_validation_schemas(schema)


def statuses_for(path: str, method: str, operation: dict[str, Any], route: APIRoute | None) -> list[str]:
    """The error statuses ``method path`` can answer (see the module's list)."""
    secured = bool(operation.get("security"))
    has_body = "requestBody" in operation
    has_path_ids = "{" in path
    out: list[str] = []
    if has_body:
        out.append("400")
    if secured or path == "/token":
        out.append("401")
    if secured and (route is None or _narrow_roles(route.dependant) or has_path_ids):
        out.append("403")
    if has_path_ids or (secured and path.startswith("/users")):
        out.append("404")
    if secured and (method in _WRITES or path.startswith("/trials/{trial_id}")):
        out.append("409")
    if path.startswith("/cds-services/") and not path.endswith("/feedback") and method == "post":
        out.append("412")
    if method in _WRITES and method != "delete":
        out.append("413")
    if has_body or operation.get("parameters") or method in _WRITES:
        out.append("422")
    if "429" in operation.get("responses", {}):
        out.append("429")
    return out


def _narrow_roles(dependant: Dependant) -> bool:
    """Whether a role dependency of the route lets fewer than every role through."""
    for dep in _dependencies(dependant):
        roles = getattr(dep.call, "allowed_roles", None)
        if roles is not None and frozenset(roles) != frozenset(ALL_ROLES):
            return True
    return False


def _api_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """(path, route) of every API route, through included routers (FastAPI includes them lazily)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _api_routes(inner.routes, prefix + str(getattr(context, "prefix", "")))
        elif isinstance(route, APIRoute):
            yield prefix + route.path_format, route


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)


def _drop_unused_validation_schemas(schema: dict[str, Any]) -> None:
    """FastAPI's own 422 body schemas, once no operation refers to them."""
    components = schema.get("components", {}).get("schemas", {})
    text = json.dumps(schema.get("paths", {}))
    if "#/components/schemas/HTTPValidationError" not in text:
        components.pop("HTTPValidationError", None)
        if "#/components/schemas/ValidationError" not in text:
            components.pop("ValidationError", None)


async def _allow_all_methods(request: Request, exc: Exception) -> Response:
    """405 with ``Allow`` naming every method the OpenAPI document gives the path (the framework
    names only those of the first route that matched it); other HTTP errors as it answers them."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = _documented_methods(request.app, request.url.path)
        if allowed:
            headers = dict(exc.headers or {})
            headers["Allow"] = ", ".join(allowed)
            exc = StarletteHTTPException(405, exc.detail, headers=headers)
    return await http_exception_handler(request, exc)


def _documented_methods(app: FastAPI, path: str) -> list[str]:
    """The methods of the document's path template that ``path`` matches (HEAD with GET)."""
    patterns: dict[str, re.Pattern[str]] | None = getattr(app.state, "openapi_path_patterns", None)
    if patterns is None:
        patterns = {
            template: re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
            for template in app.openapi().get("paths", {})
        }
        app.state.openapi_path_patterns = patterns
    for template, pattern in patterns.items():
        if pattern.match(path):
            item = app.openapi()["paths"][template]
            methods = {m.upper() for m in _METHODS if m in item}
            if "GET" in methods:
                methods.add("HEAD")
            return sorted(methods)
    return []
