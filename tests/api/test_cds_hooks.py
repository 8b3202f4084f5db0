"""CDS Hooks 2.0, section by section, against a real uvicorn server configured with EHR clients:
discovery; JWT (RS384 and ES384 keys made here, wrong key, expired, replayed, wrong audience,
alg none, unknown issuer, jku not allowed, jku allowed); prefetch; fetch from a real FHIR server and
412; cards; suggestions; links; feedback and its audit row."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiserver import PG_SERVER, Server, launch_server, pg_reachable, wait_ready
from joserfc import jwk, jwt
from sqlalchemy import select

from fhir_server import FhirServer
from immunostrat.trial.db import create_database, dispose_engines, drop_database, get_engine, transaction
from immunostrat.trial.models import AuditRow
from immunostrat.trial.ops import create_user, open_db

SERVICE = "/cds-services/immunostrat-endotype"
INLINE_ISS = "https://ehr.example.org/inline"
JKU_ISS = "https://ehr.example.org/jku"
LOINC = "http://loinc.org"
LOCAL = "urn:immunostrat:local"


class Keys:
    def __init__(self) -> None:
        self.rsa = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)
        self.ec = jwk.ECKey.generate_key("P-384", parameters={"kid": "ec-1"}, private=True)
        self.other = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)
        self.jku_key = jwk.ECKey.generate_key("P-384", parameters={"kid": "jku-1"}, private=True)

    def public(self, *keys: Any) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in keys]}


class _JwksHandler(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks_url(keys: Keys) -> Iterator[str]:
    """The jku client's JWK Set, served over real HTTP."""
    handler = type("Handler", (_JwksHandler,), {"body": json.dumps(keys.public(keys.jku_key)).encode()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
    httpd.shutdown()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def cds(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Keys, jwks_url: str
) -> Iterator[Server]:
    """A service with two EHR clients (inline keys; keys at an allowed jku), Berlin time, a patient link."""
    folder = tmp_path_factory.mktemp(f"cds-{request.param}")
    (folder / "inline-jwks.json").write_text(json.dumps(keys.public(keys.rsa, keys.ec)))
    clients = {
        "clients": [
            {"iss": INLINE_ISS, "jwks_file": "inline-jwks.json"},
            {"iss": JKU_ISS, "jwks_url_allowed": [jwks_url]},
        ]
    }
    (folder / "clients.yaml").write_text(json.dumps(clients))
    pg_name = None
    if request.param == "sqlite":
        db_url = f"sqlite:///{folder / 'service.db'}"
    else:
        if not pg_reachable():
            pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
        pg_name = f"immunostrat_cds_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        db_url = create_database(PG_SERVER, pg_name)
    open_db(db_url)
    password = secrets.token_urlsafe(12)
    create_user(db_url, "investigator-user", password, "investigator")
    settings = {
        "IMMUNOSTRAT_CDS_CLIENTS": str(folder / "clients.yaml"),
        "IMMUNOSTRAT_TIMEZONE": "Europe/Berlin",
        "IMMUNOSTRAT_PATIENT_PAGE_URL": "https://immunostrat.example.org/patients/{patient_id}",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        proc, base = launch_server(db_url, folder / "server.log")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        wait_ready(proc, base, folder / "server.log")
        yield Server(request.param, db_url, base, {"investigator": password})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        dispose_engines()
        if pg_name is not None:
            drop_database(PG_SERVER, pg_name)


def ehr_token(key: Any, alg: str, aud: str, iss: str = INLINE_ISS, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": iss,
        "sub": "client-1",
        "aud": aud,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(changes)
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    if "jku" in changes:
        header["jku"] = claims.pop("jku")
    return jwt.encode(header, claims, key, algorithms=[alg])


def _when(hours_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()


def _obs(
    oid: str, system: str, code: str, value: float, unit: str, when: str, pid: str = "p1"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit},
    }


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _patient(pid: str = "p1", birth: str = "1956-06-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": birth}


def prefetch(
    ferritin: float,
    hla: float | None,
    when: str,
    *,
    creatinine: float | None = None,
    weight: float | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "patient": _patient(),
        "ferritin": _bundle(_obs("f", LOINC, "2276-4", ferritin, "ng/mL", when)),
        "mhla_dr": _bundle(*([_obs("h", LOCAL, "IMMUNOSTRAT-MHLADR-ABC", hla, "AB/C", when)] if hla else [])),
        "creatinine": _bundle(
            *([_obs("c", LOINC, "2160-0", creatinine, "mg/dL", when)] if creatinine else [])
        ),
        "weight": _bundle(*([_obs("w", LOINC, "29463-7", weight, "kg", when)] if weight else [])),
        "medications": _bundle(),
    }
    return out


def hook(pre: dict[str, Any] | None, pid: str = "p1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": pid},
        **extra,
    }
    if pre is not None:
        body["prefetch"] = pre
    return body


def call(cds: Server, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or cds.token('investigator')}"}
    return httpx.post(f"{cds.base_url}{SERVICE}", json=body, headers=headers, timeout=60)


# --- discovery -------------------------------------------------------------------------------------


def test_discovery_announces_prefetch_for_every_input(cds: Server) -> None:
    r = httpx.get(f"{cds.base_url}/cds-services")
    assert r.status_code == 200
    (service,) = r.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == "immunostrat-endotype"
    pre = service["prefetch"]
    assert set(pre) == {"patient", "ferritin", "mhla_dr", "creatinine", "weight", "medications"}
    assert pre["patient"] == "Patient/{{context.patientId}}"
    assert "2276-4" in pre["ferritin"] and "2160-0" in pre["creatinine"]
    assert "29463-7" in pre["weight"] and "3141-9" in pre["weight"]


# --- JWT -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_ehr_signed_jwt_is_accepted(cds: Server, keys: Keys, alg: str) -> None:
    key = keys.rsa if alg == "RS384" else keys.ec
    token = ehr_token(key, alg, f"{cds.base_url}{SERVICE}")
    r = call(cds, hook(prefetch(9000, None, _when(1))), token)
    assert r.status_code == 200, r.text
    assert "mals" in r.json()["cards"][0]["summary"]


def _refused(cds: Server, token: str, message: str) -> None:
    r = call(cds, hook(prefetch(9000, None, _when(1))), token)
    assert r.status_code == 401, r.text
    assert message in r.json()["detail"], r.json()["detail"]


def test_jwt_signed_with_a_key_the_issuer_does_not_have_is_refused(cds: Server, keys: Keys) -> None:
    _refused(cds, ehr_token(keys.other, "RS384", f"{cds.base_url}{SERVICE}"), "does not verify")


def test_expired_jwt_is_refused(cds: Server, keys: Keys) -> None:
    past = int(time.time()) - 3600
    token = ehr_token(keys.rsa, "RS384", f"{cds.base_url}{SERVICE}", exp=past, iat=past - 300)
    _refused(cds, token, "exp")


def test_replayed_jti_is_refused(cds: Server, keys: Keys) -> None:
    token = ehr_token(keys.ec, "ES384", f"{cds.base_url}{SERVICE}")
    assert call(cds, hook(prefetch(9000, None, _when(1))), token).status_code == 200
    _refused(cds, token, "replayed")


def test_jwt_for_another_audience_is_refused(cds: Server, keys: Keys) -> None:
    _refused(cds, ehr_token(keys.rsa, "RS384", "https://other.example.org/cds-services/x"), "aud")


def test_alg_none_and_hmac_are_refused(cds: Server) -> None:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": INLINE_ISS, "aud": f"{cds.base_url}{SERVICE}", "exp": now + 300, "iat": now, "jti": "n1"}
    _refused(cds, f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.", "'none' refused")
    _refused(cds, f"{part({'alg': 'HS384', 'typ': 'JWT'})}.{part(claims)}.c2ln", "'HS384' refused")


def test_unknown_issuer_is_refused(cds: Server, keys: Keys) -> None:
    token = ehr_token(keys.rsa, "RS384", f"{cds.base_url}{SERVICE}", iss="https://intruder.example.org")
    _refused(cds, token, "not a configured CDS client")


def test_jku_only_from_the_clients_allow_list(cds: Server, keys: Keys, jwks_url: str) -> None:
    aud = f"{cds.base_url}{SERVICE}"
    good = ehr_token(keys.jku_key, "ES384", aud, iss=JKU_ISS, jku=jwks_url)
    assert call(cds, hook(prefetch(9000, None, _when(1))), good).status_code == 200
    elsewhere = ehr_token(keys.jku_key, "ES384", aud, iss=JKU_ISS, jku="http://127.0.0.1:9/evil.json")
    _refused(cds, elsewhere, "is not allowed")
    # the inline client may not point to keys of its own choosing either
    _refused(cds, ehr_token(keys.jku_key, "ES384", aud, jku=jwks_url), "is not allowed")


# --- prefetch, fhirServer, 412 ----------------------------------------------------------------------


def test_prefetch_decides_and_missing_prefetch_without_fhir_server_is_412(cds: Server) -> None:
    r = call(cds, hook(prefetch(900, 2500, _when(2))))
    assert r.status_code == 200 and "immunoparalysis" in r.json()["cards"][0]["summary"]
    partial = prefetch(900, 2500, _when(2))
    partial["weight"] = None  # CDS Hooks 2.0: a prefetch the client could not do is null
    del partial["medications"]
    r = call(cds, hook(partial))
    assert r.status_code == 412, r.text
    assert "weight" in r.json()["detail"] and "medications" in r.json()["detail"]
    assert call(cds, hook(None)).status_code == 412


def test_missing_prefetch_is_fetched_from_the_fhir_server(cds: Server, fhir_server: FhirServer) -> None:
    pid = f"cds-{cds.kind}-{uuid.uuid4().hex[:6]}"
    when = _when(3)
    fhir_server.load(
        [
            _patient(pid, "1956-06-01"),
            _obs(f"{pid}-f", LOINC, "2276-4", 9000, "ng/mL", when, pid),
            _obs(f"{pid}-c", LOINC, "2160-0", 3.6, "mg/dL", when, pid),
            _obs(f"{pid}-w", LOINC, "29463-7", 70, "kg", when, pid),
        ]
    )
    auth = {
        "access_token": fhir_server.token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
    }
    body = hook({}, pid, fhirServer=fhir_server.base_url, fhirAuthorization=auth)
    r = call(cds, body)
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]
    # 70-year-old woman, 70 kg, creatinine 3.6 mg/dL: CrCl 16 mL/min < 30 -> every 48 h, warning
    assert "mals" in card["summary"] and "every 48 h" in card["summary"]
    assert card["indicator"] == "warning" and "Renally adjusted" in card["detail"]
    wrong = hook(
        {}, pid, fhirServer=fhir_server.base_url, fhirAuthorization={**auth, "access_token": "wrong"}
    )
    r = call(cds, wrong)
    assert r.status_code == 412 and "401" in r.json()["detail"]


# --- cards, suggestions, links -----------------------------------------------------------------------


def test_stale_results_at_the_time_of_the_call_give_unknown(cds: Server) -> None:
    r = call(cds, hook(prefetch(900, 2500, "2020-01-01T00:00:00Z")))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert card["summary"].startswith("Immune endotype: unknown") and card["indicator"] == "warning"
    years = (datetime.now(UTC) - datetime(2020, 1, 1, tzinfo=UTC)).days / 365.25
    assert f"measured {years:.1f} years before the decision time" in card["detail"]
    assert "01 Jan 2020 01:00 CET" in card["detail"]  # Europe/Berlin
    assert "suggestions" not in card and "interferon" not in card["summary"]


def test_renal_adjustment_through_a_fhir_body_weight(cds: Server) -> None:
    r = call(cds, hook(prefetch(9000, None, _when(1), creatinine=3.6, weight=70)))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert card["indicator"] == "warning"
    assert "every 48 h" in card["summary"] and "every other day" in card["detail"]
    assert "every 16 h" not in json.dumps(card)
    assert any("Kineret" in line for line in card["detail"].splitlines())


def test_mals_without_weight_warns_what_to_measure(cds: Server) -> None:
    r = call(cds, hook(prefetch(9000, None, _when(1), creatinine=3.6)))
    (card,) = r.json()["cards"]
    assert card["indicator"] == "warning" and "measure or record body weight" in card["detail"]
    assert "every 8 h" in card["summary"]


def test_cards_cite_published_sources_in_local_time(cds: Server) -> None:
    when = datetime.now(UTC) - timedelta(hours=2)
    r = call(cds, hook(prefetch(900, 2500, when.isoformat(), creatinine=0.8, weight=60)))
    (card,) = r.json()["cards"]
    assert card["uuid"] and len(card["summary"]) <= 140 and card["indicator"] == "info"
    assert card["source"]["url"] == "https://doi.org/10.1001/jama.2025.24175"
    assert "doi.org/10.1016/j.xcrm.2022.100817" in card["detail"]
    assert ".md" not in json.dumps(card)
    local = when.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).strftime("%d %b %Y %H:%M %Z")
    assert local in card["detail"] and "2 h before the decision" in card["detail"]


def test_suggestion_is_a_draft_medication_request_with_the_dose(cds: Server) -> None:
    r = call(cds, hook(prefetch(9000, None, _when(1), creatinine=3.6, weight=70)))
    (card,) = r.json()["cards"]
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one" and suggestion["uuid"]
    (action,) = suggestion["actions"]
    assert action["type"] == "create"
    request = action["resource"]
    assert (request["resourceType"], request["status"], request["intent"]) == (
        "MedicationRequest",
        "draft",
        "proposal",
    )
    assert request["subject"] == {"reference": "Patient/p1"}
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "L04AC03"
    (dosage,) = request["dosageInstruction"]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 200.0,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert dosage["timing"]["repeat"]["period"] == 48 and dosage["timing"]["repeat"]["periodUnit"] == "h"
    assert dosage["route"]["coding"][0]["code"] == "47625008"
    codes = {o["code"] for o in card["overrideReasons"]}
    assert {"contraindicated", "clinical-judgement"} <= codes


def test_link_to_the_patients_page_when_configured(cds: Server) -> None:
    (card,) = call(cds, hook(prefetch(9000, None, _when(1)))).json()["cards"]
    assert card["links"] == [
        {
            "label": "Patient's immune state in immunostrat",
            "url": "https://immunostrat.example.org/patients/p1",
            "type": "absolute",
        }
    ]


def test_warning_card_against_anti_inflammatory_therapy_in_immunoparalysis(cds: Server) -> None:
    pre = prefetch(900, 2500, _when(1))
    pre["medications"] = _bundle(
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "draft",
            "intent": "proposal",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"text": "Dexamethasone 6 mg IV"},
        }
    )
    main, warning = call(cds, hook(pre)).json()["cards"]
    assert "immunoparalysis" in main["summary"] and "100 ug" in main["summary"]
    assert warning["indicator"] == "warning" and "Dexamethasone" in warning["summary"]
    assert "Monneret" in warning["source"]["label"] and "domain.md" not in warning["detail"]


