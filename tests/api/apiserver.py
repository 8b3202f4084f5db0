"""Helpers for the API tests: a real server (uvicorn in a subprocess on a loopback port) over
SQLite or PostgreSQL.

Each backend gets its own database (a file under tmp, or a uniquely named PostgreSQL database that
is dropped at the end), an admin created through the domain layer (the bootstrap), and one user per
role created through the API. Passwords are generated here, per session.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

PG_SERVER = os.environ.get("IMMUNOSTRAT_TEST_PG", "postgresql+psycopg://postgres@localhost:5432/test")
ROLES = (
    "investigator",
    "pharmacist",
    "monitor",
    "statistician",
    "clinician",
    "researcher",
    "modeller",
    "admin",
)
"""Every role; admin last (the bootstrap user creates the others)."""
TOKEN_KEY = secrets.token_urlsafe(48)
"""The test servers' token signing key (a service takes it from its environment, never the database)."""


@dataclass
class Server:
    kind: str
    db_url: str
    base_url: str
    passwords: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, role: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(role)}"} if role else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def token(self, role: str | None) -> str:
        assert role is not None
        if role not in self.tokens:
            r = httpx.post(
                f"{self.base_url}/token",
                data={"username": f"{role}-user", "password": self.passwords[role]},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            self.tokens[role] = r.json()["access_token"]
        return self.tokens[role]

    def new_trial(self, code: str, **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": code,
            "title": f"trial {code}",
            "sites": [{"code": "S1", "name": "Site one"}, {"code": "S2", "name": "Site two"}],
        }
        body.update(spec)
        with self.client("admin") as c:
            r = c.post("/trials", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())


def pg_reachable() -> bool:
    try:
        engine = create_engine(PG_SERVER, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def launch_server(db_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start uvicorn on a fresh loopback port (the socket is bound here and handed over)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # uvicorn --fd leaves Nagle on otherwise
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = sock.getsockname()[1]
    env = dict(os.environ, IMMUNOSTRAT_DB_URL=db_url, IMMUNOSTRAT_BCRYPT_ROUNDS="4")
    env.setdefault("IMMUNOSTRAT_TOKEN_KEY", TOKEN_KEY)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "immunostrat.api.app:app_from_env",
        "--fd",
        str(sock.fileno()),
        "--log-level",
        "warning",
        "--no-access-log",
        "--backlog",
        "256",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),), stdout=out, stderr=subprocess.STDOUT)
    sock.close()
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    # a worker imports the scientific stack and migrates before it answers: over a minute when the
    # machine's cores are shared with other test runs
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
