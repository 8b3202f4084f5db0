"""Who calls the CDS service: an EHR with a JWT it signed (CDS Hooks 2.0), or one of our users with
a token from ``POST /token``.

EHR JWTs are verified with joserfc, never by hand: asymmetric algorithms only (``none`` and HMAC are
refused before any key is looked at); keys from the client's configured JWKS, or fetched from the
``jku`` header when that URL is on the client's allow-list (cached, bounded timeout and size);
``iss`` must be a configured client, ``aud`` this service's endpoint URL, ``exp``, ``iat`` and
``jti`` present, and a ``jti`` is accepted once (kept in the database until the token expires, so
that every worker agrees).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from fastapi import Depends, HTTPException, Request, status
from joserfc import jwk, jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from immunostrat.api.auth import ALGORITHM as OWN_ALGORITHM
from immunostrat.api.auth import Principal, confirm_current, decode_token, oauth2_scheme
from immunostrat.api.cds.settings import CdsClient, CdsSettings, cds_settings, public_base
from immunostrat.trial.db import transaction
from immunostrat.trial.models import CdsTokenUse

# CDS Hooks 2.0 names RS384 and ES384; the other asymmetric JWS algorithms are accepted as well.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
JWKS_TIMEOUT_S = 5.0
JWKS_MAX_BYTES = 256 * 1024
JWKS_CACHE_S = 300.0
LEEWAY_S = 30


@dataclass(frozen=True)
class EhrCaller:
    """An EHR whose signed JWT was verified."""

    iss: str
    sub: str | None
    tenant: str | None


CdsCaller = Principal | EhrCaller


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"}
    )


_jwks_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_jwks_lock = threading.Lock()


def fetch_jwks(url: str) -> dict[str, Any]:
    """The JWK Set at ``url`` (cached for a few minutes; bounded time and size)."""
    now = time.monotonic()
    with _jwks_lock:
        cached = _jwks_cache.get(url)
        if cached and now - cached[0] < JWKS_CACHE_S:
            return cached[1]
    try:
        with httpx.stream("GET", url, timeout=JWKS_TIMEOUT_S, follow_redirects=False) as r:
            r.raise_for_status()
            body = b""
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise _unauthorized("the client's JWKS is too large")
        keys = json.loads(body)
    except (httpx.HTTPError, ValueError):
        raise _unauthorized("the client's JWKS (jku) could not be fetched") from None
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
        raise _unauthorized("the client's jku does not hold a JWK Set")
    with _jwks_lock:
        _jwks_cache[url] = (now, keys)
    return keys


def _key_set(client: CdsClient, header: dict[str, Any]) -> jwk.KeySet:
    jku = header.get("jku")
    if jku is not None:
        if jku not in client.jwks_url_allowed:
            raise _unauthorized(f"jku {jku!r} is not allowed for issuer {client.iss!r}")
        raw = fetch_jwks(str(jku))
    elif client.jwks is not None:
        raw = client.jwks
    else:
        raise _unauthorized("no jku in the JWT header and no keys configured for this issuer")
    try:
        return jwk.KeySet.import_key_set(raw)  # type: ignore[arg-type]
    except (JoseError, ValueError, KeyError, TypeError):
        raise _unauthorized("the client's JWK Set is not valid") from None


def _remember_jti(request: Request, iss: str, jti: str, expires: datetime) -> None:
    key = hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()
    now = datetime.now(UTC)
    try:
        with transaction(request.app.state.engine) as session:
            session.execute(delete(CdsTokenUse).where(CdsTokenUse.expires_at < now))
            session.add(CdsTokenUse(key=key, issuer=iss[:255], expires_at=expires))
    except IntegrityError:
        raise _unauthorized("JWT replayed: this jti was already used") from None


def verify_ehr_jwt(request: Request, token: str, settings: CdsSettings, header: dict[str, Any]) -> EhrCaller:
    """The verified caller, or 401 naming what failed."""
    alg = str(header.get("alg") or "")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise _unauthorized(
            f"JWT algorithm {alg or 'none'!r} refused; use an asymmetric one such as RS384 or ES384"
        )
    try:
        unverified = json.loads(jws.extract_compact(token.encode()).payload)
    except (JoseError, ValueError):
        raise _unauthorized("invalid token") from None
    iss = str(unverified.get("iss") or "") if isinstance(unverified, dict) else ""
    client = settings.clients.get(iss)
    if client is None:
        raise _unauthorized(f"issuer {iss or '(none)'!r} is not a configured CDS client")
    keys = _key_set(client, header)
    try:
        decoded = jwt.decode(token, keys, algorithms=[alg])
    except (JoseError, ValueError):
        raise _unauthorized("JWT signature does not verify with the issuer's keys") from None
    audiences = {
        f"{public_base(request, settings)}{request.url.path}",
        f"{public_base(request, settings)}/cds-services/{request.path_params.get('service_id', '')}".rstrip(
            "/"
        ),
    }
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY_S,
        iss={"essential": True, "value": client.iss},
        aud={"essential": True, "values": sorted(audiences)},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except JoseError as exc:
        raise _unauthorized(f"JWT claims refused: {exc.error}: {exc.description or ''}".strip(": ")) from None
    claims = decoded.claims
    _remember_jti(request, client.iss, str(claims["jti"]), datetime.fromtimestamp(int(claims["exp"]), UTC))
    return EhrCaller(client.iss, claims.get("sub"), claims.get("tenant"))


def cds_caller(
    request: Request,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    settings: Annotated[CdsSettings, Depends(cds_settings)],
) -> CdsCaller:
    """A dependency: the EHR (signed JWT) or the user (our own token) calling the CDS service."""
    if not token:
        raise _unauthorized("not authenticated: send 'Authorization: Bearer <JWT>'")
    try:
        header = dict(jws.extract_compact(token.encode()).protected)
    except (JoseError, ValueError):
        raise _unauthorized("invalid token") from None
    if header.get("alg") == OWN_ALGORITHM:
        principal = decode_token(token, request.app.state.signing_key)
        confirm_current(request, principal)  # a deactivated or re-roled user's token stops here
        return principal
    return verify_ehr_jwt(request, token, settings, header)
