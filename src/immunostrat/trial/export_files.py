"""A trial's exports in every format a statistician or a regulator reads: the analysis tables as
CSV or Parquet (``export``), CDISC ODM 1.3.2 built from the trial's forms with each value's audit
record and the visits' signatures, and SAS XPT, Stata and SPSS files with labels; each with a data
dictionary (labels, units, concepts, LOINC codes, code lists, ranges, derivations).

This module maps the trial (definition and saved forms) into the plain structures of
``export_formats``, which writes the files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.analysis.schema import TABLES
from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.trial.audit import Actor
from immunostrat.trial.definition import SCREENING_VISIT, FieldDef
from immunostrat.trial.export import ExportTables, build_export, write_export
from immunostrat.trial.export_formats import (
    DataType,
    FormInfo,
    ItemInfo,
    ItemValue,
    StudyInfo,
    SubjectRecord,
    VisitInfo,
    write_data_dictionary,
    write_odm,
    write_statistical,
)
from immunostrat.trial.forms import has_forms, trial_definition
from immunostrat.trial.models import (
    Allocation,
    FormChange,
    FormRecord,
    Participant,
    Signature,
    Trial,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import TrialSpec
from immunostrat.trial.setup import trial_by_id

ExportFormat = Literal["csv", "parquet", "odm", "xpt", "dta", "sav"]
EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet", "odm", "xpt", "dta", "sav")

_FIELD_TYPES: dict[str, DataType] = {
    "number": "float",
    "integer": "integer",
    "boolean": "boolean",
    "choice": "text",
    "text": "text",
    "date": "date",
}


def _dtype_kind(dtype: pl.DataType) -> DataType:
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if dtype == pl.Date:
        return "date"
    return "text"


def field_item(f: FieldDef) -> ItemInfo:
    concept = load_concepts()[f.concept] if f.concept else None
    unit = f.stored_unit if f.stored_unit not in ("", "1") and f.type in ("number", "integer") else None
    return ItemInfo(
        oid=f.name,
        label=f.label,
        data_type=_FIELD_TYPES[f.type],
        unit=unit,
        concept=f.concept,
        loinc=concept.loinc[0] if concept is not None and concept.loinc else None,
        choices=tuple(f.choices),
        range=f.allowed_range(),
        required=f.required,
    )


def _derived_items(spec: TrialSpec, form_id: str) -> list[ItemInfo]:
    from immunostrat.scores import load_definition

    items = []
    for d in spec.forms[form_id].derived:
        version = str(load_definition(d.score).get("id", d.score))
        for output, name in d.columns():
            items.append(
                ItemInfo(
                    oid=name,
                    label=f"{output.replace('_', ' ')} (derived)",
                    data_type="integer",
                    derived_from=f"{version} score from the form's fields (immunostrat.scores)",
                )
            )
    return items


def column_dictionary(trial: Trial, tables: ExportTables) -> dict[str, dict[str, ItemInfo]]:
    """An entry for every column of every export table: a form field's label, unit, concept and
    code list where the column comes from a form, else the export schema's description."""
    spec = trial_definition(trial) if has_forms(trial) else None
    by_column: dict[str, ItemInfo] = {}
    if spec is not None:
        for form_id, form in spec.forms.items():
            for f in form.fields:
                by_column.setdefault(f.column, field_item(f))
            for item in _derived_items(spec, form_id):
                by_column.setdefault(item.oid, item)
    out: dict[str, dict[str, ItemInfo]] = {}
    for name, frame in tables.frames().items():
        declared = TABLES.get(name)
        columns: dict[str, ItemInfo] = {}
        for column, dtype in frame.schema.items():
            kind = _dtype_kind(dtype)
            known = by_column.get(column)
            if known is not None and known.data_type == kind:
                columns[column] = ItemInfo(**{**known.__dict__, "oid": column})
                continue
            label = column.replace("_", " ")
            choices: tuple[str, ...] = ()
            if declared is not None:
                try:
                    col = declared.column(column)
                    label = col.description or label
                    choices = tuple(col.allowed or ()) if kind == "text" else ()
                except KeyError:
                    pass
            columns[column] = ItemInfo(oid=column, label=label[:200], data_type=kind, choices=choices)
        out[name] = columns
    return out


XPT_TEXT_BYTES = 200
"""SAS transport version 5 holds at most 200 bytes per text value."""


