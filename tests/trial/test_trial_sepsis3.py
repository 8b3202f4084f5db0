"""The opt-in Sepsis-3 inclusion criterion at screening (domain.md A1, B2), through the service on
SQLite and PostgreSQL: SOFA scored by the scores package from the screening observations."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.audit import Actor, verify_chain
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import AuditRow, EligibilityDecision, Trial
from immunostrat.trial.ops import EXAMPLE_SPEC, init_trial, load_trial_spec
from immunostrat.trial.schemas import ScreeningIn, TrialSpec, parse

INVESTIGATOR = Actor("ina", "investigator")
SEED = bytes(range(32))
T = "2025-02-01T{}:00:00Z"


def _spec(**kw: object) -> TrialSpec:
    base: dict[str, object] = {
        "code": "S3",
        "title": "sepsis-3 screening",
        "sites": [{"code": "S1", "name": "Site one"}],
        "slots_per_stratum": 12,
    }
    base.update(kw)
    return parse(TrialSpec, base)


def _obs(concept: str, value: float, unit: str = "", hour: str = "08") -> dict[str, Any]:
    return {"concept": concept, "value": value, "unit": unit, "time": T.format(hour)}


# MALS in mg/L (9 mg/L = 9,000 ng/mL > 4,420, domain.md A1): the randomized stratum when septic
ENDOTYPE = [_obs("ferritin", 9, "mg/L"), _obs("mhla_dr", 3000, "molecules/cell")]
# Every organ system, in the units clinicians type (points per sofa-1996.yaml): PaO2 9 kPa on FiO2
# 40 % = 169 mmHg without ventilation (capped at 2), platelets 120 x10^3/uL (1), bilirubin 40 umol/L
# = 2.34 mg/dL (2), norepinephrine 10 ug/min at 70 kg = 0.14 ug/kg/min charted 06:00 and 07:00 (a 1-h
# infusion, sofa-1996.yaml) (4), GCS 14 (1), creatinine 180 umol/L = 2.04 mg/dL (2): SOFA 12.
SEPTIC = [
    _obs("fio2", 40, "%", "05"),
    _obs("pao2", 9.0, "kPa", "06"),
    _obs("platelets", 120, "x10^3/uL", "06"),
    _obs("bilirubin", 40, "umol/L", "06"),
    _obs("map", 62, "mmHg", "07"),
    _obs("norepinephrine_rate", 10, "ug/min", "06"),
    _obs("norepinephrine_rate", 10, "ug/min", "07"),
    _obs("gcs", 14),
    _obs("creatinine", 180, "umol/L"),
]
SEPTIC_COMPONENTS = {
    "sofa_respiration": 2,
    "sofa_coagulation": 1,
    "sofa_liver": 2,
    "sofa_cardiovascular": 4,
    "sofa_cns": 1,
    "sofa_renal": 2,
}
# Every organ system recorded, only the GCS abnormal: SOFA 1.
MILD = [
    _obs("fio2", 0.21, "", "05"),
    _obs("pao2", 95, "mmHg", "06"),
    _obs("platelets", 250, "10^9/L"),
    _obs("bilirubin", 0.8, "mg/dL"),
    _obs("map", 80, "mmHg"),
    _obs("gcs", 14),
    _obs("creatinine", 70, "umol/L"),
]
# No GCS, no creatinine or urine output: 1 point from respiration (PaO2/FiO2 350), the rest 0.
NO_CNS_RENAL = [
    _obs("fio2", 0.3, "", "05"),
    _obs("pao2", 105, "mmHg", "06"),
    _obs("platelets", 200, "10^9/L"),
    _obs("bilirubin", 0.5, "mg/dL"),
    _obs("map", 75, "mmHg"),
]


def _screening(observations: list[dict[str, Any]], **kw: object) -> ScreeningIn:
    body: dict[str, object] = {
        "site": "S1",
        "age": 61,
        "sex": "M",
        "weight_kg": 70,
        "observations": ENDOTYPE + observations,
    }
    body.update(kw)
    return parse(ScreeningIn, body)


def _screen(db_url: str, trial_id: int, data: ScreeningIn) -> service.ScreeningResult:
    with transaction(get_engine(db_url)) as s:
        return service.screen(s, INVESTIGATOR, trial_id, data)


def _stored(db_url: str, participant_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The decision's reasons and the audit payload of the screening, as stored."""
    with transaction(get_engine(db_url)) as s:
        decision = service.latest_decision(s, participant_id)
        assert isinstance(decision, EligibilityDecision)
        row = s.scalars(
            select(AuditRow).where(
                AuditRow.entity == "participant", AuditRow.entity_id == str(participant_id)
            )
        ).one()
        assert verify_chain(s).ok
        return list(decision.reasons), json.loads(row.new or "{}")


