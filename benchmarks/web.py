"""Benchmark: each main page against the JSON API call that does the same work, in the same run.

    python benchmarks/web.py [--quick] [--sessions 20] [--requests 10] [--participants 20]

1. A fresh SQLite file, the SLE secretome template, one user per role, uvicorn (one worker) on a
   loopback port; ``--participants`` screened, randomized and with a saved day-0 form through the API.
2. ``--sessions`` concurrent sessions (asyncio clients), each signed in twice: a page session
   (cookie, through the sign-in page) and an API token. For each pair (page, API call), every session
   sends ``--requests`` page requests, then as many API requests, in rounds that alternate which goes
   first, so drift in the machine's load falls on both alike.
3. Latency is measured at the client on loopback (request sent to last byte read): the server's time
   plus a loopback round trip that both sides of a pair share.

Pairs (a page against the API calls a client makes for the same view, one after the other): trial
list (``/web/`` vs ``GET /trials``), screening log, participants, a participant's page (participant,
allocation and casebook: three calls), a visit form (casebook and form history: two calls), the
visit work list vs ``GET .../visit-report``, open queries (open, answered and participants: three
calls), and the bedside recalculation (``POST /web/bedside/classify``, the htmx fragment) vs
``POST /classify``.

The last line is ``benchmark web: WORSTx (details)``: the largest p95 ratio page / API over the
pages (target 1.2x), and the bedside's p95 ratio to ``/classify`` (target 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx

from immunostrat.trial import ops

ROLE = "investigator"
SLE_VALUES: dict[str, Any] = {
    **dict.fromkeys(
        (
            "mex_neurological_disorder",
            "mex_renal_disorder",
            "mex_vasculitis",
            "mex_hemolysis",
            "mex_myositis",
            "mex_mucocutaneous",
            "mex_serositis",
            "mex_fever",
            "mex_fatigue",
            "mex_arthritis",
        ),
        False,
    ),
    "hemoglobin": 12.1,
    "platelets": 210,
    "wbc": 5.4,
    "lymphocytes": 1.3,
    "c3_mg_dl": 72,
    "c4_mg_dl": 11,
}


@dataclass
class Pair:
    name: str
    page: tuple[str, str, dict[str, str] | None]
    api: list[tuple[str, str, dict[str, Any] | None]]
    """The API calls a client makes for the same view, one after the other (timed together)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(db_url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    env = dict(
        os.environ,
        IMMUNOSTRAT_DB_URL=db_url,
        IMMUNOSTRAT_BCRYPT_ROUNDS="4",
        IMMUNOSTRAT_TOKEN_KEY=secrets.token_urlsafe(48),
    )
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "immunostrat.api.app:app_from_env",
        "--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log", "--backlog", "512",
    ]  # fmt: skip
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),), stdout=log, stderr=subprocess.STDOUT)
    sock.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def seed(base: str, password: str, trial_id: int, n: int) -> list[int]:
    token = httpx.post(f"{base}/token", data={"username": ROLE, "password": password}, timeout=30).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    pids = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
        for i in range(n):
            body = {
                "site": "S01",
                "age": 30 + i % 40,
                "sex": "F",
                "form": {"sle_classified": "yes", "moderately_active": "yes"},
            }
            r = c.post(f"/trials/{trial_id}/participants", json=body)
            r.raise_for_status()
            pid = int(r.json()["participant_id"])
            c.post(f"/trials/{trial_id}/participants/{pid}/randomize").raise_for_status()
            form = {"visit_date": date.today().isoformat(), "values": SLE_VALUES}
            c.put(
                f"/trials/{trial_id}/participants/{pid}/visits/day0/forms/sle_visit", json=form
            ).raise_for_status()
            pids.append(pid)
    return pids


async def session(base: str, password: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient, str]:
    """A page client (signed in through the sign-in page) with its CSRF token, and an API client."""
    page = httpx.AsyncClient(base_url=base, timeout=120)
    r = await page.post("/web/sign-in", data={"username": ROLE, "password": password})
    assert r.status_code == 303, r.text
    home = await page.get("/web/bedside")
    match = re.search(r'name="csrf_token" value="([^"]+)"', home.text)
    assert match is not None
    r = await page.post("/token", data={"username": ROLE, "password": password})
    api = httpx.AsyncClient(
        base_url=base, timeout=120, headers={"Authorization": f"Bearer {r.json()['access_token']}"}
    )
    return page, api, match.group(1)


