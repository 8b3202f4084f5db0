"""The trial's records: exports (every format of ``trial export``, as a zip), the analysis report
of the unblinded export after the lock (HTML and PDF, by the analysis package's own report), and
adverse events (the list, recording one, the expedited-report clock and "report sent").

Each page allows the roles of the API operation it stands for and calls the same trial function.
Arms: the blinded export and every adverse-event page hold none; the unblinded export and the
report exist only where :func:`~immunostrat.trial.export_access.check_export` lets them (the
statistician, after the lock).
"""

from __future__ import annotations

import io
import secrets
import tempfile
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from immunostrat.api import data_routes, routes
from immunostrat.api.app import unit_of_work
from immunostrat.api.auth import Principal
from immunostrat.errors import InputError
from immunostrat.trial import blinding, forms, service
from immunostrat.trial.definition import SERIOUSNESS_CRITERIA
from immunostrat.trial.export_access import UNBLINDED_EXPORTERS, check_export, unblinded_refusal
from immunostrat.trial.export_files import EXPORT_FORMATS, write_trial_export
from immunostrat.trial.models import as_utc, utcnow
from immunostrat.trial.schemas import AdverseEventIn, AdverseEventReportIn
from immunostrat.web.core import (
    CLINICAL_READERS,
    INVESTIGATOR,
    PageError,
    _roles,
    add_trial_page,
    page_router,
    posted,
    render,
    signed_in,
    trial_nav,
    user_of,
)

router = page_router()

EXPORTERS = _roles(routes.EXPORTERS)
"""The roles of GET /trials/{id}/export."""
REPORT_READERS = EXPORTERS & UNBLINDED_EXPORTERS
"""The analysis report is of the unblinded export: the roles that may take it (after the lock)."""
AE_REPORTERS = _roles(data_routes.INVESTIGATOR)
"""The roles of POST /trials/{id}/adverse-events/{ae_id}/report."""

add_trial_page("/exports", "Exports", EXPORTERS, rank=40)
add_trial_page("/analysis", "Analysis report", REPORT_READERS, rank=41)
add_trial_page("/adverse-events", "Adverse events", CLINICAL_READERS, rank=42)

FORMAT_LABELS = {
    "csv": "CSV (the analysis tables)",
    "parquet": "Parquet (the analysis tables)",
    "odm": "CDISC ODM 1.3.2 XML (forms, audit records, signatures)",
    "xpt": "SAS transport (XPT) with labels",
    "dta": "Stata (.dta) with labels",
    "sav": "SPSS (.sav) with labels",
}


def _trial_context(request: Request, principal: Principal, trial_id: int) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        view = blinding.blind_trial_view(service.trial_view(session, trial, actor), actor)
        view["has_forms"] = forms.has_forms(trial)
        view["unblinded_refusal"] = unblinded_refusal(trial, actor.role)
    return {"user": user_of(request, principal), "trial": view, "nav": trial_nav(principal, trial_id)}


# ------------------------------------------------------------------------------------- exports


@router.get("/trials/{trial_id}/exports")
def exports_page(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, EXPORTERS)
    context = _trial_context(request, principal, trial_id)
    formats = [f for f in EXPORT_FORMATS if f != "odm" or context["trial"]["has_forms"]]
    context["formats"] = [(f, FORMAT_LABELS[f]) for f in formats]
    return render(request, "records_exports.html", context)


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in sorted(folder.iterdir()):
            archive.write(f, f.name)
    return buffer.getvalue()


