"""The bedside page: a clinician types, pastes (our long format or a FHIR R4 Bundle) or uploads (a
FHIR Bundle) measurements in any accepted unit and sees the endotype, therapy, dose with renal
adjustment and every reason, decided by the same function that answers ``POST /classify``, and a
timeline of SOFA, ferritin, mHLA-DR and lactate with the protocol's thresholds, the endotype over
time and the study drug given; nothing is stored.

``/web/bedside/patients/{patient_id}`` is the same for a patient read from the FHIR server the app
is configured with (``IMMUNOSTRAT_FHIR_BASE_URL``, ``IMMUNOSTRAT_FHIR_TOKEN``): the CDS Hooks card's
link leads there."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from immunostrat.api import clinical
from immunostrat.api.auth import Principal, confirm_current
from immunostrat.api.cds import fhir_fetch
from immunostrat.api.cds.settings import FHIR_BASE_ENV, cds_settings
from immunostrat.concepts import load_concepts
from immunostrat.concepts.observations import detect_delimiter
from immunostrat.errors import InputError
from immunostrat.protocols import Protocol
from immunostrat.sources.fhir_patient import collect_patient, resources
from immunostrat.trial import eligibility
from immunostrat.web import bedside_timeline
from immunostrat.web.core import (
    CLASSIFIERS,
    PageError,
    add_main_page,
    page_router,
    posted,
    render,
    signed_in,
    user_of,
)

router = page_router()
add_main_page("/bedside", "Bedside", CLASSIFIERS)

PROTOCOL_ID = "immunosep-2025"
BEDSIDE_CONCEPTS = ("ferritin", "mhla_dr", "creatinine")
"""What the immunosep-2025 protocol decides from (ferritin, mHLA-DR) and doses by (creatinine)."""
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
"""A FHIR Bundle file for one patient at the bedside: 2 MiB is thousands of Observations."""
MAX_PASTE_CHARS = 200_000
MAX_ROWS = 5000
"""Measurements (typed, pasted and uploaded together) one request may hold."""
FHIR_PAGE_COUNT = 1000
FHIR_MAX_PAGES = 5
"""The patient page follows a searchset's ``next`` links at most this often (bounded, as the CDS fetch)."""
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
"""A FHIR resource id (R4 ``id`` datatype)."""
_ROW_FIELD = re.compile(r"^observations\[(\d+)\]\.(\w+)$")
LONG_COLUMNS = ("time", "concept", "value", "unit")


@dataclass
class Gathered:
    """Every measurement of one request with where it came from (for hover text and errors)."""

    patient: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    drugs: list[bedside_timeline.DrugPeriod] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, record: dict[str, Any], source: str) -> None:
        if len(self.records) >= MAX_ROWS:
            raise InputError(
                f"more than {MAX_ROWS} measurements", field=source, expected="one patient's data"
            )
        self.records.append(record)
        self.sources.append(source)

    def entered(self) -> list[str]:
        return [f"{r['value']} {r['unit']}".strip() for r in self.records]


def _bedside_rows() -> list[dict[str, Any]]:
    concepts = load_concepts()
    return [
        {
            "concept": c,
            "label": concepts[c].description.split(".")[0],
            "units": [
                u for u in dict.fromkeys(concepts[c].accepted_units) if u.isascii() or u.startswith("µ")
            ],
        }
        for c in BEDSIDE_CONCEPTS
    ]


# ------------------------------------------------------------------------------------- reading


def _study_drugs(protocol: Protocol) -> dict[str, tuple[set[str], float | None]]:
    """drug -> (names and codes that identify it, dosing interval in hours) from the protocol's regimens."""
    out: dict[str, tuple[set[str], float | None]] = {}
    for regimen in protocol.therapies.values():
        if regimen.drug == "none":
            continue
        names = {regimen.drug, regimen.drug.replace("_", " "), regimen.drug.replace("_", "-")}
        names |= {c.code.lower() for c in regimen.codings} | {
            (c.display or "").lower() for c in regimen.codings
        }
        out[regimen.drug] = ({n.lower() for n in names if n}, regimen.interval_hours)
    return out


