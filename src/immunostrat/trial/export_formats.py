"""Exports a statistician and a regulator can read: CDISC ODM 1.3.2 (study metadata and clinical data,
built with odmlib), SAS transport (XPT version 5), Stata (.dta) and SPSS (.sav) files with labels
(pyreadstat), and the data dictionary that goes with them.

The input is plain data (``StudyInfo``, ``SubjectRecord``, polars tables and a dictionary of
``ItemInfo`` per column): this module reads no database. Every file is written under a temporary
name and renamed only when all of it succeeded, so a refused export leaves nothing behind.

Sources for the format limits: CDISC ODM 1.3.2 specification (2013) and its XML schema (shipped with
odmlib); SAS "Record Layout of a SAS Version 5 or 6 Data Set in SAS Transport (XPORT) Format"
(names <= 8 characters, labels <= 40, character values <= 200 bytes), which the FDA Study Data
Technical Conformance Guide requires for submissions; Stata ``help limits`` (names <= 32
characters, variable labels <= 80, value labels on integers only); SPSS names <= 64 bytes.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import odmlib.loader as odm_loader_facade
import odmlib.odm_1_3_2.model as ODM
import odmlib.odm_loader as odm_loaders
import polars as pl
import pyreadstat
from odmlib.odm_parser import ODMSchemaValidator
from odmlib.oid_generator import create_oid_checker

from immunostrat.errors import InputError

DataType = Literal["integer", "float", "text", "boolean", "date", "datetime"]
StatFormat = Literal["xpt", "dta", "sav"]

ODM_VERSION = "1.3.2"
ORIGINATOR = "immunostrat"
# The arm is not part of ODM 1.3.2 SubjectData: it travels as the one item of a randomization event.
RANDOMIZATION_OID = "RANDOMIZATION"
SIGNATURE_LEGAL_REASON = "Electronic signature of the investigator (21 CFR Part 11.50)"

# Per-format limits (module docstring gives the sources).
LABEL_LIMIT: dict[str, int] = {"xpt": 40, "dta": 80, "sav": 256}
FILE_LABEL_LIMIT: dict[str, int] = {"xpt": 40, "dta": 80, "sav": 64}
XPT_TEXT_LIMIT_BYTES = 200
BOOLEAN_LABELS: dict[int, str] = {0: "no", 1: "yes"}
DICTIONARY_FILE = "data_dictionary.csv"
DICTIONARY_COLUMNS = (
    "table",
    "dataset_in_file",
    "column",
    "name_in_file",
    "label",
    "type",
    "unit",
    "concept",
    "loinc",
    "code_list",
    "range",
    "required",
    "derived_from",
)


# --------------------------------------------------------------------------------------------------
# The interface: plain data, no ORM
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemInfo:
    """One field of a form, or one column of a table."""

    oid: str  # unique within its form, e.g. "platelets"
    label: str
    data_type: DataType
    unit: str | None = None
    concept: str | None = None  # concept id from the concept dictionary
    loinc: str | None = None
    choices: tuple[str, ...] = ()  # a code list; coded 1..n in Stata and SPSS files
    range: tuple[float, float] | None = None
    required: bool = False
    derived_from: str | None = None  # e.g. "sofa-1996 score from the form's fields" (an ODM MethodDef)


@dataclass(frozen=True)
class FormInfo:
    oid: str
    label: str
    items: tuple[ItemInfo, ...]


@dataclass(frozen=True)
class VisitInfo:
    oid: str
    label: str
    day: int
    forms: tuple[str, ...]  # form oids


@dataclass(frozen=True)
class StudyInfo:
    oid: str
    name: str
    description: str
    protocol_name: str
    version: str
    visits: tuple[VisitInfo, ...]
    forms: tuple[FormInfo, ...]


@dataclass(frozen=True)
class ItemValue:
    form_oid: str
    visit_oid: str
    item_oid: str
    value: str | int | float | bool | None
    # audit information for the ItemData (ODM AuditRecord): who, when, reason; optional
    user: str | None = None
    at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class SubjectRecord:
    subject_key: str
    site: str
    arm: str | None
    values: tuple[ItemValue, ...]
    signatures: tuple[tuple[str, str, datetime, str], ...] = ()  # (visit_oid, user, at, meaning)


@dataclass(frozen=True)
class NamesInFile:
    """The names a statistical format gives the tables and columns (XPT: <= 8 characters)."""

    datasets: dict[str, str] = field(default_factory=dict)  # table -> data set name in the file
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> name


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _utc_text(value: datetime, what: str) -> str:
    """ISO 8601 with an explicit offset (ODM datetimes are xs:dateTime); naive values are refused."""
    if value.tzinfo is None:
        raise InputError(
            "a time without a time zone", field=what, value=value.isoformat(), expected="an aware datetime"
        )
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _atomic_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    return Path(name)


def _label_with_unit(item: ItemInfo) -> str:
    return f"{item.label} ({item.unit})" if item.unit else item.label


def _fit_label(item: ItemInfo, limit: int, *, ascii_only: bool) -> str:
    """Label and unit within ``limit`` characters: the label is cut, the unit kept whole."""
    label, unit = item.label, f" ({item.unit})" if item.unit else ""
    if ascii_only:
        label, unit = _ascii(label), _ascii(unit)
    if len(label) + len(unit) <= limit:
        return label + unit
    if len(unit) >= limit - 8:  # a unit too long to keep beside a readable label
        return (label + unit)[:limit]
    return label[: limit - len(unit)].rstrip() + unit


def _ascii(text: str) -> str:
    """XPT version 5 is an ASCII format: micro becomes u, superscripts plain digits, the rest dropped."""
    text = text.replace("µ", "u").replace("μ", "u").replace("°", "deg")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _code_list_text(item: ItemInfo) -> str:
    if item.data_type == "boolean":
        return "; ".join(f"{k}={v}" for k, v in BOOLEAN_LABELS.items())
    return "; ".join(f"{i}={c}" for i, c in enumerate(item.choices, start=1))


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------------------------------
# CDISC ODM 1.3.2
# --------------------------------------------------------------------------------------------------


def _tt(text: str) -> ODM.TranslatedText:
    return ODM.TranslatedText(_content=text, lang="en")


def _oids(form_oid: str, item_oid: str) -> tuple[str, str, str]:
    """ItemDef, CodeList and MethodDef OIDs: item oids are unique within their form only."""
    return f"IT.{form_oid}.{item_oid}", f"CL.{form_oid}.{item_oid}", f"MT.{form_oid}.{item_oid}"


def _check_study(study: StudyInfo) -> dict[str, FormInfo]:
    forms: dict[str, FormInfo] = {}
    for form in study.forms:
        if form.oid in forms:
            raise InputError("form defined twice", field="forms", value=form.oid, expected="unique form oids")
        seen: set[str] = set()
        for item in form.items:
            if item.oid in seen:
                raise InputError(
                    "field defined twice in its form",
                    field=f"{form.oid}.{item.oid}",
                    value=item.oid,
                    expected="unique field oids within a form",
                )
            seen.add(item.oid)
        forms[form.oid] = form
    visits: set[str] = set()
    for visit in study.visits:
        if visit.oid in visits:
            raise InputError(
                "visit defined twice", field="visits", value=visit.oid, expected="unique visit oids"
            )
        visits.add(visit.oid)
        for f in visit.forms:
            if f not in forms:
                raise InputError(
                    "visit names a form the study does not define",
                    field=f"{visit.oid}.forms",
                    value=f,
                    expected=f"one of {sorted(forms)}",
                )
    if RANDOMIZATION_OID in visits or RANDOMIZATION_OID in forms:
        raise InputError(
            "the oid is reserved for the randomization event",
            field="visits/forms",
            value=RANDOMIZATION_OID,
            expected="another oid",
        )
    return forms


def _item_def(form: FormInfo, item: ItemInfo, unit_oids: dict[str, str]) -> ODM.ItemDef:
    it_oid, cl_oid, _ = _oids(form.oid, item.oid)
    kwargs: dict[str, Any] = {
        "OID": it_oid,
        "Name": item.oid,
        "DataType": item.data_type,
        "Description": ODM.Description(TranslatedText=[_tt(_label_with_unit(item))]),
        "Question": ODM.Question(TranslatedText=[_tt(item.label)]),
    }
    if item.derived_from:
        kwargs["Origin"] = "Derived"
    if item.unit:
        kwargs["MeasurementUnitRef"] = [ODM.MeasurementUnitRef(MeasurementUnitOID=unit_oids[item.unit])]
    if item.range is not None:
        low, high = item.range
        # Hard checks: the platform refuses a value outside the range at entry.
        kwargs["RangeCheck"] = [
            ODM.RangeCheck(
                Comparator=comparator, SoftHard="Hard", CheckValue=[ODM.CheckValue(_content=bound)]
            )
            for comparator, bound in (("GE", _number_text(low)), ("LE", _number_text(high)))
        ]
    if item.choices:
        kwargs["CodeListRef"] = ODM.CodeListRef(CodeListOID=cl_oid)
    aliases = []
    if item.concept:
        aliases.append(ODM.Alias(Context="immunostrat concept", Name=item.concept))
    if item.loinc:
        aliases.append(ODM.Alias(Context="LOINC", Name=item.loinc))
    if aliases:
        kwargs["Alias"] = aliases
    return ODM.ItemDef(**kwargs)


def _code_list(oid: str, name: str, choices: Iterable[str]) -> ODM.CodeList:
    return ODM.CodeList(
        OID=oid,
        Name=name,
        DataType="text",
        CodeListItem=[
            ODM.CodeListItem(CodedValue=c, OrderNumber=i, Decode=ODM.Decode(TranslatedText=[_tt(c)]))
            for i, c in enumerate(choices, start=1)
        ],
    )


def _metadata(study: StudyInfo, forms: dict[str, FormInfo], arms: list[str]) -> tuple[ODM.Study, str]:
    """The Study element: global variables, units, and one MetaDataVersion with the whole design."""
    mdv_oid = f"MDV.{study.oid}.{study.version}"
    units = sorted({i.unit for f in study.forms for i in f.items if i.unit})
    unit_oids = {u: f"MU.{u}" for u in units}
    visits = sorted(study.visits, key=lambda v: (v.day, v.oid))
    event_refs: list[ODM.StudyEventRef] = []
    event_defs: list[ODM.StudyEventDef] = []
    form_defs: list[ODM.FormDef] = []
    group_defs: list[ODM.ItemGroupDef] = []
    item_defs: list[ODM.ItemDef] = []
    code_lists: list[ODM.CodeList] = []
    methods: list[ODM.MethodDef] = []
    if arms:
        r = RANDOMIZATION_OID
        # Not mandatory: a snapshot may hold screened participants who were never randomized.
        event_refs.append(ODM.StudyEventRef(StudyEventOID=f"SE.{r}", OrderNumber=1, Mandatory="No"))
        event_defs.append(
            ODM.StudyEventDef(
                OID=f"SE.{r}",
                Name="Randomization",
                Repeating="No",
                Type="Common",
                FormRef=[ODM.FormRef(FormOID=f"F.{r}", OrderNumber=1, Mandatory="Yes")],
            )
        )
        form_defs.append(
            ODM.FormDef(
                OID=f"F.{r}",
                Name="Randomization",
                Repeating="No",
                ItemGroupRef=[ODM.ItemGroupRef(ItemGroupOID=f"IG.{r}", OrderNumber=1, Mandatory="Yes")],
            )
        )
        group_defs.append(
            ODM.ItemGroupDef(
                OID=f"IG.{r}",
                Name="Randomization",
                Repeating="No",
                ItemRef=[ODM.ItemRef(ItemOID=f"IT.{r}.ARM", OrderNumber=1, Mandatory="Yes")],
            )
        )
        item_defs.append(
            ODM.ItemDef(
                OID=f"IT.{r}.ARM",
                Name="arm",
                DataType="text",
                Question=ODM.Question(TranslatedText=[_tt("Allocated arm")]),
                CodeListRef=ODM.CodeListRef(CodeListOID=f"CL.{r}.ARM"),
            )
        )
        code_lists.append(_code_list(f"CL.{r}.ARM", "arm", arms))
    for order, visit in enumerate(visits, start=len(event_refs) + 1):
        event_refs.append(
            ODM.StudyEventRef(StudyEventOID=f"SE.{visit.oid}", OrderNumber=order, Mandatory="Yes")
        )
        event_defs.append(
            ODM.StudyEventDef(
                OID=f"SE.{visit.oid}",
                Name=visit.label,
                Repeating="No",
                Type="Scheduled",
                Description=ODM.Description(TranslatedText=[_tt(f"{visit.label} (study day {visit.day})")]),
                FormRef=[
                    ODM.FormRef(FormOID=f"F.{f}", OrderNumber=i, Mandatory="Yes")
                    for i, f in enumerate(visit.forms, start=1)
                ],
                Alias=[ODM.Alias(Context="study day", Name=str(visit.day))],
            )
        )
    for form in study.forms:
        form_defs.append(
            ODM.FormDef(
                OID=f"F.{form.oid}",
                Name=form.label,
                Repeating="No",
                ItemGroupRef=[
                    ODM.ItemGroupRef(ItemGroupOID=f"IG.{form.oid}", OrderNumber=1, Mandatory="Yes")
                ],
            )
        )
        refs = []
        for i, item in enumerate(form.items, start=1):
            it_oid, cl_oid, mt_oid = _oids(form.oid, item.oid)
            ref: dict[str, Any] = {
                "ItemOID": it_oid,
                "OrderNumber": i,
                "Mandatory": "Yes" if item.required else "No",
            }
            if item.derived_from:
                ref["MethodOID"] = mt_oid
                methods.append(
                    ODM.MethodDef(
                        OID=mt_oid,
                        Name=f"{form.oid}.{item.oid}",
                        Type="Computation",
                        Description=ODM.Description(TranslatedText=[_tt(item.derived_from)]),
                    )
                )
            refs.append(ODM.ItemRef(**ref))
            item_defs.append(_item_def(form, item, unit_oids))
            if item.choices:
                code_lists.append(_code_list(cl_oid, f"{form.oid}.{item.oid}", item.choices))
        group_defs.append(
            ODM.ItemGroupDef(OID=f"IG.{form.oid}", Name=form.label, Repeating="No", ItemRef=refs)
        )
    mdv_kwargs: dict[str, Any] = {
        "OID": mdv_oid,
        "Name": f"{study.protocol_name} {study.version}",
        "Description": study.description,
        "Protocol": ODM.Protocol(StudyEventRef=event_refs),
        "StudyEventDef": event_defs,
        "FormDef": form_defs,
        "ItemGroupDef": group_defs,
        "ItemDef": item_defs,
    }
    if code_lists:
        mdv_kwargs["CodeList"] = code_lists
    if methods:
        mdv_kwargs["MethodDef"] = methods
    # Keyword order is element order (odmlib checks it against the schema's sequence).
    study_kwargs: dict[str, Any] = {
        "OID": study.oid,
        "GlobalVariables": ODM.GlobalVariables(
            StudyName=ODM.StudyName(_content=study.name),
            StudyDescription=ODM.StudyDescription(_content=study.description),
            ProtocolName=ODM.ProtocolName(_content=study.protocol_name),
        ),
    }
    if units:
        study_kwargs["BasicDefinitions"] = ODM.BasicDefinitions(
            MeasurementUnit=[
                ODM.MeasurementUnit(OID=unit_oids[u], Name=u, Symbol=ODM.Symbol(TranslatedText=[_tt(u)]))
                for u in units
            ]
        )
    study_kwargs["MetaDataVersion"] = [ODM.MetaDataVersion(**mdv_kwargs)]
    return ODM.Study(**study_kwargs), mdv_oid


def _odm_value(item: ItemInfo, value: str | int | float | bool, where: str) -> str:
    """The ItemData Value text for the item's DataType; a value of the wrong kind is refused."""
    t = item.data_type
    ok = True
    text = str(value)
    if t == "boolean":
        ok = isinstance(value, bool)
        text = "true" if value is True else "false"
    elif t == "integer":
        if isinstance(value, bool):
            ok = False
        elif isinstance(value, float):
            ok = value.is_integer()
            text = str(int(value)) if ok else text
        elif isinstance(value, str):
            ok = re.fullmatch(r"[+-]?\d+", value.strip()) is not None
            text = value.strip()
    elif t == "float":
        if isinstance(value, bool):
            ok = False
        elif isinstance(value, int | float):
            ok = math.isfinite(float(value))
            text = repr(float(value)) if isinstance(value, float) else str(value)
        else:
            try:
                ok = math.isfinite(float(value))
            except ValueError:
                ok = False
    elif t in ("date", "datetime"):
        parse = date.fromisoformat if t == "date" else datetime.fromisoformat
        try:
            ok = isinstance(value, str) and parse(value) is not None
        except ValueError:
            ok = False
    elif t == "text":
        ok = isinstance(value, str)
    if not ok:
        raise InputError("value of the wrong type", field=where, value=value, expected=f"a {t} value")
    if item.choices and text not in item.choices:
        raise InputError(
            "value not in the code list", field=where, value=value, expected=f"one of {item.choices}"
        )
    return text


