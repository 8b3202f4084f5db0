"""The token signing key comes from the environment or a key file, never the database; rotating it
keeps earlier tokens working while the old key is listed, and ends them when it is removed."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest
from apiserver import PG_SERVER, launch_server, wait_ready
from sqlalchemy import select

from immunostrat.api.auth import TokenKeys, default_key_file, load_token_keys
from immunostrat.errors import InputError
from immunostrat.trial.db import get_engine, read_transaction
from immunostrat.trial.models import ServiceSetting
from immunostrat.trial.ops import create_user, open_db

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    open_db(url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")  # the work factor is not under test here
        create_user(url, "nurse-admin", PASSWORD, "admin")
    return url


class Running:
    def __init__(self, db_url: str, log: Path) -> None:
        self.proc, self.base = launch_server(db_url, log)
        self.log = log
        wait_ready(self.proc, self.base, log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def login(self) -> str:
        r = httpx.post(
            f"{self.base}/token", data={"username": "nurse-admin", "password": PASSWORD}, timeout=30
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def me(self, token: str) -> httpx.Response:
        return httpx.get(f"{self.base}/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def serve(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, str]], Running]]:
    running: list[Running] = []

    def start(env: dict[str, str]) -> Running:
        for name in ("IMMUNOSTRAT_TOKEN_KEY", "IMMUNOSTRAT_TOKEN_KEY_FILE", "IMMUNOSTRAT_SECRET_KEY"):
            monkeypatch.setenv(name, env.get(name, ""))  # "" counts as not set
        for server in running:
            server.stop()
        running.clear()
        running.append(Running(database, tmp_path / f"server-{secrets.token_hex(4)}.log"))
        return running[0]

    yield start
    for server in running:
        server.stop()


def _replace(path: Path, text: str) -> None:
    """Write a key file as an operator should: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def test_rotation_through_a_real_server(serve: Callable[[dict[str, str]], Running], tmp_path: Path) -> None:
    old, new = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    key_file = tmp_path / "token.keys"
    key_file.write_text(f"{old}\n")
    server = serve({"IMMUNOSTRAT_TOKEN_KEY_FILE": str(key_file)})
    before = server.login()
    assert jwt.get_unverified_header(before)["kid"] == TokenKeys.kid(old)
    assert server.me(before).status_code == 200

    # rotate (no restart): the new key first, the old one kept for the tokens already out
    _replace(key_file, f"# rotated\n{new}\n{old}\n")
    assert server.me(before).status_code == 200
    after = server.login()
    assert jwt.get_unverified_header(after)["kid"] == TokenKeys.kid(new)
    jwt.decode(after, new, algorithms=["HS256"])  # signed with the new key

    # the grace period (the token lifetime) is over: the old key is removed, and its tokens stop
    _replace(key_file, f"{new}\n")
    refused = server.me(before)
    assert refused.status_code == 401 and "no longer accepted" in refused.json()["detail"]
    assert server.me(after).status_code == 200
    # a token naming the current key but signed with the old one is refused too
    claims = jwt.decode(before, old, algorithms=["HS256"])
    relabelled = jwt.encode(claims, old, algorithm="HS256", headers={"kid": TokenKeys.kid(new)})
    assert server.me(relabelled).status_code == 401

    # a key file emptied in place keeps the last keys in use (and says so in the log)
    key_file.write_text("")
    assert server.me(after).status_code == 200
    assert "unreadable" in server.log.read_text()


def test_key_from_the_environment_and_nothing_in_the_database(
    serve: Callable[[dict[str, str]], Running], database: str
) -> None:
    key = secrets.token_urlsafe(48)
    server = serve({"IMMUNOSTRAT_TOKEN_KEY": key})
    token = server.login()
    jwt.decode(token, key, algorithms=["HS256"])
    with read_transaction(get_engine(database)) as s:
        stored = {k: v for k, v in s.execute(select(ServiceSetting.key, ServiceSetting.value))}
    assert "jwt_signing_key" not in stored and key not in stored.values()
    assert not default_key_file(database).exists()  # type: ignore[union-attr]


def test_sqlite_default_key_file_is_generated_once(
    serve: Callable[[dict[str, str]], Running], database: str
) -> None:
    server = serve({})
    path = default_key_file(database)
    assert path is not None and path.is_file()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert f"token signing key generated in {path}" in server.log.read_text()
    token = server.login()
    jwt.decode(token, path.read_text().strip(), algorithms=["HS256"])
    # a restart (or a second worker) reads the same file: no new key
    assert load_token_keys(database, {}).current == path.read_text().strip()


def _load(db_url: str) -> str:
    return load_token_keys(db_url, {}).current


def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    with ProcessPoolExecutor(max_workers=4) as pool:
        keys = set(pool.map(_load, [url] * 16))
    assert len(keys) == 1
    assert list(tmp_path.glob(".*token-key*")) == []  # no temporary file left behind


def test_server_database_needs_a_configured_key() -> None:
    with pytest.raises(InputError, match="no token signing key configured"):
        load_token_keys(PG_SERVER, {})
    keys = load_token_keys(
        PG_SERVER, {"IMMUNOSTRAT_TOKEN_KEY": "k" * 40, "IMMUNOSTRAT_TOKEN_KEY_PREVIOUS": "p" * 40}
    )
    assert (keys.current, keys.previous) == ("k" * 40, ("p" * 40,))
    assert (
        load_token_keys(PG_SERVER, {"IMMUNOSTRAT_SECRET_KEY": "s" * 40}).current == "s" * 40
    )  # earlier name


def test_short_keys_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="too short"):
        load_token_keys(PG_SERVER, {"IMMUNOSTRAT_TOKEN_KEY": "secret"})
    with pytest.raises(InputError, match="not found"):
        load_token_keys(PG_SERVER, {"IMMUNOSTRAT_TOKEN_KEY_FILE": str(tmp_path / "absent")})
    empty = tmp_path / "empty.keys"
    empty.write_text("# no key yet\n")
    with pytest.raises(InputError, match="holds no key"):
        load_token_keys(PG_SERVER, {"IMMUNOSTRAT_TOKEN_KEY_FILE": str(empty)})
