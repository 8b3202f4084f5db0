"""Fuzz the REST API with schemathesis: every operation of the OpenAPI document, as each role, against
a real server; every response must match the document.

    python scripts/fuzz.py [--roles admin,investigator,...] [--max-time 120] [--max-examples N]
                           [--workers 2] [--seed N] [--output fuzz-report]

A uvicorn on 127.0.0.1 is started here over a new SQLite database (removed at the end), with one user
per role and a seeded trial (sites, screened and randomized participants) so that small ids name
real records. schemathesis then runs, per role with that role's token (``anonymous``: none), its
examples, coverage and fuzzing phases with the checks of :data:`CHECKS`. The summary (failures per
check and per role, test cases, time) goes to ``OUTPUT/summary.md`` and ``summary.json``, with
schemathesis's own JSON report per role beside it; the exit status is 1 when anything failed.

The CI version is ``tests/api/test_api_fuzz.py``: the same function on a short budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from immunostrat.trial.schemas import ROLES as ALL_ROLES

ROOT = Path(__file__).resolve().parents[1]
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
)
"""The checks every response is held to: no 5xx; the status code, content type, headers and body as
the document lists them; a request the document allows is not refused and one it forbids is not
accepted; a method the path does not have answers 405 with a correct ``Allow`` header."""
HELD_CHECKS = CHECKS
"""The checks held at zero failures (CI: ``tests/api/test_api_fuzz.py``): all of them. A request the
document allows may still be refused by a rule JSON Schema cannot state (one field against another,
or the database); those refusals are the documented 422 (or 412) of the operations in
:data:`DOMAIN_RULES`, and only there does ``positive_data_acceptance`` accept them."""
ACCEPTED_STATUSES = ("2xx", "3xx", "401", "403", "404", "409", "429", "5xx")
"""schemathesis' own expected statuses for a schema-valid request (5xx is held by
``not_a_server_error``)."""
DOMAIN_RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "POST /trials": (("422",), "a trial's arms, control arm, ratios and forms name each other"),
    "POST /users": (("422",), "the password policy (NFKC, not the username, strength)"),
    "PATCH /users/{user_id}": (("422",), "the password policy (NFKC, strength)"),
    "POST /trials/{trial_id}/participants": (
        ("422",),
        "a site and form fields of this trial (the database), a known concept and unit, no NUL in "
        "the form's nested values",
    ),
    "POST /trials/{trial_id}/participants/{participant_id}/rescreen": (
        ("422",),
        "known concepts and exclusions, this trial's form fields",
    ),
    "POST /trials/{trial_id}/participants/{participant_id}/assessments": (
        ("422",),
        "known concepts and units; a saved day changes only with a reason",
    ),
    "PUT /trials/{trial_id}/participants/{participant_id}/outcome": (
        ("422",),
        "last_contact_day >= death_day, and the other day rules between fields",
    ),
    "POST /trials/{trial_id}/participants/{participant_id}/adverse-events": (
        ("422",),
        "serious and its ICH E2A criteria go together; CTCAE grade 5 is death",
    ),
    "POST /trials/{trial_id}/participants/{participant_id}/unblind": (
        ("422",),
        "a reason a reader can see (letters, not one repeated character)",
    ),
    "PUT /trials/{trial_id}/participants/{participant_id}/visits/{visit}/forms/{form}": (
        ("422",),
        "this trial's visits, forms and fields, their types and units",
    ),
    "POST /trials/{trial_id}/participants/{participant_id}/visits/{visit}/signature": (
        ("422",),
        "a visit of this trial",
    ),
    "POST /trials/{trial_id}/participants/{participant_id}/queries": (
        ("422",),
        "a visit, form and field of this trial",
    ),
    "GET /trials/{trial_id}/export": (
        ("422",),
        "an ODM export needs a trial set up with forms (the database)",
    ),
    "POST /classify": (("422",), "a bundle with FHIR resources, known concepts, no NUL in nested values"),
    "POST /score": (("422",), "a bundle with FHIR resources, known concepts, no NUL in nested values"),
    "POST /cds-services/immunostrat-endotype": (
        ("412", "422"),
        "412: the prefetch is missing and no FHIR server gives it; 422: FHIR data of the wrong shape "
        "or a NUL in nested values",
    ),
    "POST /cds-services/immunostrat-endotype/feedback": (
        ("422",),
        "an accepted card has no override reason (CDS Hooks 2.0); no NUL in nested values",
    ),
}
"""Operations whose documented 4xx answers a rule between fields or against the database, which
JSON Schema cannot state: status codes schemathesis' positive_data_acceptance accepts there, and the
rule (every other rule is in the document: patterns, enums, lengths, bounds)."""


def schemathesis_config() -> str:
    """The ``schemathesis.toml`` of :data:`DOMAIN_RULES` (``st --config-file``)."""
    lines = []
    for name, (statuses, rule) in DOMAIN_RULES.items():
        expected = ", ".join(f'"{s}"' for s in (*ACCEPTED_STATUSES, *statuses))
        lines += [
            f"# {rule}",
            "[[operations]]",
            f'include-name = "{name}"',
            f"checks.positive_data_acceptance.expected-statuses = [{expected}]",
            "",
        ]
    return "\n".join(lines)


ROLES = (*(r for r in ALL_ROLES if r != "admin"), "anonymous", "admin")
"""Every role and no token; admin last (its fuzzing may deactivate or re-role the other users)."""
SITES = ("S1", "S2")


def _apiserver() -> Any:
    """tests/api/apiserver.py (the API tests' server launcher), loaded by path."""
    spec = importlib.util.spec_from_file_location("fuzz_apiserver", ROOT / "tests" / "api" / "apiserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_apiserver"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Service:
    """A running server and a token per role (``anonymous`` has none)."""

    base_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    log: Path | None = None


@contextmanager
def service(workdir: Path, roles: Sequence[str] = ROLES) -> Iterator[Service]:
    """A uvicorn over a new SQLite database in ``workdir``, one user per trial or care role in
    ``roles`` (admin always: it seeds), and a seeded trial; stopped at the end."""
    from immunostrat.trial.ops import create_user, open_db

    api = _apiserver()
    db_url = f"sqlite:///{workdir / 'fuzz.db'}"
    open_db(db_url)
    passwords = {role: f"fuzzing passphrase {role} {secrets.token_hex(8)}" for role in ROLES}
    create_user(db_url, "admin-fuzz", passwords["admin"], "admin")
    log = workdir / "server.log"
    proc, base = api.launch_server(db_url, log)
    try:
        api.wait_ready(proc, base, log)
        srv = Service(base, log=log)
        srv.tokens["admin"] = _token(base, "admin-fuzz", passwords["admin"])
        admin = {"Authorization": f"Bearer {srv.tokens['admin']}"}
        for role in roles:
            if role in ("admin", "anonymous"):
                continue
            body = {"username": f"{role}-fuzz", "password": passwords[role], "role": role}
            r = httpx.post(f"{base}/users", json=body, headers=admin, timeout=30)
            r.raise_for_status()
            srv.tokens[role] = _token(base, f"{role}-fuzz", passwords[role])
        _seed(base, srv.tokens)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _token(base: str, username: str, password: str) -> str:
    r = httpx.post(f"{base}/token", data={"username": username, "password": password}, timeout=30)
    r.raise_for_status()
    return str(r.json()["access_token"])


def _seed(base: str, tokens: dict[str, str]) -> None:
    """A trial with two sites; when an investigator token exists, four participants screened (three
    eligible), two randomized, an adverse event and an assessment recorded."""
    with httpx.Client(base_url=base, timeout=60, headers=_auth(tokens["admin"])) as admin:
        r = admin.post(
            "/trials",
            json={
                "code": "FUZZ",
                "title": "fuzzing trial",
                "sites": [{"code": code, "name": f"site {code}"} for code in SITES],
            },
        )
        r.raise_for_status()
        trial_id = int(r.json()["id"])
    if "investigator" not in tokens:
        return
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    with httpx.Client(base_url=base, timeout=60, headers=_auth(tokens["investigator"])) as inv:
        ids: list[int] = []
        for i, ferritin in enumerate((9000.0, 800.0, 12000.0, 100.0)):
            mhla = 2000 if i != 3 else 30000
            body = {
                "site": SITES[i % 2],
                "age": 40 + i,
                "sex": "F" if i % 2 else "M",
                "weight_kg": 75,
                "infection_site": "CAP",
                "septic_shock": False,
                "baseline_sofa": 6,
                "exclusions": {},
                "observations": [
                    {"concept": "ferritin", "value": ferritin, "unit": "ng/mL", "time": when},
                    {"concept": "mhla_dr", "value": mhla, "unit": "AB/C", "time": when},
                    {"concept": "creatinine", "value": 1.0, "unit": "mg/dL", "time": when},
                ],
            }
            r = inv.post(f"/trials/{trial_id}/participants", json=body)
            r.raise_for_status()
            ids.append(int(r.json()["participant_id"]))
        for pid in ids[:2]:
            inv.post(f"/trials/{trial_id}/participants/{pid}/randomize").raise_for_status()
        inv.post(
            f"/trials/{trial_id}/participants/{ids[0]}/adverse-events",
            json={"term": "rash", "severity": "mild", "serious": False, "onset_day": 2},
        )
        inv.post(
            f"/trials/{trial_id}/participants/{ids[0]}/assessments",
            json={
                "day": 1,
                "observations": [{"concept": "creatinine", "value": 1.1, "unit": "mg/dL", "time": when}],
            },
        )


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class RoleRun:
    role: str
    seconds: float
    exit_code: int
    report: dict[str, Any]
    output: str

    @property
    def failures(self) -> list[dict[str, Any]]:
        return list(self.report.get("failures") or [])

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.report.get("errors") or [])

    @property
    def generated(self) -> int:
        return int((self.report.get("test_cases") or {}).get("generated") or 0)


def fuzz_role(
    srv: Service,
    role: str,
    out: Path,
    *,
    checks: Sequence[str] = CHECKS,
    max_examples: int | None = None,
    max_time: float | None = None,
    workers: int = 1,
    seed: int | None = None,
    phases: str = "examples,coverage,fuzzing",
    exclude: Sequence[str] = (),
    timeout: float | None = None,
) -> RoleRun:
    """One ``st run`` over the whole document as ``role``; its JSON report is parsed."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / f"schemathesis-{role}.json"
    config = out / "schemathesis.toml"
    config.write_text(schemathesis_config(), encoding="utf-8")
    cmd = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        f"{srv.base_url}/openapi.json",
        "--checks",
        ",".join(checks),
        "--phases",
        phases,
        "--workers",
        str(workers),
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--continue-on-failure",
        "--request-timeout",
        "30",
        "--output-truncate",
        "false",
        "--suppress-health-check",
        "all",
    ]
    if max_examples is not None:
        cmd += ["--max-examples", str(max_examples)]
    if max_time is not None:
        cmd += ["--max-time", str(max(1, round(max_time)))]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    for pattern in exclude:
        cmd += ["--exclude-path-regex", pattern]
    if role != "anonymous":
        cmd += ["--header", f"Authorization: Bearer {srv.tokens[role]}"]
    env = dict(os.environ, NO_COLOR="1", COLUMNS="160")
    started = time.monotonic()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=out
    )  # in OUT: schemathesis keeps its cache (.schemathesis/) in the working directory
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    (out / f"schemathesis-{role}.txt").write_text(output, encoding="utf-8")
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    return RoleRun(role, seconds, done.returncode, report, output)


def by_check(runs: Sequence[RoleRun]) -> dict[str, int]:
    """Failures per check (schemathesis's failure type), summed over the roles."""
    counts: dict[str, int] = {}
    for run in runs:
        for failure in run.failures:
            key = str(failure.get("type") or failure.get("title"))
            counts[key] = counts.get(key, 0) + int(failure.get("count") or 1)
    return counts


def problems(runs: Sequence[RoleRun]) -> list[str]:
    """Each failure group and error, one line each (empty when the runs were clean)."""
    lines: list[str] = []
    for run in runs:
        for f in run.failures:
            ops = ", ".join(f.get("operations") or [])
            lines.append(f"{run.role}: {f.get('type')} x{f.get('count')}: {f.get('title')} [{ops}]")
        for e in run.errors:
            lines.append(f"{run.role}: error x{e.get('count')}: {e.get('title')}")
        if not run.report:
            lines.append(f"{run.role}: no report (exit {run.exit_code}): {run.output[-2000:]}")
    return lines


def summary_markdown(runs: Sequence[RoleRun], command: str, checks: Sequence[str] = CHECKS) -> str:
    total = sum(r.generated for r in runs)
    lines = [
        "# API fuzzing (schemathesis)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{command}`",
        "",
        f"Checks: {', '.join(checks)}.",
        "",
        "| role | test cases | failures | errors | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        n_fail = sum(int(f.get("count") or 1) for f in r.failures)
        n_err = sum(int(e.get("count") or 1) for e in r.errors)
        lines.append(f"| {r.role} | {r.generated} | {n_fail} | {n_err} | {r.seconds:.0f} |")
    lines += ["", f"{total} test cases in all.", ""]
    counts = by_check(runs)
    if counts:
        lines += ["| check | failures |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(counts.items())]
        lines += ["", "## Failures", ""]
        lines += [f"- {p}" for p in problems(runs)]
    else:
        lines.append("No failure and no error.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", default=",".join(ROLES), help="comma-separated; 'anonymous' = no token")
    parser.add_argument("--max-time", type=float, default=120.0, help="seconds of fuzzing per role")
    parser.add_argument("--max-examples", type=int, default=None, help="test cases per operation and phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--checks", default="all", help="'all' (CHECKS), 'held' (HELD_CHECKS) or a comma-separated list"
    )
    parser.add_argument(
        "--phases", default="examples,coverage,fuzzing", help="schemathesis phases (comma-separated)"
    )
    parser.add_argument("--output", type=Path, default=Path("fuzz-report"))
    args = parser.parse_args(argv)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        parser.error(f"unknown role {unknown[0]!r}; expected one of {', '.join(ROLES)}")
    roles.sort(key=lambda r: r == "admin")  # admin last
    named = {"all": CHECKS, "held": HELD_CHECKS}
    checks = named.get(args.checks) or tuple(c.strip() for c in args.checks.split(",") if c.strip())
    args.output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="immunostrat-fuzz-"))
    runs: list[RoleRun] = []
    try:
        with service(workdir, roles) as srv:
            for role in roles:
                run = fuzz_role(
                    srv,
                    role,
                    args.output,
                    max_examples=args.max_examples,
                    max_time=args.max_time,
                    workers=args.workers,
                    seed=args.seed,
                    phases=args.phases,
                    checks=checks,
                )
                runs.append(run)
                n_fail = sum(int(f.get("count") or 1) for f in run.failures)
                print(
                    f"{role}: {run.generated} test cases, {n_fail} failures, {run.seconds:.0f} s", flush=True
                )
            if srv.log is not None:
                shutil.copy(srv.log, args.output / "server.log")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = "python scripts/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = summary_markdown(runs, command.strip(), checks)
    (args.output / "summary.md").write_text(text, encoding="utf-8")
    summary = {
        "roles": {
            r.role: {"test_cases": r.generated, "failures": r.failures, "errors": r.errors} for r in runs
        },
        "by_check": by_check(runs),
        "test_cases": sum(r.generated for r in runs),
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(text)
    clean = not problems(runs) and sum(r.generated for r in runs) > 0  # nothing generated proves nothing
    print(
        f"fuzz: {summary['test_cases']} test cases, {sum(by_check(runs).values())} failures, "
        f"{'clean' if clean else 'NOT clean'}"
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