def _audit(user: str, at: datetime, site: str, reason: str | None, where: str) -> ODM.AuditRecord:
    kwargs: dict[str, Any] = {
        "UserRef": ODM.UserRef(UserOID=f"USR.{user}"),
        "LocationRef": ODM.LocationRef(LocationOID=f"LOC.{site}"),
        "DateTimeStamp": ODM.DateTimeStamp(_content=_utc_text(at, where)),
    }
    if reason:
        kwargs["ReasonForChange"] = ODM.ReasonForChange(_content=reason)
    return ODM.AuditRecord(**kwargs)


def _clinical_data(
    study: StudyInfo,
    forms: dict[str, FormInfo],
    subjects: Sequence[SubjectRecord],
    mdv_oid: str,
    signature_oids: dict[str, str],
) -> ODM.ClinicalData:
    visits = sorted(study.visits, key=lambda v: (v.day, v.oid))
    visit_by_oid = {v.oid: v for v in study.visits}
    subject_data: list[ODM.SubjectData] = []
    seen_keys: set[str] = set()
    for s in subjects:
        if s.subject_key in seen_keys:
            raise InputError(
                "subject listed twice", field="subject_key", value=s.subject_key, expected="unique keys"
            )
        seen_keys.add(s.subject_key)
        cells: dict[tuple[str, str, str], ItemValue] = {}
        for v in s.values:
            where = f"{s.subject_key}/{v.visit_oid}/{v.form_oid}.{v.item_oid}"
            visit = visit_by_oid.get(v.visit_oid)
            if visit is None:
                raise InputError(
                    "unknown visit", field=where, value=v.visit_oid, expected=f"one of {sorted(visit_by_oid)}"
                )
            if v.form_oid not in visit.forms:
                raise InputError(
                    "form not scheduled at this visit",
                    field=where,
                    value=v.form_oid,
                    expected=f"one of {visit.forms}",
                )
            if v.item_oid not in {i.oid for i in forms[v.form_oid].items}:
                raise InputError(
                    "unknown field of the form", field=where, value=v.item_oid, expected="a field of the form"
                )
            key = (v.visit_oid, v.form_oid, v.item_oid)
            if key in cells:
                raise InputError("value given twice (a snapshot holds one)", field=where, value=v.value)
            if (v.user is None) != (v.at is None):
                raise InputError(
                    "incomplete audit record",
                    field=where,
                    value=v.user or v.at,
                    expected="both user and time, or neither",
                )
            cells[key] = v
        signed: dict[str, tuple[str, datetime, str]] = {}
        for visit_oid, user, at, meaning in s.signatures:
            if visit_oid not in visit_by_oid:
                raise InputError(
                    "signature of an unknown visit", field=f"{s.subject_key}/signatures", value=visit_oid
                )
            signed[visit_oid] = (user, at, meaning)  # the latest signature of a visit stands
        events: list[ODM.StudyEventData] = []
        if s.arm is not None:
            r = RANDOMIZATION_OID
            events.append(
                ODM.StudyEventData(
                    StudyEventOID=f"SE.{r}",
                    FormData=[
                        ODM.FormData(
                            FormOID=f"F.{r}",
                            ItemGroupData=[
                                ODM.ItemGroupData(
                                    ItemGroupOID=f"IG.{r}",
                                    ItemData=[ODM.ItemData(ItemOID=f"IT.{r}.ARM", Value=s.arm)],
                                )
                            ],
                        )
                    ],
                )
            )
        for visit in visits:
            form_data = []
            for form_oid in visit.forms:
                form = forms[form_oid]
                item_data = []
                for item in form.items:
                    cell = cells.get((visit.oid, form_oid, item.oid))
                    if cell is None:
                        continue
                    where = f"{s.subject_key}/{visit.oid}/{form_oid}.{item.oid}"
                    kwargs: dict[str, Any] = {"ItemOID": _oids(form_oid, item.oid)[0]}
                    if cell.value is None:
                        kwargs["IsNull"] = "Yes"  # cleared on purpose (its audit record says why)
                    else:
                        kwargs["Value"] = _odm_value(item, cell.value, where)
                    if cell.user is not None and cell.at is not None:
                        kwargs["AuditRecord"] = _audit(cell.user, cell.at, s.site, cell.reason, where)
                    item_data.append(ODM.ItemData(**kwargs))
                if item_data:
                    form_data.append(
                        ODM.FormData(
                            FormOID=f"F.{form_oid}",
                            ItemGroupData=[
                                ODM.ItemGroupData(ItemGroupOID=f"IG.{form_oid}", ItemData=item_data)
                            ],
                        )
                    )
            signature = signed.get(visit.oid)
            if not form_data and signature is None:
                continue
            event: dict[str, Any] = {"StudyEventOID": f"SE.{visit.oid}"}
            if signature is not None:
                user, at, meaning = signature
                event["Signature"] = ODM.Signature(
                    ID=f"SIG.{s.subject_key}.{visit.oid}",
                    UserRef=ODM.UserRef(UserOID=f"USR.{user}"),
                    LocationRef=ODM.LocationRef(LocationOID=f"LOC.{s.site}"),
                    SignatureRef=ODM.SignatureRef(SignatureOID=signature_oids[meaning]),
                    DateTimeStamp=ODM.DateTimeStamp(
                        _content=_utc_text(at, f"{s.subject_key}/{visit.oid}/signature")
                    ),
                )
            event["FormData"] = form_data  # after the Signature, as the schema orders them
            events.append(ODM.StudyEventData(**event))
        subject_data.append(
            ODM.SubjectData(
                SubjectKey=s.subject_key,
                SiteRef=ODM.SiteRef(LocationOID=f"LOC.{s.site}"),
                StudyEventData=events,
            )
        )
    return ODM.ClinicalData(StudyOID=study.oid, MetaDataVersionOID=mdv_oid, SubjectData=subject_data)


