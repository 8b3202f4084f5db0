"""Screening: observations into canonical units (``immunostrat.concepts``) and the eligibility
decision from the pinned protocol (``immunostrat.protocols``). The protocol engine is called in
exactly one place, :func:`classify`; SOFA for the optional Sepsis-3 criterion comes from
``immunostrat.scores`` in :func:`sepsis3_check`. Thresholds are never restated here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from immunostrat.errors import InputError
from immunostrat.protocols import PROTOCOL_FILES, Protocol, load_protocol
from immunostrat.protocols.engine import classify_samples
from immunostrat.scores import SOFA_COMPONENTS, load_definition, score_windows, windows_at
from immunostrat.scores.sofa import sofa_component_max


@dataclass(frozen=True)
class CanonicalObservation:
    concept: str
    value_entered: float
    unit_entered: str
    value: float
    unit: str
    time: datetime


@dataclass(frozen=True)
class Classification:
    """What the protocol engine says about one patient."""

    protocol_id: str
    protocol_version: str
    endotype: str
    therapy: str
    dose: str | None
    reasons: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    at: datetime | None = None
    dose_detail: dict[str, Any] | None = None  # the Dose as data: amount, interval, renal facts


@dataclass(frozen=True)
class Sepsis3Check:
    """The Sepsis-3 criterion at screening (domain.md B2) and everything that decided it.

    ``status``: ``met``, ``not met`` or ``not assessable`` (data missing, never guessed). SOFA is the
    worst value per organ system in the scores package's window ending at ``at`` (the latest
    observation); ``components`` holds None for a missing organ system, so ``sofa_total`` (the
    recorded systems only) is a lower bound and ``sofa_max_possible`` the most the missing ones
    could make it.
    """

    status: str
    text: str
    infection_suspected: bool | None
    sofa_met: bool | None
    sofa_total: int | None
    sofa_max_possible: int
    components: dict[str, int | None]
    missing_components: list[str]
    pre_infection_sofa: int
    pre_infection_sofa_entered: bool
    rise_required: int
    at: datetime | None
    window_hours: float
    sofa_variant: str

    @property
    def met(self) -> bool:
        return self.status == "met"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (stored in the decision's reasons and the audit trail, returned by the API)."""
        return {
            "status": self.status,
            "met": self.met,
            "text": self.text,
            "infection_suspected": self.infection_suspected,
            "sofa_met": self.sofa_met,
            "sofa_total": self.sofa_total,
            "sofa_max_possible": self.sofa_max_possible,
            "sofa_components": {f"sofa_{c}": v for c, v in self.components.items()},
            "sofa_missing_components": [f"sofa_{c}" for c in self.missing_components],
            "pre_infection_sofa": self.pre_infection_sofa,
            "pre_infection_sofa_entered": self.pre_infection_sofa_entered,
            "sofa_rise": None if self.sofa_total is None else self.sofa_total - self.pre_infection_sofa,
            "sofa_rise_required": self.rise_required,
            "at": self.at.isoformat() if self.at is not None else None,
            "window_hours": self.window_hours,
            "sofa_variant": self.sofa_variant,
        }


@dataclass(frozen=True)
class EligibilityResult:
    classification: Classification
    eligible: bool
    exclusion_reason: str | None
    sepsis3: Sepsis3Check | None = None


def canonical_observations(
    patient_id: str,
    observations: Sequence[Mapping[str, Any]],
    weight_kg: float | None = None,
    *,
    source: str = "observations",
) -> list[CanonicalObservation]:
    """Validate and convert entered observations; an error names ``observations[i].field``."""
    from immunostrat.concepts import observations_from_records

    if not observations:
        return []
    records = [
        {
            "patient_id": patient_id,
            "time": _iso(o["time"]),
            "concept": o["concept"],
            "value": o["value"],
            "unit": o.get("unit") or "",
        }
        for o in observations
    ]
    patients = [{"patient_id": patient_id, "weight_kg": weight_kg}] if weight_kg is not None else None
    try:
        result = observations_from_records(records, patients, source=source)
    except InputError as exc:
        row = exc.row
        where = f"{source}[{row - 1}].{exc.field}" if row is not None and exc.field else exc.field
        raise InputError(exc.message, field=where, value=exc.value, expected=exc.expected) from None
    frame = result.observations.sort("source_row")
    out: list[CanonicalObservation] = []
    for rec in frame.iter_rows(named=True):
        entered = observations[int(rec["source_row"]) - 1]
        out.append(
            CanonicalObservation(
                concept=rec["concept"],
                value_entered=float(entered["value"]),
                unit_entered=str(entered.get("unit") or ""),
                value=float(rec["value"]),
                unit=str(rec["unit"]),
                time=rec["time"],
            )
        )
    return out


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def observation_frame(patient_id: str, observations: Sequence[CanonicalObservation]) -> pl.DataFrame:
    """Canonical observations as the long table every engine reads."""
    from immunostrat.concepts import CANONICAL_SCHEMA

    rows = [
        {
            "patient_id": patient_id,
            "time": o.time,
            "concept": o.concept,
            "value": o.value,
            "unit": o.unit,
            "source": "trial",
            "source_row": i + 1,
        }
        for i, o in enumerate(observations)
    ]
    return pl.DataFrame(rows, schema=CANONICAL_SCHEMA)


