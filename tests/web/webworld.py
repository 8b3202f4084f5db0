"""The page tests' world: the real app under uvicorn on a loopback port over a SQLite file, a trial
set up from the SLE secretome template (its arms renamed to words found nowhere else, so that a
page naming an arm is caught), one user per role, one participant screened, randomized and with a
saved form through the JSON API, and Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from immunostrat.trial import ops

CHROMIUM = "/usr/bin/chromium"
ROLES = (
    "investigator",
    "pharmacist",
    "monitor",
    "statistician",
    "admin",
    "clinician",
    "researcher",
    "modeller",
)
BLINDED_ROLES = tuple(r for r in ROLES if r != "pharmacist")
ARMS = ("zorvexamab", "quintrelcontrol")
"""The trial's arm names: made-up words, so any occurrence on a page is an arm leaking."""
USER_LIMIT = 4
"""Failed sign-ins per username before the sign-in page refuses (set for the test server)."""
SHOTS = Path(__file__).resolve().parents[2] / "build" / "web-screenshots"
"""Screenshots of each page at 1280x800 and 390x844 (look at them)."""

SLE_VISIT = {
    **{
        name: "false"
        for name in (
            "mex_neurological_disorder",
            "mex_renal_disorder",
            "mex_vasculitis",
            "mex_hemolysis",
            "mex_myositis",
            "mex_mucocutaneous",
            "mex_serositis",
            "mex_fever",
            "mex_fatigue",
        )
    },
    "mex_arthritis": "true",
    "hemoglobin": "12.1",
    "platelets": "210",
    "wbc": "5.4",
    "lymphocytes": "1.3",
    "c3_mg_dl": "72",
    "c4_mg_dl": "11",
}
"""A complete day-0 SLE visit as typed into the page (booleans as the select's values)."""


@dataclass
class WebServer:
    base_url: str
    db_url: str
    passwords: dict[str, str]
    trial_id: int
    seeded_participant: int

    def user(self, role: str) -> str:
        return f"{role}-web"


def _api_value(value: str) -> Any:
    return {"true": True, "false": False}.get(value, float(value) if value[0].isdigit() else value)


def _seed(base: str, passwords: dict[str, str], trial_id: int) -> int:
    """A participant screened, randomized and with a saved day-0 visit, through the JSON API."""

    def client(role: str) -> httpx.Client:
        r = httpx.post(
            f"{base}/token", data={"username": f"{role}-web", "password": passwords[role]}, timeout=30
        )
        assert r.status_code == 200, r.text
        return httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {r.json()['access_token']}"}, timeout=60
        )

    with client("investigator") as c:
        body = {
            "site": "S01",
            "age": 41,
            "sex": "F",
            "form": {"sle_classified": "yes", "moderately_active": "yes"},
        }
        r = c.post(f"/trials/{trial_id}/participants", json=body)
        assert r.status_code == 201, r.text
        pid = int(r.json()["participant_id"])
        r = c.post(f"/trials/{trial_id}/participants/{pid}/randomize")
        assert r.status_code == 201, r.text
        values = {k: _api_value(v) for k, v in SLE_VISIT.items()}
        form = {"visit_date": date.today().isoformat(), "values": values}
        r = c.put(f"/trials/{trial_id}/participants/{pid}/visits/day0/forms/sle_visit", json=form)
        assert r.status_code == 200, r.text
    with client("monitor") as c:
        query = {
            "visit": "day0",
            "form": "sle_visit",
            "field": "platelets",
            "text": "please confirm the count",
        }
        r = c.post(f"/trials/{trial_id}/participants/{pid}/queries", json=query)
        assert r.status_code == 201, r.text
    return pid


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    folder = tmp_path_factory.mktemp("web")
    db_url = f"sqlite:///{folder / 'web.db'}"
    spec = ops.load_trial_spec(ops.template_path("sle-secretome")).model_dump(mode="json")
    spec.update(
        code="WEB-SLE", title="Secretome trial for the page tests", arms=list(ARMS), control_arm=ARMS[1]
    )
    os.environ.setdefault("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    setup = ops.init_trial(db_url, spec)
    passwords = {role: secrets.token_urlsafe(16) for role in ROLES}
    for role in ROLES:
        ops.create_user(db_url, f"{role}-web", passwords[role], role)
    passwords["throttle"] = secrets.token_urlsafe(16)  # a user of its own for the throttling test
    ops.create_user(db_url, "throttle-web", passwords["throttle"], "monitor")

    env = {
        "IMMUNOSTRAT_DB_URL": db_url,
        "IMMUNOSTRAT_LOGIN_LIMIT_USER": f"{USER_LIMIT} per 15 minutes",
    }
    with running_app(env, folder / "server.log") as base:
        pid = _seed(base, passwords, setup.trial_id)
        yield WebServer(base, db_url, passwords, setup.trial_id, pid)


@contextmanager
def running_app(settings: dict[str, str], log: Path, drop: tuple[str, ...] = ()) -> Iterator[str]:
    """The app (``immunostrat.api.app:app_from_env``) under uvicorn on a free loopback port with
    ``settings`` over the environment (``drop``: settings removed); yields its base URL and, at the
    end, stops it and fails on any traceback in its log."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # uvicorn --fd leaves Nagle on otherwise
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    env = dict(
        os.environ, IMMUNOSTRAT_BCRYPT_ROUNDS="4", IMMUNOSTRAT_TOKEN_KEY=secrets.token_urlsafe(48), **settings
    )
    for name in drop:
        env.pop(name, None)
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "immunostrat.api.app:app_from_env",
        "--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),), stdout=out, stderr=subprocess.STDOUT)
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line]
        assert not errors, log.read_text()[-5000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # per module: Playwright's sync API holds an event loop while it runs, and a session-wide one
    # makes every later `sync_playwright()` outside the web tests (reports, API docs) refuse to start
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def sign_in(browser: Browser, web: WebServer, role: str, **options: Any) -> tuple[BrowserContext, Page]:
    """A fresh browser context signed in as ``role`` through the sign-in page."""
    context = browser.new_context(base_url=web.base_url, viewport={"width": 1280, "height": 800}, **options)
    page = context.new_page()
    page.goto("/web/sign-in")
    page.get_by_label("Username").fill(web.user(role))
    page.get_by_label("Password").fill(web.passwords[role])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/web/")
    return context, page


# Resolves once no htmx request is in flight and none has started, swapped or settled for `quiet_ms`:
# a form that sends on `input` (debounced) and on `change` can swap its result again after the
# content a test waited for is already shown.
_HTMX_QUIET = """quiet_ms => new Promise(resolve => {
  let timer = 0;
  const arm = () => { clearTimeout(timer); timer = setTimeout(check, quiet_ms); };
  const check = () => document.querySelector(".htmx-request") ? arm() : resolve(true);
  for (const name of ["htmx:trigger", "htmx:beforeRequest", "htmx:afterSwap", "htmx:afterSettle"]) {
    document.body.addEventListener(name, arm);
  }
  arm();
})"""


def htmx_quiet(page: Page, quiet_ms: int = 500) -> None:
    """Wait until the page's htmx requests are done (longer than any `delay:` trigger on our pages)."""
    page.evaluate(_HTMX_QUIET, quiet_ms)


def screenshots(page: Page, name: str) -> None:
    """The page at 1280x800 and at 390x844 (a phone), under build/web-screenshots."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    htmx_quiet(page)
    size = page.viewport_size
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"{name}-{width}x{height}.png"), full_page=True)
    if size is not None:
        page.set_viewport_size(size)
