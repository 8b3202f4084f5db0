"""Attacks on the trial service (issue 20) through the real servers: races, dead connections,
FHIR of the wrong shape, NUL characters, ids beyond 64 bits, and blinding leaks."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from apidata import add_eligible
from apiserver import Server
from sqlalchemy import func, select, text

from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import AdverseEvent, UnblindingEvent

WHEN = "2025-03-01T08:00:00Z"


def _screening(site: str = "S1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "site": site,
        "age": 55,
        "sex": "F",
        "weight_kg": 70,
        "observations": [
            {"concept": "ferritin", "value": 9000, "unit": "ng/mL", "time": WHEN},
            {"concept": "mhla_dr", "value": 2000, "unit": "AB/C", "time": WHEN},
        ],
    }
    body.update(changes)
    return body


def _randomized(server: Server, code: str, n: int = 1, **spec: Any) -> tuple[int, list[int]]:
    trial = server.new_trial(code, **spec)
    ids = add_eligible(server.db_url, trial["id"], [("S1", "mals")] * n)
    with server.client("investigator") as inv:
        for pid in ids:
            r = inv.post(f"/trials/{trial['id']}/participants/{pid}/randomize")
            assert r.status_code == 201, r.text
    return trial["id"], ids


# --- 4: concurrent screening ------------------------------------------------------------------------


def test_concurrent_screening_without_pseudonym_gives_distinct_pseudonyms(server: Server) -> None:
    tid = server.new_trial(f"RACE-{server.kind}")["id"]
    token = server.token("investigator")
    barrier = threading.Barrier(8)

    def screen_five(_: int) -> list[tuple[int, str]]:
        out = []
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            c.headers["Authorization"] = f"Bearer {token}"
            barrier.wait()
            for _ in range(5):
                r = c.post(f"/trials/{tid}/participants", json=_screening())
                out.append((r.status_code, r.json().get("pseudonym", r.text)))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [x for chunk in pool.map(screen_five, range(8)) for x in chunk]
    assert [s for s, _ in results] == [201] * 40, results
    assert len({p for _, p in results}) == 40


def test_same_client_pseudonym_at_once_is_one_201_and_409s(server: Server) -> None:
    tid = server.new_trial(f"DUPPSEUDO-{server.kind}")["id"]
    token = server.token("investigator")
    barrier = threading.Barrier(8)

    def screen(_: int) -> int:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            c.headers["Authorization"] = f"Bearer {token}"
            barrier.wait()
            return c.post(f"/trials/{tid}/participants", json=_screening(pseudonym="SAME-1")).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(screen, range(8)))
    assert codes == [201] + [409] * 7, codes


# --- 5: the connection after a server error -----------------------------------------------------------


def test_connection_still_answers_after_a_server_error(server: Server) -> None:
    """A database fault (a table renamed away under the running server) gives a 500 with a JSON
    body; the next request on the same kept-alive connection is answered."""
    tid = server.new_trial(f"KEEPALIVE-{server.kind}")["id"]
    url = urlsplit(server.base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    headers = {"Authorization": f"Bearer {server.token('monitor')}"}
    engine = get_engine(server.db_url)
    with engine.begin() as db:
        db.execute(text("ALTER TABLE adverse_events RENAME TO adverse_events_away"))
    try:
        conn.request("GET", f"/trials/{tid}/adverse-events", headers=headers)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 500
        assert json.loads(body)["detail"]
    finally:
        with engine.begin() as db:
            db.execute(text("ALTER TABLE adverse_events_away RENAME TO adverse_events"))
    for _ in range(3):
        conn.request("GET", "/health")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    conn.close()


# --- 6: FHIR of the wrong shape -------------------------------------------------------------------------


def _obs(**changes: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "f",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
        "effectiveDateTime": WHEN,
        "valueQuantity": {"value": 9000, "unit": "ng/mL"},
    }
    obs.update(changes)
    return obs


BAD_SHAPES: dict[str, Any] = {
    "entry not a list": {"resourceType": "Bundle", "entry": 5},
    "entry an object": {"resourceType": "Bundle", "entry": {"resource": _obs()}},
    "subject a string": {"resourceType": "Bundle", "entry": [{"resource": _obs(subject="Patient/p1")}]},
    "code a string": {"resourceType": "Bundle", "entry": [{"resource": _obs(code="2276-4")}]},
    "coding not a list": {"resourceType": "Bundle", "entry": [{"resource": _obs(code={"coding": 7})}]},
    "coding an object": {
        "resourceType": "Bundle",
        "entry": [{"resource": _obs(code={"coding": {"system": "http://loinc.org", "code": "2276-4"}})}],
    },
    "medication concept a list": {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "MedicationRequest", "medicationCodeableConcept": [1]}}],
    },
}


@pytest.mark.parametrize("shape", sorted(BAD_SHAPES))
def test_fhir_of_the_wrong_shape_is_a_422_naming_the_field(server: Server, shape: str) -> None:
    bundle = BAD_SHAPES[shape]
    with server.client("investigator") as c:
        for path in ("/classify", "/score"):
            r = c.post(path, json={"bundle": bundle})
            assert r.status_code == 422, (path, r.status_code, r.text)
            assert r.json()["field"], r.text
        hook = {
            "hook": "patient-view",
            "hookInstance": "attack-1",
            "context": {"patientId": "p1"},
            "prefetch": {k: bundle for k in ("patient", "ferritin", "mhla_dr", "creatinine", "weight")}
            | {"medications": bundle},
        }
        r = c.post("/cds-services/immunostrat-endotype", json=hook)
        assert r.status_code == 422, (r.status_code, r.text)


def test_a_coding_whose_code_is_an_object_is_ignored(server: Server) -> None:
    odd = _obs(id="odd", code={"coding": [{"system": "http://loinc.org", "code": {"a": 1}}]})
    bundle = {"resourceType": "Bundle", "entry": [{"resource": _obs()}, {"resource": odd}]}
    with server.client("investigator") as c:
        r = c.post("/classify", json={"bundle": bundle, "at": "2025-03-01T10:00:00Z"})
    assert r.status_code == 200, r.text
    assert r.json()["endotype"] == "mals"
    assert any("odd" in line for line in r.json()["ignored"])


def test_score_at_year_one_is_a_422(server: Server) -> None:
    obs = [{"concept": "platelets", "value": 90, "unit": "10^9/L", "time": WHEN}]
    with server.client("investigator") as c:
        r = c.post("/score", json={"observations": obs, "at": "0001-01-01T00:00:00Z"})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "at"
        r = c.post("/classify", json={"observations": obs, "at": "0001-01-01T00:00:00Z"})
        assert r.status_code == 422, r.text


# --- 7: NUL characters ----------------------------------------------------------------------------------


def test_nul_characters_are_refused_and_nothing_is_stored(server: Server) -> None:
    tid, (pid,) = _randomized(server, f"NUL-{server.kind}")
    with server.client("investigator") as c:
        r = c.post(
            f"/trials/{tid}/participants/{pid}/adverse-events",
            json={"day": 2, "term": "rash\x00hidden", "serious": False},
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "term"
        r = c.post(f"/trials/{tid}/participants/{pid}/unblind", json={"reason": "anaphylaxis\x00 after dose"})
        assert r.status_code == 422, r.text
        r = c.post(f"/trials/{tid}/participants", json=_screening(exclusions={"preg\x00nancy": False}))
        assert r.status_code == 422, r.text
    with transaction(get_engine(server.db_url)) as s:
        assert s.scalar(select(func.count()).where(AdverseEvent.participant_id == pid)) == 0
        assert s.scalar(select(func.count()).where(UnblindingEvent.participant_id == pid)) == 0


def test_nul_in_cds_feedback_is_refused(server: Server) -> None:
    entry = {
        "card": "card-1",
        "outcome": "overridden",
        "overrideReason": {"userComment": "patient\x00 declined"},
        "outcomeTimestamp": "2025-03-01T08:00:00Z",
    }
    with server.client("investigator") as c:
        r = c.post("/cds-services/immunostrat-endotype/feedback", json={"feedback": [entry]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "userComment"


# --- 8: ids beyond 64 bits ---------------------------------------------------------------------------


def test_ids_beyond_64_bits_are_a_422(server: Server) -> None:
    huge = 2**70
    with server.client("monitor") as c:
        for path in (
            f"/trials/{huge}",
            f"/trials/{huge}/participants",
            f"/trials/1/participants/{huge}",
            f"/trials/1/participants/{huge}/allocation",
            f"/audit?after={huge}",
            f"/trials/{-huge}",
        ):
            r = c.get(path)
            assert r.status_code == 422, (path, r.status_code, r.text)
        assert c.get(f"/trials/{2**31 - 1}").status_code == 404
        assert c.get(f"/trials/{2**31}").status_code == 422
    with server.client("admin") as c:
        body = {"username": "big-id-user", "password": "a long pass phrase 1", "role": "monitor"}
        r = c.post("/users", json=body | {"trial_id": huge, "site": "S1"})
        assert r.status_code == 422, r.text


# --- blinding 1-3 ---------------------------------------------------------------------------------------


def test_minimization_running_out_of_kits_names_no_arm(server: Server) -> None:
    trial = server.new_trial(f"MINLEAK-{server.kind}", method="minimization", kits_per_arm=2)
    ids = add_eligible(server.db_url, trial["id"], [("S1", "mals")] * 6)
    refusals = []
    with server.client("investigator") as inv:
        for pid in ids:
            r = inv.post(f"/trials/{trial['id']}/participants/{pid}/randomize")
            if r.status_code != 201:
                refusals.append(r)
    assert refusals and all(r.status_code == 409 for r in refusals)
    for r in refusals:
        for arm in trial["arms"]:
            assert arm not in r.text, r.text


def test_monitor_reads_no_concealed_setup_in_the_audit_trail(server: Server) -> None:
    code = f"AUDLEAK-{server.kind}"
    trial = server.new_trial(code, block_multipliers=[2, 4], slots_per_stratum=24)
    mtrial = server.new_trial(code + "-M", method="minimization", kits_per_arm=7)
    seen: list[dict[str, Any]] = []
    with server.client("monitor") as c:
        after = 0
        while True:
            rows = c.get("/audit", params={"after": after, "limit": 1000}).json()
            if not rows:
                break
            seen += rows
            after = rows[-1]["seq"]
        assert c.get("/audit/verify").json()["ok"] is True
    created = [r for r in seen if r["entity"] == "trial" and r["entity_id"] == str(trial["id"])]
    assert created and json.loads(created[0]["new"])["code"] == code
    text_seen = json.dumps(seen)
    for key in ("block_multipliers", "slots_per_stratum", "kits_per_arm", "n_slots"):
        assert key not in text_seen, key
    pools = [r for r in seen if r["entity"] == "kit_pool" and r["entity_id"] == str(mtrial["id"])]
    assert pools and "kits" not in json.loads(pools[0]["new"])
    with server.client("admin") as c:  # set-up stays readable to the role that did it
        rows = c.get("/audit", params={"after": created[0]["seq"] - 1, "limit": 1}).json()
        assert json.loads(rows[0]["new"])["config"]["block_multipliers"] == [2, 4]


@pytest.mark.parametrize("reason", ["\u200b" * 10, "\x00" * 10, "x" * 10, " \u200b\u200c\u200d\ufeff " * 4])
def test_emergency_unblinding_needs_a_visible_reason(server: Server, reason: str) -> None:
    tid, (pid,) = _randomized(server, f"UNBL-{server.kind}-{abs(hash(reason)) % 10**6}")
    with server.client("investigator") as c:
        r = c.post(f"/trials/{tid}/participants/{pid}/unblind", json={"reason": reason})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "reason"


def test_repeated_unblinding_by_one_user_is_flagged(server: Server) -> None:
    tid, ids = _randomized(server, f"UNBLREP-{server.kind}", n=4)
    flags = []
    with server.client("investigator") as c:
        for pid in ids:
            r = c.post(
                f"/trials/{tid}/participants/{pid}/unblind", json={"reason": "anaphylaxis after the dose"}
            )
            assert r.status_code == 200, r.text
            flags.append(r.json()["flagged"])
    assert flags == [False, False, True, True]
    with server.client("monitor") as c:
        events = c.get(f"/trials/{tid}/unblindings").json()
        assert [e["flagged"] for e in events] == flags
        assert "3 emergency unblindings" in events[2]["flag"]


# --- 10: tokens of deactivated or re-roled users -------------------------------------------------------

BEDSIDE = {"observations": [{"concept": "ferritin", "value": 9000, "unit": "ng/mL", "time": WHEN}]}
HOOK = {
    "hook": "patient-view",
    "hookInstance": "deactivated-1",
    "context": {"patientId": "p1"},
    "prefetch": {},
}


def _bedside_statuses(server: Server, token: str) -> list[int]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        return [
            c.post("/classify", json=BEDSIDE).status_code,
            c.post("/score", json=BEDSIDE).status_code,
            c.post("/cds-services/immunostrat-endotype", json=HOOK).status_code,
            c.get("/me").status_code,
        ]


def _login(server: Server, username: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/token", data={"username": username, "password": password}, timeout=30
    )


def test_tokens_of_deactivated_or_re_roled_users_stop_everywhere(server: Server) -> None:
    username, password = f"bedside-{server.kind}", "correct horse battery staple 7"
    with server.client("admin") as ad:
        r = ad.post("/users", json={"username": username, "password": password, "role": "investigator"})
        assert r.status_code == 201, r.text
        uid = r.json()["id"]
        token = _login(server, username, password).json()["access_token"]
        assert 401 not in _bedside_statuses(server, token)

        assert ad.patch(f"/users/{uid}", json={"active": False}).json()["active"] is False
        assert _bedside_statuses(server, token) == [401] * 4
        assert _login(server, username, password).status_code == 401

        r = ad.patch(f"/users/{uid}", json={"active": True, "role": "monitor"})
        assert r.json() == r.json() | {"active": True, "role": "monitor"}
        assert _bedside_statuses(server, token) == [401] * 4  # the token still says investigator
        fresh = _login(server, username, password).json()["access_token"]
        assert 401 not in _bedside_statuses(server, fresh)

        assert ad.patch(f"/users/{uid}", json={"password": "a different pass phrase 8"}).status_code == 200
        assert _login(server, username, password).status_code == 401
        assert _login(server, username, "a different pass phrase 8").status_code == 200
        me = ad.get("/me").json()
        assert ad.patch(f"/users/{me['id']}", json={"active": False}).status_code == 409
        rows = ad.get("/audit", params={"after": 0, "limit": 1000}).json()
    changes = [json.loads(r["new"]) for r in rows if r["entity"] == "user" and r["entity_id"] == str(uid)]
    assert changes[-1] == {"active": True, "role": "monitor", "password_changed": True}
    assert all(password not in json.dumps(c) for c in changes)


# --- 11: passwords --------------------------------------------------------------------------------------


def _new_user(server: Server, username: str, password: str) -> httpx.Response:
    with server.client("admin") as ad:
        return ad.post("/users", json={"username": username, "password": password, "role": "monitor"})


@pytest.mark.parametrize(
    "password", ["password", "12345678", "passwordpassword1", "weak-pw-user-{kind}", "immunostrat-trial-1"]
)
def test_weak_passwords_are_refused(server: Server, password: str) -> None:
    username = f"weak-pw-user-{server.kind}"
    r = _new_user(server, username, password.format(kind=server.kind))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "password"


def test_long_passwords_differ_after_72_bytes(server: Server) -> None:
    stem = "Sepsis-Ward-7-night-shift " + "é" * 36  # 98 bytes in UTF-8: bcrypt alone reads 72
    r = _new_user(server, f"long-pw-{server.kind}", stem + "AAAA")
    assert r.status_code == 201, r.text
    assert _login(server, f"long-pw-{server.kind}", stem + "ZZZZ").status_code == 401
    assert _login(server, f"long-pw-{server.kind}", stem + "AAAA").status_code == 200


def test_password_is_taken_as_typed_in_nfkc(server: Server) -> None:
    typed = "  Ｑuiet lantern over harbour 9  "  # a full-width Q and surrounding spaces
    assert _new_user(server, f"nfkc-pw-{server.kind}", typed).status_code == 201
    assert _login(server, f"nfkc-pw-{server.kind}", typed).status_code == 200
    assert _login(server, f"nfkc-pw-{server.kind}", "  Quiet lantern over harbour 9  ").status_code == 200
    assert _login(server, f"nfkc-pw-{server.kind}", typed.strip()).status_code == 401


# --- 9: request size, observation count, readers and the write lock -----------------------------------


def test_oversized_bodies_are_refused_before_reading(server: Server) -> None:
    tid = server.new_trial(f"BIG-{server.kind}")["id"]
    filler = {"concept": "ferritin", "value": 9000, "unit": "ng/mL", "time": WHEN}
    huge = json.dumps(_screening(observations=[filler] * 60_000)).encode()  # about 6 MB
    assert len(huge) > 5 * 1024 * 1024
    with server.client("investigator") as c:
        headers = {"Content-Type": "application/json"}
        r = c.post(f"/trials/{tid}/participants", content=huge, headers=headers)
        assert r.status_code == 413, r.text

        def chunks() -> Any:  # no Content-Length: the count is made while reading
            for i in range(0, len(huge), 65536):
                yield huge[i : i + 65536]

        r = c.post(f"/trials/{tid}/participants", content=chunks(), headers=headers)
        assert r.status_code == 413, r.text
        r = c.post(f"/trials/{tid}/participants", json=_screening(observations=[filler] * 1001))
        assert r.status_code == 422 and r.json()["field"] == "observations", r.text
        assert c.get(f"/trials/{tid}/participants").json() == []


def test_reads_do_not_wait_for_the_write_lock(backends: dict[str, Server]) -> None:
    """SQLite only: there one writer holds the whole database (PostgreSQL readers never wait)."""
    server = backends["sqlite"]
    engine = get_engine(server.db_url)
    server.token("monitor")
    with engine.connect() as holder:
        holder.execute(text("SELECT 1"))  # the engine's BEGIN IMMEDIATE: the write lock is ours
        other = sqlite3.connect(server.db_url.removeprefix("sqlite:///"), timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        with server.client("monitor", timeout=5) as c:
            assert c.get("/me").status_code == 200
        with server.client("investigator", timeout=5) as c:
            assert c.post("/classify", json=BEDSIDE).status_code == 200
        r = httpx.post(f"{server.base_url}/token", data={"username": "x-user", "password": "y"}, timeout=5)
        assert r.status_code == 401


# --- 15: duplicate keys and numbers JSON does not have --------------------------------------------------


def test_duplicate_keys_and_non_finite_numbers_are_refused(server: Server) -> None:
    tid, (pid,) = _randomized(server, f"DUPKEY-{server.kind}")
    with server.client("investigator") as c:
        headers = {"Content-Type": "application/json"}
        r = c.post(
            f"/trials/{tid}/participants",
            content=b'{"site": "S1", "age": 50, "sex": "F", "sex": "M"}',
            headers=headers,
        )
        assert r.status_code == 422 and r.json()["field"] == "sex", r.text
        for number in (b"1e400", b"NaN", b"Infinity", b"-Infinity"):
            body = b'{"last_contact_day": 28, "ferritin_day15_ng_ml": ' + number + b"}"
            r = c.put(f"/trials/{tid}/participants/{pid}/outcome", content=body, headers=headers)
            assert r.status_code == 422, (number, r.text)
        # finite but beyond the concept's plausible range (fuzzing stored 1.147e308, which crashed the
        # Stata export)
        for field, value in (("hla_dr_day15_abc", 1.147e308), ("ferritin_day15_ng_ml", 600000.0)):
            body_json = {"last_contact_day": 28, field: value}
            r = c.put(f"/trials/{tid}/participants/{pid}/outcome", json=body_json)
            assert r.status_code == 422 and field in r.text, (field, r.text)
        r = c.post(f"/trials/{tid}/participants", json=_screening(exclusions={"neutropenai": True}))
        assert r.status_code == 422 and r.json()["field"] == "exclusions", r.text
        assert "neutropenia" in r.json()["detail"]
        assert c.get(f"/trials/{tid}/participants").json()[0]["status"] == "randomized"
        assert len(c.get(f"/trials/{tid}/participants").json()) == 1
        r = c.post(f"/trials/{tid}/participants", json=_screening(exclusions={"neutropenia": True}))
        assert r.status_code == 201 and r.json()["eligible"] is False, r.text


# --- 12: screening idempotency ------------------------------------------------------------------------


def test_retried_screening_with_the_same_key_registers_one_participant(server: Server) -> None:
    tid = server.new_trial(f"IDEMSCR-{server.kind}")["id"]
    with server.client("investigator") as c:
        first = c.post(f"/trials/{tid}/participants", json=_screening(), headers={"Idempotency-Key": "scr-1"})
        assert first.status_code == 201, first.text
        again = c.post(f"/trials/{tid}/participants", json=_screening(), headers={"Idempotency-Key": "scr-1"})
        assert again.status_code == 200, again.text
        assert again.json() == first.json() | {"replayed": True, "warnings": again.json()["warnings"]}
        other = c.post(
            f"/trials/{tid}/participants", json=_screening(age=60), headers={"Idempotency-Key": "scr-1"}
        )
        assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key", other.text
        assert len(c.get(f"/trials/{tid}/participants").json()) == 1

    token = server.token("investigator")
    barrier = threading.Barrier(6)

    def retry(_: int) -> int:  # the same retry sent six times at once: one participant, no 5xx
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            barrier.wait()
            headers = {"Idempotency-Key": "scr-2"}
            return client.post(f"/trials/{tid}/participants", json=_screening(), headers=headers).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(retry, range(6)))
    assert codes.count(201) == 1 and set(codes) <= {200, 201, 409}, codes
    with server.client("investigator") as c:
        assert len(c.get(f"/trials/{tid}/participants").json()) == 2


# --- 13: data edited behind the service's back ---------------------------------------------------------


def test_audit_verify_names_data_edited_in_the_database(server: Server) -> None:
    tid, (pid,) = _randomized(server, f"DATAEDIT-{server.kind}")
    with server.client("investigator") as c:
        r = c.post(f"/trials/{tid}/participants/{pid}/assessments", json={"day": 1, "sofa_total": 7})
        assert r.status_code == 201, r.text
        assessment_id = r.json()["id"]
    engine = get_engine(server.db_url)
    edits = [
        (
            "UPDATE assessments SET sofa_total = 2 WHERE id = :id",
            "UPDATE assessments SET sofa_total = 7 WHERE id = :id",
            {"id": assessment_id},
            f"assessment {assessment_id}",
        ),
    ]
    with transaction(engine) as s:
        alloc_id, arm = s.execute(
            text("SELECT id, arm FROM allocations WHERE participant_id = :p"), {"p": pid}
        ).one()
    other = "placebo" if arm != "placebo" else "immunotherapy"
    edits.append(
        (
            "UPDATE allocations SET arm = :other WHERE id = :id",
            "UPDATE allocations SET arm = :arm WHERE id = :id",
            {"id": alloc_id, "other": other, "arm": arm},
            f"allocation {alloc_id}",
        )
    )
    with server.client("monitor") as c:
        assert c.get("/audit/verify").json()["ok"] is True
        for edit, undo, params, named in edits:
            with transaction(engine) as s:
                s.execute(text(edit), params)
            try:
                result = c.get("/audit/verify").json()
                assert result["ok"] is False and named in result["problem"], result
            finally:
                with transaction(engine) as s:
                    s.execute(text(undo), params)
        assert c.get("/audit/verify").json()["ok"] is True