@router.get("/trials/{trial_id}/exports/download")
async def export_download(
    request: Request, trial_id: int, format: str = "csv", blinded: str = "yes"
) -> Response:
    """As ``GET /trials/{id}/export``: the export written in a temporary folder, sent as a zip."""
    principal = signed_in(request, EXPORTERS)
    if format not in EXPORT_FORMATS:
        raise PageError(422, f"unknown export format {format!r}; expected {', '.join(EXPORT_FORMATS)}")
    is_blinded = blinded != "no"

    def work() -> tuple[str, bytes]:
        with unit_of_work(request, principal) as (session, actor):
            trial = service.trial_by_id(session, trial_id)
            check_export(trial, actor, is_blinded)
            with tempfile.TemporaryDirectory() as tmp:
                folder = write_trial_export(
                    session, actor, trial.id, is_blinded, format, Path(tmp) / "export"
                )
                return str(trial.code), _zip(folder)

    code, body = await run_in_threadpool(work)
    name = f"{code}-{'blinded' if is_blinded else 'unblinded'}-{format}.zip"
    return Response(
        body,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


# ------------------------------------------------------------------------------------- analysis report


def _analysis(
    request: Request, principal: Principal, trial_id: int, tmp: Path, pdf: bool
) -> tuple[str, dict[str, Any]]:
    """The unblinded export (after the lock, statistician) written into ``tmp`` and analysed with
    the trial's analysis plan, as ``trial export --unblinded`` then ``analyze --report [--pdf]``."""
    from immunostrat.analysis import analyze

    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        check_export(trial, actor, blinded=False)
        plan = ((trial.config or {}).get("definition") or {}).get("analysis_plan")
        if not plan:
            raise PageError(409, f"trial {trial.code} names no analysis plan: no report to make")
        code = str(trial.code)
        folder = write_trial_export(session, actor, trial.id, False, "csv", tmp / "export")
    return code, analyze(folder, plan, tmp / "report.html", pdf=tmp / "report.pdf" if pdf else False)


@dataclass
class ReportRun:
    """One analysis run the page showed, kept briefly so that its HTML and PDF downloads are the
    same report without a second export and analysis (same user, same trial, a few minutes)."""

    username: str
    trial_id: int
    code: str
    html: bytes
    made: float


REPORT_RUNS_KEPT = 8
REPORT_RUN_SECONDS = 15 * 60


def _runs(request: Request) -> OrderedDict[str, ReportRun]:
    runs: OrderedDict[str, ReportRun] | None = getattr(request.app.state, "web_report_runs", None)
    if runs is None:
        runs = request.app.state.web_report_runs = OrderedDict()
    return runs


def _kept_run(request: Request, principal: Principal, trial_id: int, token: str) -> ReportRun | None:
    run = _runs(request).get(token)
    fresh = run is not None and time.monotonic() - run.made < REPORT_RUN_SECONDS
    if run is None or not fresh or run.username != principal.username or run.trial_id != trial_id:
        return None
    return run


@router.get("/trials/{trial_id}/analysis")
async def analysis_page(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, REPORT_READERS)
    context = await run_in_threadpool(_trial_context, request, principal, trial_id)
    context.update(results=None, problem=None, summary=None, run=None)
    if context["trial"]["unblinded_refusal"] is None:

        def work() -> tuple[str, dict[str, Any], bytes]:
            with tempfile.TemporaryDirectory() as tmp:
                code, results = _analysis(request, principal, trial_id, Path(tmp), pdf=False)
                return code, results, (Path(tmp) / "report.html").read_bytes()

        try:
            code, results, html = await run_in_threadpool(work)
        except InputError as exc:
            context["problem"] = f"The analysis cannot run on this trial's data: {exc}"
        except PageError as exc:
            context["problem"] = exc.message
        else:
            from immunostrat.analysis.report import primary_summary

            token = secrets.token_urlsafe(16)
            runs = _runs(request)
            runs[token] = ReportRun(principal.username, trial_id, code, html, time.monotonic())
            while len(runs) > REPORT_RUNS_KEPT:
                runs.popitem(last=False)
            context.update(results=results, summary=primary_summary(results), run=token)
    return render(request, "records_analysis.html", context)


@router.get("/trials/{trial_id}/analysis/report.{kind}")
async def analysis_download(request: Request, trial_id: int, kind: str, run: str = "") -> Response:
    """The analysis package's own report: the self-contained HTML file or its PDF (Chromium); the
    page's run when ``run`` names it (kept a few minutes), else a new export and analysis."""
    principal = signed_in(request, REPORT_READERS)
    if kind not in ("html", "pdf"):
        raise PageError(404, "no such report")
    kept = _kept_run(request, principal, trial_id, run) if run else None

    def work() -> tuple[str, bytes]:
        from immunostrat.analysis.report import html_to_pdf

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if kept is None:
                code, _ = _analysis(request, principal, trial_id, folder, pdf=kind == "pdf")
            else:
                code = kept.code
                (folder / "report.html").write_bytes(kept.html)
                if kind == "pdf":
                    html_to_pdf(folder / "report.html", folder / "report.pdf")
            return code, (folder / f"report.{kind}").read_bytes()

    try:
        label, body = await run_in_threadpool(work)
    except InputError as exc:
        raise PageError(422, f"The analysis cannot run on this trial's data: {exc}") from None
    media = "application/pdf" if kind == "pdf" else "text/html; charset=utf-8"
    return Response(
        body,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="analysis-{label}.{kind}"',
            "Cache-Control": "no-store",
        },
    )


