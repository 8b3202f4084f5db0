"""Benchmark: each main page against the JSON API call that does the same work, in the same run.

    python benchmarks/web.py [--quick] [--sessions 20] [--requests 10] [--participants 20]

1. A fresh SQLite file, the SLE secretome template, one user per role used, ``immunostrat serve`` (the
   product's launcher: uvicorn, one worker) on a loopback port; ``--participants`` screened,
   randomized and with a saved day-0 form through the API, one more screened and found not
   eligible, and an adverse event for every other participant; the bundled demo cohort built into
   a cohorts directory (``IMMUNOSTRAT_COHORTS_DIR``).
2. ``--sessions`` concurrent sessions per role (asyncio clients), each signed in twice: a page session
   (cookie, through the sign-in page) and an API token. For each pair (page, API call), every session
   of the pair's role sends ``--requests`` page requests, then as many API requests, in rounds that
   alternate which goes first, so drift in the machine's load falls on both alike.
3. Latency is measured at the client on loopback (request sent to last byte read): the server's time
   plus a loopback round trip that both sides of a pair share.

Pairs (a page against the API calls a client makes for the same view, one after the other), as the
investigator: trial list (``/web/`` vs ``GET /trials``), screening log, participants, a participant's
page (participant, allocation and casebook: three calls), a visit form (casebook and form history:
two calls), the visit work list vs ``GET .../visit-report``, open queries (open, answered and
participants: three calls), enrolment vs ``GET .../enrolment``, CONSORT vs ``GET .../consort``, the
bedside recalculation (``POST /web/bedside/classify``, the htmx fragment) of three typed values vs
``POST /classify``, and of 24 pasted measurements over two days (the result and its timeline) vs
``POST /classify`` with the same observations. As the monitor: the audit viewer (the page and its
verification fragment: two requests) vs ``GET /audit?limit=50`` and ``GET /audit/verify``, the
adverse-event list vs ``GET .../adverse-events``, the exports page (the page, not the download) vs
``GET /trials/{id}`` (what the page shows). As the admin: users vs ``GET /users``.

Pages with no API counterpart, measured alone (median and p95, no ratio): the cohort summary of the
bundled demo cohort (researcher; cohorts are not served as JSON) and the in-silico form (modeller;
simulation is not served as JSON). Not measured: downloads (the export zip, the analysis report: the
same function as the API's export), the analysis page (after the lock only), the database lock page,
and the FHIR patient page (needs a FHIR server).

The last line is ``benchmark web: WORSTx (details)``: the largest p95 ratio page / API over the
pages (target 1.2x), and the bedside's p95 ratios to ``/classify`` (target 1.5x). The table also
gives the ratio of medians: on a machine shared with other work, the p95 of a cheap call is its
noisiest number (``--quick``: 40 samples a side, the p95 is the second largest).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from immunostrat.trial import ops

ROLE = "investigator"
"""The role that seeds the trial and signs in for most pairs."""
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
"""The clients send without Nagle's delay, as browsers do (a request written in two parts, headers
then form or JSON, would otherwise wait for the server's delayed ACK, ~40 ms on Linux)."""
ROLES = ("investigator", "monitor", "admin", "researcher", "modeller")
"""One user each (username = role)."""
COHORT = "bundled-demo"
AUDIT_ROWS = 50
"""The audit viewer's rows per page (``oversight.PAGE_ROWS``): the API call reads as many."""
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

Call = tuple[str, str, dict[str, Any] | None]
"""(method, path, form or JSON body)."""
Session = tuple[httpx.AsyncClient, httpx.AsyncClient, str]
"""A page client (cookie), an API client (token) and the page session's CSRF token."""


