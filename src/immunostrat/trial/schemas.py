"""Validated inputs of the trial domain (pydantic): shared by the CLI, the API and the tests."""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.trial.definition import (
    SCREENING_VISIT,
    SERIOUSNESS_CRITERIA,
    AdverseEventRules,
    EligibilityDef,
    FormDef,
    Visit,
    VisitDef,
)
from immunostrat.trial.passwords import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, password_problem

TRIAL_ROLES: tuple[str, ...] = ("investigator", "pharmacist", "monitor", "statistician", "admin")
"""Roles that work in a trial: the only ones that may read or write trial data."""
CARE_ROLES: tuple[str, ...] = ("clinician", "researcher", "modeller")
"""Roles outside any trial: the bedside decision (classify, score, CDS Hooks), cohorts, in-silico
trials. They see no trial, so no arm can reach them."""
ROLES: tuple[str, ...] = TRIAL_ROLES + CARE_ROLES
UNBLINDED_ROLES: frozenset[str] = frozenset({"pharmacist"})
"""Roles that see arms. Everyone else sees kit numbers only (emergency unblinding aside)."""

ENDOTYPES: tuple[str, ...] = ("mals", "immunoparalysis", "intermediate", "unknown")
INFECTION_STATUS: tuple[str, ...] = ("resolution", "intermediate", "failure", "superinfection")

Role = Literal[
    "investigator", "pharmacist", "monitor", "statistician", "admin", "clinician", "researcher", "modeller"
]
Sex = Literal["F", "M", "other"]
Factor = Literal["site", "endotype", "sex", "age_band"]


MAX_ID = 2**31 - 1
"""Largest row id (the id columns are 32-bit INTEGER on PostgreSQL): larger ids in paths, queries
and bodies are refused by the schema instead of overflowing the database driver."""

MAX_OBSERVATIONS = 1000
"""Observations in one screening or daily assessment: a day of every lab and vital sign of an ICU
patient is a few hundred; 600,000 in one screening held the database for a minute."""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""C0 control characters but tab, line feed and carriage return: never typed, invisible when shown,
and NUL is refused by PostgreSQL (it was a server error there and stored as is on SQLite)."""


_C0 = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
NO_CONTROL_PATTERN = f"^[^{_C0}]*$"
""":data:`_CONTROL` as the OpenAPI document states it (a ``pattern`` on every text of the request
models), so that a request the document allows is not refused by a rule it does not show."""


def text_pattern(min_chars: int) -> str:
    """The ``pattern`` of a text field that is stripped of surrounding white space and then needs
    ``min_chars`` characters, with no control character anywhere: what :class:`_Model` applies,
    stated in JSON Schema (``minLength`` alone counts the spaces that stripping removes)."""
    if min_chars <= 0:
        return NO_CONTROL_PATTERN
    text, seen, space = f"[^{_C0}]", f"[^\\s{_C0}]", f"[^\\S{_C0}]"
    if min_chars == 1:
        return f"^{text}*{seen}{text}*$"
    return f"^{space}*{seen}{text}{{{min_chars - 2},}}{seen}{space}*$"


def _state_text_rules(schema: dict[str, Any]) -> None:
    """Add the control-character and stripped-length rules to the text in one property's schema
    (other models are references and state their own)."""
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, ()):
            _state_text_rules(branch)
    kind = schema.get("type")
    if kind == "string" and not {"pattern", "format", "enum", "const"} & set(schema):
        schema["pattern"] = text_pattern(int(schema.get("minLength", 0)))
    elif kind == "array" and isinstance(schema.get("items"), dict):
        _state_text_rules(schema["items"])
    elif kind == "object":
        schema.setdefault("propertyNames", {}).setdefault("pattern", NO_CONTROL_PATTERN)
        if isinstance(schema.get("additionalProperties"), dict):
            _state_text_rules(schema["additionalProperties"])


def _document_text_rules(schema: dict[str, Any], model: type) -> None:
    for prop in (schema.get("properties") or {}).values():
        _state_text_rules(prop)


def check_no_control(value: Any) -> Any:
    """``value`` unchanged when no string in it (keys included) holds a control character."""
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise ValueError("control characters (such as NUL) are not allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_no_control(k)
            check_no_control(v)
    elif isinstance(value, list | tuple):
        for v in value:
            check_no_control(v)
    return value


def _iso_text(value: Any) -> Any:
    """A date or time is ISO 8601 text (as the schema says) or already a date: pydantic's lax mode
    would take a number for seconds since 1970 and a boolean for a number."""
    if isinstance(value, str | date):
        return value
    raise ValueError(f"expected an ISO 8601 date or date-time as text, got {type(value).__name__} {value!r}")


Timestamp = Annotated[datetime, Field(strict=False), BeforeValidator(_iso_text)]
"""A date-time given as ISO 8601 text (JSON has no date type)."""
Day = Annotated[date, Field(strict=False), BeforeValidator(_iso_text)]
"""A date given as ISO 8601 text."""


class _Model(BaseModel):
    """Strict (no ``"1"`` for 1 or true, no 1 for true, no number for a date): a value the schema
    forbids is refused, not converted; dates and times come as ISO text (``Timestamp``, ``Day``)."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        strict=True,
        json_schema_extra=_document_text_rules,  # the two rules below, stated in the document
    )

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        return check_no_control(value)


