"""Benchmark: bedside classifications per second (``POST /classify``, three observations in mixed
units) against a no-op authenticated endpoint of the same app in the same run (the framework's limit).

    python benchmarks/classify.py [--quick] [--clients 16] [--seconds 10] [--rounds 2]

1. A fresh SQLite database with one clinician, and uvicorn with **one worker** on a loopback port,
   serving the product's app built by :func:`immunostrat.api.app.create_app` plus one route that
   exists only here: ``POST /bench/noop``, behind the same dependency as ``/classify`` (token
   checked, user looked up as current), a plain ``def`` like ``/classify``, returning ``{}``.
2. **Closed loop**: ``--clients`` keep-alive connections, each sending its next request as soon as
   the previous answer arrived, for ``--seconds``; no-op and classify phases alternate ``--rounds``
   times (so that other load on the machine hits both alike) and each side's best round counts.
   The client is a minimal HTTP/1.1 writer on asyncio streams, so that the server, not the client,
   is what saturates. Every answer must be 200; the first classify answer is checked for its endotype.
3. **In process**: the route's function called directly (no HTTP), milliseconds per classification.

The last line is ``benchmark classify: RATIOx noop (classify R/s vs noop R/s, p99 ...)``: the
classify rate over the no-op rate (at most 1; the target is at least 0.33).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PASSWORD = "benchmark clinician passphrase 1618"
USERNAME = "bench-clinician"
NOOP_PATH = "/bench/noop"
CLASSIFY_BODY: dict[str, Any] = {
    "patient": {"patient_id": "bench-1", "age": 64, "sex": "F", "weight_kg": 71},
    "observations": [
        {"time": "2025-03-01T08:00:00Z", "concept": "ferritin", "value": 5200, "unit": "ug/L"},
        {"time": "2025-03-01T08:05:00+01:00", "concept": "mHLA-DR", "value": 3100, "unit": "AB/C"},
        {"time": "2025-03-01T07:30:00Z", "concept": "creatinine", "value": 1.4, "unit": "mg/dL"},
    ],
    "at": "2025-03-01T10:00:00Z",
}
EXPECTED_ENDOTYPE = "mals"


def bench_app() -> Any:
    """For ``uvicorn --factory``: the product's app (``IMMUNOSTRAT_DB_URL``) plus the no-op route."""
    from fastapi import Depends

    from immunostrat.api.app import app_from_env
    from immunostrat.api.auth import Principal
    from immunostrat.api.clinical import CLASSIFIERS

    app = app_from_env()

    def noop(principal: Principal = Depends(CLASSIFIERS)) -> dict[str, Any]:
        return {}

    app.add_api_route(NOOP_PATH, noop, methods=["POST"])
    return app


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name}: {self.n} in {self.seconds:.2f} s = {self.rate:.0f}/s, p50 {self.pct(0.5):.1f} ms, "
            f"p99 {self.pct(0.99):.1f} ms, statuses {dict(sorted(self.statuses.items()))}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(db_url: str, log: Path) -> Iterator[tuple[str, int]]:
    """uvicorn, one worker, on a free loopback port; yields (host, port)."""
    port = _free_port()
    env = dict(os.environ, IMMUNOSTRAT_DB_URL=db_url, IMMUNOSTRAT_TOKEN_KEY=secrets.token_urlsafe(48))
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "classify:bench_app",
        "--app-dir",
        str(Path(__file__).resolve().parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
        "--backlog",
        "1024",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
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
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def request_bytes(path: str, token: str, body: dict[str, Any] | None, port: int) -> bytes:
    payload = json.dumps(body if body is not None else {}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def closed_loop(host: str, port: int, raw: bytes, clients: int, seconds: float, name: str) -> Phase:
    """``clients`` keep-alive connections, each sending its next request when the last one answered."""
    phase = Phase(name)
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status, _ = await _one(reader, writer, raw)
                phase.latencies_s.append(time.perf_counter() - started)
                phase.statuses[status] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    phase.seconds = time.perf_counter() - started
    return phase


def in_process_ms(n: int) -> float:
    """Milliseconds per call of the route's own function (validation of the body included)."""
    from immunostrat.api import clinical

    body = clinical.ClassifyIn.model_validate(CLASSIFY_BODY)
    for _ in range(20):
        clinical.classify(body, None)  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(n):
        clinical.classify(clinical.ClassifyIn.model_validate(CLASSIFY_BODY), None)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / n * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s per phase, 2 rounds (under a minute)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 4.0, 2

    from immunostrat.trial.ops import create_user, open_db

    folder = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    db_url = f"sqlite:///{folder / 'classify.db'}"
    open_db(db_url)
    create_user(db_url, USERNAME, PASSWORD, "clinician")
    ms = in_process_ms(200 if args.quick else 1000)
    print(f"in process: {ms:.2f} ms per classification (the route's function, body validation included)")
    noops: list[Phase] = []
    classifies: list[Phase] = []
    with server(db_url, folder / "server.log") as (host, port):
        base = f"http://{host}:{port}"
        r = httpx.post(f"{base}/token", data={"username": USERNAME, "password": PASSWORD}, timeout=60)
        r.raise_for_status()
        token = str(r.json()["access_token"])
        headers = {"Authorization": f"Bearer {token}"}
        checked = httpx.post(f"{base}/classify", json=CLASSIFY_BODY, headers=headers, timeout=60)
        checked.raise_for_status()
        answer = checked.json()
        if answer["endotype"] != EXPECTED_ENDOTYPE:
            raise SystemExit(f"classify answered {answer['endotype']}, expected {EXPECTED_ENDOTYPE}")
        httpx.post(f"{base}{NOOP_PATH}", headers=headers, timeout=60).raise_for_status()
        noop_raw = request_bytes(NOOP_PATH, token, CLASSIFY_BODY, port)
        classify_raw = request_bytes("/classify", token, CLASSIFY_BODY, port)
        asyncio.run(closed_loop(host, port, noop_raw, args.clients, 1.0, "warm-up"))
        asyncio.run(closed_loop(host, port, classify_raw, args.clients, 1.0, "warm-up"))
        for round_ in range(1, args.rounds + 1):
            noop = asyncio.run(
                closed_loop(host, port, noop_raw, args.clients, args.seconds, f"noop round {round_}")
            )
            print(noop.line(), flush=True)
            noops.append(noop)
            classify = asyncio.run(
                closed_loop(host, port, classify_raw, args.clients, args.seconds, f"classify round {round_}")
            )
            print(classify.line(), flush=True)
            classifies.append(classify)
    failures = sum(p.n - p.statuses[200] for p in noops + classifies)
    best_noop = max(noops, key=lambda p: p.rate)
    best_classify = max(classifies, key=lambda p: p.rate)
    ratios = [c.rate / n.rate for n, c in zip(noops, classifies, strict=True) if n.rate]
    print(
        "ratio per round: " + ", ".join(f"{r:.2f}" for r in ratios),
        f"(median {statistics.median(ratios):.2f})" if ratios else "",
    )
    ratio = best_classify.rate / best_noop.rate if best_noop.rate else float("nan")
    print(
        f"benchmark classify: {ratio:.2f}x noop (classify {best_classify.rate:.0f}/s vs noop "
        f"{best_noop.rate:.0f}/s, p99 {best_classify.pct(0.99):.1f} ms vs {best_noop.pct(0.99):.1f} ms, "
        f"p50 {best_classify.pct(0.5):.1f} ms vs {best_noop.pct(0.5):.1f} ms; 1 uvicorn worker, "
        f"{args.clients} clients, {ms:.2f} ms in process; {failures} non-200)"
    )


if __name__ == "__main__":
    main()