def classify(
    protocol_id: str,
    patient: Mapping[str, Any],
    observations: Sequence[CanonicalObservation],
    at: datetime | None = None,
) -> Classification:
    """The single call into the protocol engine (``classify_samples``, what ``classify_patient`` runs
    on a frame: a handful of observations needs no frame)."""
    protocol = load(protocol_id)
    pid = str(patient.get("patient_id") or "patient")
    # the samples as the canonical frame holds them: UTC times (naive ones taken as UTC), float values
    samples = [
        (
            o.concept,
            o.time.replace(tzinfo=UTC) if o.time.tzinfo is None else o.time.astimezone(UTC),
            float(o.value),
        )
        for o in observations
    ]
    result = classify_samples(protocol, samples, patient, patient_id=pid, at=at)
    return Classification(
        protocol_id=result.protocol_id,
        protocol_version=result.protocol_version,
        endotype=result.endotype,
        therapy=result.therapy,
        dose=result.dose.text if result.dose is not None else None,
        reasons=[{**r.model_dump(mode="json"), "text": r.text()} for r in result.reasons],
        warnings=list(result.warnings),
        at=result.at,
        dose_detail=result.dose.model_dump(mode="json") if result.dose is not None else None,
    )


def load(protocol_id: str) -> Protocol:
    """A shipped protocol by id; an unknown id is an input error naming ``protocol_id``."""
    try:
        return load_protocol(protocol_id)
    except (KeyError, ValueError) as exc:
        raise InputError(
            "unknown protocol", field="protocol_id", value=protocol_id, expected=", ".join(PROTOCOL_FILES)
        ) from exc


def sepsis3_check(
    patient_id: str,
    observations: Sequence[CanonicalObservation],
    infection_suspected: bool | None,
    pre_infection_sofa: int | None = None,
) -> Sepsis3Check:
    """Sepsis-3 at screening: suspected infection (the coordinator's judgement) and total SOFA at
    least ``sofa_rise`` points above the pre-infection SOFA (default ``baseline_sofa`` of
    ``sepsis3.yaml``: no known pre-existing dysfunction), domain.md A1 and B2.

    SOFA is scored by ``immunostrat.scores`` exactly as the bedside ``score`` does: worst values in
    the ``window_hours`` of ``sofa-1996.yaml`` up to the latest observation. A missing organ system
    is not counted as 0 here: the rise is met when the recorded systems already reach it, not met
    when even the worst the missing ones could score would not, and otherwise not assessable.
    """
    sofa_spec = load_definition("sofa")
    sepsis_spec = load_definition("sepsis3")
    rise = int(sepsis_spec["sofa_rise"])
    baseline = int(sepsis_spec["baseline_sofa"]) if pre_infection_sofa is None else pre_infection_sofa
    hours = float(sofa_spec["window_hours"])
    at = max((o.time for o in observations), default=None)
    row: dict[str, Any] | None = None
    if observations:
        frame = observation_frame(patient_id, observations)
        scored = score_windows(frame, windows_at(frame, None, hours), "sofa")
        row = scored.row(0, named=True) if scored.height else None
    if row is None:
        missing = list(SOFA_COMPONENTS)
    else:
        named = {c for c in str(row["sofa_missing_components"] or "").split(",") if c}
        missing = [c for c in SOFA_COMPONENTS if c in named]
    components: dict[str, int | None] = {
        c: None if c in missing or row is None else int(row[f"sofa_{c}"]) for c in SOFA_COMPONENTS
    }
    recorded = [v for v in components.values() if v is not None]
    total = sum(recorded) if recorded else None
    most = sofa_component_max()
    lower = total or 0
    upper = lower + sum(most[c] for c in missing)
    sofa_met: bool | None
    if lower - baseline >= rise:
        sofa_met = True
    elif upper - baseline < rise:
        sofa_met = False
    else:
        sofa_met = None

    names = ", ".join(f"sofa_{c}" for c in missing)
    required = f"a rise >= {rise} over the pre-infection SOFA {baseline}"
    recorded_text = (
        f"SOFA {lower} from the recorded organ systems" if recorded else "no SOFA component recorded"
    )
    if sofa_met and missing:
        sofa_text = f"SOFA >= {lower} from the recorded organ systems: {required} even with {names} missing"
    elif sofa_met:
        sofa_text = f"SOFA {lower}: {required}"
    elif sofa_met is False and missing:
        sofa_text = f"SOFA at most {upper} even if {names} scored the maximum: {required} is impossible"
    elif sofa_met is False:
        gained = lower - baseline
        sofa_text = (
            f"SOFA {lower}: a rise of {gained} over the pre-infection SOFA {baseline}, {rise} required"
        )
    else:
        sofa_text = f"missing {names}: {recorded_text}, up to {upper} with them; {required} cannot be decided"
    if infection_suspected is None:
        infection_text = "infection_suspected not given (suspected or documented infection required)"
    elif infection_suspected:
        infection_text = "suspected infection"
    else:
        infection_text = "infection not suspected (infection_suspected = false)"

    if infection_suspected is False or sofa_met is False:
        status = "not met"
    elif infection_suspected is None or sofa_met is None:
        status = "not assessable"
    else:
        status = "met"
    if status == "met":
        text = f"Sepsis-3 met: {infection_text}; {sofa_text}"
    else:
        # the parts that fail or are undecided first: they are why the patient is not eligible
        failing = [infection_text] if infection_suspected is not True else []
        failing += [sofa_text] if sofa_met is not True else []
        passing = [infection_text] if infection_suspected is True else []
        passing += [sofa_text] if sofa_met is True else []
        text = f"Sepsis-3 {status}: " + "; ".join(failing + passing)
    return Sepsis3Check(
        status=status,
        text=text,
        infection_suspected=infection_suspected,
        sofa_met=sofa_met,
        sofa_total=total,
        sofa_max_possible=upper,
        components=components,
        missing_components=missing,
        pre_infection_sofa=baseline,
        pre_infection_sofa_entered=pre_infection_sofa is not None,
        rise_required=rise,
        at=at,
        window_hours=hours,
        sofa_variant=str(row["sofa_variant"]) if row is not None else str(sofa_spec["id"]),
    )


