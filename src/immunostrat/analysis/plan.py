"""Analysis plans as data: a YAML file names the design, populations, endpoints (with their exact
definitions and parameters), tests, adjustment covariates, multiplicity and report contents.

Shipped plans live in ``immunostrat/analysis/plans/<id>.yaml`` (``immunosep-2025``,
``sle-secretome-2025``); :func:`load_plan` takes a shipped id or a path to a plan file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from immunostrat.errors import InputError

EndpointKind = Literal[
    "sofa_response",
    "mortality",
    "survival",
    "infection_status",
    "immune_reversal",
    "repeated",
    "change",
    "win_ratio",
]
TestName = Literal[
    "risk_difference",
    "odds_ratio",
    "fisher",
    "chi_square",
    "logistic_adjusted",
    "cmh",
    "kaplan_meier",
    "logrank",
    "cox",
    "ordinal",
    "mann_whitney",
    "mmrm",
    "ancova",
    "win_ratio",
]

_ALLOWED_TESTS: dict[str, set[str]] = {
    "sofa_response": {"risk_difference", "odds_ratio", "fisher", "chi_square", "logistic_adjusted", "cmh"},
    "mortality": {"risk_difference", "odds_ratio", "fisher", "chi_square", "logistic_adjusted", "cmh"},
    "immune_reversal": {"risk_difference", "odds_ratio", "fisher", "chi_square", "logistic_adjusted", "cmh"},
    "survival": {"kaplan_meier", "logrank", "cox"},
    "infection_status": {"ordinal", "mann_whitney"},
    "repeated": {"mmrm"},
    "change": {"ancova", "mann_whitney", "mmrm"},
    "win_ratio": {"win_ratio"},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Design(_Strict):
    description: str = ""
    treated_arm: str
    control_arm: str
    strata_column: str | None = None
    strata: list[str] = Field(default_factory=list)
    stratum_labels: dict[str, str] = Field(default_factory=dict)


class Population(_Strict):
    flag: str
    description: str = ""


CovarianceName = Literal[
    "unstructured", "toeplitz_heterogeneous", "toeplitz", "ar1_heterogeneous", "ar1", "cs_heterogeneous", "cs"
]


def _default_covariance() -> list[CovarianceName]:
    return ["unstructured", "toeplitz_heterogeneous", "ar1_heterogeneous", "cs"]


class MMRMSpec(_Strict):
    """How an endpoint's mixed model for repeated measures is fitted (``analysis.mmrm``)."""

    covariance: list[CovarianceName] = Field(default_factory=_default_covariance)
    """Tried in order: the first that converges is used (a pre-specified fallback)."""
    df: Literal["kenward-roger", "satterthwaite"] = "kenward-roger"
    treatment_by_stratum: bool = False


class Estimand(_Strict):
    """ICH E9(R1) estimand attributes the plan states for an endpoint: the intercurrent event(s)
    and the strategy for each (composite, while alive, hypothetical, treatment policy)."""

    intercurrent_event: str
    strategy: Literal["composite", "while_alive", "hypothetical", "treatment_policy", "principal_stratum"]
    summary: str = ""


class Endpoint(_Strict):
    id: str
    role: Literal["primary", "secondary", "exploratory", "safety"]
    label: str
    definition: str
    kind: EndpointKind
    params: dict[str, Any] = Field(default_factory=dict)
    missing: str = ""
    tests: list[TestName]
    by_stratum: bool = False
    mmrm: MMRMSpec = Field(default_factory=MMRMSpec)
    estimand: Estimand | None = None
    sensitivity_analyses: list[Literal["mi_mar", "tipping_point"]] = Field(default_factory=list)
    """Missing-data sensitivity analyses (``analysis.sensitivity``) for change and repeated endpoints."""
    favourable: Literal["higher", "lower"] | None = None
    """Which direction of the headline effect favours the treated arm (labels forest plots)."""

    @model_validator(mode="after")
    def _tests_fit_kind(self) -> Endpoint:
        bad = [t for t in self.tests if t not in _ALLOWED_TESTS[self.kind]]
        if bad:
            raise ValueError(f"endpoint {self.id}: tests {bad} do not apply to kind {self.kind}")
        return self


class Multiplicity(_Strict):
    method: Literal["none", "holm", "hierarchical"] = "none"
    family: list[str] = Field(default_factory=list)
    note: str = ""


class Trajectory(_Strict):
    variable: str
    days: list[int]
    label: str
    log: bool = False


class ReportSpec(_Strict):
    table1: list[str] = Field(default_factory=list)
    forest: list[str] = Field(default_factory=list)
    km: str | None = None
    trajectories: list[Trajectory] = Field(default_factory=list)


class AnalysisPlan(_Strict):
    id: str
    version: str
    title: str
    source: str
    design: Design
    populations: dict[str, Population]
    primary_population: str
    sensitivity_populations: list[str] = Field(default_factory=list)
    conf_level: float = 0.95
    alpha: float = 0.05
    adjustment_covariates: list[str] = Field(default_factory=list)
    categorical_covariates: list[str] = Field(default_factory=list)
    endpoints: list[Endpoint]
    multiplicity: Multiplicity = Field(default_factory=Multiplicity)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisPlan:
        ids = [e.id for e in self.endpoints]
        if len(set(ids)) != len(ids):
            raise ValueError("endpoint ids must be unique")
        if sum(e.role == "primary" for e in self.endpoints) != 1:
            raise ValueError("a plan has exactly one primary endpoint")
        for name in [self.primary_population, *self.sensitivity_populations]:
            if name not in self.populations:
                raise ValueError(f"population {name!r} is not defined")
        for name in [
            *self.multiplicity.family,
            *self.report.forest,
            *([self.report.km] if self.report.km else []),
        ]:
            if name not in ids:
                raise ValueError(f"{name!r} is not an endpoint of this plan")
        return self

    @property
    def primary(self) -> Endpoint:
        return next(e for e in self.endpoints if e.role == "primary")

    def endpoint(self, endpoint_id: str) -> Endpoint:
        for e in self.endpoints:
            if e.id == endpoint_id:
                return e
        raise KeyError(endpoint_id)


def shipped_plans() -> list[str]:
    """Ids of the plans shipped in the package."""
    folder = resources.files("immunostrat.analysis").joinpath("plans")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_plan(plan: str | Path | AnalysisPlan) -> AnalysisPlan:
    """A shipped plan by id (e.g. ``"immunosep-2025"``) or a plan YAML file by path."""
    if isinstance(plan, AnalysisPlan):
        return plan
    text: str
    label: str
    if isinstance(plan, str) and plan in shipped_plans():
        text = resources.files("immunostrat.analysis").joinpath("plans", f"{plan}.yaml").read_text()
        label = f"{plan}.yaml"
    else:
        path = Path(plan)
        if not path.is_file():
            raise InputError(
                "unknown analysis plan",
                file=str(plan),
                expected="one of " + ", ".join(shipped_plans()) + " or a YAML path",
            )
        text, label = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(
            f"invalid YAML: {exc}", file=label, row=None if mark is None else mark.line + 1
        ) from exc
    try:
        return AnalysisPlan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InputError(
            f"invalid analysis plan: {err['msg']}", file=label, field=loc or None, value=err.get("input")
        ) from exc
