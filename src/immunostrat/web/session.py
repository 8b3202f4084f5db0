"""The pages' session: the API's own signed, expiring token kept in a cookie, a CSRF token derived
from it, the security headers of every page. Sign-in throttling is the API's (``app.state.sign_in_counts``,
counted in the service's database and shared by every worker).

The cookie holds the token ``POST /token`` would issue (:func:`~immunostrat.api.auth.issue_token`):
signed with the app's token key, expiring after the app's token minutes, checked with
:func:`~immunostrat.api.auth.decode_token` and re-read against the database on every request
(:func:`~immunostrat.api.auth.confirm`), so a deactivated user or a changed role stops at once, as
on the API. It is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it) and ``Secure`` when the request came over https.

CSRF: every form carries HMAC-SHA256(signing key, token) and every POST is refused (403) unless the
form's token equals it (a per-session synchronizer token, OWASP CSRF Prevention Cheat Sheet); a
page of another site cannot read it, and SameSite=Strict is the second line.
"""

from __future__ import annotations

import hashlib
import hmac

import jwt
from fastapi import HTTPException, Request
from starlette.responses import Response

from immunostrat.api.auth import KeyFile, Principal, TokenKeys, TokenSource, decode_token

COOKIE = "immunostrat_session"
CSRF_FIELD = "csrf_token"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""No inline script or style anywhere: htmx and the stylesheet come from /web/static."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes form posts send "Origin: null"
    "Cache-Control": "no-store",
}


class SignedOut(Exception):
    """No valid session: the page sends the browser to the sign-in page."""


def _keys(source: TokenSource) -> TokenKeys:
    return source.keys() if isinstance(source, KeyFile) else source


def principal_of(request: Request) -> Principal:
    """Who the session cookie names (the database check follows in the page's transaction)."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignedOut
    try:
        return decode_token(token, request.app.state.signing_key)
    except HTTPException:
        raise SignedOut from None


def csrf_token(request: Request) -> str:
    """HMAC-SHA256 of the session token under the key that signed it (empty when signed out)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return ""
    try:
        key = _keys(request.app.state.signing_key).find(jwt.get_unverified_header(token).get("kid"))
    except jwt.PyJWTError:
        return ""
    if key is None:
        return ""
    return hmac.new(key.encode(), b"csrf:" + token.encode(), hashlib.sha256).hexdigest()


def csrf_ok(request: Request, sent: object) -> bool:
    expected = csrf_token(request)
    return bool(expected) and isinstance(sent, str) and hmac.compare_digest(expected, sent)


def set_session(response: Response, request: Request, token: str, seconds: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=seconds,
        path="/web",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/web", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
