"""Sign-in throttling through a real uvicorn: failed sign-ins per username (from any address) and per
client address end in 429 with Retry-After, the password is not even checked then, a success clears
the username's count, and the wait the server names is enough."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apiserver import launch_server, wait_ready
from fastapi.testclient import TestClient
from limits import parse

from immunostrat.api import create_app
from immunostrat.api.throttle import LoginLimits
from immunostrat.trial.ops import create_user, open_db

WINDOW_S = 8
PASSWORDS = {
    name: f"tangerine orbit canal {i}93 quartz"
    for i, name in enumerate(("wren", "yarrow", "zinnia", "violet"))
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("throttle")
    url = f"sqlite:///{folder / 'throttle.db'}"
    open_db(url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")  # the work factor is not under test here
        for name, password in PASSWORDS.items():
            create_user(url, name, password, "monitor")
        env.setenv("IMMUNOSTRAT_LOGIN_LIMIT_USER", f"3 per {WINDOW_S} seconds")
        env.setenv("IMMUNOSTRAT_LOGIN_LIMIT_ADDRESS", f"6 per {WINDOW_S} seconds")
        proc, base_url = launch_server(url, folder / "server.log")
    try:
        wait_ready(proc, base_url, folder / "server.log")
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _sign_in(
    base: str, address: str, username: str, password: str, multipart: bool = False
) -> httpx.Response:
    """POST /token from ``address`` (any 127.x.y.z reaches the server on 127.0.0.1)."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=base, transport=transport, timeout=30) as client:
        form = {"username": username, "password": password}
        if multipart:
            return client.post("/token", files={k: (None, v) for k, v in form.items()})
        return client.post("/token", data=form)


def test_failures_per_username_from_any_address(base: str) -> None:
    for _ in range(3):
        assert _sign_in(base, "127.0.0.11", "wren", "wrong password").status_code == 401
    refused = _sign_in(base, "127.0.0.11", "wren", PASSWORDS["wren"])  # even the right password
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW_S
    assert refused.json()["field"] == "username" and "this username" in refused.json()["detail"]
    # another address, and the same form sent as multipart, are the same username
    assert _sign_in(base, "127.0.0.12", "wren", PASSWORDS["wren"]).status_code == 429
    assert _sign_in(base, "127.0.0.12", "wren", PASSWORDS["wren"], multipart=True).status_code == 429
    # others are not held up
    assert _sign_in(base, "127.0.0.11", "yarrow", PASSWORDS["yarrow"]).status_code == 200
    # after the wait the server names, the right password works again
    time.sleep(int(refused.headers["Retry-After"]) + 0.5)
    assert _sign_in(base, "127.0.0.11", "wren", PASSWORDS["wren"]).status_code == 200


def test_failures_per_address_over_many_usernames(base: str) -> None:
    for i in range(6):
        assert _sign_in(base, "127.0.0.21", f"sprayed-{i}", "Winter2026!").status_code == 401
    refused = _sign_in(base, "127.0.0.21", "zinnia", PASSWORDS["zinnia"])
    assert refused.status_code == 429 and "this address" in refused.json()["detail"]
    assert refused.headers["Retry-After"].isdigit()
    assert _sign_in(base, "127.0.0.22", "zinnia", PASSWORDS["zinnia"]).status_code == 200


def test_a_success_clears_the_usernames_count(base: str) -> None:
    for _ in range(2):
        for _ in range(2):
            assert _sign_in(base, "127.0.0.31", "violet", "wrong password").status_code == 401
        assert _sign_in(base, "127.0.0.31", "violet", PASSWORDS["violet"]).status_code == 200


def test_429_is_in_the_openapi_document(base: str) -> None:
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    documented = spec["paths"]["/token"]["post"]["responses"]["429"]
    assert "Retry-After" in documented["headers"]


def test_one_count_for_every_sign_in_form(tmp_path: Path) -> None:
    """Failures another sign-in form records in ``app.state.sign_in_counts`` (the pages' form)
    count for ``POST /token`` too: alternating between the forms gains nothing."""
    limits = LoginLimits(parse("3 per 1 minute"), parse("100 per 1 minute"))
    app = create_app(f"sqlite:///{tmp_path / 'shared.db'}", login_limits=limits)
    with TestClient(app) as client:
        for _ in range(3):
            app.state.sign_in_counts.failed("somebody", "testclient")
        r = client.post("/token", data={"username": "somebody", "password": "whatever it is"})
        assert r.status_code == 429 and "this username" in r.json()["detail"]
        r = client.post("/token", data={"username": "someone-else", "password": "whatever it is"})
        assert r.status_code == 401