# --- feedback --------------------------------------------------------------------------------------


def test_feedback_is_recorded_in_the_audit_trail(cds: Server, keys: Keys) -> None:
    card = call(cds, hook(prefetch(9000, None, _when(1)))).json()["cards"][0]
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": card["overrideReasons"][1],
                    "userComment": "anakinra allergy",
                },
                "outcomeTimestamp": datetime.now(UTC).isoformat(),
            },
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": datetime.now(UTC).isoformat(),
            },
        ]
    }
    token = ehr_token(keys.rsa, "RS384", f"{cds.base_url}{SERVICE}/feedback")
    r = httpx.post(
        f"{cds.base_url}{SERVICE}/feedback", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    with transaction(get_engine(cds.db_url)) as s:
        rows = s.scalars(
            select(AuditRow).where(AuditRow.action == "cds-feedback", AuditRow.entity_id == card["uuid"])
        ).all()
    assert [(row.actor, row.role) for row in rows] == [(INLINE_ISS, "ehr"), (INLINE_ISS, "ehr")]
    recorded = [json.loads(row.new or "{}") for row in rows]
    assert (
        recorded[0]["outcome"] == "overridden"
        and recorded[0]["overrideReason"]["userComment"] == "anakinra allergy"
    )
    assert recorded[1]["acceptedSuggestions"] == [{"id": card["suggestions"][0]["uuid"]}]
    headers = {"Authorization": f"Bearer {cds.token('investigator')}"}
    unknown = httpx.post(f"{cds.base_url}/cds-services/no-such-service/feedback", json=body, headers=headers)
    assert unknown.status_code == 404
    bad = httpx.post(
        f"{cds.base_url}{SERVICE}/feedback",
        json={"feedback": [{"card": card["uuid"], "outcome": "maybe", "outcomeTimestamp": "now"}]},
        headers=headers,
    )
    assert bad.status_code == 422 and "outcome" in bad.json()["detail"]
    anonymous = httpx.post(f"{cds.base_url}{SERVICE}/feedback", json=body)
    assert anonymous.status_code == 401


def test_clients_file_is_checked(tmp_path: Path) -> None:
    from immunostrat.api.cds.settings import load_clients
    from immunostrat.errors import InputError

    bad = tmp_path / "clients.yaml"
    bad.write_text("clients: [{iss: https://ehr.example.org}]")
    with pytest.raises(InputError, match="needs public keys"):
        load_clients(bad)
