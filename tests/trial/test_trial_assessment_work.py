"""A daily assessment's observations are converted before the write transaction (as a screening's
are): :func:`evaluate_assessment` needs no database, and ``record_assessment`` stores its result."""

from __future__ import annotations

import pytest
from trialdata import add_eligible

from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.audit import Actor
from immunostrat.trial.db import get_engine, read_transaction, transaction
from immunostrat.trial.ops import init_trial
from immunostrat.trial.schemas import AssessmentIn, TrialSpec, parse

INVESTIGATOR = Actor("ina", "investigator")
SEED = bytes(range(32))
T = "2025-03-02T08:00:00Z"


def _spec() -> TrialSpec:
    return parse(
        TrialSpec,
        {
            "code": "T1",
            "title": "test trial",
            "sites": [{"code": "S1", "name": "Site one"}],
            "slots_per_stratum": 12,
        },
    )


def _day(**kw: object) -> AssessmentIn:
    return parse(AssessmentIn, {"day": 2, **kw})


def test_the_conversion_needs_no_database_and_names_a_concept_it_does_not_record() -> None:
    work = service.evaluate_assessment(
        _day(observations=[{"concept": "crp", "value": 5.0, "unit": "mg/dL", "time": T}]), 70.0
    )
    assert work.weight_kg == 70.0
    assert work.biomarkers == {"crp_mg_l": pytest.approx(50.0)}
    with pytest.raises(InputError, match=r"observations\[1\]\.concept"):
        service.evaluate_assessment(
            _day(
                observations=[
                    {"concept": "ferritin", "value": 900.0, "unit": "ng/mL", "time": T},
                    {"concept": "lactate", "value": 2.0, "unit": "mmol/L", "time": T},
                ]
            ),
            None,
        )


def test_the_work_done_before_the_transaction_is_what_is_stored(sqlite_url: str) -> None:
    setup = init_trial(sqlite_url, _spec(), seed=SEED)
    engine = get_engine(sqlite_url)
    with transaction(engine) as s:
        pid = add_eligible(s, setup.trial_id, "S1", "mals", 1)[0]
        service.randomize(s, INVESTIGATOR, setup.trial_id, pid)
    data = _day(observations=[{"concept": "procalcitonin", "value": 2.5, "unit": "ng/mL", "time": T}])
    with read_transaction(engine) as s:
        weight = service.assessment_weight(s, INVESTIGATOR, setup.trial_id, pid)
    work = service.evaluate_assessment(data, weight)
    with transaction(engine) as s:
        row = service.record_assessment(s, INVESTIGATOR, setup.trial_id, pid, data, work)
        assert row.procalcitonin_ng_ml == pytest.approx(2.5)
    # work made for another weight than the participant's is not trusted: converted again
    stale = service.AssessmentWork(-1.0, {"procalcitonin_ng_ml": 99.0})
    with transaction(engine) as s:
        row = service.record_assessment(s, INVESTIGATOR, setup.trial_id, pid, _day(day=3), stale)
        assert row.procalcitonin_ng_ml is None