def _chunks(text: str, limit: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    out: list[str] = []
    piece = ""
    for ch in text:
        if len((piece + ch).encode("utf-8")) > limit:
            out.append(piece)
            piece = ""
        piece += ch
    return [*out, piece] if piece else out


def split_long_text(
    tables: dict[str, pl.DataFrame], dictionary: dict[str, dict[str, ItemInfo]], limit: int = XPT_TEXT_BYTES
) -> tuple[dict[str, pl.DataFrame], dict[str, dict[str, ItemInfo]]]:
    """Text longer than ``limit`` bytes split over ``col``, ``col_2``, ``col_3``... (the SDTM
    convention for SAS transport files: nothing is cut off; the dictionary names each part)."""
    out_tables: dict[str, pl.DataFrame] = {}
    out_dict: dict[str, dict[str, ItemInfo]] = {}
    for name, frame in tables.items():
        columns = dict(dictionary[name])
        for column, dtype in frame.schema.items():
            if dtype != pl.Utf8:
                continue
            values = frame[column].to_list()
            parts = [_chunks(v, limit) if v is not None else [] for v in values]
            width = max((len(x) for x in parts), default=0)
            if width <= 1:
                continue
            base = columns[column]
            frame = frame.with_columns(pl.Series(column, [x[0] if x else None for x in parts], dtype=pl.Utf8))
            for k in range(2, width + 1):
                extra = f"{column}_{k}"
                frame = frame.with_columns(
                    pl.Series(extra, [x[k - 1] if len(x) >= k else None for x in parts], dtype=pl.Utf8)
                )
                columns[extra] = ItemInfo(oid=extra, label=f"{base.label} (part {k})"[:200], data_type="text")
        out_tables[name] = frame
        out_dict[name] = columns
    return out_tables, out_dict


def study_info(trial: Trial, spec: TrialSpec) -> StudyInfo:
    forms = tuple(
        FormInfo(
            oid=fid, label=f.label, items=(*(field_item(x) for x in f.fields), *_derived_items(spec, fid))
        )
        for fid, f in spec.forms.items()
    )
    visits = [VisitInfo(oid=v.id, label=v.label, day=v.day, forms=v.forms) for v in spec.schedule()]
    if spec.screening_form is not None:
        first = min((v.day for v in visits), default=0) - 1
        visits.insert(
            0, VisitInfo(oid=SCREENING_VISIT, label="Screening", day=first, forms=(spec.screening_form,))
        )
    return StudyInfo(
        oid=spec.code,
        name=spec.title,
        description=spec.description or spec.title,
        protocol_name=f"{spec.code} {spec.version}",
        version=spec.version,
        visits=tuple(visits),
        forms=forms,
    )


def subject_records(session: Session, trial: Trial, spec: TrialSpec, blinded: bool) -> list[SubjectRecord]:
    """Each participant's saved forms: every value (and derived score) with who saved it, when and
    the reason of its last change; the visits' signatures; the arm when unblinded."""
    participants = list(
        session.scalars(select(Participant).where(Participant.trial_id == trial.id).order_by(Participant.id))
    )
    arms = {
        a.participant_id: a.arm
        for a in session.scalars(select(Allocation).where(Allocation.trial_id == trial.id))
    }
    out = []
    for p in participants:
        if p.data_removed:
            continue
        records = list(
            session.scalars(
                select(FormRecord).where(FormRecord.participant_id == p.id).order_by(FormRecord.id)
            )
        )
        values: list[ItemValue] = []
        for r in records:
            if r.form_id not in spec.forms:
                continue
            reasons: dict[str, str] = {}
            for c in session.scalars(
                select(FormChange).where(FormChange.record_id == r.id).order_by(FormChange.id)
            ):
                reasons[c.field] = c.reason
            at = as_utc(r.updated_at)
            for name, value in {
                **r.values,
                **{k: v for k, v in r.derived.items() if not k.endswith("_components")},
            }.items():
                values.append(
                    ItemValue(
                        r.form_id, r.visit_id, name, value, user=r.updated_by, at=at, reason=reasons.get(name)
                    )
                )
            for name, why in r.not_done.items():
                values.append(
                    ItemValue(
                        r.form_id, r.visit_id, name, None, user=r.updated_by, at=at, reason=f"not done: {why}"
                    )
                )
        signatures = tuple(
            (s.visit_id, s.username, as_utc(s.signed_at) or utcnow(), s.meaning)
            for s in session.scalars(
                select(Signature).where(Signature.participant_id == p.id).order_by(Signature.id)
            )
        )
        arm = None if blinded else arms.get(p.id)
        out.append(SubjectRecord(p.pseudonym, p.site.code, arm, tuple(values), signatures))
    return out


def write_trial_export(
    session: Session, actor: Actor, trial_id: int, blinded: bool, fmt: str, output_dir: str | Path
) -> Path:
    """Write the export in ``fmt`` into ``output_dir`` (files are moved into place only when all
    were written). CSV/Parquet: the analysis tables and manifest. ODM: ``<trial>.odm.xml``, for a
    trial set up with forms. XPT/Stata/SPSS: one file per analysis table. Each comes with
    ``data_dictionary.csv``; the export is audited."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(
            "unknown export format", field="format", value=fmt, expected=", ".join(EXPORT_FORMATS)
        )
    trial = trial_by_id(session, trial_id)
    if fmt == "odm" and not has_forms(trial):
        raise InputError(
            "an ODM export needs a trial set up with forms",
            field="format",
            value=fmt,
            expected="csv, parquet, xpt, dta or sav for this trial",
        )
    tables = build_export(session, actor, trial.id, blinded)
    if fmt in ("csv", "parquet"):
        folder = write_export(tables, output_dir, fmt)  # type: ignore[arg-type]
        dictionary = column_dictionary(trial, tables)
        write_data_dictionary(tables.frames(), dictionary, folder)
        return folder
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        dictionary = column_dictionary(trial, tables)
        if fmt == "odm":
            spec = trial_definition(trial)
            write_odm(
                study_info(trial, spec),
                subject_records(session, trial, spec, blinded),
                tmp / f"{trial.code}.odm.xml",
                as_of=utcnow(),
            )
            write_data_dictionary(tables.frames(), dictionary, tmp)
        else:
            frames = tables.frames()
            if fmt == "xpt":
                frames, dictionary = split_long_text(frames, dictionary)
            write_statistical(frames, dictionary, tmp, fmt, study_label=trial.title)  # type: ignore[arg-type]
        (tmp / "manifest.json").write_text(json.dumps({**tables.manifest, "format": fmt}, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            f.replace(out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