def _admin_data(
    study: StudyInfo, subjects: Sequence[SubjectRecord], mdv_oid: str, as_of: datetime
) -> tuple[ODM.AdminData, dict[str, str]]:
    """Users (everyone who entered a value or signed), sites, and one SignatureDef per meaning."""
    users = sorted(
        {v.user for s in subjects for v in s.values if v.user}
        | {g[1] for s in subjects for g in s.signatures}
    )
    sites = sorted({s.site for s in subjects})
    meanings = sorted({g[3] for s in subjects for g in s.signatures})
    signature_oids = {m: f"SD.{i}" for i, m in enumerate(meanings, start=1)}
    kwargs: dict[str, Any] = {"StudyOID": study.oid}
    if users:
        kwargs["User"] = [ODM.User(OID=f"USR.{u}", LoginName=ODM.LoginName(_content=u)) for u in users]
    if sites:
        kwargs["Location"] = [
            ODM.Location(
                OID=f"LOC.{site}",
                Name=site,
                LocationType="Site",
                # The date the metadata version applies from at the site is not known here: the
                # snapshot's date is the date it is known to apply.
                MetaDataVersionRef=[
                    ODM.MetaDataVersionRef(
                        StudyOID=study.oid,
                        MetaDataVersionOID=mdv_oid,
                        EffectiveDate=as_of.astimezone(UTC).date().isoformat(),
                    )
                ],
            )
            for site in sites
        ]
    if meanings:
        kwargs["SignatureDef"] = [
            ODM.SignatureDef(
                OID=signature_oids[m],
                Methodology="Electronic",
                Meaning=ODM.Meaning(_content=m),
                LegalReason=ODM.LegalReason(_content=SIGNATURE_LEGAL_REASON),
            )
            for m in meanings
        ]
    return ODM.AdminData(**kwargs), signature_oids