Password = Annotated[
    str,
    StringConstraints(strip_whitespace=False, max_length=MAX_PASSWORD_CHARS),
    Field(json_schema_extra={"pattern": NO_CONTROL_PATTERN}),  # not stripped: no length pattern
]
"""Taken as typed (surrounding spaces too): sign-in does not strip either (see ``passwords``)."""


class SiteSpec(_Model):
    code: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=200)


class TrialSpec(_Model):
    """A trial as data (a versioned YAML file; ``templates/`` ships three). Everything is fixed at
    set-up: arms and ratios per stratum (blocks vary among ``block_multipliers`` x the ratio's sum),
    where the strata come from (a protocol's endotypes, a choice field of the screening form, or
    none), eligibility, the visit schedule and its forms, and the analysis plan of the export."""

    schema_version: Literal[1] = 1
    code: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(default="1", min_length=1, max_length=32)
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    protocol_id: str | None = "immunosep-2025"
    protocol_version: str | None = None
    arms: list[str] = Field(default_factory=lambda: ["immunotherapy", "placebo"], min_length=2)
    control_arm: str = "placebo"
    method: Literal["block", "minimization"] = "block"
    strata_from: Literal["protocol", "field", "none"] = Field(
        default="protocol",
        description="protocol: the endotype the protocol classifies; field: a choice field of the "
        "screening form (strata_field); none: one stratum per site",
    )
    strata_field: str | None = None
    randomized_endotypes: list[str] = Field(
        default_factory=lambda: ["mals", "immunoparalysis"],
        min_length=1,
        description="the strata randomized: endotypes, choices of strata_field, or ['all']",
    )
    ratios: dict[str, dict[str, int]] = Field(default_factory=dict)
    block_multipliers: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    slots_per_stratum: int = Field(default=120, ge=1, le=100_000)
    minimization_factors: list[Factor] = Field(default_factory=lambda: list[Factor](["site", "endotype"]))
    p_best: float = Field(default=0.8, ge=0.5, le=1.0)
    kits_per_arm: int = Field(default=500, ge=1, le=1_000_000)
    sites: list[SiteSpec] = Field(default_factory=list)
    require_sepsis3: bool = Field(
        default=False,
        description="screening also requires Sepsis-3 (domain.md A1, B2): infection_suspected and a "
        "SOFA, scored from the screening observations, >= 2 points above pre_infection_sofa",
    )
    eligibility: EligibilityDef = Field(default_factory=EligibilityDef)
    screening_form: str | None = Field(default=None, description="the form filled at screening")
    day_of_randomization: int = Field(
        default=1, ge=0, le=1, description="the study day of the randomization date (ImmunoSep 1, SLE 0)"
    )
    visits: list[VisitDef] = Field(default_factory=list)
    forms: dict[str, FormDef] = Field(default_factory=dict)
    adverse_events: AdverseEventRules = Field(default_factory=AdverseEventRules)
    analysis_plan: str | None = Field(default=None, description="the analysis plan the export feeds")
    signature_meaning: str = Field(
        default="I have reviewed the data of this visit and confirm they are accurate and complete",
        min_length=10,
        max_length=300,
        description="the meaning of an investigator's signature (21 CFR 11.50(a)(3))",
    )

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, arms: list[str]) -> list[str]:
        if len(set(arms)) != len(arms) or any(not a for a in arms):
            raise ValueError("arms must be distinct non-empty names")
        return arms

    @field_validator("block_multipliers")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("block multipliers must be >= 1")
        return values

    @model_validator(mode="before")
    @classmethod
    def _default_strata(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("strata_from") == "none"
            and "randomized_endotypes" not in data
        ):
            data = {**data, "randomized_endotypes": ["all"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrialSpec:
        if self.control_arm not in self.arms:
            raise ValueError(f"control_arm {self.control_arm!r} is not one of the arms")
        self._check_strata()
        for endotype, ratio in self.ratios.items():
            if endotype not in self.randomized_endotypes:
                raise ValueError(f"ratios: {endotype!r} is not a randomized stratum")
            if set(ratio) != set(self.arms) or any(w < 1 for w in ratio.values()):
                raise ValueError(
                    f"ratios[{endotype!r}] needs a weight >= 1 for each arm: {', '.join(self.arms)}"
                )
        codes = [s.code for s in self.sites]
        if len(set(codes)) != len(codes):
            raise ValueError("site codes must be distinct")
        self._check_schedule()
        return self

    def _check_strata(self) -> None:
        if self.strata_from == "protocol":
            if self.protocol_id is None:
                raise ValueError("strata_from protocol needs a protocol_id")
            for v in self.randomized_endotypes:
                if v not in ENDOTYPES:
                    raise ValueError(f"unknown endotype {v!r}; expected one of {', '.join(ENDOTYPES)}")
        elif self.strata_from == "field":
            form = self.forms.get(self.screening_form or "")
            field = form.field(self.strata_field or "") if form is not None else None
            if field is None or field.type != "choice":
                raise ValueError("strata_field must name a choice field of the screening form")
            unknown = [v for v in self.randomized_endotypes if v not in field.choices]
            if unknown:
                raise ValueError(f"randomized stratum {unknown[0]!r} is not a choice of {field.name}")
        elif self.randomized_endotypes != ["all"]:
            raise ValueError("strata_from none randomizes one stratum: randomized_endotypes: [all]")
        if (
            self.method == "minimization"
            and self.strata_from == "none"
            and "endotype" in self.minimization_factors
        ):
            raise ValueError("minimization on endotype needs strata")

    def _check_schedule(self) -> None:
        if self.screening_form is not None and self.screening_form not in self.forms:
            raise ValueError(f"screening_form {self.screening_form!r} is not a form of the trial")
        form = self.forms.get(self.screening_form or "")
        for criterion in self.eligibility.criteria:
            if form is None or (
                form.field(criterion.field) is None
                and all(criterion.field not in dict(d.columns()).values() for d in form.derived)
            ):
                raise ValueError(
                    f"eligibility criterion on {criterion.field!r}: not a field of the screening form"
                )
        seen: set[str] = set()
        for visit in self.schedule():
            if visit.id in seen or visit.id == SCREENING_VISIT:
                raise ValueError(f"visit id {visit.id!r} is used twice (or is the reserved 'screening')")
            seen.add(visit.id)
            for f in visit.forms:
                if f not in self.forms:
                    raise ValueError(f"visit {visit.id}: form {f!r} is not defined under forms")

    def ratio_for(self, endotype: str) -> dict[str, int]:
        return dict(self.ratios.get(endotype) or dict.fromkeys(self.arms, 1))

    def schedule(self) -> list[Visit]:
        """The concrete visits in the order of their study day."""
        visits = [v for d in self.visits for v in d.expand()]
        return sorted(visits, key=lambda v: v.day)

    def visit(self, visit_id: str) -> Visit | None:
        return next((v for v in self.schedule() if v.id == visit_id), None)

    @property
    def sepsis3_required(self) -> bool:
        return self.require_sepsis3 or self.eligibility.sepsis3


@cache
def exclusion_criteria() -> dict[str, str]:
    """Exclusion names a screening may record -> what each means (``exclusions.yaml``)."""
    text = resources.files("immunostrat.trial").joinpath("exclusions.yaml").read_text(encoding="utf-8")
    return {str(k): str(v) for k, v in yaml.safe_load(text)["criteria"].items()}


class ObservationIn(_Model):
    """One measurement in the long format (value in the unit as entered)."""

    concept: str = Field(min_length=1, max_length=64)
    value: float
    unit: str = Field(default="", max_length=32)
    time: Timestamp


class ScreeningIn(_Model):
    site: str = Field(min_length=1, max_length=32)
    # anyone screened is logged, a minor too (CONSORT counts them): the trial's eligibility decides
    age: float = Field(ge=0, le=120)
    sex: Sex
    weight_kg: float | None = Field(default=None, ge=20, le=400)
    infection_site: str | None = Field(default=None, max_length=32)
    baseline_sofa: int | None = Field(default=None, ge=0, le=24)
    septic_shock: bool | None = None
    # Sepsis-3 at the bedside (domain.md B2): the coordinator's judgement of suspected or documented
    # infection, and the SOFA before it (admission SOFA for an infection acquired in hospital, or
    # known chronic dysfunction; domain.md A1). Not ``baseline_sofa``: that is the total SOFA at
    # randomization which the analysis uses as day-1 fallback, and a rise is measured against the
    # state before the infection. Absent: 0, "no known pre-existing dysfunction".
    infection_suspected: bool | None = None
    pre_infection_sofa: int | None = Field(default=None, ge=0, le=24)
    exclusions: dict[str, bool] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"enum": list(exclusion_criteria())}}
    )
    observations: list[ObservationIn] = Field(default_factory=list, max_length=MAX_OBSERVATIONS)
    pseudonym: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    form: dict[str, Any] = Field(
        default_factory=dict, description="values of the trial's screening form (field -> value)"
    )

    @field_validator("exclusions")
    @classmethod
    def _known_exclusions(cls, exclusions: dict[str, bool]) -> dict[str, bool]:
        known = exclusion_criteria()
        unknown = sorted(name for name in exclusions if name not in known)
        if unknown:
            raise ValueError(f"unknown exclusion {unknown[0]!r}; expected one of {', '.join(known)}")
        return exclusions


