"""FHIR R4 resources (as JSON) into our long-format records: one patient at the bedside (API, CDS
Hooks: ``read_fhir``), or a file of many patients for the command line (``read_fhir_file``: a Bundle,
a resource, or NDJSON with one resource per line).

Observations are read by LOINC code, our local code for concepts without one, or a site's own codes
(``--site-codes``); body weight (LOINC 29463-7, 3141-9) and height (8302-2) fill the patient's
``weight_kg`` and ``height_cm``; Patients give age and sex; MedicationRequests give names.

Bulk input reads the JSON directly (design.md section 4: full model validation is for the bedside).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.concepts import (
    ObservationSet,
    empty_patients,
    load_concepts,
    observations_from_records,
    read_patients,
    validate_patients,
)
from immunostrat.concepts.observations import PATIENT_RANGES
from immunostrat.concepts.site_codes import SiteCodes
from immunostrat.errors import InputError

LOINC = "http://loinc.org"
LOCAL_SYSTEM = "urn:immunostrat:local"
_SKIP_STATUS = {"entered-in-error", "cancelled"}

# Body size for renal dose adjustment (Cockcroft-Gault needs weight). LOINC 29463-7 "Body weight" is
# the FHIR R4 vital-signs profile's code; 3141-9 "Body weight Measured" is what many labs send;
# 8302-2 "Body height" (both pass the LOINC mod-10 check digit).
BODY_WEIGHT_LOINC = ("29463-7", "3141-9")
BODY_HEIGHT_LOINC = ("8302-2",)
# Factors into kg and cm: the avoirdupois pound is 0.45359237 kg and the inch 2.54 cm exactly
# (international yard and pound agreement, 1959); keys are UCUM codes and their common spellings.
KG_PER_UNIT = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}
CM_PER_UNIT = {"cm": 1.0, "m": 100.0, "mm": 0.1, "[in_i]": 2.54, "in": 2.54}
_BODY = {
    **{code: ("weight_kg", "body weight", KG_PER_UNIT, "kg") for code in BODY_WEIGHT_LOINC},
    **{code: ("height_cm", "body height", CM_PER_UNIT, "cm") for code in BODY_HEIGHT_LOINC},
}


@dataclass
class FhirPatientData:
    patient: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # Where each record came from (NDJSON line or Bundle entry, 1-based) when read from a file.
    record_rows: list[int | None] = field(default_factory=list)
    birth_date: str | None = None


def _shaped(value: Any, kind: type, where: str, file: str | None = None, row: int | None = None) -> Any:
    """``value`` when it is a JSON ``kind`` (object or array), empty when absent, else one InputError:
    FHIR of the wrong shape (``entry`` or ``coding`` not an array, ``subject`` or ``code`` a string)."""
    if value is None:
        return [] if kind is list else {}
    if isinstance(value, kind):
        return value
    expected = "a JSON object" if kind is Mapping else "a JSON array"
    raise InputError(
        f"FHIR element of the wrong shape: {type(value).__name__} where FHIR has {expected}",
        file=file,
        row=row,
        field=where,
        value=str(value)[:80],
        expected=expected,
    )


def resources(obj: Any, where: str = "bundle") -> Iterable[Mapping[str, Any]]:
    """Every resource in a Bundle, a list, a single resource, or a mapping of prefetch results."""
    if obj is None:
        return
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from resources(item, f"{where}[{i}]")
        return
    if not isinstance(obj, Mapping):
        return
    kind = obj.get("resourceType")
    if kind == "Bundle":
        for i, entry in enumerate(_shaped(obj.get("entry"), list, f"{where}.entry")):
            if isinstance(entry, Mapping):
                yield from resources(entry.get("resource"), f"{where}.entry[{i}].resource")
    elif kind is not None:
        yield obj
    else:  # a prefetch mapping: key -> resource or bundle
        for key, value in obj.items():
            yield from resources(value, f"{where}.{key}")


def _concept_for(coding: Mapping[str, Any], site_codes: SiteCodes | None) -> tuple[str, str | None] | None:
    """(concept id, the site's unit or None) for one coding: LOINC, our local code, or a site code."""
    concepts = load_concepts()
    code = str(coding.get("code") or "")
    system = str(coding.get("system") or "")
    if system == LOINC:
        found = concepts.by_loinc(code)
        if found is not None:
            return found.id, None
    else:
        for c in concepts:
            if c.local_code and c.local_code == code:
                return c.id, None
    site = site_codes.for_coding(system, code) if site_codes is not None else None
    return (site.concept, site.unit) if site is not None else None


def _age(birth: str, at: datetime) -> float | None:
    try:
        born = date.fromisoformat(birth[:10])
    except ValueError:
        return None
    return round((at.date() - born).days / 365.25, 2)


def _sex(gender: Any) -> str | None:
    return {"female": "F", "male": "M", "other": "other"}.get(str(gender or "").lower())


def _time(obs: Mapping[str, Any]) -> str | None:
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if obs.get(key):
            return str(obs[key])
    period = obs.get("effectivePeriod")
    if isinstance(period, Mapping) and period.get("start"):
        return str(period["start"])
    return None


_NO_TIME = datetime.min.replace(tzinfo=UTC)


def _sort_time(text: str | None) -> datetime:
    """A time to order body measurements by (latest wins); unreadable or missing sorts first."""
    try:
        parsed = datetime.fromisoformat(str(text))
    except ValueError:
        return _NO_TIME
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _body_measurement(
    res: Mapping[str, Any], code: str, row: int | None, file: str | None
) -> tuple[str, float] | None:
    """(patient column, value in kg or cm) of a body weight or height Observation; bad unit or
    implausible value: InputError naming the resource."""
    column, name, factors, unit_name = _BODY[code]
    where = f"Observation/{res.get('id', '?')}.valueQuantity"
    quantity = res.get("valueQuantity")
    if not isinstance(quantity, Mapping) or quantity.get("value") is None:
        return None
    spellings = [str(quantity.get(k) or "").strip() for k in ("code", "unit")]
    factor = next((factors.get(s, factors.get(s.lower())) for s in spellings if s), None)
    if factor is None:
        raise InputError(
            f"{name} in an unknown unit",
            file=file,
            row=row,
            field=f"{where}.unit",
            value=next((s for s in spellings if s), ""),
            expected=" or ".join(factors),
        )
    try:
        value = float(quantity["value"]) * factor
    except (TypeError, ValueError):
        raise InputError(
            f"{name} is not a number", file=file, row=row, field=f"{where}.value", value=quantity["value"]
        ) from None
    low, high = PATIENT_RANGES[column]
    if not low <= value <= high:
        raise InputError(
            f"{name} {value:g} {unit_name} is outside the plausible range",
            file=file,
            row=row,
            field=f"{where}.value",
            value=quantity["value"],
            expected=f"{low:g} to {high:g} {unit_name} (check the unit)",
        )
    return column, round(value, 3)


def collect_patient(
    items: list[tuple[int | None, Mapping[str, Any]]],
    patient_id: str | None,
    *,
    field_name: str,
    site_codes: SiteCodes | None,
    file: str | None,
) -> FhirPatientData:
    out = FhirPatientData()
    if not items:
        raise InputError("no FHIR resources found", field=field_name, expected="a Bundle or resources")
    for _row, res in items:
        if res.get("resourceType") == "Patient":
            pid = str(res.get("id") or patient_id or "patient")
            if patient_id is None:
                patient_id = pid
            if pid != patient_id:
                continue
            out.patient = {"patient_id": pid, "sex": _sex(res.get("gender"))}
            if res.get("birthDate"):
                out.birth_date = str(res["birthDate"])
                out.patient["age"] = _age(out.birth_date, datetime.now(UTC))
    body: dict[str, tuple[datetime, float]] = {}
    for row, res in items:
        kind = res.get("resourceType")
        where = f"{field_name}: {kind}/{res.get('id', '?')}"
        subject = str(
            _shaped(res.get("subject"), Mapping, f"{where}.subject", file, row).get("reference") or ""
        )
        subject_id = subject.split("/")[-1] if subject else None
        if patient_id is not None and subject_id is not None and subject_id != patient_id:
            continue
        if kind == "Observation":
            if str(res.get("status") or "") in _SKIP_STATUS:
                continue
            code = _shaped(res.get("code"), Mapping, f"{where}.code", file, row)
            codings = [
                x
                for x in _shaped(code.get("coding"), list, f"{where}.code.coding", file, row)
                if isinstance(x, Mapping)
            ]
            body_code = next(
                (
                    str(x.get("code"))
                    for x in codings
                    if x.get("system") == LOINC and str(x.get("code")) in _BODY
                ),
                None,
            )
            if body_code is not None:
                measured = _body_measurement(res, body_code, row, file)
                if measured is not None:
                    column, value = measured
                    when = _sort_time(_time(res))
                    if column not in body or when >= body[column][0]:
                        body[column] = (when, value)
                    continue
            found = next((c for c in (_concept_for(x, site_codes) for x in codings) if c), None)
            label = ", ".join(f"{x.get('system', '')}|{x.get('code', '')}" for x in codings)
            quantity = res.get("valueQuantity")
            when_text = _time(res)
            if (
                found is None
                or not isinstance(quantity, Mapping)
                or quantity.get("value") is None
                or not when_text
            ):
                reason = "unknown code" if found is None else "no valueQuantity or time"
                out.ignored.append(f"Observation {res.get('id', '?')} ({label or 'no code'}: {reason})")
                continue
            if patient_id is None:
                patient_id = subject_id or "patient"
            concept, site_unit = found
            unit = str(quantity.get("unit") or quantity.get("code") or "") or (site_unit or "")
            out.records.append(
                {
                    "patient_id": patient_id,
                    "time": when_text,
                    "concept": concept,
                    "value": quantity.get("value"),
                    "unit": unit,
                }
            )
            out.record_rows.append(row)
        elif kind == "MedicationRequest":
            if str(res.get("status") or "") in _SKIP_STATUS | {"stopped", "completed"}:
                continue
            med = _shaped(
                res.get("medicationCodeableConcept"), Mapping, f"{where}.medicationCodeableConcept", file, row
            )
            med_codings = _shaped(
                med.get("coding"), list, f"{where}.medicationCodeableConcept.coding", file, row
            )
            names = [str(med.get("text") or "")]
            names += [
                str(c.get("display") or c.get("code") or "") for c in med_codings if isinstance(c, Mapping)
            ]
            out.medications.append(
                {
                    "name": next((n for n in names if n), "unnamed medication"),
                    "search": " ".join(names).lower(),
                    "status": str(res.get("status") or ""),
                }
            )
    if not out.patient:
        out.patient = {"patient_id": patient_id or "patient"}
    for column, (_when, value) in body.items():
        out.patient[column] = value
    for r in out.records:
        r["patient_id"] = out.patient["patient_id"]
    return out


def read_fhir(
    obj: Any,
    patient_id: str | None = None,
    *,
    field_name: str = "bundle",
    site_codes: SiteCodes | None = None,
) -> FhirPatientData:
    """Collect one patient's data; ``patient_id`` defaults to the first Patient (or subject) seen.

    The patient's ``weight_kg`` and ``height_cm`` come from the latest body weight / height
    Observation; age is taken today (the bedside).
    """
    items: list[tuple[int | None, Mapping[str, Any]]] = [(None, r) for r in resources(obj, field_name)]
    return collect_patient(items, patient_id, field_name=field_name, site_codes=site_codes, file=None)


# ---------------------------------------------------------------- files of many patients


def _not_fhir(name: str, row: int | None, obj: Any) -> InputError:
    keys = ", ".join(list(obj)[:4]) if isinstance(obj, Mapping) else type(obj).__name__
    return InputError(
        "not FHIR: no resourceType",
        file=name,
        row=row,
        field="resourceType",
        value=keys,
        expected="a FHIR R4 Bundle or resource (.json), or one resource per line (.ndjson)",
    )


def _entries(
    obj: Any, row: int | None, name: str
) -> Iterator[tuple[int | None, str | None, Mapping[str, Any]]]:
    """(row, fullUrl, resource) of a Bundle (row = entry number unless given), a resource, or a list."""
    if isinstance(obj, list):
        for i, item in enumerate(obj, start=1):
            yield from _entries(item, row or i, name)
        return
    if not isinstance(obj, Mapping) or "resourceType" not in obj:
        raise _not_fhir(name, row, obj)
    if obj["resourceType"] != "Bundle":
        yield row or 1, None, obj
        return
    for i, entry in enumerate(obj.get("entry") or [], start=1):
        if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping):
            full_url = entry.get("fullUrl")
            for _r, _u, res in _entries(entry["resource"], row or i, name):
                yield row or i, str(full_url) if full_url else None, res


