"""Arm names in what blinded roles read through the API: the trial (alone and listed), its
definition and the audit trail name arms under neutral labels for every role but the pharmacist,
through the real service (uvicorn, SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

from tests.api.apiserver import Server

ARMS = ("velqorimab", "dransoplacebo")
"""Made-up arm names: any occurrence in an answer is an arm leaking."""
BLINDED = ("admin", "investigator", "monitor", "statistician")


def _trial(server: Server) -> dict[str, Any]:
    with server.client("admin") as admin:
        body = admin.get("/trial-templates/sle-secretome").json()
        body.update(
            code=f"BLINDDEF-{server.kind}",
            title="a trial whose arms are made-up words",
            description=None,
            arms=list(ARMS),
            control_arm=ARMS[1],
            ratios={"all": {ARMS[0]: 2, ARMS[1]: 1}},
        )
        r = admin.post("/trials", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _all_audit_rows(server: Server, role: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with server.client(role) as c:
        after = 0
        while True:
            r = c.get("/audit", params={"after": after, "limit": 1000})
            assert r.status_code == 200, r.text
            if not r.json():
                return rows
            rows += r.json()
            after = rows[-1]["seq"]


def _leaks(text: str) -> list[str]:
    return [arm for arm in ARMS if arm in text]


def test_blinded_roles_read_no_arm_in_trial_definition_or_audit(server: Server) -> None:
    trial = _trial_once(server)
    tid = trial["id"]
    for role in BLINDED:
        with server.client(role) as c:
            one = c.get(f"/trials/{tid}")
            listed = c.get("/trials")
            definition = c.get(f"/trials/{tid}/definition")
        for r in (one, listed, definition):
            assert r.status_code == 200, r.text
            assert not _leaks(r.text), (role, r.url, _leaks(r.text))
        view = one.json()
        # the same shape under neutral labels: two arms, the control one of them, the ratio by label
        assert view["arms"] == ["arm 1", "arm 2"] and view["control_arm"] == "arm 2"
        assert view["config"]["ratios"] == {"all": {"arm 1": 2, "arm 2": 1}}
        assert definition.json()["arms"] == ["arm 1", "arm 2"]
        assert definition.json()["ratios"] == {"all": {"arm 1": 2, "arm 2": 1}}
        assert [v["id"] for v in definition.json()["schedule"]][:2] == ["day0", "week1"]


def test_blinded_audit_trail_names_no_arm_and_still_verifies(server: Server) -> None:
    trial = _trial_once(server)
    for role in ("monitor", "admin"):
        rows = _all_audit_rows(server, role)
        mine = [
            r
            for r in rows
            if (r["entity"] == "trial" and r["entity_id"] == str(trial["id"])) or r["entity"] == "stratum"
        ]
        assert mine, "the trial's set-up rows are in the trail"
        assert not _leaks(json.dumps(rows)), role
        created = next(r for r in rows if r["entity"] == "trial" and r["entity_id"] == str(trial["id"]))
        assert json.loads(created["new"])["arms"] == ["arm 1", "arm 2"]
        with server.client(role) as c:
            verified = c.get("/audit/verify").json()
        assert verified["ok"] is True and verified["head_hash"] == rows[-1]["hash"]


def test_the_pharmacist_reads_the_arms(server: Server) -> None:
    trial = _trial_once(server)
    with server.client("pharmacist") as c:
        view = c.get(f"/trials/{trial['id']}").json()
        definition = c.get(f"/trials/{trial['id']}/definition").json()
    assert view["arms"] == list(ARMS) and view["control_arm"] == ARMS[1]
    assert definition["arms"] == list(ARMS)


def _trial_once(server: Server) -> dict[str, Any]:
    with server.client("pharmacist") as c:
        for t in c.get("/trials").json():
            if t["code"] == f"BLINDDEF-{server.kind}":
                return dict(t)
    return _trial(server)
