"""Benchmark: randomizations per second through the real service, against a plain insert of the
same rows, and where the time of one randomization goes.

    python benchmarks/trial.py [--quick] [--pg SERVER_URL] [--workers 2] [--clients 32]
                               [--participants 1000] [--profile N]

1. A fresh database (a SQLite file, or with ``--pg`` a new PostgreSQL database on that server,
   dropped at the end), uvicorn with ``--workers`` on a loopback port, a trial of four sites set up
   and the participants screened through the API (all eligible: MALS or immunoparalysis).
2. **Service**: ``--clients`` asyncio clients randomize every participant at once
   (``POST .../randomize`` with an ``Idempotency-Key``); rate, p50/p99 latency, status counts and
   the server's CPU time per randomization (every worker process, from /proc).
   Checked afterwards: one allocation per participant, no kit used twice, sequences 1..n without
   gaps, no arm in any response (the investigator is blinded).
3. **Baseline**: the rows those randomizations wrote (each allocation and its audit row) inserted
   again into two plain tables of a scratch database on the same server, by as many threads, one
   transaction per randomization, as the service commits them: what the storage itself allows.
4. **Profile** (``--profile N``, default 60, 0 to skip): N more randomizations in this process,
   one at a time, through the same service functions the route calls, under cProfile, with every
   SQL statement timed: statements per randomization, time in the database driver, time in Python,
   and the top functions by own time; one request through HTTP alone for the framework's share.

The last line is ``benchmark trial: RATIOx plain-insert (details)``: the service's randomizations
per second over the plain inserts' randomizations per second (one is the storage's limit).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, event, select, text

from immunostrat.api.auth import Principal, confirm
from immunostrat.trial import service
from immunostrat.trial.db import create_database, drop_database, get_engine, make_engine, transaction
from immunostrat.trial.models import Allocation, AuditRow, User
from immunostrat.trial.ops import create_user, open_db

SITES = ("S1", "S2", "S3", "S4")
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
"""The clients send without Nagle's delay, as browsers and EHR clients do (a request written in two
parts would otherwise wait for the server's delayed ACK, ~40 ms on Linux)."""
WARM_UP = 5
"""Randomizations run before the profiled ones (SQLAlchemy compiles and caches each statement at its
first use: a one-off cost a running service does not pay)."""
Job = tuple[str, str, dict[str, Any] | None, str]
"""method, path, JSON body, Idempotency-Key"""
ADMIN_PASSWORD = "benchmark admin passphrase 2718"
INVESTIGATOR_PASSWORD = "benchmark investigator passphrase 3141"


@dataclass
class Run:
    """One timed phase: how many calls, how long, the latencies and status codes."""

    name: str
    n: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    def line(self) -> str:
        text_ = f"{self.name}: {self.n} in {self.seconds:.2f} s = {self.rate:.1f}/s"
        if self.latencies_s:
            text_ += f", p50 {self.pct(0.5):.0f} ms, p99 {self.pct(0.99):.0f} ms"
        if self.statuses:
            text_ += f", statuses {dict(sorted(self.statuses.items()))}"
        return text_