class AssessmentIn(_Model):
    day: int = Field(ge=-1, le=400)
    sofa_respiration: int | None = Field(default=None, ge=0, le=4)
    sofa_coagulation: int | None = Field(default=None, ge=0, le=4)
    sofa_liver: int | None = Field(default=None, ge=0, le=4)
    sofa_cardiovascular: int | None = Field(default=None, ge=0, le=4)
    sofa_cns: int | None = Field(default=None, ge=0, le=4)
    sofa_renal: int | None = Field(default=None, ge=0, le=4)
    sofa_total: int | None = Field(default=None, ge=0, le=24)
    observations: list[ObservationIn] = Field(default_factory=list, max_length=MAX_OBSERVATIONS)
    infection_status: Literal["resolution", "intermediate", "failure", "superinfection"] | None = None
    doses_given: int | None = Field(default=None, ge=0, le=100)
    reason: str | None = Field(
        default=None, min_length=3, max_length=500, description="why a saved day changes"
    )


_PLAUSIBLE = {c: load_concepts()[c].plausible for c in ("ferritin", "mhla_dr")}
"""The concept dictionary's plausible ranges (canonical units ng/mL and AB/C, the fields' units): a
day-15 value outside them is refused, as on every other entry path (a value of 1e308 was stored and
later crashed the Stata export)."""