def test_septic_patient_in_mixed_units_is_eligible_and_the_sofa_is_stored(db_url: str) -> None:
    setup = init_trial(db_url, _spec(require_sepsis3=True), seed=SEED)
    # baseline_sofa is the SOFA at randomization (analysis day-1 fallback), not the pre-infection
    # SOFA: it must not raise the bar
    out = _screen(db_url, setup.trial_id, _screening(SEPTIC, infection_suspected=True, baseline_sofa=12))
    assert out.eligible and out.exclusion_reason is None and out.endotype == "mals"
    check = out.sepsis3
    assert check is not None
    assert check["status"] == "met" and check["met"] is True and check["infection_suspected"] is True
    assert check["sofa_total"] == 12 and check["sofa_components"] == SEPTIC_COMPONENTS
    assert check["sofa_missing_components"] == [] and check["sofa_max_possible"] == 12
    assert (check["pre_infection_sofa"], check["pre_infection_sofa_entered"]) == (0, False)
    assert check["sofa_rise"] == 12 and check["sofa_rise_required"] == 2
    assert check["at"] == "2025-02-01T08:00:00+00:00" and check["window_hours"] == 24
    assert check["sofa_variant"] == "sofa-1996"
    reasons, audited = _stored(db_url, out.participant_id)
    stored = next(r for r in reasons if r["rule"] == "sepsis3")
    assert {k: v for k, v in stored.items() if k != "rule"} == check
    assert audited["sepsis3"] == check and audited["infection_suspected"] is True
    with transaction(get_engine(db_url)) as s:
        trial = service.trial_by_id(s, setup.trial_id)
        assert trial.config["require_sepsis3"] is True
        assert service.participant_view(s, service.participant_by_id(s, trial, out.participant_id))["reasons"]


def test_a_known_pre_infection_sofa_is_the_baseline_of_the_rise(db_url: str) -> None:
    setup = init_trial(db_url, _spec(require_sepsis3=True), seed=SEED)
    out = _screen(db_url, setup.trial_id, _screening(SEPTIC, infection_suspected=True, pre_infection_sofa=11))
    assert not out.eligible and out.sepsis3 is not None
    assert out.sepsis3["status"] == "not met" and out.sepsis3["sofa_rise"] == 1
    assert out.sepsis3["pre_infection_sofa_entered"] is True
    assert out.exclusion_reason == (
        "Sepsis-3 not met: SOFA 12: a rise of 1 over the pre-infection SOFA 11, 2 required; "
        "suspected infection"
    )
    _, audited = _stored(db_url, out.participant_id)
    assert audited["pre_infection_sofa"] == 11


def test_sofa_below_two_is_not_eligible_with_the_reason(db_url: str) -> None:
    setup = init_trial(db_url, _spec(require_sepsis3=True), seed=SEED)
    out = _screen(db_url, setup.trial_id, _screening(MILD, infection_suspected=True))
    assert not out.eligible and out.sepsis3 is not None
    assert out.sepsis3["status"] == "not met" and out.sepsis3["sofa_met"] is False
    assert out.sepsis3["sofa_total"] == 1 and out.sepsis3["sofa_components"]["sofa_cns"] == 1
    assert out.exclusion_reason is not None and out.exclusion_reason.startswith("Sepsis-3 not met: SOFA 1:")
    reasons, audited = _stored(db_url, out.participant_id)
    assert {"rule": "eligibility", "text": out.exclusion_reason} in reasons
    assert audited["eligible"] is False and audited["sepsis3"]["status"] == "not met"


def test_missing_components_are_named_not_scored_zero(db_url: str) -> None:
    setup = init_trial(db_url, _spec(require_sepsis3=True), seed=SEED)
    out = _screen(db_url, setup.trial_id, _screening(NO_CNS_RENAL, infection_suspected=True))
    assert not out.eligible and out.sepsis3 is not None
    assert out.sepsis3["status"] == "not assessable" and out.sepsis3["sofa_met"] is None
    assert out.sepsis3["sofa_missing_components"] == ["sofa_cns", "sofa_renal"]
    assert (
        out.sepsis3["sofa_components"]["sofa_cns"] is None
        and out.sepsis3["sofa_components"]["sofa_renal"] is None
    )
    assert out.sepsis3["sofa_total"] == 1 and out.sepsis3["sofa_max_possible"] == 9
    assert out.exclusion_reason is not None
    assert out.exclusion_reason.startswith("Sepsis-3 not assessable: missing sofa_cns, sofa_renal:")
    # no observation at all: every organ system missing, nothing counted as 0
    none = _screen(db_url, setup.trial_id, _screening([], infection_suspected=True))
    assert none.sepsis3 is not None and none.sepsis3["sofa_total"] is None
    assert len(none.sepsis3["sofa_missing_components"]) == 6 and not none.eligible