def read_fhir_resources(path: str | Path) -> list[tuple[int | None, str | None, Mapping[str, Any]]]:
    """Every resource of a FHIR file with where it is: .json (Bundle, resource or list; row = entry
    number) or .ndjson (one resource or Bundle per line; row = line number)."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InputError("file not found", file=name, expected="an existing FHIR .json or .ndjson file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".ndjson":
        found: list[tuple[int | None, str | None, Mapping[str, Any]]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"not JSON: {exc.msg}",
                    file=name,
                    row=number,
                    field="line",
                    value=line.strip()[:40],
                    expected="one FHIR resource as JSON per line",
                ) from None
            found.extend(_entries(obj, number, name))
        return found
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            file=name,
            expected="a FHIR R4 Bundle or resource as JSON",
        ) from None
    return list(_entries(obj, None, name))


def _reference_id(reference: str, full_urls: Mapping[str, str]) -> str:
    return full_urls.get(reference) or reference.split("/")[-1]


def read_fhir_file(
    path: str | Path,
    *,
    patients: str | Path | None = None,
    site_codes: SiteCodes | None = None,
    lenient: bool = False,
) -> ObservationSet:
    """A FHIR file of one or many patients as the observation and patient tables, validated as a CSV
    would be (errors name the NDJSON line or Bundle entry as the row).

    Resources are grouped by their subject (``Patient/<id>`` or a Bundle ``fullUrl``); with a single
    Patient, resources without a subject belong to it. Age is taken at the patient's last
    observation. A patient table (``patients``) wins over FHIR for the values it gives.
    """
    name = str(path)
    items = read_fhir_resources(path)
    if not items:
        raise InputError("no FHIR resources found", file=name, expected="a Bundle or resources")
    full_urls = {
        url: str(res.get("id") or url)
        for _row, url, res in items
        if url and res.get("resourceType") == "Patient"
    }
    patient_ids = [
        str(res.get("id") or "patient") for _r, _u, res in items if res.get("resourceType") == "Patient"
    ]
    groups: dict[str, list[tuple[int | None, Mapping[str, Any]]]] = {pid: [] for pid in patient_ids}
    unattached: list[str] = []
    for row, _url, res in items:
        if res.get("resourceType") == "Patient":
            groups[str(res.get("id") or "patient")].append((row, res))
            continue
        where = f"{res.get('resourceType')}/{res.get('id', '?')}.subject"
        reference = str(_shaped(res.get("subject"), Mapping, where, name, row).get("reference") or "")
        if reference:
            groups.setdefault(_reference_id(reference, full_urls), []).append((row, res))
        elif len(patient_ids) == 1:
            groups[patient_ids[0]].append((row, res))
        else:
            unattached.append(f"{res.get('resourceType')} {res.get('id', '?')}")
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    patient_rows: list[dict[str, str | None]] = []
    ignored: list[str] = []
    for pid, group in groups.items():
        # Subjects were resolved above, so the reader sees this patient's own id on every resource.
        relabelled = [(row, _with_subject(res, pid)) for row, res in group]
        data = collect_patient(relabelled, pid, field_name="file", site_codes=site_codes, file=name)
        records.extend(data.records)
        rows.extend(r or 0 for r in data.record_rows)
        ignored.extend(data.ignored)
        patient = dict(data.patient)
        last = max((_sort_time(str(r["time"])) for r in data.records), default=_NO_TIME)
        if data.birth_date and last != _NO_TIME:
            patient["age"] = _age(data.birth_date, last)
        patient_rows.append(
            {
                k: None if patient.get(k) is None else str(patient[k])
                for k in ("patient_id", "age", "sex", "weight_kg", "height_cm")
            }
        )
    patient_frame = _patient_table(patient_rows, name)
    if patients is not None:
        patient_frame = _merge_patients(read_patients(patients), patient_frame)
    result = observations_from_records(records, patient_frame, source=name, lenient=lenient, source_rows=rows)
    if unattached:
        ignored.extend(f"{u} (no subject)" for u in unattached)
    if ignored:
        shown = "; ".join(ignored[:5]) + (f"; and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        result.notes.append(f"{name}: {len(ignored)} FHIR resource(s) not used: {shown}")
    return result


def _with_subject(res: Mapping[str, Any], patient_id: str) -> Mapping[str, Any]:
    if res.get("resourceType") == "Patient" or not res.get("subject"):
        return res
    return {**res, "subject": {"reference": f"Patient/{patient_id}"}}


def _patient_table(rows: list[dict[str, str | None]], name: str) -> pl.DataFrame:
    if not rows:
        return empty_patients()
    columns = ("patient_id", "age", "sex", "weight_kg", "height_cm")
    raw = pl.DataFrame(rows, schema={c: pl.String for c in columns})
    return validate_patients(raw, source=name)


def _merge_patients(table: pl.DataFrame, fhir: pl.DataFrame) -> pl.DataFrame:
    """The patient table's values where it gives them, else FHIR's; patients of either."""
    ids = pl.concat([table.select("patient_id"), fhir.select("patient_id")]).unique(maintain_order=True)
    joined = ids.join(table, on="patient_id", how="left").join(
        fhir, on="patient_id", how="left", suffix="_fhir"
    )
    return joined.select(
        "patient_id",
        *[pl.coalesce(pl.col(c), pl.col(f"{c}_fhir")).alias(c) for c in table.columns if c != "patient_id"],
    )