# ------------------------------------------------------------------------------------- adverse events

MESSAGES = {
    (
        "meddra_code",
        "string_pattern_mismatch",
    ): "a MedDRA code is 8 digits (lowest level term or preferred term)",
    ("day", "int_parsing"): "the study day of onset as a whole number (day 1 is the day of randomization)",
    ("day", "int_type"): "the study day of onset is required",
    ("serious", "bool_type"): "say whether the event is serious",
}
"""Plainer words for the schema's messages on this form (the rule stays in :class:`AdverseEventIn`)."""
AE_FIELDS = ("participant", "day", "term", "meddra_code", "ctcae_grade", "serious", "seriousness")


def _clock(ae: dict[str, Any], now: datetime) -> str:
    """The expedited-report clock in words: time left, time overdue, or when it was reported."""
    due = ae.get("report_due_at")
    if due is None:
        return "not serious: no expedited report"
    if ae.get("reported_at") is not None:
        return f"{ae['report_state']} {ae['reported_at']:%Y-%m-%d %H:%M} UTC"
    left = due - now
    text = _duration(abs(left))
    return f"due in {text}" if left >= timedelta(0) else f"overdue by {text}"


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _ae_context(request: Request, principal: Principal, trial_id: int) -> dict[str, Any]:
    with unit_of_work(request, principal) as (session, actor):
        trial = service.trial_by_id(session, trial_id)
        view = blinding.blind_trial_view(service.trial_view(session, trial, actor), actor)
        rows = service.list_adverse_events(session, actor, trial_id)
        participants = []
        if actor.role in INVESTIGATOR:
            participants = [
                {"id": p.id, "pseudonym": p.pseudonym}
                for p in service.list_participants(session, actor, trial_id)
                if p.status == "randomized" and not p.data_removed
            ]
    now = utcnow()
    for row in rows:
        row["clock"] = _clock(row, now)
    return {
        "user": user_of(request, principal),
        "trial": view,
        "nav": trial_nav(principal, trial_id),
        "rows": rows,
        "participants": participants,
        "criteria": [(c, c.replace("_", " ")) for c in SERIOUSNESS_CRITERIA],
        "can_record": principal.role in INVESTIGATOR and view["status"] != "locked",
        "can_report": principal.role in AE_REPORTERS,
        "values": {},
        "errors": {},
        "report_errors": {},
        "now": now.strftime("%Y-%m-%dT%H:%M"),
        "recorded": request.query_params.get("recorded"),
        "reported": request.query_params.get("reported"),
    }


@router.get("/trials/{trial_id}/adverse-events")
def adverse_events(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, CLINICAL_READERS)
    return render(request, "records_adverse_events.html", _ae_context(request, principal, trial_id))


def _utc(text: str) -> str:
    """A ``datetime-local`` value (no zone) read as UTC, which the page states."""
    return text + ":00+00:00" if len(text) == 16 else text