# ------------------------------------------------------------------------------------------ server


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def server(db_url: str, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """uvicorn with ``workers`` processes on a free loopback port; yields the base URL and the pid
    of the launcher (the workers are its children)."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, IMMUNOSTRAT_DB_URL=db_url, IMMUNOSTRAT_TOKEN_KEY=secrets.token_urlsafe(48))
    # the product's own launcher (`immunostrat serve --workers`), which turns Nagle's algorithm off
    cmd = [str(Path(sys.executable).parent / "immunostrat"), "serve", "--db", db_url]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # two workers importing the stack on busy shared cores
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every process under it (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / ticks
        todo += [child for child, fields in stats.items() if int(fields[1]) == current]
    return total


def _token(base: str, username: str, password: str) -> str:
    r = httpx.post(f"{base}/token", data={"username": username, "password": password}, timeout=60)
    r.raise_for_status()
    return str(r.json()["access_token"])


# ------------------------------------------------------------------------------------------ load


def screening_body(i: int, rng: random.Random) -> dict[str, Any]:
    """An eligible patient: MALS (ferritin above 4,420 ng/mL) or immunoparalysis (ferritin at most
    4,420 and mHLA-DR below 5,000 AB/C), the immunosep-2025 protocol's cut-offs."""
    mals = i % 3 == 0
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    ferritin = rng.uniform(6000, 20000) if mals else rng.uniform(300, 3000)
    return {
        "site": SITES[i % len(SITES)],
        "age": rng.randint(30, 85),
        "sex": rng.choice(["F", "M"]),
        "weight_kg": 75,
        "infection_site": "CAP",
        "septic_shock": False,
        "baseline_sofa": 6,
        "exclusions": {},
        "observations": [
            {"concept": "ferritin", "value": round(ferritin, 1), "unit": "ng/mL", "time": when},
            {"concept": "mhla_dr", "value": rng.randint(1000, 4500), "unit": "AB/C", "time": when},
            {"concept": "creatinine", "value": 1.0, "unit": "mg/dL", "time": when},
        ],
    }


@dataclass
class Answer:
    """One response as the checks read it."""

    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> Answer:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return Answer(int(lines[0].split()[1]), await reader.readexactly(length) if length else b"")


def _request_bytes(method: str, path: str, host: str, token: str, body: Any, key: str) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _drive(base: str, token: str, jobs: list[Job], clients: int, name: str) -> tuple[Run, list[Answer]]:
    """Run ``jobs`` (method, path, body, idempotency key) with ``clients`` keep-alive connections.

    The load generator shares the machine's two cores with the server and the database, so it is a
    minimal HTTP/1.1 client over asyncio streams (Nagle off, as browsers and EHR clients run):
    httpx's own CPU per request was taken from the server it measures."""
    run = Run(name)
    responses: list[Answer] = []
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    host_port = base.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not queue.empty():
                method, path, body, key = queue.get_nowait()
                raw = _request_bytes(method, path, host_port, token, body, key)
                started = time.perf_counter()
                r = await _exchange(reader, writer, raw)
                run.latencies_s.append(time.perf_counter() - started)
                run.statuses[r.status_code] += 1
                responses.append(r)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    run.seconds = time.perf_counter() - started
    run.n = len(jobs)
    return run, responses


def screen(
    base: str, token: str, trial_id: int, n: int, clients: int, offset: int = 0
) -> tuple[Run, list[int]]:
    rng = random.Random(20261202 + offset)
    jobs: list[Job] = [
        ("POST", f"/trials/{trial_id}/participants", screening_body(i, rng), f"screen-{i}")
        for i in range(offset, offset + n)
    ]
    run, responses = asyncio.run(_drive(base, token, jobs, clients, "screening"))
    ids = [
        int(r.json()["participant_id"])
        for r in responses
        if r.status_code in (200, 201) and r.json()["eligible"]
    ]
    return run, ids


# ------------------------------------------------------------------------------------------ baseline


def plain_insert(db_url: str, rows: list[tuple[dict[str, Any], dict[str, Any]]], threads: int) -> Run:
    """The same allocation and audit rows inserted into plain tables (no service, no HTTP): one
    transaction per randomization, ``threads`` at once."""
    engine = make_engine(db_url, pool_size=threads)
    with transaction(engine) as s:
        s.execute(text("DROP TABLE IF EXISTS plain_allocations"))
        s.execute(text("DROP TABLE IF EXISTS plain_audit"))
        s.execute(
            text(
                "CREATE TABLE plain_allocations (id INTEGER PRIMARY KEY, trial_id INTEGER, "
                "participant_id INTEGER UNIQUE, kit_id INTEGER UNIQUE, stratum_id INTEGER, "
                "arm VARCHAR(64), method VARCHAR(16), sequence INTEGER, idempotency_key VARCHAR(128), "
                "details TEXT, allocated_by VARCHAR(64), allocated_at VARCHAR(40))"
            )
        )
        s.execute(
            text(
                "CREATE TABLE plain_audit (seq INTEGER PRIMARY KEY, at VARCHAR(40), actor VARCHAR(64), "
                "role VARCHAR(20), action VARCHAR(32), entity VARCHAR(32), entity_id VARCHAR(64), "
                "old TEXT, new TEXT, prev_hash VARCHAR(64), hash VARCHAR(64))"
            )
        )
    insert_alloc = text(
        "INSERT INTO plain_allocations VALUES (:id, :trial_id, :participant_id, :kit_id, :stratum_id, :arm, "
        ":method, :sequence, :idempotency_key, :details, :allocated_by, :allocated_at)"
    )
    insert_audit = text(
        "INSERT INTO plain_audit VALUES (:seq, :at, :actor, :role, :action, :entity, :entity_id, :old, :new, "
        ":prev_hash, :hash)"
    )
    run = Run("plain insert")
    lock = threading.Lock()
    pending = list(rows)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                alloc, audit_row = pending.pop()
            started = time.perf_counter()
            with transaction(engine) as s:
                s.execute(insert_alloc, alloc)
                s.execute(insert_audit, audit_row)
            elapsed = time.perf_counter() - started
            with lock:
                run.latencies_s.append(elapsed)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    run.seconds = time.perf_counter() - started
    run.n = len(rows)
    engine.dispose()
    return run


def written_rows(db_url: str, trial_id: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each allocation of the trial with its audit row, as plain values."""
    import json

    with transaction(get_engine(db_url)) as s:
        allocations = s.scalars(select(Allocation).where(Allocation.trial_id == trial_id)).all()
        audits = {r.entity_id: r for r in s.scalars(select(AuditRow).where(AuditRow.entity == "allocation"))}
        rows = []
        for a in allocations:
            r = audits[str(a.id)]
            rows.append(
                (
                    {
                        "id": a.id,
                        "trial_id": a.trial_id,
                        "participant_id": a.participant_id,
                        "kit_id": a.kit_id,
                        "stratum_id": a.stratum_id,
                        "arm": a.arm,
                        "method": a.method,
                        "sequence": a.sequence,
                        "idempotency_key": a.idempotency_key,
                        "details": json.dumps(a.details),
                        "allocated_by": a.allocated_by,
                        "allocated_at": a.allocated_at.isoformat(),
                    },
                    {
                        c: getattr(r, c)
                        for c in (
                            "seq",
                            "at",
                            "actor",
                            "role",
                            "action",
                            "entity",
                            "entity_id",
                            "old",
                            "new",
                            "prev_hash",
                            "hash",
                        )
                    },
                )
            )
        return rows


def check(db_url: str, trial_id: int, participants: list[int], responses: list[Answer]) -> list[str]:
    """What must hold after the load: one allocation each, no kit twice, no sequence gap, no arm."""
    problems = []
    with transaction(get_engine(db_url)) as s:
        allocations = s.scalars(select(Allocation).where(Allocation.trial_id == trial_id)).all()
    if sorted(a.participant_id for a in allocations) != sorted(participants):
        problems.append("allocations do not match the participants one to one")
    if len({a.kit_id for a in allocations}) != len(allocations):
        problems.append("a kit was used twice")
    if sorted(a.sequence for a in allocations) != list(range(1, len(allocations) + 1)):
        problems.append("allocation sequence has gaps or repeats")
    if any("arm" in r.json() for r in responses if r.status_code in (200, 201)):
        problems.append("an arm in a blinded response")
    if any(r.status_code >= 500 for r in responses):
        problems.append("server errors")
    return problems


# ------------------------------------------------------------------------------------------ profile


@dataclass
class StatementClock:
    """Counts SQL statements, the time spent in the driver executing them (per kind of statement),
    and when the first statement that serialises allocations ran (on PostgreSQL the UPDATE that
    counts the allocation and so locks the trial row; on SQLite the transaction's first statement,
    which takes the write lock)."""

    statements: int = 0
    seconds: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    count_by_kind: Counter[str] = field(default_factory=Counter)
    lock_at: float | None = None
    _started: dict[int, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.statements, self.seconds, self.lock_at = 0, 0.0, None
        self.by_kind.clear()
        self.count_by_kind.clear()

    def attach(self, engine: Engine) -> None:
        sqlite = engine.dialect.name == "sqlite"

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            now = time.perf_counter()
            self._started[id(cursor)] = now
            locking = sqlite or statement.startswith("UPDATE trials SET allocations_made")
            if self.lock_at is None and locking:
                self.lock_at = now

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            elapsed = time.perf_counter() - self._started.pop(id(cursor), time.perf_counter())
            kind = " ".join(statement.split())[:70]
            self.seconds += elapsed
            self.statements += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + elapsed
            self.count_by_kind[kind] += 1


def profile(db_url: str, trial_id: int, participants: list[int], base: str, token: str) -> list[str]:
    """N randomizations one at a time in this process (what the route runs: the caller confirmed,
    the service's randomize, the public view) under cProfile, SQL timed; and the same one request
    through HTTP for the server's whole share."""
    engine = open_db(db_url)
    clock = StatementClock()
    clock.attach(engine)
    with transaction(engine) as s:
        user = s.scalars(select(User).where(User.username == "bench-investigator")).one()
        principal = Principal(user.username, user.role, user.id, user.site_id)
    third = len(participants) // 3
    warm = participants[:WARM_UP]
    timed, profiled, over_http = (
        participants[WARM_UP:third],
        participants[third : 2 * third],
        participants[2 * third :],
    )
    profiler = cProfile.Profile()
    commit_s = total = locked_s = driver_s = 0.0
    statements, kinds, kind_counts = 0, dict[str, float](), Counter[str]()
    # timed without the profiler (it slows Python, the driver's included, several times over),
    # then profiled for the breakdown by function
    for i, pid in enumerate(warm + timed + profiled):
        if i == len(warm):
            clock.reset()
        if i == len(warm) + len(timed):
            profiler.enable()
        clock.lock_at = None
        started = time.perf_counter()
        with transaction(engine) as session:
            actor = confirm(session, principal)
            result = service.randomize(session, actor, trial_id, pid, f"profile-{pid}")
            service.allocation_public(result, actor)
            committing = time.perf_counter()
        if len(warm) <= i < len(warm) + len(timed):
            done = time.perf_counter()
            commit_s += done - committing
            total += done - started
            locked_s += done - (clock.lock_at or started)
            statements, driver_s = clock.statements, clock.seconds
            kinds, kind_counts = dict(clock.by_kind), Counter(clock.count_by_kind)
    profiler.disable()
    n = max(1, len(timed))
    python_s = total - driver_s - commit_s
    lines = [
        f"in process, one at a time ({len(timed)} randomizations after {len(warm)} "
        f"to warm up): {total / n * 1000:.1f} ms each = {statements / n:.1f} SQL statements "
        f"taking {driver_s / n * 1000:.1f} ms in the driver + commit {commit_s / n * 1000:.1f} ms "
        f"+ {python_s / n * 1000:.1f} ms in Python; {locked_s / n * 1000:.1f} ms of it under the lock "
        "that serialises allocations (the ceiling: 1 / that time per trial)",
        "statements by time in the driver (ms per randomization, count per randomization):",
    ]
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]:
        lines.append(f"  {seconds / n * 1000:6.2f} ms {kind_counts[kind] / n:4.1f}x  {kind}")
    transport = httpx.HTTPTransport(socket_options=NODELAY)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=60, transport=transport) as c:
        latencies = []
        for pid in over_http:
            t0 = time.perf_counter()
            r = c.post(
                f"/trials/{trial_id}/participants/{pid}/randomize", headers={"Idempotency-Key": f"h-{pid}"}
            )
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
    if latencies:
        lines.append(
            f"profile, over HTTP, one at a time ({len(latencies)}): median "
            f"{statistics.median(latencies) * 1000:.1f} ms each (the difference to the in-process "
            "figure is the framework, the token check and the client)"
        )
    entries = pstats.Stats(profiler).stats.items()  # type: ignore[attr-defined]
    ours = sorted(
        (kv for kv in entries if "immunostrat" in kv[0][0] and "benchmarks" not in kv[0][0]),
        key=lambda kv: kv[1][3],
        reverse=True,
    )[:12]
    n_profiled = max(1, len(profiled))
    lines.append(
        f"under cProfile ({len(profiled)} more; its overhead inflates every figure below, compare "
        "them with each other): our functions by cumulative time (ms and calls per randomization):"
    )
    lines += [_profile_line(key, value, n_profiled) for key, value in ours]
    lines.append("all functions by own time:")
    top = sorted(entries, key=lambda kv: kv[1][2], reverse=True)[:12]
    lines += [_profile_line(key, value, n_profiled) for key, value in top]
    return lines


def _profile_line(key: tuple[str, int, str], value: tuple[Any, ...], n: int) -> str:
    filename, line_no, name = key
    _cc, calls, tottime, cumtime, _callers = value
    parts = Path(filename).parts
    where = "/".join(parts[parts.index("immunostrat") :]) if "immunostrat" in parts else Path(filename).name
    return (
        f"  {tottime / n * 1000:7.2f} own {cumtime / n * 1000:7.2f} cum {calls / n:6.1f}x  "
        f"{where}:{line_no} {name}"[:110]
    )


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 participants, 16 clients, profile 20")
    parser.add_argument(
        "--pg", help="PostgreSQL server URL (a new database is created there); default SQLite"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--profile", type=int, default=60)
    args = parser.parse_args(argv)
    if args.quick:
        args.participants, args.clients, args.profile = 200, 16, 20

    folder = Path(tempfile.mkdtemp(prefix="bench-trial-"))
    pg_name = None
    if args.pg:
        pg_name = f"bench_trial_{uuid.uuid4().hex[:10]}"
        db_url = create_database(args.pg, pg_name)
        scratch_name = pg_name + "_plain"
        scratch_url = create_database(args.pg, scratch_name)
    else:
        db_url = f"sqlite:///{folder / 'trial.db'}"
        scratch_name = None
        scratch_url = f"sqlite:///{folder / 'plain.db'}"
    backend = "PostgreSQL" if args.pg else "SQLite"
    try:
        open_db(db_url)
        create_user(db_url, "bench-admin", ADMIN_PASSWORD, "admin")
        with server(db_url, args.workers, folder / "server.log") as (base, server_pid):
            admin = _token(base, "bench-admin", ADMIN_PASSWORD)
            slots = (args.participants + args.profile) // 2 + 50  # per stratum: 4 sites x 2 endotypes
            r = httpx.post(
                f"{base}/trials",
                json={
                    "code": "BENCH",
                    "title": "throughput benchmark",
                    "sites": [{"code": c, "name": f"site {c}"} for c in SITES],
                    "slots_per_stratum": slots,
                },
                headers={"Authorization": f"Bearer {admin}"},
                timeout=300,
            )
            r.raise_for_status()
            trial_id = int(r.json()["id"])
            r = httpx.post(
                f"{base}/users",
                json={
                    "username": "bench-investigator",
                    "password": INVESTIGATOR_PASSWORD,
                    "role": "investigator",
                },
                headers={"Authorization": f"Bearer {admin}"},
                timeout=60,
            )
            r.raise_for_status()
            token = _token(base, "bench-investigator", INVESTIGATOR_PASSWORD)
            screening, eligible = screen(base, token, trial_id, args.participants, args.clients)
            print(screening.line(), f"({len(eligible)} eligible)", flush=True)
            jobs: list[Job] = [
                ("POST", f"/trials/{trial_id}/participants/{pid}/randomize", None, f"rand-{pid}")
                for pid in eligible
            ]
            cpu_before = tree_cpu_s(server_pid)
            service_run, responses = asyncio.run(_drive(base, token, jobs, args.clients, "randomization"))
            server_cpu_ms = (tree_cpu_s(server_pid) - cpu_before) / max(1, service_run.n) * 1000
            print(service_run.line(), f"(server CPU {server_cpu_ms:.1f} ms per randomization)", flush=True)
            problems = check(db_url, trial_id, eligible, responses)
            print(
                "checks:",
                "; ".join(problems) if problems else "one allocation each, no kit twice, no gap, no arm",
            )
            rows = written_rows(db_url, trial_id)
            baseline = plain_insert(scratch_url, rows, args.clients)
            print(baseline.line(), flush=True)
            if args.profile:
                _, reserve = screen(
                    base, token, trial_id, args.profile, args.clients, offset=args.participants
                )
                for line in profile(db_url, trial_id, reserve, base, token):
                    print(line)
    finally:
        if pg_name is not None:
            from immunostrat.trial.db import dispose_engines

            dispose_engines()
            drop_database(args.pg, pg_name)
            if scratch_name:
                drop_database(args.pg, scratch_name)
    ratio = service_run.rate / baseline.rate if baseline.rate else float("nan")
    print(
        f"benchmark trial: {ratio:.2f}x plain-insert ({backend}, {args.workers} workers, "
        f"{args.clients} clients: {service_run.rate:.1f} randomizations/s, p50 "
        f"{service_run.pct(0.5):.0f} ms, p99 {service_run.pct(0.99):.0f} ms, server CPU "
        f"{server_cpu_ms:.1f} ms each vs the same rows "
        f"inserted at {baseline.rate:.1f}/s; {len(problems)} problems)"
    )


if __name__ == "__main__":
    main()