def decide(
    protocol_id: str,
    patient: Mapping[str, Any],
    observations: Sequence[CanonicalObservation],
    exclusions: Mapping[str, bool],
    randomized_endotypes: Sequence[str],
    *,
    require_sepsis3: bool = False,
    infection_suspected: bool | None = None,
    pre_infection_sofa: int | None = None,
) -> EligibilityResult:
    """Eligible = no exclusion criterion present, Sepsis-3 when the trial requires it, and an
    endotype the trial randomizes. The first criterion that fails is the exclusion reason."""
    result = classify(protocol_id, patient, observations)
    check = None
    if require_sepsis3:
        pid = str(patient.get("patient_id") or "patient")
        check = sepsis3_check(pid, observations, infection_suspected, pre_infection_sofa)
    present = sorted(name for name, flag in exclusions.items() if flag)
    if present:
        return EligibilityResult(result, False, "exclusion criterion: " + ", ".join(present), check)
    if check is not None and not check.met:
        return EligibilityResult(result, False, check.text, check)
    if result.endotype not in randomized_endotypes:
        reason = f"endotype {result.endotype}: not a randomized stratum"
        return EligibilityResult(result, False, reason, check)
    return EligibilityResult(result, True, None, check)


def decide_without_protocol(
    patient: Mapping[str, Any],
    observations: Sequence[CanonicalObservation],
    exclusions: Mapping[str, bool],
    *,
    require_sepsis3: bool = False,
    infection_suspected: bool | None = None,
    pre_infection_sofa: int | None = None,
) -> EligibilityResult:
    """Eligibility of a trial without a stratifying protocol (one stratum, ``all``): no exclusion
    criterion present and Sepsis-3 when the trial requires it."""
    result = Classification(
        protocol_id="", protocol_version="", endotype="all", therapy="", dose=None, reasons=[]
    )
    check = None
    if require_sepsis3:
        pid = str(patient.get("patient_id") or "patient")
        check = sepsis3_check(pid, observations, infection_suspected, pre_infection_sofa)
    present = sorted(name for name, flag in exclusions.items() if flag)
    if present:
        return EligibilityResult(result, False, "exclusion criterion: " + ", ".join(present), check)
    if check is not None and not check.met:
        return EligibilityResult(result, False, check.text, check)
    return EligibilityResult(result, True, None, check)
