"""The API test servers: one real uvicorn server per backend (SQLite, PostgreSQL) for the whole
session, both started at once; ``server`` runs each test on each backend."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver import PG_SERVER, ROLES, Server, launch_server, pg_reachable, wait_ready

from immunostrat.trial.db import create_database, dispose_engines, drop_database
from immunostrat.trial.ops import create_user, open_db


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    sqlite_file = tmp_path_factory.mktemp("api-sqlite") / "service.db"
    databases: dict[str, str] = {"sqlite": f"sqlite:///{sqlite_file}"}
    pg_name = None
    if pg_reachable():
        pg_name = f"immunostrat_api_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        databases["postgresql"] = create_database(PG_SERVER, pg_name)
    running: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    servers: dict[str, Server] = {}
    try:
        for kind, db_url in databases.items():
            open_db(db_url)
            log = tmp_path_factory.mktemp(f"log-{kind}") / "server.log"
            proc, base = launch_server(db_url, log)
            running[kind] = (proc, base, log)
            passwords = {role: secrets.token_urlsafe(12) for role in ROLES}
            create_user(db_url, "admin-user", passwords["admin"], "admin")  # the bootstrap admin
            servers[kind] = Server(kind, db_url, base, passwords)
        for kind, (proc, base, log) in running.items():
            wait_ready(proc, base, log)
            srv = servers[kind]
            with srv.client("admin") as c:
                for role in ROLES[:-1]:
                    body = {"username": f"{role}-user", "password": srv.passwords[role], "role": role}
                    r = c.post("/users", json=body)
                    assert r.status_code == 201, r.text
        yield servers
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        dispose_engines()
        if pg_name is not None:
            drop_database(PG_SERVER, pg_name)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, backends: dict[str, Server]) -> Server:
    kind = str(request.param)
    if kind not in backends:
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
    return backends[kind]
