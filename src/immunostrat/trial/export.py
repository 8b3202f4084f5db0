"""The analysis export: the trial written in the schema ``immunostrat.analysis.schema`` defines
(schema 1.0: ``participants``, ``daily_assessments``, ``outcomes``, ``screening``,
``adverse_events`` and ``manifest.json``), as CSV or Parquet.

Blinded exports carry ``arm = "blinded"`` for everyone (pooled data for monitoring); unblinded
exports carry the allocated arm and are audited as a view of unblinded data. Participants whose
consent was withdrawn with data removal appear only in ``screening`` (``data_removed = true``).
Participants without a recorded outcome get an outcomes row censored at their last assessed day.
Files are written to a temporary folder and moved into place only when all of them succeeded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial import audit
from immunostrat.trial.audit import Actor
from immunostrat.trial.capture import SOFA_FIELDS
from immunostrat.trial.definition import SCREENING_VISIT
from immunostrat.trial.forms import has_forms, trial_definition
from immunostrat.trial.models import (
    AdverseEvent,
    Allocation,
    Assessment,
    FormRecord,
    Outcome,
    Participant,
    ScreeningObservation,
    Site,
    as_utc,
    utcnow,
)
from immunostrat.trial.screening import latest_decision
from immunostrat.trial.setup import trial_by_id

EXPORT_SCHEMA_VERSION = "1.0"
BLINDED_ARM = "blinded"

_DT = pl.Datetime("us", "UTC")
PARTICIPANTS_SCHEMA: dict[str, Any] = {
    "participant_id": pl.Utf8,
    "site": pl.Utf8,
    "stratum": pl.Utf8,
    "arm": pl.Utf8,
    "randomized_at": _DT,
    "age": pl.Float64,
    "sex": pl.Utf8,
    "baseline_sofa": pl.Int64,
    "weight_kg": pl.Float64,
    "ferritin_ng_ml": pl.Float64,
    "hla_dr_abc": pl.Float64,
    "septic_shock": pl.Boolean,
    "infection_site": pl.Utf8,
    "itt": pl.Boolean,
    "per_protocol": pl.Boolean,
    "safety": pl.Boolean,
    "kit_number": pl.Utf8,
}
DAILY_SCHEMA: dict[str, Any] = {
    "participant_id": pl.Utf8,
    "day": pl.Int64,
    "sofa_total": pl.Int64,
    **dict.fromkeys(SOFA_FIELDS, pl.Int64),
    "ferritin_ng_ml": pl.Float64,
    "hla_dr_abc": pl.Float64,
    "crp_mg_l": pl.Float64,
    "procalcitonin_ng_ml": pl.Float64,
    "infection_status": pl.Utf8,
}
OUTCOMES_SCHEMA: dict[str, Any] = {
    "participant_id": pl.Utf8,
    "death_day": pl.Int64,
    "last_contact_day": pl.Int64,
    "discharge_day": pl.Int64,
    "infection_status_day15": pl.Utf8,
    "ferritin_day15_ng_ml": pl.Float64,
    "hla_dr_day15_abc": pl.Float64,
}
SCREENING_SCHEMA: dict[str, Any] = {
    "screening_id": pl.Utf8,
    "site": pl.Utf8,
    "screened_at": _DT,
    "eligible": pl.Boolean,
    "exclusion_reason": pl.Utf8,
    "randomized": pl.Boolean,
    "not_randomized_reason": pl.Utf8,
    "participant_id": pl.Utf8,
    "arm": pl.Utf8,
    "stratum": pl.Utf8,
    "withdrawn": pl.Boolean,
    "withdrawal_reason": pl.Utf8,
    "data_removed": pl.Boolean,
}
AE_SCHEMA: dict[str, Any] = {
    "participant_id": pl.Utf8,
    "day": pl.Int64,
    "term": pl.Utf8,
    "meddra_code": pl.Utf8,
    "serious": pl.Boolean,
    "seriousness": pl.Utf8,
    "related": pl.Boolean,
    "severity": pl.Int64,
}
_FIELD_TYPES: dict[str, Any] = {
    "number": pl.Float64,
    "integer": pl.Int64,
    "boolean": pl.Boolean,
    "choice": pl.Utf8,
    "text": pl.Utf8,
    "date": pl.Utf8,
}


@dataclass
class FormTables:
    """The saved forms of a trial defined with forms, by export table."""

    daily: dict[int, dict[int, dict[str, Any]]]
    outcomes: dict[int, dict[str, Any]]
    participants: dict[int, dict[str, Any]]
    columns: dict[str, dict[str, Any]]


def form_tables(session: Session, trial: Any, participant_ids: list[int]) -> FormTables:
    """Every saved form value (and derived score) in the export table its form names: one row per
    participant and study day for ``daily_assessments``, one per participant for the others."""
    spec = trial_definition(trial)
    columns: dict[str, dict[str, Any]] = {"daily_assessments": {}, "outcomes": {}, "participants": {}}
    for form in spec.forms.values():
        if form.table == "none":
            continue
        for f in form.fields:
            columns[form.table][f.column] = _FIELD_TYPES[f.type]
        for d in form.derived:
            for _, name in d.columns():
                columns[form.table][name] = pl.Int64
    out = FormTables(defaultdict(dict), defaultdict(dict), defaultdict(dict), columns)
    if not participant_ids:
        return out
    records = session.scalars(
        select(FormRecord).where(FormRecord.participant_id.in_(participant_ids)).order_by(FormRecord.id)
    )
    for r in records:
        saved = spec.forms.get(r.form_id)
        if saved is None or saved.table == "none" or r.visit_id == SCREENING_VISIT:
            continue
        values = {f.column: r.values.get(f.name) for f in saved.fields if f.name in r.values}
        values.update({name: r.derived.get(name) for d in saved.derived for _, name in d.columns()})
        if saved.table == "daily_assessments":
            if r.study_day is None:
                continue
            out.daily[r.participant_id].setdefault(r.study_day, {}).update(values)
        elif saved.table == "outcomes":
            out.outcomes[r.participant_id].update(values)
        else:
            out.participants[r.participant_id].update(values)
    return out


@dataclass
class ExportTables:
    participants: pl.DataFrame
    daily_assessments: pl.DataFrame
    outcomes: pl.DataFrame
    screening: pl.DataFrame
    adverse_events: pl.DataFrame
    manifest: dict[str, Any]

    def frames(self) -> dict[str, pl.DataFrame]:
        return {
            "participants": self.participants,
            "daily_assessments": self.daily_assessments,
            "outcomes": self.outcomes,
            "screening": self.screening,
            "adverse_events": self.adverse_events,
        }


def _latest_screening_values(session: Session, participant_ids: list[int]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = defaultdict(dict)
    if not participant_ids:
        return out
    rows = session.scalars(
        select(ScreeningObservation)
        .where(ScreeningObservation.participant_id.in_(participant_ids))
        .order_by(ScreeningObservation.time, ScreeningObservation.id)
    )
    for o in rows:
        out[o.participant_id][o.concept] = o.value  # the latest value wins
    return out


def build_export(session: Session, actor: Actor, trial_id: int, blinded: bool) -> ExportTables:
    """Read the trial into the export tables (and audit the export)."""
    trial = trial_by_id(session, trial_id)
    sites = {s.id: s.code for s in session.scalars(select(Site).where(Site.trial_id == trial.id))}
    participants = list(
        session.scalars(select(Participant).where(Participant.trial_id == trial.id).order_by(Participant.id))
    )
    allocations = {
        a.participant_id: a
        for a in session.scalars(select(Allocation).where(Allocation.trial_id == trial.id))
    }
    ids = [p.id for p in participants]
    screening_values = _latest_screening_values(session, ids)
    assessments: dict[int, list[Assessment]] = defaultdict(list)
    outcomes: dict[int, Outcome] = {}
    adverse: list[AdverseEvent] = []
    if ids:
        for a in session.scalars(
            select(Assessment).where(Assessment.participant_id.in_(ids)).order_by(Assessment.day)
        ):
            assessments[a.participant_id].append(a)
        outcomes = {
            o.participant_id: o
            for o in session.scalars(select(Outcome).where(Outcome.participant_id.in_(ids)))
        }
        adverse = list(
            session.scalars(
                select(AdverseEvent).where(AdverseEvent.participant_id.in_(ids)).order_by(AdverseEvent.id)
            )
        )

    forms = form_tables(session, trial, ids) if has_forms(trial) else None

    def arm_of(alloc: Allocation) -> str:
        return BLINDED_ARM if blinded else alloc.arm

    p_rows: list[dict[str, Any]] = []
    d_rows: list[dict[str, Any]] = []
    o_rows: list[dict[str, Any]] = []
    s_rows: list[dict[str, Any]] = []
    kept: dict[int, str] = {}
    for p in participants:
        decision = latest_decision(session, p.id)
        alloc = allocations.get(p.id)
        endotype = decision.endotype if decision else None
        exclusion = None
        if decision is not None and not decision.eligible:
            texts = [r.get("text") for r in decision.reasons if r.get("rule") == "eligibility"]
            exclusion = next((t for t in texts if t), f"endotype {decision.endotype}")
        s_rows.append(
            {
                "screening_id": p.pseudonym,
                "site": sites[p.site_id],
                "screened_at": as_utc(p.created_at),
                "eligible": bool(decision.eligible) if decision else False,
                "exclusion_reason": exclusion if not (decision and decision.eligible) else None,
                "randomized": alloc is not None,
                "not_randomized_reason": "not randomized (yet)"
                if alloc is None and decision is not None and decision.eligible
                else None,
                "participant_id": p.pseudonym if alloc is not None else None,
                "arm": arm_of(alloc) if alloc is not None else None,
                "stratum": endotype,
                "withdrawn": p.status == "withdrawn",
                "withdrawal_reason": p.withdrawal_reason,
                "data_removed": bool(p.data_removed),
            }
        )
        if alloc is None or p.data_removed:
            continue
        kept[p.id] = p.pseudonym
        days = assessments.get(p.id, [])
        doses = [a.doses_given for a in days if a.doses_given is not None]
        baseline = p.baseline_sofa
        if baseline is None:
            day1 = next((a.sofa_total for a in days if a.day == 1), None)
            baseline = day1
        values = screening_values.get(p.id, {})
        p_rows.append(
            {
                "participant_id": p.pseudonym,
                "site": sites[p.site_id],
                "stratum": endotype,
                "arm": arm_of(alloc),
                "randomized_at": as_utc(alloc.allocated_at),
                "age": p.age,
                "sex": p.sex,
                "baseline_sofa": baseline,
                "weight_kg": p.weight_kg,
                "ferritin_ng_ml": values.get("ferritin"),
                "hla_dr_abc": values.get("mhla_dr"),
                "septic_shock": p.septic_shock,
                "infection_site": p.infection_site,
                "itt": True,
                "per_protocol": None,
                "safety": (any(d > 0 for d in doses) if doses else None),
                "kit_number": alloc.kit.kit_number,
            }
        )
        for a in days:
            row = {k: getattr(a, k) for k in DAILY_SCHEMA if k != "participant_id"}
            row["participant_id"] = p.pseudonym
            d_rows.append(row)
        if forms is not None:
            p_rows[-1].update(forms.participants.get(p.id, {}))
            daily = forms.daily.get(p.id, {})
            for day in sorted(daily):
                d_rows.append({"participant_id": p.pseudonym, "day": day, **daily[day]})
            if p_rows[-1]["baseline_sofa"] is None:
                p_rows[-1]["baseline_sofa"] = (daily.get(1) or {}).get("sofa_total")
            if p_rows[-1]["safety"] is None:
                p_rows[-1]["safety"] = True  # randomized and entered on the study schedule
            found = forms.outcomes.get(p.id)
            if found and found.get("last_contact_day") is not None:
                o_rows.append({"participant_id": p.pseudonym, **found})
            else:
                last = max((d for d in daily if d >= 1), default=1)
                o_rows.append({"participant_id": p.pseudonym, **(found or {}), "last_contact_day": last})
            continue
        o = outcomes.get(p.id)
        if o is not None:
            o_rows.append(
                {
                    "participant_id": p.pseudonym,
                    **{k: getattr(o, k) for k in OUTCOMES_SCHEMA if k != "participant_id"},
                }
            )
        else:
            last = max((a.day for a in days if a.day >= 1), default=1)
            o_rows.append({"participant_id": p.pseudonym, "last_contact_day": last})
    ae_rows = [
        {
            "participant_id": kept[ae.participant_id],
            "day": ae.day,
            "term": ae.term,
            "meddra_code": ae.meddra_code,
            "serious": ae.serious,
            "seriousness": ",".join(ae.seriousness or []) or None,
            "related": ae.related,
            "severity": ae.severity,
        }
        for ae in adverse
        if ae.participant_id in kept
    ]
    exported_at = utcnow()
    manifest: dict[str, Any] = {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "trial_id": trial.code,
        "arms": [BLINDED_ARM] if blinded else list(trial.arms),
        "exported_at": exported_at.isoformat().replace("+00:00", "Z"),
        "blinded": blinded,
        "protocol_id": trial.protocol_id,
        "protocol_version": trial.protocol_version,
        "randomization_method": trial.method,
        "seed_commitment": trial.seed_commitment,
    }
    if not blinded:
        manifest["control_arm"] = trial.control_arm
    audit.append(
        session,
        actor,
        "export_unblinded" if not blinded else "export_blinded",
        "trial",
        trial.id,
        new={"trial": trial.code, "participants": len(p_rows), "blinded": blinded},
    )
    extra: dict[str, dict[str, Any]] = forms.columns if forms is not None else {}
    return ExportTables(
        participants=pl.DataFrame(p_rows, schema={**PARTICIPANTS_SCHEMA, **extra.get("participants", {})}),
        daily_assessments=pl.DataFrame(d_rows, schema={**DAILY_SCHEMA, **extra.get("daily_assessments", {})}),
        outcomes=pl.DataFrame(o_rows, schema={**OUTCOMES_SCHEMA, **extra.get("outcomes", {})}),
        screening=pl.DataFrame(s_rows, schema=SCREENING_SCHEMA),
        adverse_events=pl.DataFrame(ae_rows, schema=AE_SCHEMA),
        manifest=manifest,
    )


def write_export(
    tables: ExportTables, output_dir: str | Path, fmt: Literal["csv", "parquet"] = "csv"
) -> Path:
    """Write every table into a temporary folder, then move the files into ``output_dir``."""
    if fmt not in ("csv", "parquet"):
        raise InputError("unknown export format", field="format", value=fmt, expected="csv or parquet")
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, frame in tables.frames().items():
            target = tmp / f"{name}.{fmt}"
            if fmt == "csv":
                frame.write_csv(target, datetime_format="%Y-%m-%dT%H:%M:%S%.fZ")
            else:
                frame.write_parquet(target)
        (tmp / "manifest.json").write_text(json.dumps(tables.manifest, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            for stale in (out / f"{f.stem}.csv", out / f"{f.stem}.parquet"):
                if stale.exists() and stale.name != f.name:
                    stale.unlink()  # never leave a table in two formats (Parquet would win on reading)
            f.replace(out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
