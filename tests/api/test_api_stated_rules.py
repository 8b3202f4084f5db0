"""The rules the request models apply to text are the rules their JSON Schema states (schemathesis'
positive_data_acceptance and negative_data_rejection hold the service to both directions): for each
tricky text, the documented ``pattern`` matches exactly when the model accepts it. Also stated: the
ICH E2A seriousness criteria and the exclusion names, as enums."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from immunostrat.trial.definition import SERIOUSNESS_CRITERIA
from immunostrat.trial.schemas import (
    AdverseEventIn,
    ObservationIn,
    ScreeningIn,
    SignIn,
    UnblindIn,
    UserIn,
    exclusion_criteria,
)

TEXTS = [
    "",
    " ",
    "   \t  ",
    "a",
    " a ",
    "ab",
    "  ab  ",
    "abc",
    "\u00a0abc\u00a0",
    "\u2003\u2003x\u2003",
    "a\tb\nc\rd",
    "abc\x00",
    "\x01abcdefghijkl",
    "abcdefghij\x7f",
    "abc\x0bdefghijkl",
    "\x1fabcdefghijkl",
    "ten chars!",
    "  nine ch  ",
    "   exactly ten   ",
    "p\u00e4tient w\u00f6rds",
    "\u200b" * 12,
]
"""Spaces of several kinds, tabs and newlines (allowed), C0 controls and DEL (refused), lengths at
the bounds before and after stripping."""


def _pattern(model: type[BaseModel], name: str) -> tuple[str, dict[str, Any]]:
    prop = model.model_json_schema()["properties"][name]
    schema = next((b for b in prop.get("anyOf", [prop]) if b.get("type") == "string"), prop)
    return str(schema["pattern"]), schema


def _accepted(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


CASES: list[tuple[type[BaseModel], str, dict[str, Any]]] = [
    (UnblindIn, "reason", {}),
    (AdverseEventIn, "term", {"day": 1, "serious": False}),
    (ObservationIn, "unit", {"concept": "ferritin", "value": 1.0, "time": "2026-01-01T00:00:00Z"}),
    (ScreeningIn, "site", {"age": 50, "sex": "F"}),
    (SignIn, "meaning", {"password": "whatever"}),
    (SignIn, "password", {"meaning": "I approve this visit"}),
]


@pytest.mark.parametrize(("model", "name", "rest"), CASES, ids=[f"{m.__name__}.{n}" for m, n, _ in CASES])
def test_the_documented_pattern_is_the_rule_applied(
    model: type[BaseModel], name: str, rest: dict[str, Any]
) -> None:
    pattern, schema = _pattern(model, name)
    disagreements = []
    for text in TEXTS:
        documented = re.fullmatch(pattern, text) is not None
        documented = documented and len(text) >= int(schema.get("minLength", 0))
        documented = documented and len(text) <= int(schema.get("maxLength", 10**6))
        if documented != _accepted(model, {**rest, name: text}):
            disagreements.append((text, documented))
    assert disagreements == [], f"{model.__name__}.{name}: (text, document allows) {disagreements}"


def test_every_text_of_a_request_model_states_the_control_rule() -> None:
    for model in (UnblindIn, AdverseEventIn, ObservationIn, ScreeningIn, SignIn, UserIn):
        for name, prop in model.model_json_schema()["properties"].items():
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") == "string" and not {"format", "enum", "const"} & set(branch):
                    assert "pattern" in branch, f"{model.__name__}.{name}"


def test_seriousness_and_exclusions_are_enums_of_what_the_service_knows() -> None:
    props = AdverseEventIn.model_json_schema()["properties"]
    assert props["seriousness"]["items"]["enum"] == list(SERIOUSNESS_CRITERIA)
    props = ScreeningIn.model_json_schema()["properties"]
    assert props["exclusions"]["propertyNames"]["enum"] == list(exclusion_criteria())
    assert not _accepted(ScreeningIn, {"site": "S1", "age": 50, "sex": "F", "exclusions": {"nope": True}})


def test_a_new_password_states_the_policys_length() -> None:
    props = UserIn.model_json_schema()["properties"]
    assert props["password"]["minLength"] == 15
    short = {"username": "someone", "password": "fourteen chars", "role": "monitor"}
    assert len(short["password"]) == 14 and not _accepted(UserIn, short)


def test_a_sites_seed_is_stated_as_hex() -> None:
    from immunostrat.api.routes import SiteIn

    pattern = SiteIn.model_json_schema()["properties"]["seed"]["pattern"]
    assert re.fullmatch(pattern, "ab" * 32) and not re.fullmatch(pattern, "zz" * 32)