class OutcomeIn(_Model):
    death_day: int | None = Field(default=None, ge=1, le=400)
    last_contact_day: int = Field(ge=1, le=400)
    discharge_day: int | None = Field(default=None, ge=1, le=400)
    infection_status_day15: Literal["resolution", "intermediate", "failure", "superinfection"] | None = None
    ferritin_day15_ng_ml: float | None = Field(
        default=None, ge=_PLAUSIBLE["ferritin"][0], le=_PLAUSIBLE["ferritin"][1]
    )
    hla_dr_day15_abc: float | None = Field(
        default=None, ge=_PLAUSIBLE["mhla_dr"][0], le=_PLAUSIBLE["mhla_dr"][1]
    )

    @model_validator(mode="after")
    def _death_before_last_contact(self) -> OutcomeIn:
        if self.death_day is not None and self.last_contact_day < self.death_day:
            raise ValueError("last_contact_day must be >= death_day")
        return self


class AdverseEventIn(_Model):
    """An adverse event: a term (free text, with a MedDRA code when coded), the CTCAE grade
    (v5.0: 1 mild to 5 death), seriousness with its ICH E2A criteria, relatedness and when the
    site became aware (the expedited-report clock of a serious event starts there)."""

    day: int = Field(ge=-1, le=400)
    term: str = Field(min_length=1, max_length=200)
    meddra_code: str | None = Field(default=None, pattern=r"^[0-9]{8}$", description="MedDRA LLT or PT code")
    ctcae_grade: int | None = Field(default=None, ge=1, le=5)
    severity: int | None = Field(default=None, ge=1, le=5, description="older name of ctcae_grade")
    serious: bool
    seriousness: list[str] = Field(
        default_factory=list,
        json_schema_extra={"items": {"type": "string", "enum": list(SERIOUSNESS_CRITERIA)}},
    )
    related: bool | None = None
    outcome: str | None = Field(default=None, max_length=64)
    aware_at: Timestamp | None = Field(default=None, description="when the site learnt of it (default: now)")

    @model_validator(mode="after")
    def _grade_and_seriousness(self) -> AdverseEventIn:
        if self.severity is not None and self.ctcae_grade is not None and self.severity != self.ctcae_grade:
            raise ValueError("severity and ctcae_grade differ: give ctcae_grade only")
        if self.ctcae_grade is None and self.severity is not None:
            self.ctcae_grade = self.severity
        unknown = [c for c in self.seriousness if c not in SERIOUSNESS_CRITERIA]
        if unknown:
            raise ValueError(
                f"unknown seriousness criterion {unknown[0]!r}; expected {', '.join(SERIOUSNESS_CRITERIA)}"
            )
        if self.serious and not self.seriousness:
            raise ValueError("a serious event names its seriousness criteria (ICH E2A)")
        if not self.serious and self.seriousness:
            raise ValueError("seriousness criteria are for serious events")
        if self.ctcae_grade == 5 and "death" not in self.seriousness:
            raise ValueError("CTCAE grade 5 is death: serious, with seriousness 'death'")
        return self


