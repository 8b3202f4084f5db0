"""Trials defined as data through the real service (uvicorn, SQLite and PostgreSQL): set up from a
shipped template, screening log, forms with derived scores, reasons for changes, queries,
signatures, the visit report and serious adverse events."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from tests.api.apiserver import Server

BASE_VALUES: dict[str, Any] = {
    "mex_neurological_disorder": False,
    "mex_renal_disorder": False,
    "mex_vasculitis": False,
    "mex_hemolysis": False,
    "mex_myositis": False,
    "mex_arthritis": True,
    "mex_mucocutaneous": True,
    "mex_serositis": False,
    "mex_fever": False,
    "mex_fatigue": True,
    "hemoglobin": 12.5,
    "platelets": {"value": 210, "unit": "10^3/uL"},
    "wbc": 5.1,
    "lymphocytes": 1.6,
    "c3_mg_dl": {"value": 0.7, "unit": "g/L"},
    "c4_mg_dl": 12,
    "il6_pg_ml": 8.5,
}


def _sle_trial(server: Server, admin: httpx.Client, code: str) -> dict[str, Any]:
    template = admin.get("/trial-templates/sle-secretome")
    assert template.status_code == 200, template.text
    body = template.json()
    body["code"] = code
    r = admin.post("/trials", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_sle_trial_through_the_api(server: Server) -> None:
    admin, inv, mon = server.client("admin"), server.client("investigator"), server.client("monitor")
    pharm = server.client("pharmacist")
    try:
        names = [t["name"] for t in admin.get("/trial-templates").json()]
        assert names == ["immunosep", "sepcell", "sle-secretome"]
        trial = _sle_trial(server, admin, f"SLE-API-{server.kind}")
        tid = trial["id"]
        definition = inv.get(f"/trials/{tid}/definition").json()
        assert [v["id"] for v in definition["schedule"]][:2] == ["day0", "week1"]
        assert "block_multipliers" not in definition

        screening = {"site": "S01", "sex": "F", "form": {"sle_classified": "yes", "moderately_active": "yes"}}
        minor = inv.post(f"/trials/{tid}/participants", json={**screening, "age": 17})
        assert minor.status_code == 201 and minor.json()["eligible"] is False
        man = inv.post(f"/trials/{tid}/participants", json={**screening, "age": 40, "sex": "M"})
        assert man.json()["eligible"] is False and "the trial enrols F" in man.json()["exclusion_reason"]
        woman = inv.post(f"/trials/{tid}/participants", json={**screening, "age": 33}).json()
        assert woman["eligible"] is True
        pid = woman["participant_id"]
        assert inv.post(f"/trials/{tid}/participants/{pid}/randomize").status_code == 201
        log = mon.get(f"/trials/{tid}/screening-log").json()
        assert [r["eligible"] for r in log] == [False, False, True]

        today = date.today().isoformat()
        url = f"/trials/{tid}/participants/{pid}/visits/day0/forms/sle_visit"
        bad = inv.put(url, json={"visit_date": today, "values": {**BASE_VALUES, "c4_mg_dl": 999}})
        assert bad.status_code == 422 and "sle_visit.c4_mg_dl" in bad.text
        r = inv.put(
            url, json={"visit_date": today, "values": BASE_VALUES, "not_done": {"tnf_alpha_pg_ml": "kit"}}
        )
        assert r.status_code == 200, r.text
        record = r.json()
        # arthritis 2 + mucocutaneous 2 + fatigue 1 (domain.md B4); C3 0.7 g/L = 70 mg/dL
        assert record["derived"]["mex_sledai"] == 5 and record["values"]["c3_mg_dl"] == 70
        changed = {**BASE_VALUES, "mex_fatigue": False}
        unreasoned = inv.put(
            url, json={"visit_date": today, "values": changed, "not_done": {"tnf_alpha_pg_ml": "kit"}}
        )
        assert unreasoned.status_code == 422 and "needs a reason" in unreasoned.text
        r = inv.put(
            url,
            json={
                "visit_date": today,
                "values": changed,
                "not_done": {"tnf_alpha_pg_ml": "kit"},
                "reason": "fatigue was before the visit",
            },
        )
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["derived"]["mex_sledai"] == 4
        history = mon.get(f"/trials/{tid}/form-records/{record['id']}/history").json()
        assert [(h["field"], h["old"], h["new"], h["reason"]) for h in history] == [
            ("mex_fatigue", True, False, "fatigue was before the visit")
        ]
        injection = f"/trials/{tid}/participants/{pid}/visits/day0/forms/injection"
        assert (
            inv.put(injection, json={"visit_date": today, "values": {"injected": "yes"}}).status_code == 200
        )

        q = mon.post(
            f"/trials/{tid}/participants/{pid}/queries",
            json={"visit": "day0", "form": "sle_visit", "field": "c4_mg_dl", "text": "C4 unit?"},
        )
        assert q.status_code == 201, q.text
        qid = q.json()["id"]
        assert inv.post(f"/trials/{tid}/queries/{qid}/close", json={"text": "mine"}).status_code == 403
        assert (
            inv.post(f"/trials/{tid}/queries/{qid}/answer", json={"text": "mg/dL, checked"}).json()["state"]
            == "answered"
        )
        assert (
            mon.post(f"/trials/{tid}/queries/{qid}/close", json={"text": "thanks"}).json()["state"]
            == "closed"
        )

        sign = f"/trials/{tid}/participants/{pid}/visits/day0/signature"
        meaning = definition["signature_meaning"]
        wrong = inv.post(sign, json={"password": "not the password at all", "meaning": meaning})
        assert wrong.status_code == 403
        signed = inv.post(sign, json={"password": server.passwords["investigator"], "meaning": meaning})
        assert signed.status_code == 201, signed.text
        book = mon.get(f"/trials/{tid}/participants/{pid}/casebook").json()
        day0 = book["visits"][0]
        assert day0["signature"]["state"] == "valid" and day0["queries"][0]["state"] == "closed"
        report = mon.get(f"/trials/{tid}/visit-report").json()
        assert report["counts"]["done"] == 1 and report["counts"]["upcoming"] == 7

        aware = datetime.now(UTC) - timedelta(hours=30)
        ae = inv.post(
            f"/trials/{tid}/participants/{pid}/adverse-events",
            json={
                "day": 1,
                "term": "Injection-site abscess",
                "meddra_code": "10000269",
                "ctcae_grade": 3,
                "serious": True,
                "seriousness": ["hospitalisation"],
                "related": True,
                "aware_at": aware.isoformat(),
            },
        )
        assert ae.status_code == 201, ae.text
        assert ae.json()["report_state"] == "overdue"  # 30 h after awareness, 24 h allowed
        missing = inv.post(
            f"/trials/{tid}/participants/{pid}/adverse-events",
            json={"day": 1, "term": "Fall", "serious": True},
        )
        assert missing.status_code == 422 and "seriousness" in missing.text
        reported = inv.post(
            f"/trials/{tid}/adverse-events/{ae.json()['id']}/report",
            json={"reported_at": datetime.now(UTC).isoformat(), "reference": "CASE-1"},
        )
        assert reported.json()["report_state"] == "reported late"

        rows = pharm.get(f"/trials/{tid}/randomization-list").json()
        assert len(rows) == 1 and rows[0]["participant"] == woman["pseudonym"]
    finally:
        for c in (admin, inv, mon, pharm):
            c.close()
