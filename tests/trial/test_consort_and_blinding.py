"""The CONSORT counts and enrolment series (trial.consort) and the arm redaction for blinded roles
(trial.blinding), on a trial without forms: completion is the recorded outcome."""

from __future__ import annotations

import json

from sqlalchemy import select
from trialdata import add_eligible

from immunostrat.trial import blinding, consort, service
from immunostrat.trial.audit import Actor, verify_chain
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import AuditRow, EligibilityDecision, Participant
from immunostrat.trial.ops import init_trial
from immunostrat.trial.schemas import OutcomeIn, TrialSpec, parse

INVESTIGATOR = Actor("ina", "investigator")
PHARMACIST = Actor("phil", "pharmacist")
MONITOR = Actor("mo", "monitor")
ADMIN = Actor("root", "admin")
ARMS = ("brivaxumab", "saltplacebo")


def _setup(url: str) -> tuple[int, list[int]]:
    spec = parse(
        TrialSpec,
        {
            "code": "CONSORT",
            "title": "counting",
            "arms": list(ARMS),
            "control_arm": ARMS[1],
            "ratios": {"mals": {ARMS[0]: 2, ARMS[1]: 1}},
            "slots_per_stratum": 24,
            "sites": [{"code": "S1", "name": "one"}, {"code": "S2", "name": "two"}],
        },
    )
    tid = init_trial(url, spec, seed=bytes(range(32))).trial_id
    engine = get_engine(url)
    with transaction(engine) as s:
        ids = add_eligible(s, tid, "S1", "mals", 5) + add_eligible(s, tid, "S2", "immunoparalysis", 3)
        # two screened and found not eligible, for the same reason
        for pid in add_eligible(s, tid, "S2", "mals", 2, start=50):
            s.get(Participant, pid).status = "ineligible"  # type: ignore[union-attr]
            decision = s.scalars(
                select(EligibilityDecision).where(EligibilityDecision.participant_id == pid)
            ).one()
            decision.eligible = False
            decision.reasons = [{"rule": "eligibility", "text": "age below 18"}]
    for pid in ids[:7]:
        with transaction(engine) as s:
            service.randomize(s, INVESTIGATOR, tid, pid)
    with transaction(engine) as s:
        service.withdraw(s, INVESTIGATOR, tid, ids[0], "consent withdrawn", removed=True)
        service.withdraw(s, INVESTIGATOR, tid, ids[1], "moved away", removed=False)
        for pid in ids[2:5]:
            service.record_outcome(s, INVESTIGATOR, tid, pid, OutcomeIn(last_contact_day=28))
    return tid, ids


def test_consort_counts_and_the_split_by_arm_for_the_pharmacist_only(sqlite_url: str) -> None:
    tid, ids = _setup(sqlite_url)
    with transaction(get_engine(sqlite_url)) as s:
        blinded = consort.consort(s, INVESTIGATOR, tid)
        unblinded = consort.consort(s, PHARMACIST, tid)
        arms = {pid: service.get_allocation(s, PHARMACIST, tid, pid).arm for pid in ids[:7]}
    totals = {k: blinded[k] for k in ("screened", "not_eligible", "eligible", "randomized")}
    assert totals == {"screened": 10, "not_eligible": 2, "eligible": 8, "randomized": 7}
    assert blinded["eligible_not_randomized"] == 1
    assert blinded["exclusions"] == [{"reason": "age below 18", "count": 2}]
    assert (blinded["withdrawn"], blinded["completed"], blinded["analysed"]) == (2, 3, 6)
    assert "arms" not in blinded and not any(arm in json.dumps(blinded) for arm in ARMS)
    by_arm = {a["arm"]: a for a in unblinded["arms"]}
    assert list(by_arm) == list(ARMS)
    for arm in ARMS:
        members = {pid for pid, a in arms.items() if a == arm}
        assert by_arm[arm]["allocated"] == len(members)
        assert by_arm[arm]["withdrawn"] == len(members & {ids[0], ids[1]})
        assert by_arm[arm]["completed"] == len(members & set(ids[2:5]))
        assert by_arm[arm]["analysed"] == len(members - {ids[0]})
    assert sum(a["allocated"] for a in unblinded["arms"]) == 7


def test_enrolment_by_site_and_stratum(sqlite_url: str) -> None:
    tid, _ = _setup(sqlite_url)
    with transaction(get_engine(sqlite_url)) as s:
        counts = consort.enrolment(s, MONITOR, tid)
    assert len(counts["dates"]) == 1 and counts["total"] == 7
    assert counts["by_site"] == {"S1": [5], "S2": [2]}
    assert counts["by_stratum"] == {"S1 / mals": [5], "S2 / immunoparalysis": [2]}


def test_blinded_roles_read_neutral_labels_and_rows_keep_their_hashes(sqlite_url: str) -> None:
    tid, _ = _setup(sqlite_url)
    with transaction(get_engine(sqlite_url)) as s:
        trial = service.trial_by_id(s, tid)
        for actor in (INVESTIGATOR, MONITOR, ADMIN):
            view = blinding.blind_trial_view(service.trial_view(s, trial, actor), actor)
            assert view["arms"] == ["arm 1", "arm 2"] and view["control_arm"] == "arm 2"
            assert view["config"]["ratios"]["mals"] == {"arm 1": 2, "arm 2": 1}
            assert not any(arm in json.dumps(view, default=str) for arm in ARMS)
        unblinded = blinding.blind_trial_view(service.trial_view(s, trial, PHARMACIST), PHARMACIST)
        assert unblinded["arms"] == list(ARMS)
        stored = list(s.scalars(select(AuditRow).order_by(AuditRow.seq)))
        for actor in (MONITOR, ADMIN):
            rows = blinding.blind_audit_rows(s, [service.audit_row_view(r, actor) for r in stored], actor)
            assert not any(arm in json.dumps(rows) for arm in ARMS)
            assert [r["hash"] for r in rows] == [r.hash for r in stored]
            strata = [json.loads(r["new"]) for r in rows if r["entity"] == "stratum"]
            # the same label for the same arm in the trial's row and in its strata's rows
            assert {"site": "S1", "endotype": "mals"}.items() <= strata[0].items()
            assert strata[0]["ratio"] == {"arm 1": 2, "arm 2": 1}
        assert verify_chain(s).ok
