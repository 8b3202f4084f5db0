"""Apply a protocol: to one patient (with reasons), to many, or as column expressions for cohorts.

Three-valued logic: a condition on a missing or stale measurement is undecided. Rules are tried in
order; a rule that is met fires; a rule that is undecided stops the search with ``unknown`` (a later
rule must not win while an earlier one might still apply: MALS precedence); a rule that is not met
passes to the next. No rule met -> ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import narwhals.stable.v2 as nw
import polars as pl

from immunostrat.protocols.freshness import freshness
from immunostrat.protocols.model import (
    Classification,
    Condition,
    Dose,
    Protocol,
    Reason,
    Regimen,
    RenalCheck,
    Rule,
)
from immunostrat.protocols.renal import INPUT_WORDS, cockcroft_gault, missing_inputs
from immunostrat.scores.expressions import as_narwhals, compare

FrameT = TypeVar("FrameT")


Sample = tuple[str, datetime, float]
"""One measurement of a patient: concept, time, value (canonical unit)."""
SMALL_FRAME = 256
"""Up to this many rows, a patient's samples are picked from the frame in Python (no polars query)."""


def _history(samples: Sequence[Sample], concept: str, at: datetime | None) -> list[tuple[datetime, float]]:
    """The concept's samples up to ``at``, latest first (samples at the same time in their given order)."""
    rows = [(t, v) for c, t, v in samples if c == concept and (at is None or (t is not None and t <= at))]
    # descending time with missing times first, as polars sorts; sorted() keeps ties in their order
    return sorted(rows, key=lambda r: (r[0] is None, datetime.min if r[0] is None else r[0]), reverse=True)


def _evaluate(
    rule: Rule, condition: Condition, protocol: Protocol, history: list[tuple[datetime, float]], at: datetime
) -> Reason:
    unit = condition.unit
    base: dict[str, Any] = {
        "rule": rule.id,
        "concept": condition.concept,
        "comparison": condition.op,
        "threshold": condition.threshold,
        "unit": unit,
    }
    if not history:
        return Reason(**base, value=None, time=None, outcome="missing", note="no measurement")
    time, value = history[0]
    fresh = freshness(time, at, protocol.requires[condition.concept].freshness_hours)
    base["age_hours"] = round(fresh.age_hours, 2)
    if not fresh.fresh:
        return Reason(**base, value=value, time=time, outcome="stale", note=fresh.note())
    met = bool(compare(value, condition.op, condition.threshold))
    if not met or condition.consecutive == 1:
        return Reason(**base, value=value, time=time, outcome="met" if met else "not met")
    low, high = condition.apart_hours or (0.0, 0.0)
    chain = [(time, value)]
    for earlier_time, earlier_value in history[1:]:
        gap = (chain[-1][0] - earlier_time).total_seconds() / 3600.0
        if gap < low:
            continue
        if gap > high or not compare(earlier_value, condition.op, condition.threshold):
            break
        chain.append((earlier_time, earlier_value))
        if len(chain) == condition.consecutive:
            break
    if len(chain) >= condition.consecutive:
        shown = ", ".join(f"{v:g} at {t.isoformat()}" for t, v in chain)
        return Reason(
            **base,
            value=value,
            time=time,
            outcome="met",
            note=f"{condition.consecutive} consecutive: {shown}",
        )
    return Reason(
        **base,
        value=value,
        time=time,
        outcome="not met",
        note=f"needs {condition.consecutive} consecutive samples {low:g}-{high:g} h apart",
    )