def _error_key(loc: tuple[Any, ...]) -> str:
    """Where a validation error is shown: its field, or for the checks across fields (grade,
    seriousness) the seriousness criteria."""
    name = str(loc[0]) if loc else "seriousness"
    return "ctcae_grade" if name == "severity" else name


@router.post("/trials/{trial_id}/adverse-events")
async def record_adverse_event(request: Request, trial_id: int) -> Response:
    """As ``POST /trials/{id}/participants/{pid}/adverse-events``: each error next to its field."""
    principal, data = await posted(request, INVESTIGATOR)
    context = await run_in_threadpool(_ae_context, request, principal, trial_id)
    values = {k: str(data.get(k, "")).strip() for k in (*AE_FIELDS, "related", "outcome", "aware_at")}
    chosen = [str(c) for c in data.getlist("seriousness")]
    context["values"] = {**values, "seriousness": chosen}
    errors: dict[str, str] = context["errors"]
    participant_id = int(values["participant"]) if values["participant"].isdigit() else None
    if participant_id is None:
        errors["participant"] = "choose the participant"
    body: dict[str, Any] = {
        "day": values["day"] or None,
        "term": values["term"],
        "meddra_code": values["meddra_code"] or None,
        "ctcae_grade": values["ctcae_grade"] or None,
        "serious": {"yes": True, "no": False}.get(values["serious"]),
        "seriousness": chosen,
        "related": {"yes": True, "no": False}.get(values["related"]),
        "outcome": values["outcome"] or None,
    }
    if values["aware_at"]:
        body["aware_at"] = _utc(values["aware_at"])
    event: AdverseEventIn | None = None
    try:
        # An HTML form sends text ("3", "2026-01-02"): the strict API models are applied in lax mode.
        event = AdverseEventIn.model_validate(body, strict=False)
    except ValidationError as exc:
        for e in exc.errors():
            key = _error_key(tuple(e["loc"]))
            message = MESSAGES.get((key, e["type"])) or str(e["msg"]).removeprefix("Value error, ")
            errors.setdefault(key, message)
    if errors or event is None or participant_id is None:
        return render(request, "records_adverse_events.html", context, status=422)

    def work() -> int:
        with unit_of_work(request, principal) as (session, actor):
            row = service.record_adverse_event(session, actor, trial_id, participant_id, event)
            return int(row.id)

    try:
        ae_id = await run_in_threadpool(work)
    except (InputError, service.TrialError) as exc:
        field = exc.field
        message = str(exc) if isinstance(exc, InputError) else exc.message
        errors[{"participant_id": "participant"}.get(field or "", field or "participant")] = message
        return render(request, "records_adverse_events.html", context, status=422)
    return RedirectResponse(f"/web/trials/{trial_id}/adverse-events?recorded={ae_id}", status_code=303)


@router.post("/trials/{trial_id}/adverse-events/{ae_id}/report")
async def report_adverse_event(request: Request, trial_id: int, ae_id: int) -> Response:
    """As ``POST .../adverse-events/{ae_id}/report``: the expedited report sent (stops the clock)."""
    principal, data = await posted(request, AE_REPORTERS)
    reported_at = str(data.get("reported_at", "")).strip()
    reference = str(data.get("reference", "")).strip() or None
    try:
        body = AdverseEventReportIn.model_validate(
            {"reported_at": _utc(reported_at) if reported_at else None, "reference": reference},
            strict=False,
        )
    except ValidationError as exc:
        context = await run_in_threadpool(_ae_context, request, principal, trial_id)
        context["report_errors"] = {ae_id: f"{exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}"}
        return render(request, "records_adverse_events.html", context, status=422)
    when = as_utc(body.reported_at) or datetime.now(UTC)

    def work() -> None:
        with unit_of_work(request, principal) as (session, actor):
            service.report_adverse_event(session, actor, trial_id, ae_id, when, body.reference)

    await run_in_threadpool(work)
    return RedirectResponse(f"/web/trials/{trial_id}/adverse-events?reported={ae_id}", status_code=303)