def _utc(text: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _administrations(
    items: list[tuple[int | None, Mapping[str, Any]]],
    patient_id: str | None,
    protocol: Protocol,
    out: Gathered,
) -> None:
    """The protocol's study drugs given (FHIR MedicationAdministration): a period as given, a single
    time as the dosing interval it starts (the regimen's); other drugs are left out (noted)."""
    drugs = _study_drugs(protocol)
    for _row, res in items:
        if res.get("resourceType") != "MedicationAdministration":
            continue
        if str(res.get("status") or "") in ("entered-in-error", "not-done"):
            continue
        subject = res.get("subject")
        ref = str(subject.get("reference") or "") if isinstance(subject, Mapping) else ""
        if patient_id and ref and ref.split("/")[-1] != patient_id:
            continue
        med = res.get("medicationCodeableConcept")
        med = med if isinstance(med, Mapping) else {}
        codings = [c for c in med.get("coding") or [] if isinstance(c, Mapping)]
        words = [str(med.get("text") or "")] + [
            str(c.get(k) or "") for c in codings for k in ("display", "code")
        ]
        text = " ".join(words).lower()
        drug = next((d for d, (names, _) in drugs.items() if any(n in text for n in names)), None)
        name = next((w for w in words if w), "medication")
        source = f"FHIR MedicationAdministration/{res.get('id', '?')}"
        if drug is None:
            out.notes.append(f"{source} ({name}): not a study drug of {protocol.id}, not shown")
            continue
        period = res.get("effectivePeriod")
        period = period if isinstance(period, Mapping) else {}
        start = _utc(res.get("effectiveDateTime") or period.get("start"))
        end = _utc(period.get("end")) if period.get("end") else None
        if start is None:
            out.notes.append(f"{source} ({name}): no time, not shown")
            continue
        interval = drugs[drug][1]
        if end is None or end <= start:
            end = start + timedelta(hours=interval or 1.0)
        dosage = res.get("dosage")
        dose = dosage.get("dose") if isinstance(dosage, Mapping) else None
        amount = (
            f" {dose.get('value')} {dose.get('unit') or dose.get('code') or ''}"
            if isinstance(dose, Mapping)
            else ""
        )
        out.drugs.append(bedside_timeline.DrugPeriod(drug, start, end, f"{name}{amount}".strip(), source))


def gather_bundle(obj: Any, out: Gathered, protocol: Protocol, patient_id: str | None = None) -> None:
    """A FHIR Bundle (or resources) read by the API's FHIR reader; each record keeps its resource."""
    items: list[tuple[int | None, Mapping[str, Any]]] = list(enumerate(resources(obj, "bundle"), start=1))
    data = collect_patient(items, patient_id, field_name="bundle", site_codes=None, file=None)
    by_row = {row: res for row, res in items}
    for record, row in zip(data.records, data.record_rows, strict=True):
        res = by_row.get(row, {})
        out.add(
            {k: record[k] for k in LONG_COLUMNS},
            f"FHIR {res.get('resourceType', 'Observation')}/{res.get('id', '?')}",
        )
    out.patient.update({k: v for k, v in data.patient.items() if v is not None})
    out.notes += [f"not used: {i}" for i in data.ignored]
    _administrations(items, data.patient.get("patient_id"), protocol, out)


def gather_paste(text: str, out: Gathered, protocol: Protocol) -> None:
    """Pasted text: a FHIR Bundle (JSON) or lines ``time,concept,value,unit`` (a header line naming
    the columns is optional; ``;``, tab or ``|`` as in files)."""
    stripped = text.strip()
    if not stripped:
        return
    if len(stripped) > MAX_PASTE_CHARS:
        raise InputError(
            "pasted text too long", field="paste", value=f"{len(stripped)} characters",
            expected=f"at most {MAX_PASTE_CHARS} (upload a FHIR Bundle file instead)",
        )  # fmt: skip
    if stripped[0] in "{[":
        try:
            obj = json.loads(stripped)
        except ValueError as exc:
            raise InputError(
                f"pasted text is not JSON: {exc}", field="paste", expected="a FHIR R4 Bundle"
            ) from None
        gather_bundle(obj, out, protocol)
        return
    lines = stripped.splitlines()
    delimiter = detect_delimiter(lines[0], ("time", "concept", "value"), "pasted text")
    first = [c.strip().lower() for c in next(csv.reader([lines[0]], delimiter=delimiter), [])]
    header = "concept" in first and "time" in first
    columns = first if header else list(LONG_COLUMNS)
    unknown = [c for c in columns if c not in (*LONG_COLUMNS, "patient_id")]
    if unknown:
        raise InputError(
            "unknown column in the pasted header", row=1, field="header", value=unknown[0],
            expected="time, concept, value, unit (patient_id optional)",
        )  # fmt: skip
    patients: set[str] = set()
    for n, line in enumerate(lines, start=1):
        if (header and n == 1) or not line.strip():
            continue
        cells = [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]
        if not 3 <= len(cells) <= len(columns):
            raise InputError(
                f"{len(cells)} values where {len(columns)} are expected"
                + (" (a decimal comma?)" if len(cells) > len(columns) else ""),
                field=f"pasted line {n}", value=line.strip()[:80], expected=", ".join(columns),
            )  # fmt: skip
        row = dict(zip(columns, cells, strict=False))
        if row.get("patient_id"):
            patients.add(row["patient_id"])
            if len(patients) > 1:
                raise InputError(
                    "one patient at a time", field=f"pasted line {n}, column 'patient_id'",
                    value=row["patient_id"], expected=sorted(patients)[0],
                )  # fmt: skip
        out.add({k: row.get(k, "") for k in LONG_COLUMNS}, f"pasted line {n}")


def gather_typed(data: FormData, out: Gathered, at: datetime) -> None:
    for name in ("age", "sex", "weight_kg"):
        raw = str(data.get(name, "")).strip()
        if raw:
            out.patient[name] = raw
    for c in BEDSIDE_CONCEPTS:
        raw = str(data.get(f"{c}__value", "")).strip()
        if raw:
            unit = str(data.get(f"{c}__unit", ""))
            out.add({"time": at.isoformat(), "concept": c, "value": raw, "unit": unit}, "typed")


def _explain(exc: InputError, out: Gathered) -> str:
    """An error naming where the value came from (typed, pasted line 3, FHIR Observation/abc)."""
    m = _ROW_FIELD.match(exc.field or "")
    if m is not None and int(m[1]) < len(out.sources):
        where = f"{out.sources[int(m[1])]}, field '{m[2]}'"
        return str(InputError(exc.message, field=None, value=exc.value, expected=exc.expected)).replace(
            exc.message, f"{where}: {exc.message}", 1
        )
    if exc.row is not None and exc.field and exc.field.startswith("bundle"):
        return str(InputError(exc.message, field=f"FHIR entry {exc.row}: {exc.field}", value=exc.value,
                              expected=exc.expected))  # fmt: skip
    return str(exc)


# ------------------------------------------------------------------------------------- deciding


def decide(principal: Principal, out: Gathered, at: datetime, with_timeline: bool) -> dict[str, Any]:
    """The classification (``clinical.classify``, as POST /classify) and, when the data span time,
    the timeline. Blocking: run in the thread pool."""
    patient = {
        k: v for k, v in out.patient.items() if k in ("patient_id", "age", "sex", "weight_kg", "height_cm")
    }
    patient.setdefault("patient_id", "bedside")
    body = clinical.ClassifyIn.model_validate(
        {"patient": patient, "observations": out.records, "at": at, "protocol_id": PROTOCOL_ID},
        strict=False,
    )
    result = clinical.classify(body, principal)
    context: dict[str, Any] = {"result": result, "timeline": None}
    times = {r["time"] for r in out.records}
    if with_timeline and (len(times) > 1 or out.drugs):
        frame, patient_row, _ = clinical.canonical_frame(body)
        protocol = eligibility.load(PROTOCOL_ID)
        tl = bedside_timeline.build(frame, patient_row, out.sources, out.entered(), protocol, out.drugs)
        tl.svg = bedside_timeline.render(tl)
        context["timeline"] = tl if tl.svg else None
    return context


async def _answer(request: Request, principal: Principal, out: Gathered, at: datetime) -> dict[str, Any]:
    context: dict[str, Any] = {"result": None, "error": None, "timeline": None, "notes": out.notes}
    if not out.records:
        context["error"] = (
            "Type a ferritin or an mHLA-DR value, paste measurements or upload a FHIR Bundle to classify."
        )
        return context

    def work() -> dict[str, Any]:
        confirm_current(request, principal)
        return decide(principal, out, at, with_timeline=True)

    try:
        context.update(await run_in_threadpool(work))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if (
            loc[:1] == ["observations"]
            and len(loc) > 1
            and loc[1].isdigit()
            and int(loc[1]) < len(out.sources)
        ):
            where = f"{out.sources[int(loc[1])]}, field '{'.'.join(loc[2:])}'"
        else:
            where = ".".join(loc)
        context.update(result=None, timeline=None, error=f"{where}: {first['msg']}")
    except InputError as exc:
        context.update(result=None, timeline=None, error=_explain(exc, out))
    return context


@router.get("/bedside")
def bedside_page(request: Request) -> Response:
    principal = signed_in(request, CLASSIFIERS)
    context = {
        "user": user_of(request, principal),
        "rows": _bedside_rows(),
        "result": None,
        "error": None,
        "max_upload_mib": MAX_UPLOAD_BYTES // (1024 * 1024),
    }
    return render(request, "bedside.html", context)


@router.post("/bedside/classify")
async def bedside_classify(request: Request) -> Response:
    """As ``POST /classify`` (the same function answers): the endotype, therapy, dose and reasons
    for the values typed, pasted or uploaded so far, in any accepted unit, decided now, and the
    timeline when the values span time; htmx swaps the result in."""
    length = request.headers.get("content-length")
    limit = MAX_UPLOAD_BYTES + MAX_PASTE_CHARS * 4 + 65536  # the file, the pasted text (UTF-8) and the fields
    if length is not None and length.isdigit() and int(length) > limit:
        # refused unread (no CSRF check needed: nothing is done); htmx swaps only a 2xx answer
        principal = signed_in(request, CLASSIFIERS)
        mib = MAX_UPLOAD_BYTES // 1048576
        too_big: dict[str, Any] = {
            "result": None,
            "timeline": None,
            "notes": [],
            "error": f"too much data: the file may be at most {mib} MiB",
        }
        if request.headers.get("HX-Request"):
            return render(request, "_bedside_result.html", too_big)
        too_big.update(user=user_of(request, principal), rows=_bedside_rows(), max_upload_mib=mib)
        return render(request, "bedside.html", too_big, status=413)
    principal, data = await posted(request, CLASSIFIERS)
    at = datetime.now(UTC)
    out = Gathered()
    protocol = eligibility.load(PROTOCOL_ID)
    context: dict[str, Any]
    try:
        upload = data.get("bundle_file")
        if isinstance(upload, UploadFile) and upload.filename:
            raw = await upload.read(MAX_UPLOAD_BYTES + 1)
            if len(raw) > MAX_UPLOAD_BYTES:
                raise InputError(
                    "file too large", file=upload.filename, value=f"over {MAX_UPLOAD_BYTES} bytes",
                    expected=f"a FHIR Bundle of at most {MAX_UPLOAD_BYTES // 1048576} MiB",
                )  # fmt: skip
            try:
                obj = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise InputError(
                    f"not JSON: {exc}", file=upload.filename, expected="a FHIR R4 Bundle (JSON)"
                ) from None
            gather_bundle(obj, out, protocol)
        gather_paste(str(data.get("paste", "")), out, protocol)
        gather_typed(data, out, at)
        context = await _answer(request, principal, out, at)
    except InputError as exc:
        context = {"result": None, "timeline": None, "notes": [], "error": _explain(exc, out)}
    if not request.headers.get("HX-Request"):
        values = {k: v for k, v in data.items() if isinstance(v, str)}
        context.update(user=user_of(request, principal), rows=_bedside_rows(), values=values)
        context["max_upload_mib"] = MAX_UPLOAD_BYTES // (1024 * 1024)
        return render(request, "bedside.html", context)
    return render(request, "_bedside_result.html", context)


# ------------------------------------------------------------------- a patient from the FHIR server


def fetch_patient(base: str, token: str | None, patient_id: str) -> tuple[dict[str, Any], list[str]]:
    """The patient's Patient, Observations and MedicationAdministrations from the FHIR server,
    bounded as the CDS Hooks fetch (timeout, response size, pages); notes for what was not read."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    notes: list[str] = []
    pid = quote(patient_id, safe="")
    data: dict[str, Any] = {}
    with httpx.Client(timeout=fhir_fetch.FETCH_TIMEOUT_S, headers=headers, follow_redirects=False) as client:
        try:
            data["patient"] = fhir_fetch.get_json(client, f"{base}/Patient/{pid}")
        except HTTPException as exc:
            if "answered 404" in str(exc.detail) or "answered 410" in str(exc.detail):
                raise PageError(404, f"patient {patient_id} is not on the FHIR server {base}") from None
            raise PageError(502, str(exc.detail)) from None
        searches = (
            ("observations", "Observation", True),
            ("administrations", "MedicationAdministration", False),
        )
        for key, kind, required in searches:
            url: str | None = f"{base}/{kind}?patient={pid}&_count={FHIR_PAGE_COUNT}"
            pages: list[Any] = []
            while url and len(pages) < FHIR_MAX_PAGES:
                try:
                    page = fhir_fetch.get_json(client, url)
                except HTTPException as exc:
                    if required:
                        raise PageError(502, str(exc.detail)) from None
                    notes.append(f"{kind} not read: {exc.detail}")
                    url = None
                    break
                pages.append(page)
                links = page.get("link") if isinstance(page, Mapping) else None
                url = next(
                    (
                        str(x.get("url"))
                        for x in links or []
                        if isinstance(x, Mapping) and x.get("relation") == "next"
                    ),
                    None,
                )
                if url and not url.startswith(base + "/"):
                    notes.append(f"{kind}: a next page outside {base} was not followed")
                    url = None
            if url:
                notes.append(f"{kind}: more than {FHIR_MAX_PAGES} pages; the first were read")
            data[key] = pages
    return data, notes


@router.get("/bedside/patients/{patient_id}")
async def bedside_patient(request: Request, patient_id: str) -> Response:
    """One patient from the configured FHIR server: the classification now and the timeline."""
    principal = signed_in(request, CLASSIFIERS)
    if not FHIR_ID.match(patient_id):
        raise PageError(404, "not a FHIR patient id (letters, digits, '-' and '.', at most 64)")
    settings = cds_settings(request)
    if settings.fhir_base_url is None:
        raise PageError(503, f"no FHIR server is configured ({FHIR_BASE_ENV})")
    base = settings.fhir_base_url
    at = datetime.now(UTC)
    try:
        bundle, notes = await run_in_threadpool(fetch_patient, base, settings.fhir_token, patient_id)
    except httpx.HTTPError as exc:
        raise PageError(502, f"the FHIR server {base} could not be reached: {type(exc).__name__}") from None
    out = Gathered(notes=notes)
    try:
        gather_bundle(bundle, out, eligibility.load(PROTOCOL_ID), patient_id)
        context = await _answer(request, principal, out, at)
    except InputError as exc:
        context = {"result": None, "timeline": None, "notes": notes, "error": _explain(exc, out)}
    patient = {k: out.patient.get(k) for k in ("age", "sex", "weight_kg")}
    context.update(
        user=user_of(request, principal), patient_id=patient_id, patient=patient, fhir_base=base,
        measurements=len(out.records),
    )  # fmt: skip
    return render(request, "bedside_patient.html", context)