def _dose(
    regimen: Regimen, patient: Mapping[str, Any] | None, creatinine: float | None
) -> tuple[Dose | None, list[str]]:
    """The regimen as a dose, renally adjusted by the regimen's rule; the warnings say why, in the
    same numbers as the dose text (one interval, never two)."""
    if regimen.drug == "none":
        return None, []
    drug = regimen.drug.replace("_", "-")
    warnings: list[str] = []
    interval = regimen.interval_hours
    renal = regimen.renal_adjustment
    check: RenalCheck = "not_applicable"
    missing: list[str] = []
    crcl: float | None = None
    qualifier = ""
    if renal is not None:
        age, weight, female = _number(patient, "age"), _number(patient, "weight_kg"), _female(patient)
        missing = missing_inputs(age_years=age, weight_kg=weight, female=female, creatinine_mg_dl=creatinine)
        threshold = renal.creatinine_clearance_below_ml_min
        if missing:
            check = "not_computable"
            words = ", ".join(INPUT_WORDS[m] for m in missing)
            warnings.append(
                f"renal adjustment not checked: creatinine clearance (Cockcroft-Gault) needs {words}; "
                f"measure or record {words}. {drug.capitalize()} is given {renal.adjusted_interval_words} "
                f"(every {renal.adjusted_interval_hours:g} h) below {threshold:g} mL/min ({renal.source})."
            )
        else:
            crcl = cockcroft_gault(
                age_years=age, weight_kg=weight, female=female, creatinine_mg_dl=creatinine
            )
            check = "adjusted" if crcl < threshold else "not_needed"
        if check == "adjusted" and crcl is not None:
            interval = renal.adjusted_interval_hours
            qualifier = (
                f"(renally adjusted, {renal.adjusted_interval_words}: creatinine clearance "
                f"{crcl:.0f} mL/min < {threshold:g}; clinician review)"
            )
            warnings.append(
                f"creatinine clearance {crcl:.0f} mL/min (Cockcroft-Gault) < {threshold:g} mL/min: "
                f"{drug} every {interval:g} h ({renal.adjusted_interval_words}). {renal.warning}"
            )
    parts = [drug]
    if regimen.dose is not None:
        parts.append(f"{regimen.dose:g} {regimen.dose_unit}")
    if regimen.route:
        parts.append(regimen.route)
    if interval is not None:
        parts.append(f"every {interval:g} h")
    if regimen.duration_days is not None:
        parts.append(f"for {regimen.duration_days:g} days")
    if qualifier:
        parts.append(qualifier)
    dose = Dose(
        drug=regimen.drug,
        amount=regimen.dose,
        unit=regimen.dose_unit,
        route=regimen.route,
        interval_hours=interval,
        duration_days=regimen.duration_days,
        renal_adjusted=check == "adjusted",
        creatinine_clearance_ml_min=None if crcl is None else round(crcl, 1),
        renal_check=check,
        renal_missing=missing,
        renal_threshold_ml_min=None if renal is None else renal.creatinine_clearance_below_ml_min,
        standard_interval_hours=regimen.interval_hours,
        text=" ".join(parts),
    )
    return dose, warnings


def _number(patient: Mapping[str, Any] | None, key: str) -> float | None:
    if not patient or patient.get(key) is None:
        return None
    return float(patient[key])


def _female(patient: Mapping[str, Any] | None) -> bool | None:
    if not patient or not patient.get("sex"):
        return None
    return str(patient["sex"]).upper().startswith("F")


def classify_patient(
    protocol: Protocol,
    observations: pl.DataFrame,
    patient: Mapping[str, Any] | None = None,
    *,
    patient_id: str | None = None,
    at: datetime | None = None,
) -> Classification:
    """Classify one patient. ``observations``: canonical long rows (other patients are ignored);
    ``at``: the decision time (default: the patient's latest observation)."""
    pid = patient_id or (str(patient["patient_id"]) if patient and patient.get("patient_id") else None)
    if pid is None:
        ids = observations["patient_id"].unique().to_list()
        if len(ids) != 1:
            raise ValueError("give patient_id when the observations hold several patients")
        pid = str(ids[0])
    if observations.height <= SMALL_FRAME and observations.schema.get("patient_id") == pl.String():
        columns = [observations[c].to_list() for c in ("patient_id", "concept", "time", "value")]
        samples: list[Sample] = [(c, t, v) for p, c, t, v in zip(*columns, strict=True) if p == pid]
    else:
        samples = observations.filter(pl.col("patient_id") == pid).select("concept", "time", "value").rows()
    return classify_samples(protocol, samples, patient, patient_id=pid, at=at)


