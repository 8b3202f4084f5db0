"""Security of the pages: CSRF token missing or wrong is refused, the CSP and the cookie flags are
on, a session reaches no page beyond its role, sign-in is throttled, and a crawl as each blinded
role over every page and fragment finds no arm name (while the pharmacist, unblinded, sees one)."""

from __future__ import annotations

import re
from collections import deque
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext
from webworld import ARMS, BLINDED_ROLES, USER_LIMIT, WebServer, screenshots, sign_in

SCREENING_ROLES = ("investigator", "monitor", "statistician", "admin")
pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

LINK = re.compile(r'href="(/web/[^"#]*)')


def _crawl(context: BrowserContext, start: str = "/web/", limit: int = 80) -> dict[str, str]:
    """Every /web page reachable by links from ``start`` (GET), with its text; CSP checked on each."""
    seen: dict[str, str] = {}
    todo = deque([start])
    while todo and len(seen) < limit:
        path = todo.popleft()
        if path in seen or path.startswith("/web/static/"):
            continue
        r = context.request.get(path)
        assert r.status == 200, (path, r.status)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert r.headers.get("x-frame-options") == "DENY", path
        seen[path] = r.text()
        for href in LINK.findall(seen[path]):
            todo.append(urlsplit(urljoin(path, href.replace("&amp;", "&"))).path)
    return seen


@pytest.mark.parametrize("role", BLINDED_ROLES)
def test_blinded_role_sees_no_arm_on_any_page(browser: Browser, web: WebServer, role: str) -> None:
    context, _ = sign_in(browser, web, role)
    try:
        pages = _crawl(context)
        # fragments: the query thread htmx swaps in, as the monitor and the investigator get it
        base = f"/web/trials/{web.trial_id}"
        participant = f"{base}/participants/{web.seeded_participant}"
        if role in SCREENING_ROLES:
            assert f"{base}/screening-log" in pages, sorted(pages)
        else:  # a care role (clinician, researcher, modeller) sees no trial at all
            assert not any(p.startswith("/web/trials") for p in pages), sorted(pages)
        if role in ("investigator", "monitor", "statistician"):
            assert f"{participant}/visits/day0/forms/sle_visit" in pages, sorted(pages)
        for path, text in pages.items():
            for arm in ARMS:
                assert arm not in text.lower(), (role, path, arm)
    finally:
        context.close()


def test_fragments_and_pharmacist_arm(browser: Browser, web: WebServer) -> None:
    """The htmx fragment of a query thread names no arm; the pharmacist (unblinded) does see the
    arm, so the crawl above could fail."""
    form = f"/web/trials/{web.trial_id}/participants/{web.seeded_participant}/visits/day0/forms/sle_visit"
    context, page = sign_in(browser, web, "monitor")
    try:
        page.goto(form)
        token = page.locator("input[name=csrf_token]").first.get_attribute("value")
        r = context.request.post(
            f"{form}/queries",
            form={"csrf_token": token or "", "field": "wbc", "text": "is the white count from today?"},
            headers={"HX-Request": "true"},
        )
        assert r.status == 200
        fragment = r.text()
        assert fragment.lstrip().startswith('<section id="queries"'), fragment[:200]
        assert "is the white count from today?" in fragment
        assert not any(arm in fragment.lower() for arm in ARMS)
    finally:
        context.close()
    context, page = sign_in(browser, web, "pharmacist")
    try:
        pages = _crawl(context)
        assert any(arm in text for text in pages.values() for arm in ARMS)
        page.goto(f"/web/trials/{web.trial_id}/participants")
        screenshots(page, "participants-pharmacist")
        with pytest.raises(AssertionError):  # the pharmacist has no casebook: refused, not crawled
            _crawl(context, f"{form}")
    finally:
        context.close()