@dataclass
class Pair:
    name: str
    role: str
    page: list[Call]
    """The page's requests (a page and the fragments it loads), one after the other, timed together;
    a form is posted as an htmx request."""
    api: list[Call]
    """The API calls a client makes for the same view, one after the other (timed together); none:
    a page with no API counterpart, measured alone."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(db_url: str, folder: Path, cohorts: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The product's own launcher (``immunostrat serve``, one worker) on a free loopback port; its app
    imports for seconds: the caller builds the cohort meanwhile, then :func:`wait_ready`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(
        os.environ,
        IMMUNOSTRAT_BCRYPT_ROUNDS="4",
        IMMUNOSTRAT_TOKEN_KEY=secrets.token_urlsafe(48),
        IMMUNOSTRAT_COHORTS_DIR=str(cohorts),
    )
    cmd = [str(Path(sys.executable).parent / "immunostrat"), "serve", "--db", db_url]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited (see server.log in the run's temporary folder)")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def build_cohort(folder: Path) -> None:
    """The bundled demo cohort, as ``immunostrat demo serve`` builds it for the cohort pages."""
    from immunostrat.cli.demo import demo_paths
    from immunostrat.cohort import build_cohort as build
    from immunostrat.sources import load_source

    observations, _ = demo_paths()
    build(load_source("long", observations.parent), protocol_id="immunosep-2025", output_dir=folder)


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
            if i % 2 == 0:
                ae: dict[str, Any] = {"day": 1, "term": "headache", "ctcae_grade": 1, "serious": False}
                if i % 4 == 0:
                    ae.update(term="pneumonia", ctcae_grade=3, serious=True, seriousness=["hospitalisation"])
                c.post(f"/trials/{trial_id}/participants/{pid}/adverse-events", json=ae).raise_for_status()
            pids.append(pid)
        # one not eligible: the CONSORT flow's exclusion box
        body = {
            "site": "S01",
            "age": 41,
            "sex": "F",
            "form": {"sle_classified": "no", "moderately_active": "yes"},
        }
        c.post(f"/trials/{trial_id}/participants", json=body).raise_for_status()
    return pids


async def session(base: str, role: str, password: str) -> Session:
    """A page client (signed in through the sign-in page) with its CSRF token, and an API client."""
    page = httpx.AsyncClient(
        base_url=base, timeout=120, transport=httpx.AsyncHTTPTransport(socket_options=NODELAY)
    )
    r = await page.post("/web/sign-in", data={"username": role, "password": password})
    assert r.status_code == 303, r.text
    home = await page.get("/web/")
    match = re.search(r'name="csrf_token" value="([^"]+)"', home.text)
    assert match is not None, home.text[:500]
    r = await page.post("/token", data={"username": role, "password": password})
    api = httpx.AsyncClient(
        base_url=base,
        timeout=120,
        headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        transport=httpx.AsyncHTTPTransport(socket_options=NODELAY),
    )
    return page, api, match.group(1)


async def timed(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> float:
    t0 = time.perf_counter()
    r = await client.request(method, url, **kw)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:  # a redirect (to sign in, say) is not the page
        raise SystemExit(f"{method} {url}: {r.status_code} {r.text[:300]}")
    return elapsed * 1000


async def run_pair(pair: Pair, sessions: list[Session], requests: int) -> tuple[list[float], list[float]]:
    page_ms: list[float] = []
    api_ms: list[float] = []

    async def one(kind: str, s: Session) -> None:
        page, api, csrf = s
        total = 0.0
        if kind == "page":
            for method, url, form in pair.page:
                data = {**form, "csrf_token": csrf} if form is not None else None
                headers = {"HX-Request": "true"} if form is not None else None
                total += await timed(page, method, url, data=data, headers=headers)
            page_ms.append(total)
        else:
            for method, url, body in pair.api:
                total += await timed(api, method, url, json=body)
            api_ms.append(total)

    sides = ("page", "api") if pair.api else ("page",)
    for round_ in range(requests):
        order = sides if round_ % 2 == 0 else sides[::-1]
        for kind in order:
            await asyncio.gather(*(one(kind, s) for s in sessions))
    return page_ms, api_ms


async def measure(
    base: str, password: str, pairs: list[Pair], n_sessions: int, requests: int
) -> list[tuple[Pair, list[float], list[float]]]:
    out = []
    for role in dict.fromkeys(p.role for p in pairs):
        sessions = await asyncio.gather(*(session(base, role, password) for _ in range(n_sessions)))
        try:
            for pair in (p for p in pairs if p.role == role):
                await run_pair(pair, sessions[:2], 1)  # warm-up (templates compiled, caches filled)
                page_ms, api_ms = await run_pair(pair, sessions, requests)
                out.append((pair, page_ms, api_ms))
        finally:
            for page, api, _ in sessions:
                await page.aclose()
                await api.aclose()
    return out


def bedside_series(now: datetime) -> tuple[str, list[dict[str, Any]]]:
    """24 measurements over two days (ferritin, mHLA-DR and creatinine every 6 hours): the pasted
    text and the same observations for ``/classify``."""
    rows = []
    for k in range(8):
        at = (now - timedelta(hours=6 * (7 - k))).isoformat()
        rows += [
            {"time": at, "concept": "ferritin", "value": round(1.2 + 0.15 * k, 2), "unit": "mg/L"},
            {"time": at, "concept": "mhla_dr", "value": 9000 - 800 * k, "unit": "molecules/cell"},
            {"time": at, "concept": "creatinine", "value": 80 + 5 * k, "unit": "umol/L"},
        ]
    text = "time,concept,value,unit\n" + "\n".join(
        f"{r['time']},{r['concept']},{r['value']},{r['unit']}" for r in rows
    )
    return text, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 requests per session and pair, 8 participants"
    )
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--participants", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.participants = 2, 8
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="immunostrat-web-bench-"))
    db_url = f"sqlite:///{folder / 'web.db'}"
    os.environ.setdefault("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    setup = ops.init_trial(db_url, ops.template_path("sle-secretome"))
    password = secrets.token_urlsafe(16)
    for role in ROLES:
        ops.create_user(db_url, role, password, role)
    proc, base = start_server(db_url, folder, folder / "cohorts")
    try:
        build_cohort(folder / "cohorts" / COHORT)
        wait_ready(proc, base)
        t = setup.trial_id
        pids = seed(base, password, t, args.participants)
        pid = pids[len(pids) // 2]
        now = datetime.now(UTC)
        at = now.isoformat()
        patient = {"patient_id": "bedside", "age": 64, "sex": "F", "weight_kg": 70}
        bedside_form = {
            "age": "64", "sex": "F", "weight_kg": "70",
            "ferritin__value": "2.1", "ferritin__unit": "mg/L",
            "mhla_dr__value": "3100", "mhla_dr__unit": "molecules/cell",
            "creatinine__value": "90", "creatinine__unit": "umol/L",
        }  # fmt: skip
        classify = {
            "patient": patient,
            "observations": [
                {"time": at, "concept": "ferritin", "value": 2.1, "unit": "mg/L"},
                {"time": at, "concept": "mhla_dr", "value": 3100, "unit": "molecules/cell"},
                {"time": at, "concept": "creatinine", "value": 90, "unit": "umol/L"},
            ],
        }
        paste, series = bedside_series(now)
        paste_form = {"age": "64", "sex": "F", "weight_kg": "70", "paste": paste}
        casebook = f"/trials/{t}/participants/{pid}/casebook"
        with httpx.Client(base_url=base, timeout=60) as c:
            token = c.post("/token", data={"username": ROLE, "password": password}).json()["access_token"]
            book = c.get(casebook, headers={"Authorization": f"Bearer {token}"}).json()
        record = next(v for v in book["visits"] if v["visit"] == "day0")["forms"]["sle_visit"]["id"]
        web_t, web_p = f"/web/trials/{t}", f"/web/trials/{t}/participants/{pid}"
        api_t, api_p = f"/trials/{t}", f"/trials/{t}/participants/{pid}"

        def get(path: str) -> Call:
            return ("GET", path, None)

        pairs = [
            Pair("trials", ROLE, [get("/web/")], [get("/trials")]),
            Pair("screening log", ROLE, [get(f"{web_t}/screening-log")], [get(f"{api_t}/screening-log")]),
            Pair("participants", ROLE, [get(f"{web_t}/participants")], [get(f"{api_t}/participants")]),
            Pair(
                "participant",
                ROLE,
                [get(web_p)],
                [get(api_p), get(f"{api_p}/allocation"), get(casebook)],
            ),
            Pair(
                "form",
                ROLE,
                [get(f"{web_p}/visits/day0/forms/sle_visit")],
                [get(casebook), get(f"{api_t}/form-records/{record}/history")],
            ),
            Pair("visits", ROLE, [get(f"{web_t}/visits")], [get(f"{api_t}/visit-report")]),
            Pair(
                "queries",
                ROLE,
                [get(f"{web_t}/queries")],
                [
                    get(f"{api_t}/queries?state=open"),
                    get(f"{api_t}/queries?state=answered"),
                    get(f"{api_t}/participants"),
                ],
            ),
            Pair("enrolment", ROLE, [get(f"{web_t}/enrolment")], [get(f"{api_t}/enrolment")]),
            Pair("consort", ROLE, [get(f"{web_t}/consort")], [get(f"{api_t}/consort")]),
            Pair(
                "bedside",
                ROLE,
                [("POST", "/web/bedside/classify", bedside_form)],
                [("POST", "/classify", classify)],
            ),
            Pair(
                "bedside paste",
                ROLE,
                [("POST", "/web/bedside/classify", paste_form)],
                [("POST", "/classify", {"patient": patient, "observations": series})],
            ),
            Pair(
                "audit",
                "monitor",
                [get(f"{web_t}/audit"), get(f"{web_t}/audit/verify")],
                [get(f"/audit?limit={AUDIT_ROWS}"), get("/audit/verify")],
            ),
            Pair(
                "adverse events",
                "monitor",
                [get(f"{web_t}/adverse-events")],
                [get(f"{api_t}/adverse-events")],
            ),
            Pair("exports", "monitor", [get(f"{web_t}/exports")], [get(api_t)]),
            Pair("users", "admin", [get("/web/users")], [get("/users")]),
            Pair("cohort", "researcher", [get(f"/web/cohorts/{COHORT}")], []),
            Pair("in-silico", "modeller", [get("/web/insilico")], []),
        ]
        ready = time.monotonic()
        results = asyncio.run(measure(base, password, pairs, args.sessions, args.requests))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    report(results, args.sessions, args.requests, ready - started, time.monotonic() - started)
    shutil.rmtree(folder, ignore_errors=True)  # kept (with server.log) only when the run fails


def report(
    results: list[tuple[Pair, list[float], list[float]]],
    sessions: int,
    requests: int,
    setup: float,
    wall: float,
) -> None:
    cores = os.cpu_count()
    print(f"{sessions} concurrent sessions, {requests} requests each per side, {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}, {wall:.0f} s in all ({setup:.0f} s set-up); "
          "latency at the client on loopback, ms")  # fmt: skip
    print(
        f"{'pair':<15} {'role':<12} {'page p50':>9} {'page p95':>9} {'API p50':>8} {'API p95':>8} "
        f"{'p50 ratio':>9} {'p95 ratio':>9}"
    )
    ratios: dict[str, float] = {}
    alone: list[str] = []
    for pair, page_ms, api_ms in results:
        p50, p95 = statistics.median(page_ms), percentile(page_ms, 0.95)
        page = f"{pair.name:<15} {pair.role:<12} {p50:9.1f} {p95:9.1f}"
        if not api_ms:
            alone.append(pair.name)
            print(f"{page} {'-':>8} {'-':>8} {'no API':>9} {'no API':>9}")
            continue
        ratio = percentile(page_ms, 0.95) / percentile(api_ms, 0.95)
        ratios[pair.name] = ratio
        api50, api95 = statistics.median(api_ms), percentile(api_ms, 0.95)
        print(f"{page} {api50:8.1f} {api95:8.1f} {p50 / api50:8.2f}x {ratio:8.2f}x")
    bedside = {k: v for k, v in ratios.items() if k.startswith("bedside")}
    pages = {k: v for k, v in ratios.items() if k not in bedside}
    worst = max(pages, key=lambda k: pages[k])
    over = sorted((k for k, v in pages.items() if v > 1.2), key=lambda k: -pages[k])
    beds = ", ".join(f"{k} {v:.2f}x" for k, v in bedside.items())
    print(
        f"benchmark web: {pages[worst]:.2f}x API at p95 for the slowest page ({worst}; target 1.2x, "
        f"over it: {', '.join(f'{k} {pages[k]:.2f}x' for k in over) or 'none'}); {beds} /classify "
        f"(target 1.5x); no API counterpart: {', '.join(alone) or 'none'}; {sessions} sessions"
    )


if __name__ == "__main__":
    main()
