"""The opt-in Sepsis-3 criterion through the real HTTP API on SQLite and PostgreSQL: the SOFA the
scores package computed from the screening observations comes back in the response and is kept in
the decision's reasons and the audit trail."""

from __future__ import annotations

import json
from typing import Any

import pytest
from apiserver import Server
from sqlalchemy import select

from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import AuditRow


def _obs(concept: str, value: float, unit: str = "", hour: str = "08") -> dict[str, Any]:
    return {"concept": concept, "value": value, "unit": unit, "time": f"2025-02-01T{hour}:00:00Z"}


# immunoparalysis (ferritin 800 ug/L <= 4,420 ng/mL, HLA-DR 3,000 < 5,000, domain.md A1)
ENDOTYPE = [_obs("ferritin", 800, "ug/L"), _obs("mhla_dr", 3000, "receptors/cell")]
# PaO2 60 mmHg on FiO2 60 % with ventilation = 100 (3), platelets 40,000/mm3 (3), bilirubin 1.3 mg/dL
# (1), dopamine 6 ug/kg/min charted 05:00 and 06:00 (a 1-h infusion, sofa-1996.yaml) (3), GCS 9 (3),
# urine 0.3 L/day without creatinine (3): SOFA 16.
SEPTIC = [
    _obs("mechanical_ventilation", 1, "", "04"),
    _obs("fio2", 60, "%", "05"),
    _obs("pao2", 60, "mmHg", "06"),
    _obs("platelets", 40000, "/mm3"),
    _obs("bilirubin", 22.23, "umol/L"),
    _obs("dopamine_rate", 6, "mcg/kg/min", "05"),
    _obs("dopamine_rate", 6, "mcg/kg/min", "06"),
    _obs("gcs", 9),
    _obs("urine_output_24h", 0.3, "L/day"),
]


def _body(observations: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"site": "S1", "age": 70, "sex": "F", "weight_kg": 64}
    body["observations"] = ENDOTYPE + observations
    body.update(kw)
    return body


@pytest.fixture(scope="module")
def trials(server: Server) -> dict[str, int]:
    with_option = server.new_trial(f"SEP3-{server.kind}", require_sepsis3=True)
    without = server.new_trial(f"NOSEP3-{server.kind}")
    assert with_option["config"]["require_sepsis3"] is True
    assert without["config"]["require_sepsis3"] is False
    return {"on": with_option["id"], "off": without["id"]}