def test_csrf_missing_or_wrong_is_refused(browser: Browser, web: WebServer) -> None:
    context, page = sign_in(browser, web, "investigator")
    try:
        page.goto(f"/web/trials/{web.trial_id}/screening-log")
        before = page.get_by_role("row").count()
        screen = f"/web/trials/{web.trial_id}/screen"
        body = {
            "site": "S01",
            "age": "50",
            "sex": "F",
            "form__sle_classified": "yes",
            "form__moderately_active": "yes",
        }
        for sent in ({}, {"csrf_token": "0" * 64}, {"csrf_token": ""}):
            r = context.request.post(screen, form={**body, **sent}, max_redirects=0)
            assert r.status == 403, (sent, r.status)
            assert "security token" in r.text()
        page.reload()
        assert page.get_by_role("row").count() == before  # nothing was screened
        # a token from another session is wrong too
        other, other_page = sign_in(browser, web, "investigator")
        other_page.goto(screen)
        foreign = other_page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
        other.close()
        page.goto(screen)
        mine = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
        assert foreign and mine and foreign != mine
        r = context.request.post(screen, form={**body, "csrf_token": foreign}, max_redirects=0)
        assert r.status == 403
        r = context.request.post("/web/sign-out", form={}, max_redirects=0)
        assert r.status == 403
    finally:
        context.close()


def test_session_cookie_flags_and_headers(web: WebServer) -> None:
    r = httpx.post(
        f"{web.base_url}/web/sign-in",
        data={"username": web.user("monitor"), "password": web.passwords["monitor"]},
        timeout=30,
    )
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/web" in cookie
    assert "secure" not in cookie  # plain http on loopback; https sets it
    secured = httpx.post(
        f"{web.base_url}/web/sign-in",
        data={"username": web.user("monitor"), "password": web.passwords["monitor"]},
        headers={"X-Forwarded-Proto": "https"},
        timeout=30,
    )
    assert secured.status_code == 303
    assert "secure" in secured.headers["set-cookie"].lower()  # behind TLS (a trusted proxy said https)
    for path in ("/web/sign-in", "/web/", f"/web/trials/{web.trial_id}", "/web/no-such-page"):
        r = httpx.get(f"{web.base_url}{path}", timeout=30)
        assert "script-src 'self'" in r.headers.get("content-security-policy", ""), path
    # a sign-in form posted from another site's page is refused
    r = httpx.post(
        f"{web.base_url}/web/sign-in",
        data={"username": web.user("monitor"), "password": web.passwords["monitor"]},
        headers={"Origin": "https://evil.example"},
        timeout=30,
    )
    assert r.status_code == 403


def test_no_page_beyond_the_role(browser: Browser, web: WebServer) -> None:
    base = f"/web/trials/{web.trial_id}"
    participant = f"{base}/participants/{web.seeded_participant}"
    beyond = {
        "pharmacist": [
            f"{base}/screen",
            f"{base}/screening-log",
            f"{base}/queries",
            f"{participant}/visits/day0/forms/sle_visit",
        ],
        "admin": [f"{base}/screen", f"{base}/participants", participant, f"{base}/visits"],
        "monitor": [f"{base}/screen"],
        "statistician": [f"{base}/screen"],
    }
    for role, paths in beyond.items():
        context, page = sign_in(browser, web, role)
        try:
            for path in paths:
                r = context.request.get(path)
                assert r.status == 403, (role, path, r.status)
            token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
            r = context.request.post(f"{participant}/randomize", form={"csrf_token": token}, max_redirects=0)
            assert r.status == 403, (role, r.status)
        finally:
            context.close()
    # no session at all: every page sends to the sign-in page
    plain = httpx.get(f"{web.base_url}{participant}", timeout=30)
    assert plain.status_code == 303 and plain.headers["location"] == "/web/sign-in"
    # a forged cookie is no session
    forged = httpx.get(f"{web.base_url}{base}", cookies={"immunostrat_session": "not.a.token"}, timeout=30)
    assert forged.status_code == 303


def test_sign_in_is_throttled(web: WebServer) -> None:
    data = {"username": web.user("throttle"), "password": "wrong password, wrong password"}
    for _ in range(USER_LIMIT):
        r = httpx.post(f"{web.base_url}/web/sign-in", data=data, timeout=30)
        assert r.status_code == 401
        assert "Wrong username or password" in r.text
    r = httpx.post(f"{web.base_url}/web/sign-in", data=data, timeout=30)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # the right password is refused too while the window lasts
    right = {"username": web.user("throttle"), "password": web.passwords["throttle"]}
    assert httpx.post(f"{web.base_url}/web/sign-in", data=right, timeout=30).status_code == 429
    # one count for the pages and the API (the service's database): the API's sign-in is refused too
    token = httpx.post(f"{web.base_url}/token", data=right, timeout=30)
    assert token.status_code == 429, token.text