def test_recorded_components_reaching_the_rise_decide_it_despite_missing_ones(db_url: str) -> None:
    setup = init_trial(db_url, _spec(require_sepsis3=True), seed=SEED)
    liver_only = [_obs("bilirubin", 3.0, "mg/dL")]
    out = _screen(db_url, setup.trial_id, _screening(liver_only, infection_suspected=True))
    assert out.eligible and out.sepsis3 is not None and out.sepsis3["status"] == "met"
    assert out.sepsis3["sofa_total"] == 2 and len(out.sepsis3["sofa_missing_components"]) == 5
    assert (
        "even with sofa_respiration, sofa_coagulation, sofa_cardiovascular, sofa_cns, sofa_renal missing"
        in (out.sepsis3["text"])
    )


def test_infection_not_suspected_or_not_given_is_not_eligible(db_url: str) -> None:
    setup = init_trial(db_url, _spec(require_sepsis3=True), seed=SEED)
    no = _screen(db_url, setup.trial_id, _screening(SEPTIC, infection_suspected=False))
    assert not no.eligible and no.sepsis3 is not None and no.sepsis3["status"] == "not met"
    assert no.exclusion_reason is not None
    assert no.exclusion_reason.startswith(
        "Sepsis-3 not met: infection not suspected (infection_suspected = false)"
    )
    assert no.sepsis3["sofa_total"] == 12  # still scored and stored
    unknown = _screen(db_url, setup.trial_id, _screening(SEPTIC))
    assert not unknown.eligible and unknown.sepsis3 is not None
    assert unknown.sepsis3["status"] == "not assessable" and unknown.sepsis3["infection_suspected"] is None
    assert unknown.exclusion_reason is not None
    assert unknown.exclusion_reason.startswith("Sepsis-3 not assessable: infection_suspected not given")
    _, audited = _stored(db_url, unknown.participant_id)
    assert "infection_suspected" not in audited and audited["sepsis3"]["infection_suspected"] is None


def test_exclusions_still_come_first(sqlite_url: str) -> None:
    setup = init_trial(sqlite_url, _spec(require_sepsis3=True), seed=SEED)
    out = _screen(
        sqlite_url,
        setup.trial_id,
        _screening(MILD, infection_suspected=True, exclusions={"neutropenia": True}),
    )
    assert out.exclusion_reason == "exclusion criterion: neutropenia"
    assert out.sepsis3 is not None and out.sepsis3["status"] == "not met"


def test_without_the_option_screening_is_unchanged(db_url: str) -> None:
    setup = init_trial(db_url, _spec(), seed=SEED)
    out = _screen(db_url, setup.trial_id, _screening(NO_CNS_RENAL))
    assert out.eligible and out.exclusion_reason is None and out.sepsis3 is None
    assert all(r["rule"] != "sepsis3" for r in out.reasons)
    _, audited = _stored(db_url, out.participant_id)
    assert "sepsis3" not in audited
    # a trial set up before the option existed has no key in its config: never required
    with transaction(get_engine(db_url)) as s:
        trial = s.get(Trial, setup.trial_id)
        assert trial is not None and trial.config["require_sepsis3"] is False
        trial.config = {k: v for k, v in trial.config.items() if k != "require_sepsis3"}
    old = _screen(db_url, setup.trial_id, _screening(MILD, infection_suspected=False))
    assert old.eligible and old.sepsis3 is None


def test_bad_option_and_field_values_name_the_field() -> None:
    with pytest.raises(InputError) as err:
        _spec(require_sepsis3="perhaps")
    assert err.value.field == "require_sepsis3" and err.value.value == "perhaps"
    with pytest.raises(InputError) as err:
        _screening(SEPTIC, pre_infection_sofa=30)
    assert err.value.field == "pre_infection_sofa" and err.value.value == 30
    with pytest.raises(InputError) as err:
        _screening(SEPTIC, infection_suspected="maybe")
    assert err.value.field == "infection_suspected"


def test_the_example_spec_requires_sepsis3_and_the_default_does_not() -> None:
    assert load_trial_spec(EXAMPLE_SPEC).require_sepsis3 is True
    assert _spec().require_sepsis3 is False
