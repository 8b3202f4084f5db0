"""The FastAPI application factory: storage, signing key, error handling, routers.

``create_app(db_url)`` migrates the database, loads the token signing keys from the environment or
a key file (:func:`~immunostrat.api.auth.load_token_keys`; never from the database), and mounts the
REST, clinical and CDS Hooks routes. Run it with uvicorn:
``uvicorn --factory immunostrat.api.app:app_from_env`` reads ``IMMUNOSTRAT_DB_URL``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from immunostrat import __version__
from immunostrat.api.auth import Principal, TokenKeys, TokenSource, confirm, load_token_keys
from immunostrat.api.docs import install_offline_docs
from immunostrat.api.fairlock import FairLock
from immunostrat.api.openapi_errors import install_error_responses
from immunostrat.api.throttle import SIGN_IN_PATHS, LoginLimits, LoginThrottle, SignInCounts
from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.audit import Actor
from immunostrat.trial.db import transaction
from immunostrat.trial.demo import DemoInfo
from immunostrat.trial.ops import open_db

DEFAULT_TOKEN_MINUTES = 30.0

logger = logging.getLogger("immunostrat.api")


MAX_BODY_BYTES = 5 * 1024 * 1024
"""Largest request body: a screening's or a bedside bundle's observations fit many times over (the
same bound as a FHIR server's answer in ``cds.fhir_fetch``); a 53 MB body took a minute and 2.8 GB."""


def _json_problem(body: bytes) -> tuple[str, str] | None:
    """(field, message) when the JSON body repeats a key or holds a number that is not finite
    (``NaN``, ``Infinity``, ``1e400``): the standard parser would keep the last key and ``inf``."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, value in items:
            if "\x00" in key:
                raise _Refused("", "a key holds a NUL character")
            if key in seen:
                raise _Refused(key, f"duplicate key {key!r}: each key once")
            if _holds_nul(value):
                raise _Refused(key, "NUL characters are not allowed")
            seen.add(key)
        return dict(items)

    def constant(name: str) -> float:
        raise _Refused("", f"{name} is not a number JSON allows: finite numbers only")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _Refused("", f"{text} is out of range: finite numbers only")
        return value

    try:
        parsed = json.loads(body, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
        if isinstance(parsed, list) and _holds_nul(parsed):
            raise _Refused("", "NUL characters are not allowed")
    except _Refused as refused:
        return refused.field, refused.message
    except ValueError:
        return None  # not JSON at all: the route's own validation answers that
    return None


def _holds_nul(value: Any) -> bool:
    """A string with NUL in ``value`` or its lists (objects were checked as they were built):
    PostgreSQL refuses NUL in text, and no one types it."""
    if isinstance(value, str):
        return "\x00" in value
    return isinstance(value, list) and any(_holds_nul(v) for v in value)


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class RequestLimits:
    """Bodies over :data:`MAX_BODY_BYTES` are refused (413) before anything reads them, and JSON
    bodies with a repeated key, a non-finite number or a NUL character (422), for every route
    alike (CDS Hooks feedback included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await self._refuse(scope, receive, send, 413, None, self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await self._refuse(scope, receive, send, 413, None, self._too_large())
                return
            chunks.append(chunk)
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"") and body:
            problem = _json_problem(body)
            if problem is not None:
                field, message_text = problem
                detail = f"field '{field}': {message_text}" if field else message_text
                await self._refuse(scope, receive, send, 422, field or None, detail)
                return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _too_large() -> str:
        return f"request body larger than {MAX_BODY_BYTES} bytes"

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status: int, field: str | None, detail: str
    ) -> None:
        response = JSONResponse(status_code=status, content={"detail": detail, "field": field})
        await response(scope, receive, send)


class ServerErrors:
    """The last line for errors nothing else handles: logged with the traceback, answered as a JSON
    500, and not raised further. (Starlette's own handler re-raises after answering, and the server
    then drops the connection the client keeps alive, so the client's next request got no answer.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # half a response is out: only closing the connection is left
                raise
            response = JSONResponse(
                status_code=500, content={"detail": "internal server error (logged)", "field": None}
            )
            await response(scope, receive, send)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:] or parts[:1]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": _field_of(e.get("loc", ())),
                "message": str(e.get("msg", "invalid")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return JSONResponse(
            status_code=422,
            content={
                "detail": f"field '{first['field']}': {first['message']}",
                "field": first["field"],
                "errors": errors,
            },
        )

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(
            status_code=422, content={"detail": str(exc), "field": exc.field, "error": exc.as_dict()}
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # a unique key taken by a request that committed first (the checks before the write ran
        # before it did): the same answer as when the check sees it
        logger.info("integrity conflict: %s", exc.orig)
        return JSONResponse(
            status_code=409,
            content={
                "detail": "conflicts with a record written at the same time: read it back or retry",
                "field": None,
            },
        )

    @app.exception_handler(service.TrialError)
    async def _trial(_: Request, exc: service.TrialError) -> JSONResponse:
        detail = f"field '{exc.field}': {exc.message}" if exc.field else exc.message
        return JSONResponse(status_code=exc.status, content={"detail": detail, "field": exc.field})


@contextmanager
def unit_of_work(request: Request, principal: Principal) -> Iterator[tuple[Session, Actor]]:
    """One transaction for one request, with the caller re-checked against the database."""
    with transaction(request.app.state.engine) as session:
        yield session, confirm(session, principal)


@contextmanager
def one_at_a_time(request: Request, name: str) -> Iterator[None]:
    """Within this worker process, one ``name`` transaction at a time.

    For transactions the database serialises anyway (randomizations of a trial wait on its row
    lock, every write on the audit head): letting 40 threadpool threads queue inside the database
    only makes the holder of the lock share the CPU and the GIL with the waiters, which stretches
    the time it holds the lock. Waiting here instead costs no database connection and no CPU; the
    database lock still orders the workers among themselves. First come, first served
    (:class:`~immunostrat.api.fairlock.FairLock`), so that no request waits behind later ones."""
    locks: dict[str, FairLock] = request.app.state.serial_locks
    lock = locks.setdefault(name, FairLock())
    with lock:
        yield


def create_app(
    db_url: str,
    *,
    secret_key: str | None = None,
    token_minutes: float | None = None,
    login_limits: LoginLimits | None = None,
) -> FastAPI:
    """The service over ``db_url`` (SQLite file or PostgreSQL URL); the schema is migrated first.

    The token signing key is ``secret_key``, else the keys of
    :func:`~immunostrat.api.auth.load_token_keys` (environment, key file, or for SQLite a key file
    generated next to the database at the first start; several workers read the same file).
    Failed sign-ins are throttled per username and address (:mod:`immunostrat.api.throttle`;
    ``login_limits``, else the environment)."""
    from immunostrat.api.cds import router as cds_router
    from immunostrat.api.clinical import router as clinical_router
    from immunostrat.api.routes import router as trial_router
    from immunostrat.web import router as web_router

    keys: TokenSource = TokenKeys(secret_key) if secret_key else load_token_keys(db_url)
    engine = open_db(db_url)
    minutes = token_minutes
    if minutes is None:
        minutes = float(os.environ.get("IMMUNOSTRAT_TOKEN_MINUTES", DEFAULT_TOKEN_MINUTES))
    app = FastAPI(
        title="immunostrat precision-trial service",
        version=__version__,
        description=(
            "Screening with the immune-state protocol, stratified blinded randomization, data capture, "
            "hash-chained audit trail, analysis export, stateless classification and scoring, and a "
            "CDS Hooks 2.0 patient-view service. Log in at POST /token (OAuth2 password flow)."
        ),
        docs_url=None,  # /docs and /redoc come from api.docs, with their assets served here (no CDN)
        redoc_url=None,
    )
    install_offline_docs(app)
    app.state.engine = engine
    app.state.serial_locks = {}
    app.state.signing_key = keys  # auth.issue_token and decode_token take it as it is
    app.state.token_minutes = minutes
    _install_error_handlers(app)
    app.state.sign_in_counts = SignInCounts(engine, login_limits or LoginLimits.from_env())
    app.add_middleware(LoginThrottle, counts=app.state.sign_in_counts)
    app.add_middleware(RequestLimits)
    app.add_middleware(ServerErrors)  # added last: the outermost, so it also covers RequestLimits
    app.include_router(trial_router)
    app.include_router(clinical_router)
    app.include_router(cds_router)
    app.include_router(web_router)  # the pages under /web (outside the OpenAPI document)
    _document_throttling(app)
    install_error_responses(app)  # every error status and body in the OpenAPI document; 405 Allow
    return app


def _document_throttling(app: FastAPI) -> None:
    """The sign-in routes' 429 (with ``Retry-After``) in the OpenAPI document, as they answer it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path in SIGN_IN_PATHS:
            operation = schema.get("paths", {}).get(path, {}).get("post")
            if operation is not None:
                operation.setdefault("responses", {})["429"] = {
                    "description": "Too many failed sign-ins for this username or address",
                    "headers": {
                        "Retry-After": {
                            "description": "seconds to wait before the next attempt",
                            "schema": {"type": "integer"},
                        }
                    },
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "detail": {"type": "string"},
                                    "field": {"type": ["string", "null"]},
                                },
                                "required": ["detail"],
                            }
                        }
                    },
                }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: the database URL comes from ``IMMUNOSTRAT_DB_URL``."""
    url = os.environ.get("IMMUNOSTRAT_DB_URL")
    if not url:
        raise InputError(
            "IMMUNOSTRAT_DB_URL is not set", field="IMMUNOSTRAT_DB_URL", expected="a database URL"
        )
    return create_app(url)


def serve(
    db_url: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    worker_timeout_s: float | None = None,
) -> None:
    """Run the service with uvicorn until it stops. For ``--demo`` call :func:`prepare_demo` first
    and pass its ``db_url`` here (print its users and passwords: they are shown only once).
    With several ``workers`` one whose event loop is silent ``worker_timeout_s`` (default
    :data:`~immunostrat.api.workers.HUNG_AFTER_S`) is replaced."""
    import uvicorn

    if db_url is None:
        raise InputError(
            "a database URL is required", field="db", expected="sqlite:///FILE or postgresql://..."
        )
    if workers > 1:
        from immunostrat.api.workers import run_workers

        run_workers(db_url, host, port, workers, hung_after_s=worker_timeout_s)
        return
    uvicorn.run(create_app(db_url), host=host, port=port)


def prepare_demo(db_url: str | None = None) -> DemoInfo:
    """Create the demo trial (in a fresh SQLite file under a new temporary folder when ``db_url``
    is None); returns :class:`~immunostrat.trial.demo.DemoInfo` with the users' passwords."""
    import tempfile

    from immunostrat.trial.demo import create_demo

    url = db_url or f"sqlite:///{tempfile.mkdtemp(prefix='immunostrat-demo-')}/demo.db"
    return create_demo(url)
