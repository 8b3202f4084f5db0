"""Sign-in throttling shared by every worker: a real uvicorn with 2 worker processes, failed sign-ins
sent alternately through connections that are known (from the kernel's socket table) to be served by
different workers; the 429 comes exactly after the limit, whichever worker answers. Counted per
worker, half the failures would be invisible to each and the attempt after the limit would pass."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apiserver import PG_SERVER, TOKEN_KEY, child_pids, pg_reachable

from immunostrat.trial.db import create_database, drop_database
from immunostrat.trial.ops import create_user, open_db

LIMIT = 4
PASSWORD = "marigold lantern basalt 417 heron"


def _serve(db_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``immunostrat serve --workers 2`` (the product's launcher) on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, IMMUNOSTRAT_DB_URL=db_url, IMMUNOSTRAT_TOKEN_KEY=TOKEN_KEY)
    cmd = [str(Path(sys.executable).parent / "immunostrat"), "serve", "--db", db_url]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (the workers; a multiprocessing helper may sit among them)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = child_pids(parent)
        found += kids
        todo += kids
    return found


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the loopback connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local_port = int(parts[1].split(":")[1], 16)
        remote_port = int(parts[2].split(":")[1], 16)
        if local_port == server_port and remote_port == client_port:
            return parts[9]
    return None


def _owner(pids: list[int], inode: str) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


def _one_connection_per_worker(base: str, workers: list[int]) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections until two workers serve one each (a connection stays with its worker)."""
    url = urllib.parse.urlsplit(base)
    assert url.hostname is not None and url.port is not None
    chosen: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    deadline = time.monotonic() + 60
    while len(chosen) < 2 and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", "/health")
        conn.getresponse().read()  # answered: the worker has accepted it
        assert conn.sock is not None
        inode = _socket_inode(url.port, conn.sock.getsockname()[1])
        pid = None if inode is None else _owner(workers, inode)
        if pid is not None and pid not in chosen:
            chosen[pid] = conn
        else:
            spare.append(conn)  # held open, so the next connection tends to go to the idle worker
    for conn in spare:
        conn.close()
    assert len(chosen) >= 2, f"connections reached only workers {sorted(chosen)} of {workers}"
    return chosen


def _sign_in(conn: http.client.HTTPConnection, username: str, password: str) -> tuple[int, str | None]:
    body = urllib.parse.urlencode({"username": username, "password": password})
    conn.request("POST", "/token", body, {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("Retry-After")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'throttle.db'}"
        return
    if not pg_reachable():
        pytest.skip("PostgreSQL is not reachable")
    name = f"throttle_{os.getpid()}_{int(time.time())}"
    url = create_database(PG_SERVER, name)
    try:
        yield url
    finally:
        drop_database(PG_SERVER, name)


@pytest.mark.timeout(600)
def test_the_limit_holds_across_two_workers(db_url: str, tmp_path: Path) -> None:
    open_db(db_url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")  # the work factor is not under test here
        create_user(db_url, "juniper", PASSWORD, "monitor")
        env.setenv("IMMUNOSTRAT_LOGIN_LIMIT_USER", f"{LIMIT} per 10 minutes")
        env.setenv("IMMUNOSTRAT_LOGIN_LIMIT_ADDRESS", "1000 per 10 minutes")
        proc, base = _serve(db_url, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 300  # two workers importing the service on busy cores
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            log = (tmp_path / "server.log").read_text()
            assert proc.poll() is None and time.monotonic() < deadline, f"server did not start: {log[-2000:]}"
            time.sleep(0.2)
        conns = list(_one_connection_per_worker(base, _descendants(proc.pid)).values())
        # the right password once on each worker: both serve this user
        assert [_sign_in(c, "juniper", PASSWORD)[0] for c in conns] == [200, 200]
        statuses = [_sign_in(conns[i % 2], "juniper", "wrong guess")[0] for i in range(LIMIT)]
        assert statuses == [401] * LIMIT  # LIMIT / 2 failures seen by each worker
        for i in range(4):  # refused by both, even with the right password
            status, retry_after = _sign_in(conns[i % 2], "juniper", PASSWORD)
            assert status == 429, f"attempt {LIMIT + 1 + i} on worker {i % 2 + 1}: {status}"
            assert retry_after is not None and 1 <= int(retry_after) <= 600
        for c in conns:
            c.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
