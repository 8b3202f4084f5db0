"""Authentication (OAuth2 password flow, bcrypt-hashed passwords, expiring HS256 JWTs) and roles.

The role check runs from the token's claims before the request body is read, so a forbidden role
always gets 403; inside the request's transaction :func:`confirm` re-reads the user, so a
deactivated user or a changed role stops working at once, not when the token expires. Endpoints
that store nothing (``/classify``, ``/score``, CDS Hooks) confirm the user in a read-only
transaction (:func:`require_current`).

The signing key never lives in the database (anyone who could read it could mint a token for any
role): it comes from ``IMMUNOSTRAT_TOKEN_KEY`` or the key file ``IMMUNOSTRAT_TOKEN_KEY_FILE``
(:func:`load_token_keys`). Rotation: the file holds one key per line, the first signs and the
others are still accepted until removed, so tokens issued before the rotation keep working for
their lifetime (``kid`` in each token's header names the key that signed it); the file is read
again when it changes, without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial.audit import Actor
from immunostrat.trial.db import normalise_url, read_transaction
from immunostrat.trial.models import User
from immunostrat.trial.schemas import ROLES

ALGORITHM = "HS256"
ALL_ROLES: tuple[str, ...] = ROLES

TOKEN_KEY_ENV = "IMMUNOSTRAT_TOKEN_KEY"
TOKEN_KEY_FILE_ENV = "IMMUNOSTRAT_TOKEN_KEY_FILE"
PREVIOUS_KEYS_ENV = "IMMUNOSTRAT_TOKEN_KEY_PREVIOUS"
LEGACY_KEY_ENV = "IMMUNOSTRAT_SECRET_KEY"
"""The earlier name of ``IMMUNOSTRAT_TOKEN_KEY``, still read."""
MIN_KEY_CHARS = 32
"""An HMAC-SHA256 key shorter than the hash output (32 bytes) weakens it (RFC 2104 section 3,
RFC 7518 section 3.2): 32 characters at the least; generated keys have 64 (48 random bytes)."""

logger = logging.getLogger("immunostrat.api")


@dataclass(frozen=True)
class TokenKeys:
    """The key that signs new tokens and the earlier keys still accepted (rotation)."""

    current: str
    previous: tuple[str, ...] = ()
    origin: str = "argument"

    def __post_init__(self) -> None:
        for key in (self.current, *self.previous):
            if len(key) < MIN_KEY_CHARS:
                raise InputError(
                    "token signing key too short",
                    field=self.origin,
                    expected=f"at least {MIN_KEY_CHARS} characters (e.g. `openssl rand -base64 48`)",
                )

    @staticmethod
    def kid(key: str) -> str:
        """Names a key in the token header without revealing it (SHA-256, 16 hex digits)."""
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def find(self, kid: object) -> str | None:
        for key in (self.current, *self.previous):
            if kid == self.kid(key):
                return key
        return None


def _keys_from_text(text: str, origin: str) -> TokenKeys:
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise InputError("the token key file holds no key", file=origin, expected="one key per line")
    return TokenKeys(keys[0], tuple(keys[1:]), origin)


class KeyFile:
    """Token keys read from a file, read again when the file changes (its size, time or inode), so
    that a rotation needs no restart: every worker sees the new file at its next request. A file
    that cannot be read at that moment (being rewritten in place) leaves the last keys in use;
    replace it with a rename to avoid that moment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys = self._read()

    def _read(self) -> TokenKeys:
        if not self.path.is_file():
            raise InputError(
                "token key file not found", file=str(self.path), field=TOKEN_KEY_FILE_ENV, expected="a file"
            )
        info = self.path.stat()
        keys = _keys_from_text(self.path.read_text(encoding="utf-8"), str(self.path))
        self._stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        return keys

    def keys(self) -> TokenKeys:
        try:
            info = self.path.stat()
            if (info.st_mtime_ns, info.st_size, info.st_ino) != self._stamp:
                self._keys = self._read()
                logger.info("token keys read again from %s", self.path)
        except (OSError, InputError) as exc:
            logger.warning("token key file %s unreadable (%s): the last keys stay in use", self.path, exc)
        return self._keys

    @property
    def current(self) -> str:
        return self.keys().current

    @property
    def previous(self) -> tuple[str, ...]:
        return self.keys().previous


TokenSource = TokenKeys | KeyFile


