"""Authentication (OAuth2 password flow, bcrypt-hashed passwords, expiring HS256 JWTs) and roles.

The role check runs from the token's claims before the request body is read, so a forbidden role
always gets 403; inside the request's transaction :func:`confirm` re-reads the user, so a
deactivated user or a changed role stops working at once, not when the token expires. Endpoints
that store nothing (``/classify``, ``/score``, CDS Hooks) confirm the user in a read-only
transaction (:func:`require_current`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from immunostrat.trial.audit import Actor
from immunostrat.trial.db import read_transaction
from immunostrat.trial.models import User
from immunostrat.trial.schemas import ROLES

ALGORITHM = "HS256"
ALL_ROLES: tuple[str, ...] = ROLES

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)


@dataclass(frozen=True)
class Principal:
    """Who the token says the caller is."""

    username: str
    role: str
    user_id: int
    site_id: int | None


def issue_token(user: User, key: str, minutes: float) -> tuple[str, int]:
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=minutes)
    claims = {
        "sub": user.username,
        "uid": user.id,
        "role": user.role,
        "site": user.site_id,
        "iat": now,
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM), int(minutes * 60)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )


def decode_token(token: str, key: str) -> Principal:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role", "uid"]}
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.PyJWTError:
        raise _unauthorized("invalid token") from None
    return Principal(str(claims["sub"]), str(claims["role"]), int(claims["uid"]), claims.get("site"))


def current_principal(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> Principal:
    if not token:
        raise _unauthorized("not authenticated: send 'Authorization: Bearer <token>' (POST /token)")
    return decode_token(token, request.app.state.signing_key)


def require(*roles: str) -> Callable[..., Principal]:
    """A dependency that lets only ``roles`` through (403 for the others)."""
    allowed = frozenset(roles)
    unknown = allowed - set(ALL_ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role!r} may not do this; allowed: {', '.join(sorted(allowed))}",
            )
        return principal

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency


def require_current(*roles: str) -> Callable[..., Principal]:
    """Like :func:`require`, and the user must still be active with the token's role (a read-only
    look-up: for endpoints that open no transaction of their own)."""
    by_claims = require(*roles)

    # the default form, not Annotated: a string annotation could not name the local ``by_claims``
    def dependency(request: Request, principal: Principal = Depends(by_claims)) -> Principal:
        confirm_current(request, principal)
        return principal

    dependency.allowed_roles = by_claims.allowed_roles  # type: ignore[attr-defined]
    return dependency


def confirm_current(request: Request, principal: Principal) -> Actor:
    """:func:`confirm` in a read-only transaction of its own."""
    with read_transaction(request.app.state.engine) as session:
        return confirm(session, principal)


def confirm(session: Session, principal: Principal) -> Actor:
    """The principal as it stands in the database now (401 when gone, inactive or changed)."""
    user = session.get(User, principal.user_id)
    if user is None or not user.active or user.username != principal.username or user.role != principal.role:
        raise _unauthorized("user no longer active with this role: log in again")
    return Actor(user.username, user.role, user.id, user.site_id)