def build_odm(study: StudyInfo, subjects: Sequence[SubjectRecord], *, as_of: datetime) -> ODM.ODM:
    """The odmlib ODM 1.3.2 document (FileType Snapshot) for the study and its subjects."""
    as_of_text = _utc_text(as_of, "as_of")
    forms = _check_study(study)
    arms = sorted({s.arm for s in subjects if s.arm is not None})
    study_elem, mdv_oid = _metadata(study, forms, arms)
    admin, signature_oids = _admin_data(study, subjects, mdv_oid, as_of)
    clinical = _clinical_data(study, forms, subjects, mdv_oid, signature_oids)
    created = datetime.now(UTC)
    odm = ODM.ODM(
        FileOID=f"{study.oid}.{created.strftime('%Y%m%dT%H%M%S%fZ')}",
        FileType="Snapshot",
        Granularity="All",
        CreationDateTime=_utc_text(created, "created"),
        AsOfDateTime=as_of_text,
        ODMVersion=ODM_VERSION,
        Originator=ORIGINATOR,
        SourceSystem=ORIGINATOR,
        Study=[study_elem],
        AdminData=[admin],
        ClinicalData=[clinical],
    )
    # Element order, every OID defined once and every OID reference defined.
    odm.validate(oid_checker=create_oid_checker("odm_1_3_2"))
    return odm


