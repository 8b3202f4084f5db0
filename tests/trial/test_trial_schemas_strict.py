"""The trial's input models refuse what their JSON schema forbids instead of converting it
(pydantic's lax mode took "1" and 1 for true, "3" and true for 3, a number for a date-time)."""

from __future__ import annotations

from typing import Any

import pytest

from immunostrat.errors import InputError
from immunostrat.trial import schemas
from immunostrat.trial.schemas import parse

AE = {"day": 2, "term": "rash", "serious": False}

REFUSED: list[tuple[type[Any], dict[str, Any], str]] = [
    (schemas.WithdrawIn, {"reason": "asked", "data_removed": "1"}, "data_removed"),
    (schemas.WithdrawIn, {"reason": "asked", "data_removed": 1}, "data_removed"),
    (schemas.AssessmentIn, {"day": 2, "doses_given": "3"}, "doses_given"),
    (schemas.AssessmentIn, {"day": 2, "doses_given": True}, "doses_given"),
    (schemas.AssessmentIn, {"day": 2, "doses_given": 2.5}, "doses_given"),
    (schemas.OutcomeIn, {"last_contact_day": 28, "hla_dr_day15_abc": "5000"}, "hla_dr_day15_abc"),
    (schemas.OutcomeIn, {"last_contact_day": 28, "hla_dr_day15_abc": True}, "hla_dr_day15_abc"),
    (schemas.AdverseEventIn, {**AE, "aware_at": 1_700_000_000}, "aware_at"),
    (schemas.AdverseEventIn, {**AE, "aware_at": True}, "aware_at"),
    (schemas.AdverseEventIn, {**AE, "serious": "false"}, "serious"),
    (schemas.AdverseEventReportIn, {"reported_at": 0}, "reported_at"),
    (schemas.FormIn, {"visit_date": 20250102}, "visit_date"),
    (schemas.ScreeningIn, {"site": "S1", "age": "60", "sex": "F"}, "age"),
    (schemas.UserUpdate, {"active": "yes"}, "active"),
]


@pytest.mark.parametrize(("model", "data", "field"), REFUSED)
def test_a_value_of_the_wrong_json_type_is_refused_not_converted(
    model: type[Any], data: dict[str, Any], field: str
) -> None:
    with pytest.raises(InputError, match=field):
        parse(model, data)


def test_values_of_the_right_type_are_taken() -> None:
    ae = parse(schemas.AdverseEventIn, {**AE, "aware_at": "2025-01-02T03:04:05Z"})
    assert ae.aware_at is not None and ae.aware_at.year == 2025
    outcome = parse(schemas.OutcomeIn, {"last_contact_day": 28, "hla_dr_day15_abc": 5000})
    assert outcome.hla_dr_day15_abc == 5000.0
    assert parse(schemas.WithdrawIn, {"reason": "asked", "data_removed": True}).data_removed is True
    assert parse(schemas.AssessmentIn, {"day": 2, "doses_given": 3}).doses_given == 3
    assert str(parse(schemas.FormIn, {"visit_date": "2025-01-02"}).visit_date) == "2025-01-02"
