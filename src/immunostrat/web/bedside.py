"""The bedside page: a clinician types or pastes measurements in any accepted unit and sees the
endotype, therapy, dose with renal adjustment and every reason, decided by the same function that
answers ``POST /classify``; nothing is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from immunostrat.api import clinical
from immunostrat.api.auth import confirm_current
from immunostrat.concepts import load_concepts
from immunostrat.errors import InputError
from immunostrat.web.core import CLASSIFIERS, add_main_page, page_router, posted, render, signed_in, user_of

router = page_router()
add_main_page("/bedside", "Bedside", CLASSIFIERS)

BEDSIDE_CONCEPTS = ("ferritin", "mhla_dr", "creatinine")
"""What the immunosep-2025 protocol decides from (ferritin, mHLA-DR) and doses by (creatinine)."""


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


@router.get("/bedside")
def bedside_page(request: Request) -> Response:
    principal = signed_in(request, CLASSIFIERS)
    context = {"user": user_of(request, principal), "rows": _bedside_rows(), "result": None, "error": None}
    return render(request, "bedside.html", context)


@router.post("/bedside/classify")
async def bedside_classify(request: Request) -> Response:
    """As ``POST /classify`` (the same function answers): the endotype, therapy, dose and reasons
    for the values typed so far, in any accepted unit, decided now; htmx swaps the result in."""
    principal, data = await posted(request, CLASSIFIERS)
    patient: dict[str, Any] = {"patient_id": "bedside"}
    for name in ("age", "sex", "weight_kg"):
        raw = str(data.get(name, "")).strip()
        if raw:
            patient[name] = raw
    at = datetime.now(UTC)
    observations = []
    for c in BEDSIDE_CONCEPTS:
        raw = str(data.get(f"{c}__value", "")).strip()
        if raw:
            observations.append(
                {"time": at.isoformat(), "concept": c, "value": raw, "unit": str(data.get(f"{c}__unit", ""))}
            )
    context: dict[str, Any] = {"result": None, "error": None}
    if not observations:
        context["error"] = "Type a ferritin or an mHLA-DR value to classify."
    else:
        try:
            body = clinical.ClassifyIn.model_validate(
                {"patient": patient, "observations": observations, "at": at}
            )

            def work() -> dict[str, Any]:
                confirm_current(request, principal)
                return clinical.classify(body, principal)

            context["result"] = await run_in_threadpool(work)
        except ValidationError as exc:
            first = exc.errors()[0]
            context["error"] = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        except InputError as exc:
            context["error"] = str(exc)
    if not request.headers.get("HX-Request"):
        context.update(user=user_of(request, principal), rows=_bedside_rows(), values=dict(data))
        return render(request, "bedside.html", context)
    return render(request, "_bedside_result.html", context)