def _screen(server: Server, trial_id: int, body: dict[str, Any]) -> dict[str, Any]:
    with server.client("investigator") as inv:
        r = inv.post(f"/trials/{trial_id}/participants", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _audited(server: Server, participant_id: int) -> dict[str, Any]:
    with transaction(get_engine(server.db_url)) as s:
        row = s.scalars(
            select(AuditRow).where(
                AuditRow.entity == "participant", AuditRow.entity_id == str(participant_id)
            )
        ).one()
        return dict(json.loads(row.new or "{}"))


def test_septic_patient_is_eligible_with_sofa_in_response_and_audit(
    server: Server, trials: dict[str, int]
) -> None:
    out = _screen(server, trials["on"], _body(SEPTIC, infection_suspected=True))
    assert out["eligible"] is True and out["endotype"] == "immunoparalysis", out
    s3 = out["sepsis3"]
    assert s3["status"] == "met" and s3["sofa_total"] == 16 and s3["sofa_missing_components"] == []
    assert s3["sofa_components"] == {
        "sofa_respiration": 3,
        "sofa_coagulation": 3,
        "sofa_liver": 1,
        "sofa_cardiovascular": 3,
        "sofa_cns": 3,
        "sofa_renal": 3,
    }
    assert any(r["rule"] == "sepsis3" and r["status"] == "met" for r in out["reasons"])
    assert _audited(server, out["participant_id"])["sepsis3"] == s3
    with server.client("monitor") as mon:
        listed = mon.get(f"/trials/{trials['on']}/participants").json()
    mine = next(p for p in listed if p["id"] == out["participant_id"])
    assert next(r for r in mine["reasons"] if r["rule"] == "sepsis3")["sofa_total"] == 16


# every organ system recorded and normal but the GCS: SOFA 1
MILD = [
    _obs("fio2", 21, "%", "05"),
    _obs("pao2", 12.6, "kPa", "06"),
    _obs("platelets", 210, "K/uL"),
    _obs("bilirubin", 10, "umol/L"),
    _obs("map", 85, "mm[Hg]"),
    _obs("gcs", 14),
    _obs("creatinine", 0.9, "mg/dL"),
]
# only platelets 140 x10^9/L (1 point): the other five could still make the rise
PLATELETS_ONLY = [_obs("platelets", 140, "10*9/L")]


@pytest.mark.parametrize(
    ("observations", "infection", "status", "reason"),
    [
        (
            MILD,
            True,
            "not met",
            "Sepsis-3 not met: SOFA 1: a rise of 1 over the pre-infection SOFA 0, 2 required",
        ),
        (
            PLATELETS_ONLY,
            True,
            "not assessable",
            "Sepsis-3 not assessable: missing sofa_respiration, sofa_liver, sofa_cardiovascular, sofa_cns, "
            "sofa_renal: SOFA 1 from the recorded organ systems, up to 21 with them",
        ),
        (SEPTIC, False, "not met", "Sepsis-3 not met: infection not suspected (infection_suspected = false)"),
        (SEPTIC, None, "not assessable", "Sepsis-3 not assessable: infection_suspected not given"),
    ],
    ids=["sofa-below-2", "missing-components", "no-infection", "infection-not-given"],
)
def test_not_eligible_with_a_clear_reason(
    server: Server,
    trials: dict[str, int],
    observations: list[dict[str, Any]],
    infection: bool | None,
    status: str,
    reason: str,
) -> None:
    out = _screen(server, trials["on"], _body(observations, infection_suspected=infection))
    assert out["eligible"] is False and out["sepsis3"]["status"] == status, out
    assert out["exclusion_reason"].startswith(reason), out["exclusion_reason"]
    assert {"rule": "eligibility", "text": out["exclusion_reason"]} in out["reasons"]
    audited = _audited(server, out["participant_id"])
    assert audited["eligible"] is False and audited["sepsis3"] == out["sepsis3"]


def test_recorded_components_reaching_the_rise_are_enough(server: Server, trials: dict[str, int]) -> None:
    # platelets 40,000/mm3 (3) and bilirubin 22.23 umol/L = 1.3 mg/dL (1): 4 points, four systems missing
    out = _screen(server, trials["on"], _body(SEPTIC[3:5], infection_suspected=True))
    s3 = out["sepsis3"]
    assert out["eligible"] is True and s3["status"] == "met" and s3["sofa_total"] == 4, out
    assert s3["sofa_missing_components"] == [
        "sofa_respiration",
        "sofa_cardiovascular",
        "sofa_cns",
        "sofa_renal",
    ]
    assert s3["sofa_components"]["sofa_cns"] is None and s3["sofa_max_possible"] == 20
    assert "even with sofa_respiration, sofa_cardiovascular, sofa_cns, sofa_renal missing" in s3["text"]


def test_without_the_option_the_response_only_gains_a_null(server: Server, trials: dict[str, int]) -> None:
    out = _screen(server, trials["off"], _body([]))
    assert out["eligible"] is True and out["exclusion_reason"] is None
    assert out["sepsis3"] is None and all(r["rule"] != "sepsis3" for r in out["reasons"])
    assert "sepsis3" not in _audited(server, out["participant_id"])


def test_bad_values_name_the_field(server: Server, trials: dict[str, int]) -> None:
    with server.client("investigator") as inv:
        r = inv.post(f"/trials/{trials['on']}/participants", json=_body(SEPTIC, pre_infection_sofa=25))
    assert r.status_code == 422 and r.json()["field"] == "pre_infection_sofa", r.text
    with server.client("admin") as adm:
        r = adm.post(
            "/trials", json={"code": f"BADSEP3-{server.kind}", "title": "t", "require_sepsis3": "sometimes"}
        )
    assert r.status_code == 422 and r.json()["field"] == "require_sepsis3", r.text
