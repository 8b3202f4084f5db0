"""The oversight counts through the real service (uvicorn, SQLite and PostgreSQL):
``GET /trials/{id}/consort`` and ``GET /trials/{id}/enrolment`` count what the pages count, the split
by arm for the pharmacist only, and no blinded role reads an arm name anywhere in either answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.api.apiserver import Server

ARMS = ("quelvorant", "saltimbrex")
"""Made-up arm names: any occurrence in an answer is an arm leaking."""
BLINDED = ("admin", "investigator", "monitor", "statistician")
CARE = ("clinician", "researcher", "modeller")
PLAN = [("S1", "yes"), ("S1", "yes"), ("S1", "yes"), ("S2", "yes"), ("S2", "yes"), ("S1", "no")]
"""One participant per (site, SLE classification): the last one is not eligible."""


def _trial(server: Server) -> dict[str, Any]:
    with server.client("admin") as admin:
        body = admin.get("/trial-templates/sle-secretome").json()
        body.update(
            code=f"COUNTS-{server.kind}",
            title="a trial counted for oversight",
            description=None,
            arms=list(ARMS),
            control_arm=ARMS[1],
            ratios={"all": {ARMS[0]: 1, ARMS[1]: 1}},
            sites=[{"code": "S1", "name": "Site one"}, {"code": "S2", "name": "Site two"}],
        )
        r = admin.post("/trials", json=body)
    assert r.status_code == 201, r.text
    trial = dict(r.json())
    tid = trial["id"]
    with server.client("investigator") as c:
        pids = []
        for i, (site, classified) in enumerate(PLAN):
            form = {"sle_classified": classified, "moderately_active": "yes"}
            r = c.post(
                f"/trials/{tid}/participants", json={"site": site, "age": 30 + i, "sex": "F", "form": form}
            )
            assert r.status_code in (200, 201), r.text
            pids.append(int(r.json()["participant_id"]))
        # four randomized (two per site), the first eligible one left waiting; one withdrawn
        for pid in pids[1:5]:
            r = c.post(f"/trials/{tid}/participants/{pid}/randomize")
            assert r.status_code in (200, 201), r.text
        r = c.post(
            f"/trials/{tid}/participants/{pids[4]}/withdraw",
            json={"reason": "moved away", "data_removed": True},
        )
        assert r.status_code == 200, r.text
    trial["pids"] = pids
    return trial


_made: dict[str, dict[str, Any]] = {}


def _trial_once(server: Server) -> dict[str, Any]:
    if server.kind not in _made:
        _made[server.kind] = _trial(server)
    return _made[server.kind]


def _leaks(text: str) -> list[str]:
    return [arm for arm in ARMS if arm in text]


def test_consort_splits_by_arm_for_the_pharmacist_only(server: Server) -> None:
    tid = _trial_once(server)["id"]
    with server.client("pharmacist") as c:
        r = c.get(f"/trials/{tid}/consort")
    assert r.status_code == 200, r.text
    flow = r.json()
    assert flow["trial"] == f"COUNTS-{server.kind}"
    assert (flow["screened"], flow["eligible"], flow["not_eligible"], flow["undecided"]) == (6, 5, 1, 0)
    assert flow["eligible_not_randomized"] == 1
    assert (flow["randomized"], flow["withdrawn"], flow["analysed"], flow["completed"]) == (4, 1, 3, 0)
    assert sum(e["count"] for e in flow["exclusions"]) == 1
    arms = flow["arms"]
    assert [a["arm"] for a in arms] == list(ARMS)
    assert sum(a["allocated"] for a in arms) == 4
    assert sum(a["withdrawn"] for a in arms) == 1 and sum(a["analysed"] for a in arms) == 3

    for role in BLINDED:
        with server.client(role) as c:
            blinded = c.get(f"/trials/{tid}/consort")
        assert blinded.status_code == 200, (role, blinded.text)
        assert not _leaks(blinded.text), (role, _leaks(blinded.text))
        assert "arms" not in blinded.json(), role
        # the same totals as the pharmacist's (an unbound investigator lists every site)
        assert blinded.json() == {k: v for k, v in flow.items() if k != "arms"}, role


def test_enrolment_counts_by_site_and_stratum_and_names_no_arm(server: Server) -> None:
    tid = _trial_once(server)["id"]
    today = datetime.now(UTC).date().isoformat()
    answers = {}
    for role in (*BLINDED, "pharmacist"):
        with server.client(role) as c:
            r = c.get(f"/trials/{tid}/enrolment")
        assert r.status_code == 200, (role, r.text)
        assert not _leaks(r.text), (role, _leaks(r.text))
        answers[role] = r.json()
    counts = answers["investigator"]
    assert counts["total"] == 4 and counts["dates"] == [today]
    assert counts["by_site"] == {"S1": [2], "S2": [2]}
    assert sum(series[-1] for series in counts["by_stratum"].values()) == 4
    assert all(a == counts for a in answers.values()), "every trial role reads the same counts"


def test_oversight_counts_refuse_care_roles_and_unknown_trials(server: Server) -> None:
    tid = _trial_once(server)["id"]
    for path in ("consort", "enrolment"):
        for role in CARE:
            with server.client(role) as c:
                assert c.get(f"/trials/{tid}/{path}").status_code == 403, (role, path)
        with server.client("monitor") as c:
            assert c.get(f"/trials/999999/{path}").status_code == 404, path