def default_key_file(db_url: str) -> Path | None:
    """Where a SQLite database's key is generated when none is configured: ``FILE.token-key`` next
    to the database (a demo, a single machine). None for a server database: configure the key."""
    url = make_url(normalise_url(db_url))
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(f"{url.database}.token-key")


def _create_key_file(path: Path) -> bool:
    """Write a new random key to ``path`` (mode 0600) unless it exists; True when written. The key
    is written to a temporary file first and linked into place, so that several workers starting at
    once all read one complete key."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def load_token_keys(db_url: str, env: Mapping[str, str] | None = None) -> TokenSource:
    """The token keys, from (first found) ``IMMUNOSTRAT_TOKEN_KEY_FILE``; ``IMMUNOSTRAT_TOKEN_KEY``
    (or its earlier name ``IMMUNOSTRAT_SECRET_KEY``) with ``IMMUNOSTRAT_TOKEN_KEY_PREVIOUS``
    (whitespace-separated earlier keys); for SQLite, :func:`default_key_file`, generated at the
    first start. Never from the database."""
    env = os.environ if env is None else env
    file_name = env.get(TOKEN_KEY_FILE_ENV, "").strip()
    if file_name:
        return KeyFile(Path(file_name))
    inline = env.get(TOKEN_KEY_ENV, "").strip() or env.get(LEGACY_KEY_ENV, "").strip()
    if inline:
        previous = tuple(env.get(PREVIOUS_KEYS_ENV, "").split())
        return TokenKeys(inline, previous, TOKEN_KEY_ENV)
    generated = default_key_file(db_url)
    if generated is None:
        raise InputError(
            "no token signing key configured",
            field=TOKEN_KEY_FILE_ENV,
            expected=f"{TOKEN_KEY_FILE_ENV}=FILE (one key per line, the first signs) or {TOKEN_KEY_ENV}",
        )
    if _create_key_file(generated):
        logger.warning(
            "token signing key generated in %s (mode 0600); set %s for a production service",
            generated,
            TOKEN_KEY_FILE_ENV,
        )
    return KeyFile(generated)


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)


@dataclass(frozen=True)
class Principal:
    """Who the token says the caller is."""

    username: str
    role: str
    user_id: int
    site_id: int | None


def _as_keys(key: str | TokenSource) -> TokenKeys:
    if isinstance(key, KeyFile):
        return key.keys()
    return key if isinstance(key, TokenKeys) else TokenKeys(key)


def issue_token(user: User, key: str | TokenSource, minutes: float) -> tuple[str, int]:
    """A signed token for ``user`` that expires after ``minutes``; its header names the key."""
    keys = _as_keys(key)
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
    headers = {"kid": TokenKeys.kid(keys.current)}
    return jwt.encode(claims, keys.current, algorithm=ALGORITHM, headers=headers), int(minutes * 60)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )


def decode_token(token: str, key: str | TokenSource) -> Principal:
    """The principal of a token signed with the current or an earlier key (401 otherwise)."""
    keys = _as_keys(key)
    try:
        signer = keys.find(jwt.get_unverified_header(token).get("kid"))
        if signer is None:
            raise _unauthorized("invalid token (signed with a key no longer accepted: log in again)")
        claims: dict[str, Any] = jwt.decode(
            token, signer, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role", "uid"]}
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.PyJWTError:
        raise _unauthorized("invalid token") from None
    return Principal(str(claims["sub"]), str(claims["role"]), int(claims["uid"]), claims.get("site"))


# The token checks are `async def`: they read no database and decode in microseconds, and FastAPI
# runs every plain `def` dependency in its thread pool (a hand-off each, on every request).
async def current_principal(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    if not token:
        raise _unauthorized("not authenticated: send 'Authorization: Bearer <token>' (POST /token)")
    return decode_token(token, request.app.state.signing_key)


RoleDependency = Callable[..., Principal | Awaitable[Principal]]
"""A FastAPI dependency that lets a set of roles through (``allowed_roles`` names them)."""


def require(*roles: str) -> RoleDependency:
    """A dependency that lets only ``roles`` through (403 for the others)."""
    allowed = frozenset(roles)
    unknown = allowed - set(ALL_ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role!r} may not do this; allowed: {', '.join(sorted(allowed))}",
            )
        return principal

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency


def require_current(*roles: str) -> RoleDependency:
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