def load_odm(path: Path) -> Any:
    """Read an ODM 1.3.2 file back with odmlib's loader (the round-trip check; tests use it too)."""
    loader = odm_loader_facade.ODMLoader(odm_loaders.XMLODMLoader(model_package="odm_1_3_2"))
    loader.open_odm_document(str(path))
    return loader.root()


def _item_data_count(odm: Any) -> int:
    return sum(
        len(g.ItemData)
        for sd in odm.ClinicalData[0].SubjectData
        for e in sd.StudyEventData
        for f in e.FormData
        for g in f.ItemGroupData
    )


def write_odm(study: StudyInfo, subjects: Sequence[SubjectRecord], path: Path, *, as_of: datetime) -> Path:
    """ODM 1.3.2 XML (FileType Snapshot): study metadata (events, forms, item groups, items with units,
    ranges, code lists, methods), admin data (users, sites, signature meanings) and clinical data with
    audit records and visit signatures, built with odmlib. The written file is validated against the
    ODM 1.3.2 schema that odmlib ships and read back with odmlib's loader before it is moved into place.
    """
    odm = build_odm(study, subjects, as_of=as_of)
    path = Path(path)
    tmp = _atomic_file(path)
    try:
        odm.write_xml(str(tmp))
        ODMSchemaValidator(standard="odm", version=ODM_VERSION).validate_file(str(tmp))
        wrote, read = _item_data_count(odm), _item_data_count(load_odm(tmp))
        if wrote != read:
            raise RuntimeError(f"ODM round trip lost values: wrote {wrote} ItemData, read back {read}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# SAS XPT, Stata, SPSS and the data dictionary
# --------------------------------------------------------------------------------------------------


# Words that cannot name a variable: Stata User's Guide [U] 11.3 (plus "str" followed by digits);
# IBM SPSS Statistics, "Variable names" (the reserved keywords).
STATA_RESERVED = frozenset(
    [
        "_all",
        "_b",
        "byte",
        "_coef",
        "_cons",
        "double",
        "float",
        "if",
        "in",
        "int",
        "long",
        "_n",
        "_pi",
        "_pred",
        "_rc",
        "_skip",
        "strl",
        "using",
        "with",
    ]
)
SPSS_RESERVED = frozenset(["all", "and", "by", "eq", "ge", "gt", "le", "lt", "ne", "not", "or", "to", "with"])


@dataclass(frozen=True)
class _NameRules:
    limit: int
    upper: bool  # XPT: upper case, the SAS and FDA convention
    lead: str  # put before a name that starts badly or is reserved
    reserved: frozenset[str] = frozenset()
    reserved_pattern: str | None = None


_NAME_RULES: dict[str, _NameRules] = {
    "xpt": _NameRules(8, True, "_"),
    "dta": _NameRules(32, False, "_", STATA_RESERVED, r"str\d+"),
    "sav": _NameRules(64, False, "v_", SPSS_RESERVED),  # SPSS names start with a letter
}


def _short_names(names: Sequence[str], rules: _NameRules) -> dict[str, str]:
    """Valid names within the format's limit, unique case-insensitively: a name that fits is kept
    (whatever comes before it), the others are cut and, on a clash, numbered in order; a name that
    starts with a digit (or, in SPSS, not with a letter) or is a reserved word gets the lead prefix."""
    limit = rules.limit

    def reserved(candidate: str) -> bool:
        low = candidate.lower()
        pattern = rules.reserved_pattern
        return low in rules.reserved or (pattern is not None and re.fullmatch(pattern, low) is not None)

    def valid(name: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
        if base[0].isdigit() or (rules.lead[0].isalpha() and not base[0].isalpha()):
            base = rules.lead + base
        return base.upper() if rules.upper else base

    def cut(base: str, k: int) -> str:
        suffix = str(k) if k else ""
        candidate = base[: limit - len(suffix)] + suffix
        if reserved(candidate):  # no reserved word starts with "_" followed by a letter or "v_"
            candidate = (rules.lead + base)[: limit - len(suffix)] + suffix
        return candidate

    bases = {n: valid(n) for n in names}
    taken: set[str] = set()
    out: dict[str, str] = {}
    for n in names:
        b = bases[n]
        if len(b) <= limit and not reserved(b) and b.lower() not in taken:
            out[n] = b
            taken.add(b.lower())
    for n in names:
        if n in out:
            continue
        k = 0
        while (candidate := cut(bases[n], k)).lower() in taken or reserved(candidate):
            k += 1
        out[n] = candidate
        taken.add(candidate.lower())
    return {n: out[n] for n in names}


def names_in_file(tables: Mapping[str, pl.DataFrame], fmt: StatFormat) -> NamesInFile:
    """Deterministic names for each table and column in ``fmt`` (XPT: upper case, <= 8 characters,
    the FDA convention; Stata <= 32; SPSS <= 64; never a reserved word): a name is kept when it fits,
    else cut and, on a clash, numbered."""
    _check_format(fmt)
    rules = _NAME_RULES[fmt]
    return NamesInFile(
        datasets=_short_names(list(tables), rules),
        columns={t: _short_names(f.columns, rules) for t, f in tables.items()},
    )


def _check_format(fmt: str) -> None:
    if fmt not in _NAME_RULES:
        raise InputError("unknown statistical format", field="format", value=fmt, expected="xpt, dta or sav")


_DTYPES_OF: dict[str, tuple[type[pl.DataType], ...]] = {
    "integer": (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64),
    "float": (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64),
    "text": (pl.String, pl.Categorical, pl.Enum),
    "boolean": (pl.Boolean,),
    "date": (pl.Date,),
    "datetime": (pl.Datetime,),
}
_NULL_CAST: dict[str, pl.DataType] = {
    "integer": pl.Int64(),
    "float": pl.Float64(),
    "text": pl.String(),
    "boolean": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}


def _entries(
    tables: Mapping[str, pl.DataFrame], dictionary: Mapping[str, Mapping[str, ItemInfo]]
) -> dict[str, dict[str, ItemInfo]]:
    """The dictionary entry of every column of every table; a column without one is refused."""
    out: dict[str, dict[str, ItemInfo]] = {}
    for table, frame in tables.items():
        entries = dictionary.get(table, {})
        out[table] = {}
        for column in frame.columns:
            item = entries.get(column)
            if item is None:
                raise InputError(
                    f"column '{column}' of table '{table}' has no data dictionary entry",
                    field=f"{table}.{column}",
                    expected="an ItemInfo for every exported column",
                )
            dtype = frame.schema[column]
            if dtype != pl.Null and not isinstance(dtype, _DTYPES_OF[item.data_type]):
                raise InputError(
                    "column type does not match its dictionary entry",
                    field=f"{table}.{column}",
                    value=str(dtype),
                    expected=f"a {item.data_type} column",
                )
            out[table][column] = item
    return out


def _prepare(
    table: str, frame: pl.DataFrame, items: Mapping[str, ItemInfo], fmt: StatFormat
) -> tuple[pl.DataFrame, dict[str, dict[Any, str]]]:
    """The frame as the format stores it, and its value labels (Stata and SPSS)."""
    columns: list[pl.Expr] = []
    value_labels: dict[str, dict[Any, str]] = {}
    for column in frame.columns:
        item = items[column]
        dtype = frame.schema[column]
        expr = pl.col(column)
        if dtype == pl.Null:
            expr = expr.cast(_NULL_CAST[item.data_type])
            dtype = _NULL_CAST[item.data_type]
        if isinstance(dtype, pl.Categorical | pl.Enum):
            expr = expr.cast(pl.String)
        if item.data_type == "boolean":
            expr = expr.cast(pl.Int8)
            if fmt != "xpt":
                value_labels[column] = dict(BOOLEAN_LABELS)
        elif item.choices:
            values = frame.get_column(column).cast(pl.String).drop_nulls().unique().to_list()
            unknown = sorted(set(values) - set(item.choices))
            if unknown:
                raise InputError(
                    "value not in the code list",
                    field=f"{table}.{column}",
                    value=unknown[0],
                    expected=f"one of {item.choices}",
                )
            if fmt != "xpt":  # Stata labels integers only: both Stata and SPSS get codes 1..n
                codes = {c: i for i, c in enumerate(item.choices, start=1)}
                expr = expr.cast(pl.String).replace_strict(codes, default=None, return_dtype=pl.Int32)
                value_labels[column] = {i: c for c, i in codes.items()}
        elif isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            # The formats have no time zone: datetimes are written in UTC (the dictionary says so).
            expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        if fmt == "xpt" and item.data_type == "text" and not item.choices:
            too_long = frame.filter(pl.col(column).cast(pl.String).str.len_bytes() > XPT_TEXT_LIMIT_BYTES)
            if too_long.height:
                raise InputError(
                    "text too long for SAS transport version 5",
                    field=f"{table}.{column}",
                    value=too_long.get_column(column)[0][:40] + "...",
                    expected=f"at most {XPT_TEXT_LIMIT_BYTES} bytes",
                )
        columns.append(expr.alias(column))
    return frame.select(columns), value_labels


def write_statistical(
    tables: Mapping[str, pl.DataFrame],
    dictionary: Mapping[str, Mapping[str, ItemInfo]],
    folder: Path,
    fmt: StatFormat,
    *,
    study_label: str | None = None,
) -> list[Path]:
    """One file per table (participants.xpt, daily_assessments.xpt, ...), with variable labels
    (label + unit), value labels for code lists where the format supports them, and a file label;
    XPT names shortened to 8 characters when needed (deterministic, unique) with the mapping kept in
    the data dictionary. Booleans become 0/1 with value labels; datetimes stay datetimes (in UTC).

    Stata and SPSS files carry code lists as integer codes 1..n (the order of ``choices``) with value
    labels, because Stata labels integers only; XPT carries the text (SAS formats would need a catalog
    that the transport file cannot hold). ``data_dictionary.csv`` with the names in the file is
    written into the same folder and is the last path returned.
    """
    _check_format(fmt)
    entries = _entries(tables, dictionary)
    names = names_in_file(tables, fmt)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    written: list[Path] = []
    try:
        for table, frame in tables.items():
            data, value_labels = _prepare(table, frame, entries[table], fmt)
            rename = names.columns[table]
            data = data.rename(rename)
            value_labels = {rename[c]: v for c, v in value_labels.items()}
            labels: dict[str, str | None] = {
                rename[c]: _fit_label(i, LABEL_LIMIT[fmt], ascii_only=fmt == "xpt")
                for c, i in entries[table].items()
            }
            file_label = f"{study_label}: {table}" if study_label else table
            file_label = (_ascii(file_label) if fmt == "xpt" else file_label)[: FILE_LABEL_LIMIT[fmt]]
            target = tmp / f"{table}.{fmt}"
            if fmt == "xpt":
                pyreadstat.write_xport(
                    data,
                    str(target),
                    file_label=file_label,
                    column_labels=labels,
                    table_name=names.datasets[table],
                    file_format_version=5,  # the version the FDA accepts
                )
            elif fmt == "dta":
                pyreadstat.write_dta(
                    data,
                    str(target),
                    file_label=file_label,
                    column_labels=labels,
                    variable_value_labels=value_labels,
                )
            else:
                pyreadstat.write_sav(
                    data,
                    str(target),
                    file_label=file_label,
                    column_labels=labels,
                    variable_value_labels=value_labels,
                )
            written.append(target)
        dictionary_tmp = write_data_dictionary(
            tables, dictionary, tmp, names.columns, dataset_names=names.datasets
        )
        written.append(dictionary_tmp)
        folder.mkdir(parents=True, exist_ok=True)
        final = []
        for f in written:
            f.replace(folder / f.name)
            final.append(folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_data_dictionary(
    tables: Mapping[str, pl.DataFrame],
    dictionary: Mapping[str, Mapping[str, ItemInfo]],
    folder: Path,
    name_map: Mapping[str, Mapping[str, str]] | None = None,
    *,
    dataset_names: Mapping[str, str] | None = None,
) -> Path:
    """data_dictionary.csv: table, data set name in the file, column, name in the file (XPT short
    name), label, type, unit, concept, LOINC, code list (as coded in Stata and SPSS), range, required,
    derived from. Every column of every table appears; a column without an entry is refused."""
    entries = _entries(tables, dictionary)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / DICTIONARY_FILE
    tmp = _atomic_file(target)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(DICTIONARY_COLUMNS)
            for table, items in entries.items():
                for column, item in items.items():
                    kind: str = item.data_type
                    if kind == "datetime":
                        kind = "datetime (UTC)"
                    elif kind == "boolean":
                        kind = "boolean (0/1)"
                    writer.writerow(
                        (
                            table,
                            (dataset_names or {}).get(table, table),
                            column,
                            (name_map or {}).get(table, {}).get(column, column),
                            item.label,
                            kind,
                            item.unit or "",
                            item.concept or "",
                            item.loinc or "",
                            _code_list_text(item),
                            ""
                            if item.range is None
                            else f"{_number_text(item.range[0])} to {_number_text(item.range[1])}",
                            "yes" if item.required else "no",
                            item.derived_from or "",
                        )
                    )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