async def timed(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> float:
    t0 = time.perf_counter()
    r = await client.request(method, url, **kw)
    elapsed = time.perf_counter() - t0
    if r.status_code >= 400:
        raise SystemExit(f"{method} {url}: {r.status_code} {r.text[:300]}")
    return elapsed * 1000


async def run_pair(
    pair: Pair, sessions: list[tuple[httpx.AsyncClient, httpx.AsyncClient, str]], requests: int
) -> tuple[list[float], list[float]]:
    page_ms: list[float] = []
    api_ms: list[float] = []

    async def one(kind: str, s: tuple[httpx.AsyncClient, httpx.AsyncClient, str]) -> None:
        page, api, csrf = s
        if kind == "page":
            method, url, form = pair.page
            data = {**form, "csrf_token": csrf} if form is not None else None
            headers = {"HX-Request": "true"} if form is not None else None
            page_ms.append(await timed(page, method, url, data=data, headers=headers))
        else:
            total = 0.0
            for method, url, body in pair.api:
                total += await timed(api, method, url, json=body)
            api_ms.append(total)

    for round_ in range(requests):
        order = ("page", "api") if round_ % 2 == 0 else ("api", "page")
        for kind in order:
            await asyncio.gather(*(one(kind, s) for s in sessions))
    return page_ms, api_ms


async def measure(
    base: str, password: str, pairs: list[Pair], n_sessions: int, requests: int
) -> list[tuple[str, list[float], list[float]]]:
    sessions = [await session(base, password) for _ in range(n_sessions)]
    try:
        out = []
        for pair in pairs:
            await run_pair(pair, sessions[:2], 1)  # warm-up (templates compiled, caches filled)
            page_ms, api_ms = await run_pair(pair, sessions, requests)
            out.append((pair.name, page_ms, api_ms))
        return out
    finally:
        for page, api, _ in sessions:
            await page.aclose()
            await api.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 requests per session and pair, 8 participants"
    )
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--participants", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.participants = 4, 8
    folder = Path(tempfile.mkdtemp(prefix="immunostrat-web-bench-"))
    db_url = f"sqlite:///{folder / 'web.db'}"
    os.environ.setdefault("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    setup = ops.init_trial(db_url, ops.template_path("sle-secretome"))
    password = secrets.token_urlsafe(16)
    ops.create_user(db_url, ROLE, password, ROLE)
    proc, base = start_server(db_url, folder)
    try:
        t = setup.trial_id
        pids = seed(base, password, t, args.participants)
        pid = pids[len(pids) // 2]
        at = datetime.now(UTC).isoformat()
        bedside_form = {
            "age": "64", "sex": "F", "weight_kg": "70",
            "ferritin__value": "2.1", "ferritin__unit": "mg/L",
            "mhla_dr__value": "3100", "mhla_dr__unit": "molecules/cell",
            "creatinine__value": "90", "creatinine__unit": "umol/L",
        }  # fmt: skip
        classify = {
            "patient": {"patient_id": "bedside", "age": 64, "sex": "F", "weight_kg": 70},
            "observations": [
                {"time": at, "concept": "ferritin", "value": 2.1, "unit": "mg/L"},
                {"time": at, "concept": "mhla_dr", "value": 3100, "unit": "molecules/cell"},
                {"time": at, "concept": "creatinine", "value": 90, "unit": "umol/L"},
            ],
        }
        casebook = f"/trials/{t}/participants/{pid}/casebook"
        with httpx.Client(base_url=base, timeout=60) as c:
            token = c.post("/token", data={"username": ROLE, "password": password}).json()["access_token"]
            book = c.get(casebook, headers={"Authorization": f"Bearer {token}"}).json()
        record = next(v for v in book["visits"] if v["visit"] == "day0")["forms"]["sle_visit"]["id"]
        web_t, web_p = f"/web/trials/{t}", f"/web/trials/{t}/participants/{pid}"
        api_t, api_p = f"/trials/{t}", f"/trials/{t}/participants/{pid}"
        pairs = [
            Pair("trials", ("GET", "/web/", None), [("GET", "/trials", None)]),
            Pair(
                "screening log",
                ("GET", f"{web_t}/screening-log", None),
                [("GET", f"{api_t}/screening-log", None)],
            ),
            Pair(
                "participants",
                ("GET", f"{web_t}/participants", None),
                [("GET", f"{api_t}/participants", None)],
            ),
            Pair(
                "participant",
                ("GET", web_p, None),
                [("GET", api_p, None), ("GET", f"{api_p}/allocation", None), ("GET", casebook, None)],
            ),
            Pair(
                "form",
                ("GET", f"{web_p}/visits/day0/forms/sle_visit", None),
                [("GET", casebook, None), ("GET", f"{api_t}/form-records/{record}/history", None)],
            ),
            Pair("visits", ("GET", f"{web_t}/visits", None), [("GET", f"{api_t}/visit-report", None)]),
            Pair(
                "queries",
                ("GET", f"{web_t}/queries", None),
                [
                    ("GET", f"{api_t}/queries?state=open", None),
                    ("GET", f"{api_t}/queries?state=answered", None),
                    ("GET", f"{api_t}/participants", None),
                ],
            ),
            Pair(
                "bedside", ("POST", "/web/bedside/classify", bedside_form), [("POST", "/classify", classify)]
            ),
        ]
        results = asyncio.run(measure(base, password, pairs, args.sessions, args.requests))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    cores = os.cpu_count()
    print(f"{args.sessions} concurrent sessions, {args.requests} requests each per side, {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}; latency at the client on loopback, ms")  # fmt: skip
    print(f"{'pair':<14} {'page p50':>9} {'page p95':>9} {'API p50':>8} {'API p95':>8} {'p95 ratio':>9}")
    ratios: dict[str, float] = {}
    for name, page_ms, api_ms in results:
        ratio = percentile(page_ms, 0.95) / percentile(api_ms, 0.95)
        ratios[name] = ratio
        print(
            f"{name:<14} {statistics.median(page_ms):9.1f} {percentile(page_ms, 0.95):9.1f} "
            f"{statistics.median(api_ms):8.1f} {percentile(api_ms, 0.95):8.1f} {ratio:8.2f}x"
        )
    pages = {k: v for k, v in ratios.items() if k != "bedside"}
    worst = max(pages, key=lambda k: pages[k])
    over = sorted(k for k, v in pages.items() if v > 1.2)
    print(
        f"benchmark web: {pages[worst]:.2f}x API at p95 for the slowest page ({worst}; target 1.2x, "
        f"over it: {', '.join(over) or 'none'}); bedside recalculation {ratios['bedside']:.2f}x /classify "
        f"(target 1.5x); {args.sessions} sessions"
    )


if __name__ == "__main__":
    main()
