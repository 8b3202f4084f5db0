"""Set-up, allocation, idempotency, blinding, unblinding, minimization and export on both databases."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from trialdata import add_eligible

from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.audit import Actor, verify_chain
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.export import build_export, write_export
from immunostrat.trial.models import AuditRow, Kit, Stratum, UnblindingEvent
from immunostrat.trial.ops import export_trial, init_trial, lock_trial
from immunostrat.trial.randomization import commitment, permuted_block_list
from immunostrat.trial.schemas import AssessmentIn, OutcomeIn, TrialSpec, parse

ADMIN = Actor("root", "admin")
INVESTIGATOR = Actor("ina", "investigator")
PHARMACIST = Actor("phil", "pharmacist")
SEED = bytes(range(32))


def _spec(**kw: object) -> TrialSpec:
    base: dict[str, object] = {
        "code": "T1",
        "title": "test trial",
        "sites": [{"code": "S1", "name": "Site one"}, {"code": "S2", "name": "Site two"}],
        "slots_per_stratum": 24,
        "ratios": {"mals": {"immunotherapy": 2, "placebo": 1}},
    }
    base.update(kw)
    return parse(TrialSpec, base)


def test_setup_stores_the_concealed_list_and_only_a_commitment(db_url: str) -> None:
    setup = init_trial(db_url, _spec(), seed=SEED)
    assert setup.seed_hex == SEED.hex()
    engine = get_engine(db_url)
    with transaction(engine) as s:
        trial = service.trial_by_id(s, setup.trial_id)
        assert trial.seed_commitment == commitment(SEED)
        assert SEED.hex() not in str(service.trial_view(s, trial))
        strata = list(s.scalars(select(Stratum).where(Stratum.trial_id == trial.id)))
        assert len(strata) == 4  # 2 sites x 2 endotypes
        for st_ in strata:
            site = next(x for x in trial.sites if x.id == st_.site_id)
            kits = list(s.scalars(select(Kit).where(Kit.stratum_id == st_.id).order_by(Kit.seq)))
            expected = permuted_block_list(SEED, f"T1/{site.code}/{st_.endotype}", st_.ratio, [1, 2, 3], 24)
            assert [(k.seq, k.block_no, k.arm) for k in kits] == [
                (x.seq, x.block_no, x.arm) for x in expected
            ]
        mals = next(x for x in strata if x.endotype == "mals")
        assert mals.ratio == {"immunotherapy": 2, "placebo": 1}
        assert len({k.kit_number for k in s.scalars(select(Kit))}) == setup.n_kits


def test_allocation_takes_slots_in_order_and_blinds_investigators(db_url: str) -> None:
    setup = init_trial(db_url, _spec(), seed=SEED)
    engine = get_engine(db_url)
    with transaction(engine) as s:
        ids = add_eligible(s, setup.trial_id, "S1", "immunoparalysis", 10)
    arms = []
    for pid in ids:
        with transaction(engine) as s:
            result = service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
            shown = service.allocation_public(result, INVESTIGATOR)
            assert "arm" not in shown and shown["kit_number"]
            arms.append(result.arm)
    expected = permuted_block_list(
        SEED, "T1/S1/immunoparalysis", {"immunotherapy": 1, "placebo": 1}, [1, 2, 3], 24
    )
    assert arms == [x.arm for x in expected[:10]]
    with transaction(engine) as s:
        seen = service.get_allocation(s, PHARMACIST, setup.trial_id, ids[0])
        assert service.allocation_public(seen, PHARMACIST)["arm"] == arms[0]
        actions = [r.action for r in s.scalars(select(AuditRow).order_by(AuditRow.seq))]
        assert actions[-1] == "view_unblinded"
        # no audit row reveals an arm to the (blinded) readers of the audit trail
        alloc_rows = list(s.scalars(select(AuditRow).where(AuditRow.entity == "allocation")))
        assert len(alloc_rows) == 11
        assert not any("immunotherapy" in (r.new or "") + (r.old or "") for r in alloc_rows)


def test_idempotency_key_returns_the_same_allocation(db_url: str) -> None:
    setup = init_trial(db_url, _spec(), seed=SEED)
    engine = get_engine(db_url)
    with transaction(engine) as s:
        a, b = add_eligible(s, setup.trial_id, "S2", "mals", 2)
    with transaction(engine) as s:
        first = service.randomize(s, INVESTIGATOR, setup.trial_id, a, idempotency_key="req-1")
    with transaction(engine) as s:
        again = service.randomize(s, INVESTIGATOR, setup.trial_id, a, idempotency_key="req-1")
    assert (again.kit_number, again.sequence, again.replayed) == (first.kit_number, first.sequence, True)
    with pytest.raises(service.Conflict) as err, transaction(engine) as s:
        service.randomize(s, INVESTIGATOR, setup.trial_id, b, idempotency_key="req-1")
    assert err.value.field == "Idempotency-Key"
    with pytest.raises(service.Conflict, match="already randomized"), transaction(engine) as s:
        service.randomize(s, INVESTIGATOR, setup.trial_id, a)


def test_exhausted_list_is_a_conflict_not_a_reuse(sqlite_url: str) -> None:
    setup = init_trial(sqlite_url, _spec(slots_per_stratum=2, block_multipliers=[1]), seed=SEED)
    engine = get_engine(sqlite_url)
    with transaction(engine) as s:
        ids = add_eligible(s, setup.trial_id, "S1", "immunoparalysis", 3)
    for pid in ids[:2]:
        with transaction(engine) as s:
            service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
    with pytest.raises(service.Conflict, match="exhausted"), transaction(engine) as s:
        service.randomize(s, INVESTIGATOR, setup.trial_id, ids[2])


def test_emergency_unblinding_needs_a_reason_and_is_recorded(db_url: str) -> None:
    setup = init_trial(db_url, _spec(), seed=SEED)
    engine = get_engine(db_url)
    with transaction(engine) as s:
        (pid,) = add_eligible(s, setup.trial_id, "S1", "mals", 1)
        result = service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
    with pytest.raises(InputError) as err, transaction(engine) as s:
        service.emergency_unblind(s, INVESTIGATOR, setup.trial_id, pid, "  ")
    assert err.value.field == "reason"
    with transaction(engine) as s:
        out = service.emergency_unblind(
            s, INVESTIGATOR, setup.trial_id, pid, "anaphylaxis, needs treatment choice"
        )
    assert out["arm"] == result.arm
    with transaction(engine) as s:
        events = list(s.scalars(select(UnblindingEvent)))
        assert [(e.username, e.reason) for e in events] == [("ina", "anaphylaxis, needs treatment choice")]
        last = s.scalars(select(AuditRow).order_by(AuditRow.seq.desc())).first()
        assert last is not None and last.action == "emergency_unblind" and "anaphylaxis" in (last.new or "")
        assert verify_chain(s).ok


def test_minimization_balances_factors(db_url: str) -> None:
    setup = init_trial(db_url, _spec(code="M1", method="minimization", kits_per_arm=80, ratios={}), seed=SEED)
    engine = get_engine(db_url)
    with transaction(engine) as s:
        ids = add_eligible(s, setup.trial_id, "S1", "mals", 30)
        ids += add_eligible(s, setup.trial_id, "S2", "immunoparalysis", 30, start=100)
    arms = Counter()
    for pid in ids:
        with transaction(engine) as s:
            arms[service.randomize(s, INVESTIGATOR, setup.trial_id, pid).arm] += 1
    assert abs(arms["immunotherapy"] - arms["placebo"]) <= 4
    with transaction(engine) as s:
        used = list(s.scalars(select(Kit).where(Kit.used.is_(True))))
        assert len(used) == 60 and len({k.kit_number for k in used}) == 60


def test_export_passes_the_analysis_schema(db_url: str, tmp_path: Path) -> None:
    from immunostrat.analysis.schema import SCHEMA_VERSION, validate_export

    setup = init_trial(db_url, _spec(), seed=SEED)
    engine = get_engine(db_url)
    with transaction(engine) as s:
        ids = add_eligible(s, setup.trial_id, "S1", "mals", 6)
    for i, pid in enumerate(ids):
        with transaction(engine) as s:
            service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
            for day in range(1, 4):
                service.record_assessment(
                    s,
                    INVESTIGATOR,
                    setup.trial_id,
                    pid,
                    AssessmentIn(day=day, sofa_respiration=2, sofa_renal=day % 3, doses_given=3),
                )
            if i % 2:
                service.record_outcome(s, INVESTIGATOR, setup.trial_id, pid, OutcomeIn(last_contact_day=28))
    blinded = Path(export_trial(db_url, "T1", True, tmp_path / "blinded"))
    with pytest.raises(service.Conflict, match="lock"):  # the command line obeys the API's rule
        export_trial(db_url, setup.trial_id, False, tmp_path / "early", fmt="parquet")
    assert not (tmp_path / "early").exists()
    lock_trial(db_url, "T1")
    unblinded = Path(export_trial(db_url, setup.trial_id, False, tmp_path / "unblinded", fmt="parquet"))
    b = validate_export(blinded)
    u = validate_export(unblinded)
    assert b.manifest.schema_version == SCHEMA_VERSION
    assert set(b.participants["arm"]) == {"blinded"}
    assert set(u.participants["arm"]) <= {"immunotherapy", "placebo"}
    assert u.participants.height == 6 and u.daily_assessments.height == 18
    assert sorted(u.outcomes["last_contact_day"].to_list()) == [3, 3, 3, 28, 28, 28]
    assert u.screening is not None and u.screening["randomized"].all()
    with transaction(engine) as s:
        actions = [r.action for r in s.scalars(select(AuditRow).order_by(AuditRow.seq))]
    assert actions[-3:] == ["export_blinded", "update", "export_unblinded"]
    with transaction(engine) as s:
        last = s.scalars(select(AuditRow).order_by(AuditRow.seq.desc())).first()
        assert last is not None and last.actor.startswith("os:") and last.role == "cli"


def test_export_leaves_nothing_behind_on_failure(sqlite_url: str, tmp_path: Path) -> None:
    setup = init_trial(sqlite_url, _spec(), seed=SEED)
    with pytest.raises(InputError), transaction(get_engine(sqlite_url)) as s:
        write_export(build_export(s, ADMIN, setup.trial_id, True), tmp_path / "exports" / "out", fmt="xlsx")  # type: ignore[arg-type]
    assert not (tmp_path / "exports").exists() or list((tmp_path / "exports").iterdir()) == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(["S1", "S2"]), st.sampled_from(["mals", "immunoparalysis"])), max_size=40
    )
)
def test_no_allocation_reused_property(sqlite_url: str, plan: list[tuple[str, str]]) -> None:
    code = f"P{uuid.uuid4().hex[:12]}"  # one database serves every example
    setup = init_trial(sqlite_url, _spec(code=code, slots_per_stratum=40), seed=SEED)
    engine = get_engine(sqlite_url)
    kits = []
    for i, (site, endotype) in enumerate(plan):
        with transaction(engine) as s:
            (pid,) = add_eligible(s, setup.trial_id, site, endotype, 1, start=i)
            kits.append(service.randomize(s, INVESTIGATOR, setup.trial_id, pid).kit_number)
    assert len(set(kits)) == len(kits)
    with transaction(engine) as s:
        for st_ in s.scalars(select(Stratum).where(Stratum.trial_id == setup.trial_id)):
            used = [k.seq for k in s.scalars(select(Kit).where(Kit.stratum_id == st_.id, Kit.used.is_(True)))]
            assert sorted(used) == list(range(1, st_.next_seq))


def test_example_spec_file_sets_up_a_trial(sqlite_url: str, tmp_path: Path) -> None:
    from immunostrat.trial.ops import EXAMPLE_SPEC

    setup = init_trial(sqlite_url, EXAMPLE_SPEC)
    assert setup.code == "immunosep" and setup.n_kits >= 3 * 2 * 120
    bad = tmp_path / "bad.yaml"
    bad.write_text("code: x\ntitle: t\nmethod: coin\n")
    with pytest.raises(InputError) as err:
        init_trial(sqlite_url, bad)
    assert err.value.field == "method" and err.value.file == str(bad)


def test_withdrawal_with_data_removal_leaves_only_the_screening_row(sqlite_url: str, tmp_path: Path) -> None:
    from immunostrat.analysis.schema import validate_export

    setup = init_trial(sqlite_url, _spec(), seed=SEED)
    engine = get_engine(sqlite_url)
    with transaction(engine) as s:
        ids = add_eligible(s, setup.trial_id, "S2", "immunoparalysis", 3)
        for pid in ids:
            service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
        service.withdraw(s, INVESTIGATOR, setup.trial_id, ids[0], "consent withdrawn", True)
        service.withdraw(s, INVESTIGATOR, setup.trial_id, ids[1], "moved abroad", False)
    lock_trial(sqlite_url, "T1")
    export = validate_export(export_trial(sqlite_url, "T1", False, tmp_path / "x"))
    assert export.participants.height == 2
    assert export.screening is not None
    rows = {r["screening_id"]: r for r in export.screening.iter_rows(named=True)}
    assert sum(r["data_removed"] for r in rows.values()) == 1
    assert sum(r["withdrawn"] for r in rows.values()) == 2


def test_a_saved_day_is_changed_only_with_a_reason_and_keeps_what_is_not_sent(db_url: str) -> None:
    setup = init_trial(db_url, _spec(), seed=SEED)
    engine = get_engine(db_url)
    with transaction(engine) as s:
        pid = add_eligible(s, setup.trial_id, "S1", "mals", 1)[0]
        service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
        parts = {
            "sofa_respiration": 2,
            "sofa_coagulation": 1,
            "sofa_liver": 0,
            "sofa_cardiovascular": 3,
            "sofa_cns": 0,
            "sofa_renal": 1,
        }
        service.record_assessment(s, INVESTIGATOR, setup.trial_id, pid, AssessmentIn(day=2, **parts))
    with transaction(engine) as s, pytest.raises(InputError, match="needs a reason"):
        service.record_assessment(s, INVESTIGATOR, setup.trial_id, pid, AssessmentIn(day=2, sofa_renal=2))
    with transaction(engine) as s:
        row = service.record_assessment(
            s,
            INVESTIGATOR,
            setup.trial_id,
            pid,
            AssessmentIn(day=2, sofa_renal=2, reason="creatinine re-read"),
        )
        # the other components stay as saved (they were nulled before), the total follows
        assert (row.sofa_respiration, row.sofa_cardiovascular, row.sofa_renal, row.sofa_total) == (2, 3, 2, 8)
        last = s.scalars(select(AuditRow).order_by(AuditRow.seq.desc())).first()
        assert last is not None and json.loads(last.old or "{}") == {"sofa_renal": 1, "sofa_total": 7}
        assert json.loads(last.new or "{}")["reason"] == "creatinine re-read"
        assert service.verify_audit(s).ok
