"""What a trial file says beyond arms and lists: eligibility, strata, the visit schedule, the case
report forms of each visit and the adverse-event rules (validated with pydantic).

A form field names its concept and unit from the concept dictionary (``immunostrat.concepts``), so
an entered value in any accepted unit is converted into the field's unit and checked against the
field's range (by default the concept's plausible range). Derived fields are never typed: each is
an output of a score of ``immunostrat.scores`` (SOFA from its components, MEX-SLEDAI from its
descriptors) computed from the form's fields. The trial templates in ``templates/`` use all of it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from immunostrat.concepts import load_concepts
from immunostrat.scores import compare

FieldType = Literal["number", "integer", "boolean", "choice", "text", "date"]
Comparison = Literal["<", "<=", ">", ">=", "==", "!="]
ExportTable = Literal["daily_assessments", "outcomes", "participants", "none"]
SCREENING_VISIT = "screening"
"""The visit id under which a screening form is kept (reserved: no scheduled visit may use it)."""
SCORE_NAMES = ("sofa", "mex-sledai", "sledai-2k", "hscore", "qsofa")
SERIOUSNESS_CRITERIA = (
    "death",
    "life_threatening",
    "hospitalisation",
    "disability",
    "congenital_anomaly",
    "important_medical_event",
)
"""ICH E2A (1994) section II.B: the criteria that make an adverse event serious."""

_NAME = r"^[a-z][a-z0-9_]{0,47}$"
_RATIO = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*/\s*([a-z][a-z0-9_]*)\s*$")


def holds(left: Any, op: str, right: Any) -> bool | None:
    """``left op right`` for an edit check or an eligibility criterion; None when either side is
    missing or the two cannot be compared (a text with a number). The ordering comparisons are the
    scores package's (``scores.compare``), so band tables and trial rules read the same way."""
    if left is None or right is None:
        return None
    try:
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        return bool(compare(left, op, right))
    except TypeError:
        return None


class _Def(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


class FieldDef(_Def):
    """One item of a case report form."""

    name: str = Field(pattern=_NAME, description="the field's name, with its unit where it has one")
    label: str = Field(min_length=1, max_length=120)
    type: FieldType = "number"
    concept: str | None = Field(default=None, description="a concept id of the concept dictionary")
    unit: str | None = Field(
        default=None, description="the unit stored (default: the concept's canonical unit)"
    )
    range: tuple[float, float] | None = Field(default=None, description="allowed values in ``unit``")
    required: bool = False
    choices: tuple[str, ...] = ()
    export: str | None = Field(default=None, pattern=_NAME, description="column name in the export")
    help: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldDef:
        if self.type == "choice" and not self.choices:
            raise ValueError(f"field {self.name}: a choice field needs choices")
        if self.type != "choice" and self.choices:
            raise ValueError(f"field {self.name}: choices are for choice fields")
        if self.concept is not None:
            concepts = load_concepts()
            if self.concept not in concepts:
                raise ValueError(
                    f"field {self.name}: unknown concept {self.concept!r}; "
                    + concepts.unknown_expected(self.concept)
                )
            if self.type in ("number", "integer"):
                from immunostrat.concepts import UnitError, conversion_for  # units load with a unit field

                try:
                    conversion_for(self.concept, self.stored_unit)
                except UnitError as exc:
                    raise ValueError(f"field {self.name}: {exc}") from None
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"field {self.name}: range {self.range} is empty")
        return self

    @property
    def stored_unit(self) -> str:
        if self.unit is not None:
            return self.unit
        if self.concept is not None:
            return load_concepts()[self.concept].canonical_unit
        return ""

    @property
    def column(self) -> str:
        return self.export or self.name

    def allowed_range(self) -> tuple[float, float] | None:
        """The field's range, else the concept's plausible range in the stored unit."""
        if self.range is not None:
            return self.range
        if self.concept is None or self.type not in ("number", "integer"):
            return None
        from immunostrat.concepts import conversion_for

        concept = load_concepts()[self.concept]
        conv = conversion_for(self.concept, self.stored_unit)
        if conv.per_weight_kg:
            return None
        low, high = ((v - conv.offset) / conv.scale for v in concept.plausible)
        return (min(low, high), max(low, high))


