"""Protocol files as typed models: requirements, ordered rules, therapies, cautions."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from immunostrat.concepts import load_concepts

Comparison = Literal["<", "<=", ">", ">="]


class Condition(BaseModel):
    """``concept OP threshold`` in the concept's canonical unit; optionally met on consecutive samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    concept: str
    op: Comparison
    threshold: float
    unit: str
    consecutive: int = Field(default=1, ge=1)
    apart_hours: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _unit_is_canonical(self) -> Condition:
        concepts = load_concepts()
        if self.concept not in concepts:
            raise ValueError(f"unknown concept {self.concept!r} in protocol rule")
        canonical = concepts[self.concept].canonical_unit
        if self.unit != canonical:
            raise ValueError(
                f"rule on {self.concept} must use its canonical unit {canonical!r}, not {self.unit!r}"
            )
        if self.consecutive > 1 and self.apart_hours is None:
            raise ValueError("consecutive conditions need apart_hours [min, max]")
        return self


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    endotype: str
    description: str
    all: tuple[Condition, ...]


class Requirement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    freshness_hours: float = Field(gt=0)
    verify: str | None = None


class Citation(BaseModel):
    """A published source that users may follow: shown on cards and pages, never an internal file."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    label: str
    url: str
    verify: str | None = None


class RenalAdjustment(BaseModel):
    """Below ``creatinine_clearance_below_ml_min`` the drug is given every ``adjusted_interval_hours``
    (the label's words in ``adjusted_interval_words``): an interval, not a multiple of the usual one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    creatinine_clearance_below_ml_min: float
    adjusted_interval_hours: float = Field(gt=0)
    adjusted_interval_words: str
    source: str
    citation: str | None = None
    warning: str
    verify: str | None = None


class Coding(BaseModel):
    """A code from a published terminology (FHIR Coding), e.g. the drug's ATC code."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    system: str
    code: str
    display: str


class Regimen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    drug: str
    codings: tuple[Coding, ...] = ()
    route_codings: tuple[Coding, ...] = ()
    dose: float | None = None
    dose_unit: str | None = None
    route: str | None = None
    interval_hours: float | None = None
    duration_days: float | None = None
    source: str | None = None
    citations: tuple[str, ...] = ()
    note: str | None = None
    renal_adjustment: RenalAdjustment | None = None


class Protocol(BaseModel):
    """A versioned immune-state protocol, as shipped in ``definitions/<id>.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    version: str
    name: str
    kind: Literal["stratification", "monitoring"]
    source: str
    population: str | None = None
    endotypes: tuple[str, ...]
    requires: dict[str, Requirement]
    rules: tuple[Rule, ...]
    therapies: dict[str, Regimen]
    stop_rules: str | None = None
    cautions: dict[str, str] = Field(default_factory=dict)
    caution_citations: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    citations: dict[str, Citation] = Field(default_factory=dict)
    source_citations: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Protocol:
        if "unknown" not in self.endotypes:
            raise ValueError("every protocol needs the 'unknown' endotype")
        for rule in self.rules:
            if rule.endotype not in self.endotypes:
                raise ValueError(f"rule {rule.id} gives undeclared endotype {rule.endotype!r}")
            for cond in rule.all:
                if cond.concept not in self.requires:
                    raise ValueError(f"rule {rule.id} uses {cond.concept}, which is not in requires")
        missing = [e for e in self.endotypes if e not in self.therapies]
        if missing:
            raise ValueError(f"no therapy entry for endotypes {missing}")
        cited = list(self.source_citations) + [c for cs in self.caution_citations.values() for c in cs]
        for regimen in self.therapies.values():
            cited += list(regimen.citations)
            if regimen.renal_adjustment is not None and regimen.renal_adjustment.citation:
                cited.append(regimen.renal_adjustment.citation)
        unknown = sorted({c for c in cited if c not in self.citations})
        if unknown:
            raise ValueError(f"citations {unknown} are used but not listed under 'citations'")
        return self

    def cited(self, *keys: str) -> list[Citation]:
        """The citations named by ``keys`` (in order, each once)."""
        return [self.citations[k] for k in dict.fromkeys(keys) if k in self.citations]

    @property
    def label(self) -> str:
        return f"{self.id} v{self.version}"


class Reason(BaseModel):
    """One condition of one rule as evaluated: what value, unit and time decided it."""

    rule: str
    concept: str
    comparison: str
    threshold: float
    unit: str
    value: float | None
    time: datetime | None
    outcome: Literal["met", "not met", "missing", "stale"]
    note: str | None = None
    age_hours: float | None = Field(default=None, description="age of the value at the decision time")

    def text(self) -> str:
        shown = "no value" if self.value is None else f"{self.value:g} {self.unit}"
        when = f" at {self.time.isoformat()}" if self.time else ""
        extra = f" ({self.note})" if self.note else ""
        test = f"{self.comparison} {self.threshold:g}"
        return f"{self.rule}: {self.concept} {shown}{when} {test} -> {self.outcome}{extra}"


RenalCheck = Literal["adjusted", "not_needed", "not_computable", "not_applicable"]


class Dose(BaseModel):
    """The dose to give, with the renal facts behind its interval.

    ``renal_check``: ``adjusted`` (clearance below the cut-off: ``interval_hours`` is the adjusted
    interval), ``not_needed`` (clearance at or above it), ``not_computable`` (``renal_missing`` names
    what to measure), ``not_applicable`` (the regimen has no renal rule)."""

    drug: str
    amount: float | None
    unit: str | None
    route: str | None
    interval_hours: float | None
    duration_days: float | None
    renal_adjusted: bool = False
    creatinine_clearance_ml_min: float | None = None
    renal_check: RenalCheck = "not_applicable"
    renal_missing: list[str] = Field(default_factory=list)
    renal_threshold_ml_min: float | None = None
    standard_interval_hours: float | None = None
    text: str


class Classification(BaseModel):
    """The result of one protocol for one patient at one time."""

    patient_id: str
    at: datetime | None
    protocol_id: str
    protocol_version: str
    endotype: str
    fired_rule: str | None
    therapy: str
    dose: Dose | None
    reasons: list[Reason]
    warnings: list[str] = Field(default_factory=list)

    def reasons_text(self) -> str:
        return "; ".join(r.text() for r in self.reasons)


PROTOCOL_FILES = {"immunosep-2025": "immunosep-2025.yaml", "mhla-dr-monitoring": "mhla-dr-monitoring.yaml"}


def parse_protocol(raw: dict[str, Any]) -> Protocol:
    return Protocol.model_validate(raw)


@cache
def load_protocol(protocol_id: str) -> Protocol:
    """A shipped protocol by id (``immunosep-2025``, ``mhla-dr-monitoring``), or a path to a YAML file."""
    if protocol_id in PROTOCOL_FILES:
        path = resources.files("immunostrat.protocols").joinpath("definitions", PROTOCOL_FILES[protocol_id])
        text = path.read_text(encoding="utf-8")
    else:
        candidate = Path(protocol_id)
        if candidate.suffix.lower() not in {".yaml", ".yml"} or not candidate.exists():
            raise KeyError(f"unknown protocol {protocol_id!r}; shipped: {', '.join(PROTOCOL_FILES)}")
        text = candidate.read_text(encoding="utf-8")
    return parse_protocol(yaml.safe_load(text))


def list_protocols() -> list[Protocol]:
    return [load_protocol(p) for p in PROTOCOL_FILES]
