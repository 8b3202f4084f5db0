"""Smoke: the real server answers, authenticates and serves OpenAPI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from apiserver import Server

from immunostrat.api import app_from_env, create_app
from immunostrat.api.app import prepare_demo
from immunostrat.errors import InputError


def test_health_openapi_and_login(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/trials/{trial_id}/participants/{participant_id}/randomize" in spec["paths"]
    bad = httpx.post(
        f"{server.base_url}/token", data={"username": "admin-user", "password": "wrong-password"}
    )
    assert bad.status_code == 401
    with server.client("monitor") as c:
        me = c.get("/me").json()
    assert me["role"] == "monitor"


def test_app_from_env_needs_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMMUNOSTRAT_DB_URL", raising=False)
    with pytest.raises(InputError) as err:
        app_from_env()
    assert err.value.field == "IMMUNOSTRAT_DB_URL"


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_demo_database_serves_its_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `immunostrat serve --demo` does: create the demo, then serve it (in-process here)."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    info = prepare_demo(f"sqlite:///{tmp_path / 'demo.db'}")
    username, password = info.users["investigator"]
    with TestClient(create_app(info.db_url)) as client:
        login = client.post("/token", data={"username": username, "password": password})
        token = login.json()["access_token"]
        rows = client.get(
            f"/trials/{info.trial_id}/participants", headers={"Authorization": f"Bearer {token}"}
        ).json()
    assert len(rows) == info.screened and sum(r["kit_number"] is not None for r in rows) == info.randomized


def test_the_root_opens_the_web_application(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/", timeout=30)
    assert r.status_code == 307 and r.headers["location"] == "/web/"
    page = httpx.get(f"{server.base_url}/", timeout=30, follow_redirects=True)
    assert page.status_code == 200 and "sign" in page.text.lower()