class AdverseEventReportIn(_Model):
    reported_at: Timestamp
    reference: str | None = Field(default=None, max_length=100, description="the sponsor's case number")


class FormIn(_Model):
    """One form of one visit: values by field (a number in the field's unit, or
    ``{"value": v, "unit": u}`` in any unit of the field's concept), fields not done with a reason,
    the visit date, and the reason for a change when the form was saved before."""

    visit_date: Day
    values: dict[str, Any] = Field(default_factory=dict)
    not_done: dict[str, str] = Field(default_factory=dict)
    reason: str | None = Field(default=None, min_length=3, max_length=500)


class QueryIn(_Model):
    visit: str = Field(min_length=1, max_length=32)
    form: str = Field(min_length=1, max_length=64)
    field: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=3, max_length=2000)


class QueryReply(_Model):
    text: str = Field(min_length=3, max_length=2000)


class SignIn(_Model):
    """An investigator's electronic signature of a visit: the password again (21 CFR 11.200(a)(1))
    and the meaning, which must be the trial's signature meaning."""

    password: Password
    meaning: str = Field(min_length=10, max_length=300)


class RescreenIn(_Model):
    """A new eligibility decision for a participant already screened (same pseudonym)."""

    observations: list[ObservationIn] = Field(default_factory=list, max_length=MAX_OBSERVATIONS)
    infection_suspected: bool | None = None
    pre_infection_sofa: int | None = Field(default=None, ge=0, le=24)
    exclusions: dict[str, bool] = Field(default_factory=dict)
    form: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(min_length=3, max_length=500, description="why the patient is screened again")


NEW_PASSWORD_SCHEMA: JsonDict = {"minLength": MIN_PASSWORD_CHARS}
"""The policy's length stated in the document (its other rules, NFKC and strength, are checked by
``password_problem``: a documented 422)."""


class UserIn(_Model):
    username: str = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: Password = Field(json_schema_extra=NEW_PASSWORD_SCHEMA)
    role: Role
    site: str | None = Field(default=None, max_length=32)
    trial_id: int | None = Field(default=None, ge=1, le=MAX_ID)

    @field_validator("password")
    @classmethod
    def _policy(cls, password: str, info: ValidationInfo) -> str:
        problem = password_problem(password, info.data.get("username"))
        if problem:
            raise ValueError(problem)
        return password


class UserUpdate(_Model):
    """What an admin may change about a user; absent fields stay as they are."""

    active: bool | None = None
    role: Role | None = None
    password: Password | None = Field(
        default=None,
        json_schema_extra={
            "anyOf": [
                {
                    "type": "string",
                    "maxLength": MAX_PASSWORD_CHARS,
                    "pattern": NO_CONTROL_PATTERN,
                    **NEW_PASSWORD_SCHEMA,
                },
                {"type": "null"},
            ]
        },
    )

    @field_validator("password")
    @classmethod
    def _policy(cls, password: str | None) -> str | None:
        problem = password_problem(password) if password is not None else None
        if problem:
            raise ValueError(problem)
        return password


class UnblindIn(_Model):
    reason: str = Field(min_length=10, max_length=2000)


class WithdrawIn(_Model):
    reason: str = Field(min_length=3, max_length=2000)
    data_removed: bool = False


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: object) -> M:
    """Validate ``data`` into ``model``; the first problem becomes an InputError naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or None
        raise InputError(str(first.get("msg", "invalid")), field=loc, value=first.get("input")) from None
