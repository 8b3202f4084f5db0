"""Every endpoint against every role; authentication failures; bad requests name the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from apiserver import ROLES, TOKEN_KEY, Server

ALL = set(ROLES)
TRIAL = {"investigator", "pharmacist", "monitor", "statistician", "admin"}
READERS = {"investigator", "pharmacist", "monitor", "statistician"}
CLINICAL = {"investigator", "monitor", "statistician"}
P = "/trials/{trial_id}/participants/{participant_id}"
PUBLIC = {("GET", "/"), ("GET", "/health"), ("POST", "/token"), ("GET", "/cds-services")}
MATRIX: dict[tuple[str, str], set[str]] = {
    ("GET", "/me"): ALL,
    ("POST", "/users"): {"admin"},
    ("GET", "/users"): {"admin"},
    ("PATCH", "/users/{user_id}"): {"admin"},
    ("POST", "/trials"): {"admin"},
    ("GET", "/trials"): TRIAL,
    ("GET", "/trials/{trial_id}"): TRIAL,
    ("POST", "/trials/{trial_id}/sites"): {"admin"},
    ("POST", "/trials/{trial_id}/lock"): {"admin"},
    ("POST", "/trials/{trial_id}/participants"): {"investigator"},
    ("GET", "/trials/{trial_id}/participants"): READERS,
    ("GET", P): READERS,
    ("POST", P + "/randomize"): {"investigator"},
    ("GET", P + "/allocation"): READERS,
    ("POST", P + "/unblind"): {"investigator"},
    ("POST", P + "/withdraw"): {"investigator"},
    ("POST", P + "/assessments"): {"investigator"},
    ("GET", P + "/assessments"): CLINICAL,
    ("PUT", P + "/outcome"): {"investigator"},
    ("POST", P + "/adverse-events"): {"investigator"},
    ("GET", "/trials/{trial_id}/adverse-events"): CLINICAL,
    ("GET", "/trials/{trial_id}/randomization-list"): {"pharmacist"},
    ("GET", "/trials/{trial_id}/unblindings"): {"admin", "monitor"},
    ("GET", "/trials/{trial_id}/export"): {"statistician", "monitor"},
    ("GET", "/audit"): {"admin", "monitor"},
    ("GET", "/audit/verify"): {"admin", "monitor"},
    ("POST", "/classify"): ALL,
    ("POST", "/score"): ALL,
    ("POST", "/cds-services/immunostrat-endotype"): ALL,
    ("POST", "/cds-services/immunostrat-endotype/feedback"): ALL,
    # trials defined as data
    ("GET", "/trial-templates"): TRIAL,
    ("GET", "/trial-templates/{name}"): TRIAL,
    ("GET", "/trials/{trial_id}/definition"): TRIAL,
    ("POST", P + "/rescreen"): {"investigator"},
    ("GET", "/trials/{trial_id}/screening-log"): CLINICAL | {"admin"},
    ("PUT", P + "/visits/{visit}/forms/{form}"): {"investigator"},
    ("GET", P + "/casebook"): CLINICAL,
    ("GET", "/trials/{trial_id}/form-records/{record_id}/history"): CLINICAL,
    ("POST", P + "/queries"): {"monitor", "statistician"},
    ("GET", "/trials/{trial_id}/queries"): CLINICAL,
    ("POST", "/trials/{trial_id}/queries/{query_id}/answer"): {"investigator"},
    ("POST", "/trials/{trial_id}/queries/{query_id}/close"): {"monitor", "statistician"},
    ("POST", "/trials/{trial_id}/queries/{query_id}/reopen"): {"monitor", "statistician"},
    ("POST", P + "/visits/{visit}/signature"): {"investigator"},
    ("GET", "/trials/{trial_id}/visit-report"): CLINICAL,
    ("POST", "/trials/{trial_id}/adverse-events/{ae_id}/report"): {"investigator"},
    ("GET", "/trials/{trial_id}/consort"): TRIAL,
    ("GET", "/trials/{trial_id}/enrolment"): TRIAL,
}
IDS = {"participant_id": 999999, "user_id": 999999, "record_id": 999999, "query_id": 999999, "ae_id": 999999}
NAMES = {"visit": "day1", "form": "daily", "name": "immunosep"}


def test_role_matrix_covers_every_endpoint_and_role(server: Server) -> None:
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    operations = {(m.upper(), path) for path, item in spec["paths"].items() for m in item}
    assert operations == set(MATRIX) | PUBLIC, operations ^ (set(MATRIX) | PUBLIC)
    trial = server.new_trial(f"ROLES-{server.kind}")
    clients = {role: server.client(role) for role in ROLES}
    anonymous = httpx.Client(base_url=server.base_url, timeout=60)
    checked = 0
    try:
        for (method, template), allowed in sorted(MATRIX.items()):
            path = template.format(trial_id=trial["id"], **IDS, **NAMES)
            r = anonymous.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.status_code)
            for role in ROLES:
                r = clients[role].request(method, path, json={})
                if role in allowed:
                    assert r.status_code not in (401, 403), (method, template, role, r.status_code, r.text)
                else:
                    assert r.status_code == 403, (method, template, role, r.status_code, r.text)
                    assert role in r.json()["detail"]
                checked += 1
        for method, path in PUBLIC:
            assert anonymous.request(method, path, json={}).status_code not in (401, 403)
    finally:
        for c in clients.values():
            c.close()
        anonymous.close()
    assert checked == len(MATRIX) * len(ROLES)


def test_tokens_expire_and_cannot_be_forged(server: Server) -> None:
    key = TOKEN_KEY  # the servers' signing key (from the environment, never the database)
    claims = jwt.decode(server.token("monitor"), key, algorithms=["HS256"])
    kid = {"kid": jwt.get_unverified_header(server.token("monitor"))["kid"]}
    assert claims["exp"] > datetime.now(UTC).timestamp()
    past = datetime.now(UTC) - timedelta(minutes=1)
    expired = jwt.encode({**claims, "exp": past}, key, algorithm="HS256", headers=kid)
    forged = jwt.encode({**claims, "role": "pharmacist"}, "not-the-key-" * 4, algorithm="HS256", headers=kid)
    for token, message in ((expired, "expired"), (forged, "invalid")):
        r = httpx.get(f"{server.base_url}/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and message in r.json()["detail"]
    # a token whose role no longer matches the database is refused even with a valid signature
    promoted = jwt.encode({**claims, "role": "pharmacist"}, key, algorithm="HS256", headers=kid)
    r = httpx.get(
        f"{server.base_url}/trials/1/randomization-list", headers={"Authorization": f"Bearer {promoted}"}
    )
    assert r.status_code == 401


@pytest.fixture(scope="module")
def bad_trial(server: Server) -> dict:
    return server.new_trial(f"BAD-{server.kind}")


def _screen(i: int = 0, **changes: object) -> dict:
    body: dict = {
        "site": "S1",
        "age": 55,
        "sex": "F",
        "observations": [
            {"concept": "ferritin", "value": 9000, "unit": "ng/mL", "time": "2025-01-01T08:00:00Z"},
            {"concept": "mhla_dr", "value": 3000, "unit": "AB/C", "time": "2025-01-01T08:00:00Z"},
        ],
    }
    body.update(changes)
    return body


BAD_SCREENINGS = [
    ({"age": 130}, "age"),
    ({"sex": "X"}, "sex"),
    ({"site": "NOPE"}, "site"),
    ({"weight_kg": "heavy"}, "weight_kg"),
    (
        {
            "observations": [
                {"concept": "ferritin", "value": 9000, "unit": "kg", "time": "2025-01-01T08:00:00Z"}
            ]
        },
        "observations[0].unit",
    ),
    (
        {
            "observations": [
                {"concept": "ferritine", "value": 1, "unit": "ng/mL", "time": "2025-01-01T08:00:00Z"}
            ]
        },
        "observations[0].concept",
    ),
    (
        {"observations": [{"concept": "ferritin", "value": 1, "unit": "ng/mL", "time": "yesterday"}]},
        "observations[0].time",
    ),
    (
        {
            "observations": [
                {"concept": "ferritin", "value": 1e9, "unit": "ng/mL", "time": "2025-01-01T08:00:00Z"}
            ]
        },
        "observations[0].value",
    ),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("change", "field"), BAD_SCREENINGS)
def test_bad_screening_names_the_field(server: Server, bad_trial: dict, change: dict, field: str) -> None:
    with server.client("investigator") as c:
        r = c.post(f"/trials/{bad_trial['id']}/participants", json=_screen(**change))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert field in r.json()["detail"]


def test_other_bad_requests_name_the_field(server: Server, bad_trial: dict) -> None:
    tid = bad_trial["id"]
    with server.client("investigator") as inv:
        pid = inv.post(f"/trials/{tid}/participants", json=_screen()).json()["participant_id"]
        cases = [
            (
                inv.post(
                    f"/trials/{tid}/participants/{pid}/randomize", headers={"Idempotency-Key": "x" * 200}
                ),
                422,
                "idempotency-key",
            ),
            (inv.post(f"/trials/{tid}/participants/999999/randomize"), 404, "participant_id"),
            (inv.post(f"/trials/{tid}/participants/{pid}/unblind", json={"reason": "why"}), 422, "reason"),
            (
                inv.post(f"/trials/{tid}/participants/{pid}/assessments", json={"day": 1}),
                409,
                "participant_id",
            ),
            (inv.get("/trials/999999"), 404, "trial_id"),
            (inv.get("/trials/abc"), 422, "trial_id"),
        ]
        ok = inv.post(f"/trials/{tid}/participants/{pid}/randomize", headers={"Idempotency-Key": "bad-1"})
        assert ok.status_code == 201
        cases += [
            (inv.post(f"/trials/{tid}/participants/{pid}/randomize"), 409, "participant_id"),
            (
                inv.post(f"/trials/{tid}/participants/{pid}/assessments", json={"day": 1, "sofa_renal": 7}),
                422,
                "sofa_renal",
            ),
            (
                inv.post(
                    f"/trials/{tid}/participants/{pid}/assessments",
                    json={
                        "day": 1,
                        **{
                            f"sofa_{c}": 1
                            for c in ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")
                        },
                        "sofa_total": 3,
                    },
                ),
                422,
                "sofa_total",
            ),
            (
                inv.put(
                    f"/trials/{tid}/participants/{pid}/outcome", json={"death_day": 9, "last_contact_day": 4}
                ),
                422,
                "last_contact_day",
            ),
            (
                inv.post(
                    f"/trials/{tid}/participants/{pid}/adverse-events", json={"day": 2, "serious": True}
                ),
                422,
                "term",
            ),
        ]
    with server.client("admin") as ad:
        cases += [
            (
                ad.post("/trials", json={"code": "X1", "title": "t", "control_arm": "nothing"}),
                422,
                "control_arm",
            ),
            (ad.post("/trials", json={"code": "bad code!", "title": "t"}), 422, "code"),
            (ad.post("/trials", json={"code": bad_trial["code"], "title": "t"}), 409, "code"),
            (
                ad.post("/users", json={"username": "zz-user", "password": "short", "role": "admin"}),
                422,
                "password",
            ),
            (
                ad.post(
                    "/users", json={"username": "zz-user", "password": "long-enough-pass-1", "role": "king"}
                ),
                422,
                "role",
            ),
            (
                ad.post(f"/trials/{tid}/sites", json={"code": "S9", "name": "n", "seed": "0" * 64}),
                403,
                "seed",
            ),
        ]
    with server.client("monitor") as mon:
        cases += [
            (mon.post("/classify", json={"observations": []}), 422, "observations"),
            (mon.post("/classify", json={}), 422, "observations"),
            (
                mon.post(
                    "/classify",
                    json={
                        "observations": [
                            {
                                "time": "2025-01-01T00:00:00Z",
                                "concept": "ferritin",
                                "value": "lots",
                                "unit": "ng/mL",
                            }
                        ]
                    },
                ),
                422,
                "observations[0].value",
            ),
            (mon.post("/score", json={"score": "apache", "observations": []}), 422, "score"),
            (mon.get("/audit", params={"limit": 0}), 422, "limit"),
        ]
    for response, status, field in cases:
        assert response.status_code == status, (field, response.status_code, response.text)
        body = response.json()
        assert field.lower() in body["detail"].lower(), (field, body)