def classify_samples(
    protocol: Protocol,
    samples: Sequence[Sample],
    patient: Mapping[str, Any] | None = None,
    *,
    patient_id: str,
    at: datetime | None = None,
) -> Classification:
    """Classify one patient from their samples (concept, time, value in the canonical unit, times
    aware); ``at``: the decision time (default: the latest sample)."""
    pid = patient_id
    latest = max((t for _, t, _ in samples if t is not None), default=None)
    decision_time: datetime | None = at or latest
    histories = {c: _history(samples, c, decision_time) for c in protocol.requires}
    reasons: list[Reason] = []
    endotype, fired = "unknown", None
    for rule in protocol.rules:
        if decision_time is None:
            reasons += [
                Reason(
                    rule=rule.id,
                    concept=c.concept,
                    comparison=c.op,
                    threshold=c.threshold,
                    unit=c.unit,
                    value=None,
                    time=None,
                    outcome="missing",
                    note="no measurement",
                )
                for c in rule.all
            ]
            break
        when = decision_time
        rule_reasons = [_evaluate(rule, c, protocol, histories[c.concept], when) for c in rule.all]
        reasons += rule_reasons
        outcomes = {r.outcome for r in rule_reasons}
        if outcomes == {"met"}:
            endotype, fired = rule.endotype, rule.id
            break
        if "not met" in outcomes:
            continue
        break  # undecided: an earlier rule might still apply, so no later rule may win
    regimen = protocol.therapies[endotype]
    creatinine_history = _history(samples, "creatinine", decision_time)
    creatinine = creatinine_history[0][1] if creatinine_history else None
    dose, warnings = _dose(regimen, patient, creatinine)
    if endotype in protocol.cautions:
        warnings.append(protocol.cautions[endotype])
    if endotype == "unknown":
        undecided = {r.concept: r.note for r in reasons if r.outcome in {"missing", "stale"}}
        if undecided:
            shown = "; ".join(f"{c} {note}" if note else c for c, note in sorted(undecided.items()))
            warnings.append(f"deciding measurement missing or stale: {shown}")
    return Classification(
        patient_id=pid,
        at=decision_time,
        protocol_id=protocol.id,
        protocol_version=protocol.version,
        endotype=endotype,
        fired_rule=fired,
        therapy=regimen.drug,
        dose=dose,
        reasons=reasons,
        warnings=warnings,
    )


def classify_all(
    protocol: Protocol,
    observations: pl.DataFrame,
    patients: pl.DataFrame | None = None,
    *,
    at: datetime | None = None,
    at_by_patient: Mapping[str, datetime] | None = None,
) -> list[Classification]:
    """Classify every patient in ``observations`` (and every patient of ``patients`` without any).

    The decision time is ``at_by_patient[id]``, else ``at``, else the patient's last observation.
    """
    ids = set(observations["patient_id"].unique().to_list())
    table: dict[str, dict[str, Any]] = {}
    if patients is not None and patients.height:
        table = {str(r["patient_id"]): r for r in patients.iter_rows(named=True)}
        ids |= set(table)
    return [
        classify_patient(
            protocol, observations, table.get(pid), patient_id=pid, at=(at_by_patient or {}).get(pid, at)
        )
        for pid in sorted(ids)
    ]


def endotype_expression(protocol: Protocol) -> nw.Expr:
    """The endotype as one narwhals expression over columns named by concept, holding the latest
    fresh value (null when missing or stale). Runs on polars, DuckDB, Ibis and PySpark.

    Rules with consecutive-sample conditions need a history and are not expressible per row.
    """
    result: nw.Expr = nw.lit("unknown")
    # Built from the last rule backwards: rule k fires when met, stops with unknown when undecided.
    for rule in reversed(protocol.rules):
        if any(c.consecutive > 1 for c in rule.all):
            raise ValueError(f"rule {rule.id} needs sample history; use classify_patient")
        checks = [compare(nw.col(c.concept), c.op, c.threshold) for c in rule.all]
        met = nw.all_horizontal(*[c.fill_null(False) for c in checks], ignore_nulls=False)
        failed = nw.any_horizontal(*[(~c).fill_null(False) for c in checks], ignore_nulls=False)
        result = (
            nw.when(met)
            .then(nw.lit(rule.endotype))
            .otherwise(nw.when(failed).then(result).otherwise(nw.lit("unknown")))
        )
    return result


def classify_frame(protocol: Protocol, frame: FrameT, column: str = "endotype") -> FrameT:
    """Add ``column`` (the endotype) and ``therapy`` to a wide frame of latest fresh values."""
    therapy: nw.Expr = nw.lit("none")
    for endotype, regimen in protocol.therapies.items():
        therapy = nw.when(nw.col(column) == endotype).then(nw.lit(regimen.drug)).otherwise(therapy)
    nw_frame = as_narwhals(frame)
    present = set(nw_frame.collect_schema().names())
    absent = [c for c in protocol.requires if c not in present]
    if absent:
        nw_frame = nw_frame.with_columns(*[nw.lit(None, dtype=nw.Float64()).alias(c) for c in absent])
    out = nw_frame.with_columns(endotype_expression(protocol).alias(column))
    return out.with_columns(therapy.alias("therapy")).to_native()
