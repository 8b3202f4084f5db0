"""The README's role matrix against the running service: every operation of the OpenAPI document, as
each role, with no token and with a bad one. An endpoint added without a role check, or without a
line in the README's matrix, fails here; so does a line for an endpoint that no longer exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from apiserver import ROLES, Server
from fastapi.testclient import TestClient
from starlette.routing import Mount

from immunostrat.api import create_app

README = Path(__file__).resolve().parents[2] / "README.md"
OPEN = "open"
# served for reading the documentation, never data, and the web pages (they check the same roles as
# the API operations they call; tests/web): the only routes allowed outside the OpenAPI document
DOCUMENTATION = re.compile(r"^/(docs|docs-assets|redoc|openapi\.json|web)(/|$)")


def readme_matrix(kind: str = "operation") -> dict[tuple[str, str], set[str] | None]:
    """(method, path) -> the roles allowed, or None for an operation open to anyone, from the
    README's table whose first column is ``kind`` ("operation": the API; "page": the pages, which
    sign in with a session instead of a token). No pages table: no pages."""
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"^\s*\| {kind} \|", line)]
    if kind == "page" and not starts:
        return {}
    header = starts[0]
    roles = [c.strip() for c in lines[header].strip().strip("|").split("|")][1:]
    assert sorted(roles) == sorted(ROLES), roles
    matrix: dict[tuple[str, str], set[str] | None] = {}
    for line in lines[header + 2 :]:
        if not line.strip().startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        method, path = cells[0].strip("`").split(" ", 1)
        marks = dict(zip(roles, cells[1:], strict=True))
        assert set(marks.values()) <= {"yes", "-", OPEN}, line
        if OPEN in marks.values():
            assert set(marks.values()) == {OPEN}, f"an open operation is open to every role: {line}"
            matrix[(method, path)] = None
        else:
            matrix[(method, path)] = {role for role, mark in marks.items() if mark == "yes"}
    assert matrix, f"no {kind} table in the README"
    return matrix


def test_every_operation_as_every_role(server: Server) -> None:
    matrix = readme_matrix()
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    served = {(m.upper(), path) for path, item in spec["paths"].items() for m in item}
    assert sorted(served - matrix.keys()) == [], "operations missing from the README's role matrix"
    assert sorted(matrix.keys() - served) == [], "README lists operations the service does not have"

    trial = server.new_trial(f"MATRIX-{server.kind}")
    clients = {role: server.client(role) for role in ROLES}
    anonymous = httpx.Client(base_url=server.base_url, timeout=60)
    forged = httpx.Client(
        base_url=server.base_url, timeout=60, headers={"Authorization": "Bearer not.a.token"}
    )
    calls = 0
    try:
        for (method, template), allowed in sorted(matrix.items()):
            # the trial is a real one; any other id names nothing (the role check comes first)
            path = re.sub(
                r"\{(\w+)\}", lambda m: str(trial["id"]) if m[1] == "trial_id" else "999999", template
            )
            body = {} if method in ("POST", "PUT", "PATCH") else None
            for caller, client in (("anonymous", anonymous), ("bad token", forged)):
                status = client.request(method, path, json=body).status_code
                calls += 1
                if allowed is None:
                    assert status not in (401, 403), (method, template, caller, status)
                else:
                    assert status == 401, (method, template, caller, status)
            for role in ROLES:
                r = clients[role].request(method, path, json=body)
                calls += 1
                if allowed is None or role in allowed:
                    assert r.status_code not in (401, 403), (method, template, role, r.status_code, r.text)
                else:
                    assert r.status_code == 403, (method, template, role, r.status_code, r.text)
    finally:
        for c in (*clients.values(), anonymous, forged):
            c.close()
    assert calls == len(matrix) * (len(ROLES) + 2)


def _served_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, into included routers (FastAPI wraps them since 0.160)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _served_routes(inner.routes, prefix + str(getattr(context, "prefix", "")))
        elif isinstance(route, Mount):
            yield ("GET", prefix + route.path)
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    yield (method, prefix + route.path)


def test_no_route_hides_from_the_role_matrix(tmp_path: Path) -> None:
    """A route left out of the OpenAPI document would escape the walk above: only the documentation
    and the pages listed in the README's page table may be, and without a session every page that
    is not open sends the visitor away (to sign in) or refuses."""
    app = create_app(f"sqlite:///{tmp_path / 'routes.db'}")
    documented = {(m.upper(), path) for path, item in app.openapi()["paths"].items() for m in item}
    served = set(_served_routes(app.router.routes))
    assert documented <= served, "the route walk missed documented routes"
    pages = readme_matrix("page")
    assert sorted(pages.keys() - served) == [], "README lists pages the service does not have"
    hidden = sorted(op for op in served - documented - pages.keys() if not DOCUMENTATION.match(op[1]))
    assert hidden == [], "routes in neither the OpenAPI document nor the README's page table"
    with TestClient(app, follow_redirects=False) as anonymous:
        for (method, template), allowed in sorted(pages.items()):
            status = anonymous.request(method, re.sub(r"\{\w+\}", "1", template)).status_code
            if allowed is None:
                assert status not in (401, 403), (method, template, status)
            else:
                assert status in (302, 303, 307, 401, 403), (method, template, status)
