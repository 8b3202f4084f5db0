"""Fuzzing in CI: schemathesis against a real uvicorn (SQLite), as three roles, on a short budget;
every response must match the OpenAPI document. The longer run is ``scripts/fuzz.py``.

Also, without the fuzzer: the document lists the error statuses and the body the service really
sends, and a 405 names every method of the path in ``Allow``."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ_ROLES = ("investigator", "clinician", "admin")
"""A blinded trial role (screening, data), a care role (bedside, CDS Hooks), and admin (set-up,
users) last: its fuzzing may deactivate or re-role the others."""
MAX_EXAMPLES = 20
"""Test cases per operation and phase (examples, fuzzing): about 900 per role, 10-20 s each on two
busy cores; ``scripts/fuzz.py`` runs every role with the coverage phase for longer. The checks are
``HELD_CHECKS`` of scripts/fuzz.py: all of them, positive_data_acceptance with the documented 4xx of
``DOMAIN_RULES`` (rules between fields or against the database) accepted on those operations only."""


def _fuzz_module() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_script", ROOT / "scripts" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_script"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _fuzz_module()


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with fuzz.service(tmp_path_factory.mktemp("fuzz"), FUZZ_ROLES) as srv:
        yield srv


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzz_service: Any, tmp_path: Path) -> None:
    runs = [
        fuzz.fuzz_role(
            fuzz_service,
            role,
            tmp_path,
            checks=fuzz.HELD_CHECKS,
            max_examples=MAX_EXAMPLES,
            phases="examples,fuzzing",
            workers=2,
            seed=20,
            timeout=150,
        )
        for role in FUZZ_ROLES
    ]
    found = fuzz.problems(runs)
    assert found == [], "\n".join(found)
    for run in runs:
        assert run.report.get("complete"), f"{run.role}: the run did not finish: {run.output[-2000:]}"
        assert run.generated > 100, f"{run.role}: only {run.generated} test cases"
    log = fuzz_service.log.read_text(encoding="utf-8") if fuzz_service.log else ""
    assert "Traceback" not in log, log[-3000:]


def test_every_error_status_is_documented_with_the_real_body(fuzz_service: Any) -> None:
    doc = httpx.get(f"{fuzz_service.base_url}/openapi.json", timeout=30).json()
    body = doc["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["detail"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security"):
                assert "401" in responses, f"{method} {path}"
            if method in ("post", "put", "patch"):
                assert {"413", "422"} <= set(responses), f"{method} {path}"
            if "{" in path:
                assert {"404", "422"} <= set(responses), f"{method} {path}"
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", f"{method} {path} {status}"
    assert "429" in doc["paths"]["/token"]["post"]["responses"]
    assert "412" in doc["paths"]["/cds-services/immunostrat-endotype"]["post"]["responses"]
    assert "403" in doc["paths"]["/trials"]["post"]["responses"]  # admin only


def test_the_error_bodies_match_the_documented_one(fuzz_service: Any) -> None:
    base = fuzz_service.base_url
    token = fuzz_service.tokens["investigator"]
    answers = [
        httpx.get(f"{base}/trials/1", timeout=30),  # 401
        httpx.post(f"{base}/trials", json={}, headers=_auth(token), timeout=30),  # 403
        httpx.get(f"{base}/trials/999999", headers=_auth(token), timeout=30),  # 404
        httpx.get(f"{base}/trials/0", headers=_auth(token), timeout=30),  # 422 (validation)
        httpx.post(
            f"{base}/trials/1/participants",
            content=b'{"age": 1, "age": 2}',
            headers={**_auth(token), "Content-Type": "application/json"},
            timeout=30,
        ),  # 422 (duplicate key)
        httpx.post(
            f"{base}/trials/1/participants",
            content=b"{not json",
            headers={**_auth(token), "Content-Type": "application/json"},
            timeout=30,
        ),  # 400 or 422
    ]
    assert [a.status_code for a in answers][:4] == [401, 403, 404, 422]
    for a in answers:
        assert a.headers["content-type"].startswith("application/json")
        payload = a.json()
        assert isinstance(payload["detail"], str), a.text
        assert payload.get("field") is None or isinstance(payload["field"], str)


def test_method_not_allowed_names_every_method_of_the_path(fuzz_service: Any) -> None:
    base = fuzz_service.base_url
    r = httpx.request("OPTIONS", f"{base}/trials", timeout=30)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
    r = httpx.delete(f"{base}/trials/1/participants/1/assessments", timeout=30)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_number_is_not_a_feedback_time(fuzz_service: Any) -> None:
    """Found by fuzzing: ``outcomeTimestamp: 0`` was read as 1970-01-01 and recorded."""
    base = fuzz_service.base_url
    entry = {"card": "c1", "outcome": "accepted", "outcomeTimestamp": 0}
    url = f"{base}/cds-services/immunostrat-endotype/feedback"
    headers = _auth(fuzz_service.tokens["clinician"])
    r = httpx.post(url, json={"feedback": [entry]}, headers=headers, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "feedback[0].outcomeTimestamp"
    entry["outcomeTimestamp"] = "2026-01-02T03:04:05Z"
    r = httpx.post(url, json={"feedback": [entry]}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def test_the_export_is_documented_as_the_zip_it_is(fuzz_service: Any) -> None:
    """Found by fuzzing: the export answered application/zip where the document said JSON."""
    base = fuzz_service.base_url
    doc = httpx.get(f"{base}/openapi.json", timeout=30).json()
    documented = doc["paths"]["/trials/{trial_id}/export"]["get"]["responses"]["200"]["content"]
    assert list(documented) == ["application/zip"]
    r = httpx.get(f"{base}/trials/1/export", headers=_auth(fuzz_service.tokens["admin"]), timeout=30)
    assert r.status_code == 403  # the exporters are the statistician and the monitor
    assert r.headers["content-type"].startswith("application/json")


def test_rules_the_service_applies_are_stated_in_the_document(fuzz_service: Any) -> None:
    """A request the document allows is not refused by a rule it does not state (schemathesis'
    positive_data_acceptance): the template names and the Idempotency-Key's length are in it."""
    base = fuzz_service.base_url
    doc = httpx.get(f"{base}/openapi.json", timeout=30).json()
    params = doc["paths"]["/trial-templates/{name}"]["get"]["parameters"]
    pattern = next(p["schema"]["pattern"] for p in params if p["name"] == "name")
    names = [
        t["name"]
        for t in httpx.get(
            f"{base}/trial-templates", headers=_auth(fuzz_service.tokens["admin"]), timeout=30
        ).json()
    ]
    assert names and all(re.fullmatch(pattern, n) for n in names)
    assert re.fullmatch(pattern, "no-such-template") is None
    for path in (
        "/trials/{trial_id}/participants",
        "/trials/{trial_id}/participants/{participant_id}/randomize",
    ):
        params = doc["paths"][path]["post"]["parameters"]
        key = next(p for p in params if p["name"].lower() == "idempotency-key")
        schema = next(s for s in key["schema"]["anyOf"] if s.get("type") == "string")
        assert (schema["minLength"], schema["maxLength"]) == (1, 128), path
    for name in ("ClassifyIn", "ScoreIn"):
        one_of = doc["components"]["schemas"][name]["oneOf"]
        assert sorted(tuple(branch["required"]) for branch in one_of) == [("bundle",), ("observations",)]
    # the rules JSON Schema cannot state are documented 4xx of the operations that apply them
    for name, (statuses, _) in fuzz.DOMAIN_RULES.items():
        method, path = name.split(" ", 1)
        responses = doc["paths"][path][method.lower()]["responses"]
        assert set(statuses) <= set(responses), name
    assert "positive_data_acceptance" in fuzz.HELD_CHECKS