class DerivedDef(_Def):
    """Score outputs computed from the form's fields by ``immunostrat.scores`` (never typed)."""

    score: str = Field(description="one of " + ", ".join(SCORE_NAMES))
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="score input -> field name, or 'a / b' (a ratio of two fields); inputs not listed "
        "are read from the field of the same name",
    )
    keep: tuple[str, ...] = Field(min_length=1, description="the score's output columns stored")
    rename: dict[str, str] = Field(default_factory=dict, description="output column -> stored name")

    def columns(self) -> list[tuple[str, str]]:
        """(score output, stored name) of each kept output."""
        return [(c, self.rename.get(c, c)) for c in self.keep]

    @field_validator("score")
    @classmethod
    def _known(cls, score: str) -> str:
        if score not in SCORE_NAMES:
            raise ValueError(f"unknown score {score!r}; expected one of {', '.join(SCORE_NAMES)}")
        return score

    def fields_of(self, expression: str) -> tuple[str, ...]:
        match = _RATIO.match(expression)
        return (match.group(1), match.group(2)) if match else (expression.strip(),)


class CheckDef(_Def):
    """An edit check: ``field op value`` (or ``field op other``), applied when both sides are known.
    An ``error`` refuses the form; a ``warning`` saves it and opens a query on the field."""

    name: str = Field(pattern=_NAME)
    field: str
    op: Comparison
    value: float | None = None
    other: str | None = None
    severity: Literal["error", "warning"] = "error"
    message: str = Field(min_length=1, max_length=300)

    @model_validator(mode="after")
    def _one_side(self) -> CheckDef:
        if (self.value is None) == (self.other is None):
            raise ValueError(f"check {self.name}: give exactly one of value or other")
        return self


class FormDef(_Def):
    label: str = Field(min_length=1, max_length=120)
    table: ExportTable = Field(
        default="daily_assessments",
        description="the export table its values go to (one row per participant and study day for "
        "daily_assessments, one per participant for outcomes and participants)",
    )
    fields: tuple[FieldDef, ...] = Field(min_length=1)
    derived: tuple[DerivedDef, ...] = ()
    checks: tuple[CheckDef, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> FormDef:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("field names must be distinct within a form")
        derived_names = {name for d in self.derived for _, name in d.columns()}
        clash = derived_names & set(names)
        if clash:
            raise ValueError(f"derived column {sorted(clash)[0]!r} is also a typed field")
        for d in self.derived:
            for expression in d.inputs.values():
                for name in d.fields_of(expression):
                    if name not in names:
                        raise ValueError(
                            f"derived {d.score}: input field {name!r} is not a field of the form"
                        )
        known = set(names) | derived_names
        for c in self.checks:
            for side in (c.field, c.other):
                if side is not None and side not in known:
                    raise ValueError(f"check {c.name}: {side!r} is not a field of the form")
        return self

    def field(self, name: str) -> FieldDef | None:
        return next((f for f in self.fields if f.name == name), None)


class VisitDef(_Def):
    """A scheduled visit: ``day`` (study day), or ``days`` for a daily series (one visit per day,
    ids made from ``id`` with ``{day}``). The window is in days around the target."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_{}]{0,31}$")
    label: str = Field(min_length=1, max_length=80)
    day: int | None = Field(default=None, ge=-30, le=400)
    days: tuple[int, ...] | None = None
    window_before: int = Field(default=0, ge=0, le=60)
    window_after: int = Field(default=0, ge=0, le=60)
    forms: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _day_or_days(self) -> VisitDef:
        if (self.day is None) == (self.days is None):
            raise ValueError(f"visit {self.id}: give exactly one of day or days")
        if self.days is not None and "{day}" not in self.id:
            raise ValueError(f"visit {self.id}: a daily series needs '{{day}}' in its id")
        return self

    def expand(self) -> list[Visit]:
        days = [self.day] if self.day is not None else list(self.days or ())
        return [
            Visit(
                id=self.id.replace("{day}", str(d)),
                label=self.label.replace("{day}", str(d)),
                day=int(d),
                window_before=self.window_before,
                window_after=self.window_after,
                forms=self.forms,
            )
            for d in days
            if d is not None
        ]


class Visit(_Def):
    """One concrete visit of the schedule."""

    id: str
    label: str
    day: int
    window_before: int
    window_after: int
    forms: tuple[str, ...]


class CriterionDef(_Def):
    """An inclusion criterion on a field of the screening form (``field op value``)."""

    field: str
    op: Comparison
    value: float | str
    text: str = Field(min_length=1, max_length=200)


class EligibilityDef(_Def):
    """Who may be randomized, besides the exclusions and the protocol's strata."""

    min_age: float = Field(default=18, ge=0, le=120)
    max_age: float | None = Field(default=None, ge=0, le=120)
    sexes: tuple[Literal["F", "M", "other"], ...] = ("F", "M", "other")
    sepsis3: bool = False
    criteria: tuple[CriterionDef, ...] = ()


class AdverseEventRules(_Def):
    expedited_report_hours: int = Field(
        default=24,
        ge=1,
        le=24 * 15,
        description="hours from the site's awareness of a serious adverse event to its report to the "
        "sponsor (ICH E6(R2) 4.11.1: immediately, in practice within 24 h)",
    )
    related_to: str = "study drug"
